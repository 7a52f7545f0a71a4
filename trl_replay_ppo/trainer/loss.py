"""An update's micro-batches: which rows each holds (`micro_batch_rows`), how far the update got
(`UpdateProgress`), and `MicroBatchLoss`, the loss of one micro-batch (a trainer mixin).

The math (clipped policy and value losses, self-imitation, entropy) is in
`trl_replay_ppo.core.losses`; the mixin runs the forward pass and assembles it with the batch's
replay weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trl_replay_ppo.core.episodes import INVALID_LOGPROB, EpisodeBatch
from trl_replay_ppo.core.kl import k3_kl_sum
from trl_replay_ppo.core.losses import entropy_from_logits, policy_loss, self_imitation_loss, value_loss
from trl_replay_ppo.core.masking import masked_mean
from trl_replay_ppo.models.forwards import forward, gather_logprobs
from trl_replay_ppo.trainer.metrics import replay_token_statistics


def micro_batch_rows(
    num_rows: int, epochs: int, mini_batch_size: int, micro_batch_size: int
) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """``(epoch, minibatch, micro, rows)`` for every micro-batch of an update, in training order.

    Each epoch draws one permutation of the ``num_rows`` rows from numpy's global RNG (as TRL does),
    when its first micro-batch is asked for, so stopping early draws no further permutation.
    """
    for epoch in range(epochs):
        order = np.random.permutation(num_rows)
        for minibatch, mb_start in enumerate(range(0, num_rows, mini_batch_size)):
            rows_of_minibatch = order[mb_start : mb_start + mini_batch_size]
            for micro, micro_start in enumerate(range(0, mini_batch_size, micro_batch_size)):
                yield epoch, minibatch, micro, rows_of_minibatch[micro_start : micro_start + micro_batch_size]


@dataclass
class UpdateProgress:
    """How much of an update's PPO epochs trained, on this rank: what ``train/ppo_epochs`` reports.

    A micro-batch counts once its gradients are kept: stepped, or (at the end of an update whose
    micro-batches do not fill the last accumulation) carried into the next step as TRL does. The
    micro-batches of a step dropped by ``target_kl`` do not count.
    """

    micro_batches_per_epoch: int
    trained_micro_batches: int = 0
    trained_tokens: int = 0  # valid (non-padding) response tokens of the trained micro-batches
    early_stop_kl: float | None = None  # k3 KL (nats per token) of the last `target_kl` check; None when off
    _pending: tuple[int, int] = (0, 0)  # micro-batches and tokens since the last optimizer step

    @property
    def epochs(self) -> float:
        """Epochs trained: whole ones, plus the trained share of the one a ``target_kl`` stop fell in."""
        return self.trained_micro_batches / self.micro_batches_per_epoch

    def add(self, valid_tokens: int) -> None:
        """One micro-batch's backward ran."""
        self._pending = (self._pending[0] + 1, self._pending[1] + valid_tokens)

    def keep(self) -> None:
        """The pending micro-batches' gradients are kept (an optimizer step, or the end of the update)."""
        self.trained_micro_batches += self._pending[0]
        self.trained_tokens += self._pending[1]
        self._pending = (0, 0)

    def drop(self) -> None:
        """The pending micro-batches' gradients are dropped (a ``target_kl`` stop)."""
        self._pending = (0, 0)


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
            kl_sum, valid_tokens = k3_kl_sum(new_logprobs, batch.policy_logprobs[rows], padding_mask)
            micro_stats = {
                "approxkl": 0.5 * (logprobs_diff**2).mean(),
                "pg_clipfrac": masked_mean(clipped.float(), ~padding_mask),
                "pg_loss": pg_loss,
                "vf_loss": vf_loss,
                "vf_clipfrac": vf_clipfrac,
                "entropy": entropy.mean(),
                "ratio": ratio.mean(),
                "kl_sum": kl_sum,  # k3 over the valid tokens: what `target_kl` reads (TRL's approxkl stays as is)
                "valid_tokens": valid_tokens,
            }
            if token_weights is not None:  # off-policy rows: their clip fraction and importance weights
                micro_stats.update(replay_token_statistics(clipped, token_weights, padding_mask, replayed_rows))
            if imitate:
                micro_stats["sil_loss"] = sil_loss
        return loss, micro_stats
