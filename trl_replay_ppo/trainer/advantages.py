"""`AdvantageEstimator`: an update's KL-shaped rewards, GAE advantages and returns, and their whitening.

The math is `trl_replay_ppo.core.kl` and `trl_replay_ppo.core.advantages`; this part applies it to a
batch with the config's settings and counts the whitenings it had to leave out.
"""

from __future__ import annotations

from typing import Any

import torch

from trl_replay_ppo.core.advantages import compute_gae, shaped_rewards, whiten_advantages, whiten_rewards
from trl_replay_ppo.core.episodes import EpisodeBatch
from trl_replay_ppo.core.kl import kl_estimate


class AdvantageEstimator:
    """Sets ``kl``, ``non_score_reward``, ``raw_advantages``, ``returns`` and ``advantages`` (B, R) of a batch.

    Args:
        gamma, lam: GAE's discount and trace decay.
        kl_estimator: 'k1' or 'k3', the per-token KL to the reference that shapes the rewards.
        whiten_rewards: scale the per-token rewards to unit variance first.
    """

    def __init__(self, *, gamma: float, lam: float, kl_estimator: str, whiten_rewards: bool):
        self.gamma = gamma
        self.lam = lam
        self.kl_estimator = kl_estimator
        self.whiten_rewards = whiten_rewards
        self.whiten_fallbacks = 0  # whitenings left out for lack of 2 valid tokens (``update/whiten_fallbacks``)
        self.kl_coef = float("nan")  # the coefficient the last batch's rewards were shaped with

    @torch.no_grad()
    def __call__(self, batch: EpisodeBatch, kl_coef: float, update: int) -> EpisodeBatch:
        """Advantages of update number ``update`` at KL coefficient ``kl_coef``; raises if every response is empty."""
        if bool(batch.padding_mask.all()):
            raise RuntimeError(
                f"Every response of update {update} is empty: the policy emitted the pad token first, so there is "
                "nothing to train on. The policy has collapsed; lower `learning_rate`, keep `max_grad_norm` on, and "
                "use a pad token distinct from the stop token."
            )
        self.kl_coef = kl_coef
        batch.kl = kl_estimate(batch.policy_logprobs, batch.ref_logprobs, self.kl_estimator)
        rewards, batch.non_score_reward = shaped_rewards(batch.kl, batch.scores, batch.score_index, kl_coef)
        if self.whiten_rewards:
            rewards, whitened = whiten_rewards(rewards, batch.padding_mask_p1)
            self.whiten_fallbacks += not whitened
        batch.raw_advantages, batch.returns = compute_gae(rewards, batch.values, self.gamma, self.lam)
        batch.advantages, whitened = whiten_advantages(batch.raw_advantages, batch.padding_mask, batch.token_weights)
        self.whiten_fallbacks += not whitened
        return batch

    def metrics(self) -> dict[str, float]:
        """``objective/kl_coef`` of the last batch and ``update/whiten_fallbacks`` so far."""
        return {"objective/kl_coef": self.kl_coef, "update/whiten_fallbacks": self.whiten_fallbacks}

    def state_dict(self) -> dict[str, Any]:
        return {"whiten_fallbacks": self.whiten_fallbacks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.whiten_fallbacks = int(state["whiten_fallbacks"])
