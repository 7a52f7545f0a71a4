"""An update's epochs: which rows each micro-batch holds (`micro_batch_rows`) and how far the update got
(`UpdateProgress`, what ``update/ppo_epochs`` reports)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


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
    """How much of an update's PPO epochs trained, on this rank: what ``update/ppo_epochs`` reports.

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
