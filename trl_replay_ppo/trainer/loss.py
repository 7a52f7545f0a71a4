"""`PPOLoss`: the loss of one micro-batch of a PPO update, and the statistics the update logs of it.

The math (clipped policy and value losses, self-imitation, entropy) is in `trl_replay_ppo.core.losses`;
this part runs the forward pass (`trl_replay_ppo.models.runner.ModelRunner.train_forward`) and
assembles the terms with the batch's replay weights. Shapes: b rows of the micro-batch, R response tokens.
"""

from __future__ import annotations

import numpy as np
import torch

from trl_replay_ppo.core.episodes import INVALID_LOGPROB, EpisodeBatch
from trl_replay_ppo.core.kl import k3_kl_sum
from trl_replay_ppo.core.losses import entropy_from_logits, policy_loss, self_imitation_loss, value_loss
from trl_replay_ppo.core.masking import masked_mean
from trl_replay_ppo.models.forwards import gather_logprobs
from trl_replay_ppo.models.runner import ModelRunner


def replay_token_statistics(
    clipped: torch.Tensor, token_weights: torch.Tensor, padding_mask: torch.Tensor, replayed_rows: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Sums over a micro-batch's replayed tokens (rows where ``replayed_rows`` (b,) is True): the replay metrics."""
    replay_tokens = ~padding_mask & replayed_rows[:, None]
    return {
        "replay_tokens": replay_tokens.sum(),
        "replay_clipped": (clipped & replay_tokens).sum(),
        "replay_weight_sum": (token_weights * replay_tokens).sum(),
    }


class PPOLoss:
    """loss = clipped policy loss + ``vf_coef`` * clipped value loss - ``entropy_coef`` * entropy
    (+ ``self_imitation_coef`` * self-imitation loss when the micro-batch holds replayed rows).

    Args:
        runner: runs the forward pass of policy and critic.
        cliprange, cliprange_value, vf_coef, entropy_coef, self_imitation_coef: the config fields of those names.
    """

    def __init__(
        self,
        runner: ModelRunner,
        *,
        cliprange: float,
        cliprange_value: float,
        vf_coef: float,
        entropy_coef: float,
        self_imitation_coef: float,
    ):
        self.runner = runner
        self.cliprange = cliprange
        self.cliprange_value = cliprange_value
        self.vf_coef = vf_coef
        self.entropy_coef = entropy_coef
        self.self_imitation_coef = self_imitation_coef

    def __call__(self, batch: EpisodeBatch, rows: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward the micro-batch of ``rows`` and return ``(loss, statistics)`` (0-d tensors).

        The statistics are TRL's (``approxkl``, ``pg_clipfrac``, ``pg_loss``, ``vf_loss``, ``vf_clipfrac``,
        ``entropy``, ``ratio``), ``kl_sum`` and ``kl_weight`` (what ``target_kl`` reads), ``valid_tokens``, and
        the replay sums of `replay_token_statistics` and ``sil_loss`` when those terms are present.
        """
        responses = batch.responses[rows]
        padding_mask, padding_mask_p1 = batch.padding_mask[rows], batch.padding_mask_p1[rows]
        logits, vpred = self.runner.train_forward(batch.query_responses[rows], batch.context_length)
        new_logprobs = torch.masked_fill(gather_logprobs(logits, responses), padding_mask, INVALID_LOGPROB)
        vpred = torch.masked_fill(vpred, padding_mask_p1, 0)
        row_weights = None if batch.row_weights is None else batch.row_weights[rows]
        vf_loss, vf_clipfrac = value_loss(
            vpred, batch.values[rows], batch.returns[rows], padding_mask_p1, self.cliprange_value, row_weights
        )
        token_weights = None if batch.token_weights is None else batch.token_weights[rows]
        pg_loss, clipped, ratio, logprobs_diff = policy_loss(
            new_logprobs,
            batch.policy_logprobs[rows],
            batch.advantages[rows],
            padding_mask,
            self.cliprange,
            token_weights,
        )
        loss = pg_loss + self.vf_coef * vf_loss
        replayed_rows = torch.as_tensor(rows >= batch.num_fresh, device=padding_mask.device)
        imitate = self.self_imitation_coef > 0 and bool(replayed_rows.any())
        if imitate:
            imitated = replayed_rows.float() * batch.row_weights[rows]
            sil_loss = self_imitation_loss(new_logprobs, batch.raw_advantages[rows], padding_mask, imitated)
            loss = loss + self.self_imitation_coef * sil_loss
        with torch.set_grad_enabled(self.entropy_coef > 0):
            entropy = entropy_from_logits(logits)
        if self.entropy_coef > 0:
            loss = loss - self.entropy_coef * masked_mean(entropy, padding_mask)
        with torch.no_grad():
            kl_sum, kl_weight = k3_kl_sum(new_logprobs, batch.policy_logprobs[rows], padding_mask, token_weights)
            stats = {
                "approxkl": 0.5 * (logprobs_diff**2).mean(),
                "pg_clipfrac": masked_mean(clipped.float(), padding_mask),
                "pg_loss": pg_loss,
                "vf_loss": vf_loss,
                "vf_clipfrac": vf_clipfrac,
                "entropy": entropy.mean(),
                "ratio": ratio.mean(),
                "kl_sum": kl_sum,  # weighted k3: what `target_kl` and `adaptive_lr_kl` read (TRL's approxkl stays)
                "kl_weight": kl_weight,
                "valid_tokens": (~padding_mask).sum(),
            }
            if token_weights is not None:  # off-policy rows: their clip fraction and importance weights
                stats.update(replay_token_statistics(clipped, token_weights, padding_mask, replayed_rows))
            if imitate:
                stats["sil_loss"] = sil_loss
        return loss, stats
