"""An update's epochs: which rows each micro-batch holds (`EpochPlan`) and how far the update got
(`UpdateProgress`, what ``update/ppo_epochs`` reports)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EpochPlan:
    """The rows each epoch of an update trains on, split into minibatches and micro-batches.

    A batch holds its ``num_fresh`` fresh rows first, then the replayed ones. The first ``replay_epochs``
    epochs train on every row; the others on the fresh rows only (so a replayed row costs ``replay_epochs``
    passes, a fresh one ``epochs``). Every epoch splits its rows into ``num_mini_batches`` minibatches of
    ``micro_batch_size``-row micro-batches.
    """

    num_rows: int
    num_fresh: int
    epochs: int
    replay_epochs: int
    num_mini_batches: int
    micro_batch_size: int

    @classmethod
    def from_config(cls, args: Any, num_rows: int, num_fresh: int) -> EpochPlan:
        """The plan a `ReplayPPOConfig` gives a batch of ``num_rows`` rows, ``num_fresh`` of them fresh."""
        replay_epochs = args.num_ppo_epochs if args.replay_epochs is None else args.replay_epochs
        return cls(
            num_rows,
            num_fresh,
            args.num_ppo_epochs,
            replay_epochs,
            args.num_mini_batches,
            args.per_device_train_batch_size,
        )

    def rows_in_epoch(self, epoch: int) -> int:
        """Rows epoch ``epoch`` trains on: the first ``rows_in_epoch(epoch)`` of the batch."""
        return self.num_rows if epoch < self.replay_epochs else self.num_fresh

    def micro_batches_in_epoch(self, epoch: int) -> int:
        """Micro-batches epoch ``epoch`` runs."""
        mini_batch_size = self.rows_in_epoch(epoch) // self.num_mini_batches
        return self.num_mini_batches * math.ceil(mini_batch_size / self.micro_batch_size)

    def micro_batches_per_epoch(self) -> tuple[int, ...]:
        """Micro-batches of every epoch, in order (what `UpdateProgress` counts epochs by)."""
        return tuple(self.micro_batches_in_epoch(epoch) for epoch in range(self.epochs))

    def stat_slots(self) -> int:
        """Micro-batch slots per minibatch of the statistics tensors: the largest epoch's micro-batches."""
        return self.micro_batches_in_epoch(0) // self.num_mini_batches

    def schedule(self) -> Iterator[tuple[int, int, int, np.ndarray]]:
        """``(epoch, minibatch, micro, rows)`` for every micro-batch of the update, in training order.

        Each epoch draws one permutation of its rows from numpy's global RNG (as TRL does), when its first
        micro-batch is asked for, so stopping early draws no further permutation.
        """
        for epoch in range(self.epochs):
            num_rows = self.rows_in_epoch(epoch)
            mini_batch_size = num_rows // self.num_mini_batches
            order = np.random.permutation(num_rows)
            for minibatch, mb_start in enumerate(range(0, num_rows, mini_batch_size)):
                rows_of_minibatch = order[mb_start : mb_start + mini_batch_size]
                for micro, micro_start in enumerate(range(0, mini_batch_size, self.micro_batch_size)):
                    yield epoch, minibatch, micro, rows_of_minibatch[micro_start : micro_start + self.micro_batch_size]


@dataclass
class UpdateProgress:
    """How much of an update's PPO epochs trained, on this rank: what ``update/ppo_epochs`` reports.

    A micro-batch counts once its gradients are kept: stepped, or (at the end of an update whose
    micro-batches do not fill the last accumulation) carried into the next step as TRL does. The
    micro-batches of a step dropped by ``target_kl`` do not count. ``micro_batches_per_epoch`` lists
    each epoch's micro-batches (`EpochPlan.micro_batches_in_epoch`).
    """

    micro_batches_per_epoch: tuple[int, ...]
    trained_micro_batches: int = 0
    trained_tokens: int = 0  # valid (non-padding) response tokens of the trained micro-batches
    early_stop_kl: float | None = None  # k3 KL (nats per token) of the last `target_kl` check; None when off
    _pending: tuple[int, int] = (0, 0)  # micro-batches and tokens since the last optimizer step

    @property
    def epochs(self) -> float:
        """Epochs trained: whole ones, plus the trained share of the one a ``target_kl`` stop fell in."""
        remaining, epochs = self.trained_micro_batches, 0.0
        for size in self.micro_batches_per_epoch:
            if remaining < size:
                return epochs + remaining / size
            remaining, epochs = remaining - size, epochs + 1
        return epochs

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
