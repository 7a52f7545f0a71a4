"""`MicroBatchLoss`: the loss of one micro-batch of a PPO update (a trainer mixin).

The math (clipped policy and value losses, self-imitation, entropy) is in
`trl_replay_ppo.objectives`; this mixin runs the forward pass and assembles it with the batch's
replay weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from trl_replay_ppo.episodes import INVALID_LOGPROB, EpisodeBatch
from trl_replay_ppo.forwards import forward, gather_logprobs
from trl_replay_ppo.masking import masked_mean
from trl_replay_ppo.metrics import replay_token_statistics
from trl_replay_ppo.objectives import entropy_from_logits, policy_loss, self_imitation_loss, value_loss


class MicroBatchLoss:
    """``micro_batch_loss`` for a trainer with ``args``, ``model``, ``processing_class`` and ``response_logits``."""

    args: Any
    model: torch.nn.Module
    processing_class: Any

    def micro_batch_loss(self, batch: EpisodeBatch, rows: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward one micro-batch of ``rows`` and return ``(loss, statistics)``.

        loss = clipped policy loss + ``vf_coef`` * clipped value loss - ``entropy_coef`` * entropy
        (+ ``self_imitation_coef`` * self-imitation loss when the micro-batch holds replayed rows).
        """
        args = self.args
        responses = batch.responses[rows]
        padding_mask, padding_mask_p1 = batch.padding_mask[rows], batch.padding_mask_p1[rows]
        output, values_all = forward(self.model, batch.query_responses[rows], self.processing_class.pad_token_id)
        logits = self.response_logits(output.logits, batch.context_length)
        new_logprobs = torch.masked_fill(gather_logprobs(logits, responses), padding_mask, INVALID_LOGPROB)
        vpred = values_all[:, batch.context_length - 1 : -1].squeeze(-1).float()
        vpred = torch.masked_fill(vpred, padding_mask_p1, 0)
        row_weights = None if batch.row_weights is None else batch.row_weights[rows]
        vf_loss, vf_clipfrac = value_loss(
            vpred, batch.values[rows], batch.returns[rows], padding_mask_p1, args.cliprange_value, row_weights
        )
        token_weights = None if batch.token_weights is None else batch.token_weights[rows]
        pg_loss, clipped, ratio, logprobs_diff = policy_loss(
            new_logprobs,
            batch.policy_logprobs[rows],
            batch.advantages[rows],
            padding_mask,
            args.cliprange,
            token_weights,
        )
        loss = pg_loss + args.vf_coef * vf_loss
        replayed_rows = torch.as_tensor(rows >= batch.num_fresh, device=padding_mask.device)
        imitate = args.self_imitation_coef > 0 and bool(replayed_rows.any())
        if imitate:
            imitated = replayed_rows.float() * batch.row_weights[rows]
            sil_loss = self_imitation_loss(new_logprobs, batch.raw_advantages[rows], padding_mask, imitated)
            loss = loss + args.self_imitation_coef * sil_loss
        with torch.set_grad_enabled(args.entropy_coef > 0):
            entropy = entropy_from_logits(logits)
        if args.entropy_coef > 0:
            loss = loss - args.entropy_coef * masked_mean(entropy, ~padding_mask)
        with torch.no_grad():
            micro_stats = {
                "approxkl": 0.5 * (logprobs_diff**2).mean(),
                "pg_clipfrac": masked_mean(clipped.float(), ~padding_mask),
                "pg_loss": pg_loss,
                "vf_loss": vf_loss,
                "vf_clipfrac": vf_clipfrac,
                "entropy": entropy.mean(),
                "ratio": ratio.mean(),
            }
            if token_weights is not None:  # off-policy rows: their clip fraction and importance weights
                micro_stats.update(replay_token_statistics(clipped, token_weights, padding_mask, replayed_rows))
            if imitate:
                micro_stats["sil_loss"] = sil_loss
        return loss, micro_stats
