"""KL between policies: the per-token estimators, the coefficient controllers of the reward's KL penalty
(Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences"), and `KLEarlyStop`, the
``target_kl`` rule that ends an update's epochs.

Shapes: b rows, R response tokens; ``padding_mask`` is True on padding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(pi || ref), (B, R), with Schulman's k1 (``log pi - log ref``) or k3 estimator."""
    logr = ref_logprobs - logprobs
    return -logr if estimator == "k1" else (logr.exp() - 1) - logr


def k3_kl_sum(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    padding_mask: torch.Tensor,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(old || new) summed over the valid tokens, and their weight: two 0-d tensors.

    Per token Schulman's k3 estimate ``(exp(r) - 1) - r``, ``r = new - old`` (b, R), which is >= 0
    and unbiased for tokens sampled from the old policy; ``padding_mask`` (b, R) is True on padding.
    Replayed tokens were sampled by an older behaviour policy, so ``token_weights`` (b, R), the loss's
    weights (truncated importance weight ``min(pi_old / pi_behaviour, cap)`` times the row's replay weight;
    1 on fresh tokens), weigh each token's estimate and count: without them a replayed token the old policy
    had all but ruled out (``exp(r)`` in the thousands) outweighs every other token of the update. Without
    weights each valid token counts 1.
    Dividing the sums of several micro-batches gives their (self-normalised) weighted mean.
    """
    valid = ~padding_mask
    weights = valid.to(new_logprobs.dtype) if token_weights is None else torch.where(valid, token_weights, 0)
    per_token = kl_estimate(old_logprobs, new_logprobs, "k3")  # its ``ref - logprobs`` is r
    return torch.where(valid, per_token * weights, 0).sum(), weights.sum()


class FixedKLController:
    """A constant KL coefficient: TRL's `kl_coef`."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, num_episodes: int) -> None:
        """No-op: the coefficient never moves."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def check_state_dict(self, state: dict[str, Any]) -> None:
        if state["value"] < 0:
            raise ValueError(f"a negative KL coefficient {state['value']}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Proportional controller: ``beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)``.

    ``current_kl`` is the mean per-sequence KL (nats) of the last update and ``n`` the number of
    episodes it trained on, so the coefficient rises while the policy drifts past the target and
    decays while it stays below.
    """

    def __init__(self, kl_coef: float, target: float, horizon: float, max_error: float = 0.2):
        super().__init__(kl_coef)
        self.target = target
        self.horizon = horizon
        self.max_error = max_error

    def update(self, current_kl: float, num_episodes: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -self.max_error), self.max_error)
        self.value *= 1.0 + error * num_episodes / self.horizon


def make_kl_controller(kind: str, kl_coef: float, target: float, horizon: float) -> FixedKLController:
    """The controller ``kind`` names: 'adaptive', or 'fixed' (the config checks ``kl_controller`` is one of them)."""
    if kind == "adaptive":
        return AdaptiveKLController(kl_coef, target, horizon)
    return FixedKLController(kl_coef)


class KLEarlyStop:
    """``target_kl``, as Stable-Baselines3 applies it: stop an update before a step whose data has drifted too far.

    The statistic is Schulman's k3 estimate of KL(old || new), ``(exp(r) - 1) - r`` with
    ``r = log pi_new - log pi_old`` per token, averaged over the valid (non-padding) tokens of the
    micro-batches accumulated since the last optimizer step (replayed tokens weighted by their importance
    weights, `k3_kl_sum`), summed over ranks.
    At each gradient-sync point `exceeded` reduces it once over ranks, so every rank takes the same
    decision; above ``1.5 * target_kl`` the update stops and that step's gradients are dropped.

    Args:
        target_kl: the target (nats per token).
        all_reduce_sum: sums a tensor over ranks (identity on one process).
    """

    def __init__(self, target_kl: float, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]):
        self.threshold = 1.5 * target_kl
        self.all_reduce_sum = all_reduce_sum
        self.last: float = float("nan")  # the statistic of the last decision (nats per token)
        self._window: torch.Tensor | None = None  # (2,) k3 sum and token weight since the last step

    def add(self, kl_sum: torch.Tensor, tokens: torch.Tensor) -> None:
        """Count one micro-batch: ``kl_sum`` and ``tokens`` are its k3 sum and token weight (0-d, `k3_kl_sum`)."""
        micro = torch.stack([kl_sum.detach().double(), tokens.double()])
        self._window = micro if self._window is None else self._window + micro

    def exceeded(self) -> bool:
        """At a sync point: reduce the window over ranks, start a new one, and say whether to stop."""
        if self._window is None:
            raise RuntimeError("KLEarlyStop.exceeded() called before any micro-batch was added.")
        kl_sum, tokens = self.all_reduce_sum(self._window).tolist()
        self._window = None
        self.last = kl_sum / tokens if tokens > 0 else 0.0
        return self.last > self.threshold
