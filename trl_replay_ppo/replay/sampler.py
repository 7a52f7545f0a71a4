"""Samplers: which stored episodes are replayed, and with which importance weights.

Both samplers read the storage (``valid`` slots, the ``version`` each episode was generated at)
rather than keeping copies of it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from trl_replay_ppo.replay.storage import SCHEMA_VERSION, EpisodeStorage, check_schema
from trl_replay_ppo.replay.sumtree import SumTree

PRIORITY_EPS = 1e-6  # keeps every stored episode sampleable, whatever its advantage


class Sampler(ABC):
    """The contract between a `ReplayBuffer` and a sampler: ``sample`` draws, the rest keep it informed.

    The buffer calls ``add`` after writing episodes, ``remove`` after evicting or overwriting them,
    ``update_priorities`` with new (finite) priorities; a sampler that keeps no state of its own
    needs none of them.
    """

    def add(self, storage: EpisodeStorage, slots: np.ndarray, priorities: np.ndarray) -> None:  # noqa: B027
        """Episodes were just written to ``slots`` with these (finite) priorities (default: nothing to do)."""

    def remove(self, slots: np.ndarray) -> None:  # noqa: B027
        """The episodes of ``slots`` were evicted or overwritten (default: nothing to do)."""

    def update_priorities(  # noqa: B027
        self, storage: EpisodeStorage, slots: np.ndarray, priorities: np.ndarray
    ) -> None:
        """New (finite) priorities for stored episodes (default: ignored)."""

    @abstractmethod
    def sample(
        self, storage: EpisodeStorage, n: int, rng: np.random.Generator, beta: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """``n`` slots and their importance weights (expectation 1 under the sampling distribution)."""

    def mean_priority(self, storage: EpisodeStorage) -> float | None:
        """Mean priority of the stored episodes; None when the sampler has no priorities."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION}

    def check_state_dict(self, state: dict[str, Any], valid: np.ndarray) -> None:  # noqa: B027
        """Refuse an inconsistent saved state (``valid``: the saved storage's occupied slots); default: none kept."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_schema(state, type(self).__name__)


class UniformSampler(Sampler):
    """Uniform sampling without replacement over the stored episodes; every weight is 1 (it is unbiased).

    The storage's ``valid`` slots are the population, so it keeps no state of its own.
    """

    def sample(
        self, storage: EpisodeStorage, n: int, rng: np.random.Generator, beta: float
    ) -> tuple[np.ndarray, np.ndarray]:
        slots = np.flatnonzero(storage.valid)
        if n > len(slots):
            raise ValueError(f"Cannot draw {n} distinct episodes from a storage holding {len(slots)}.")
        return slots[rng.choice(len(slots), size=n, replace=False)], np.ones(n)


class PrioritizedSampler(Sampler):
    """Proportional prioritized sampling with replacement (Schaul et al. 2016), with staleness-aware keys.

    An episode's sampling key is ``((p + eps) * decay ** age) ** alpha``: ``p`` is its priority,
    ``age`` the number of updates since it was generated. As every episode ages by one per update,
    the common factor cancels out of the probabilities; the tree stores
    ``(p + eps) ** alpha * decay ** (-alpha * (version - base))`` and is re-based (O(N)) only when that
    factor grows large. Draws are stratified (one per equal slice of the total mass) and may repeat
    an episode, which then counts twice; with expected counts proportional to ``P(i)`` the weights
    ``(N * P(i)) ** -beta`` make the replayed rows unbiased at ``beta = 1`` (N: the episodes that can be
    drawn; one whose key underflows to 0, with a tiny ``decay`` and a great age, cannot). Weights are divided by
    their expectation under the sampling distribution (exactly 1 at ``beta = 1``), a constant of the
    buffer rather than of the draw: a batch-dependent normaliser (the batch maximum, or mean) would
    bias the shares again and let one low-priority row shrink every other row's weight. Sampling and
    priority updates cost O(n log N), plus O(N) numpy for that constant.
    """

    REBASE_LOG_FACTOR = 30.0  # rebase when stored factors could exceed e^30

    def __init__(self, capacity: int, alpha: float, decay: float):
        self.capacity, self.alpha, self.decay = capacity, alpha, decay
        self.tree = SumTree(capacity)
        self.priority = np.zeros(capacity, dtype=np.float64)  # raw priorities, for statistics
        self.base = 0

    @property
    def _growth(self) -> float:
        return -self.alpha * math.log(self.decay) if self.decay < 1 else 0.0

    def _keys(self, storage: EpisodeStorage, slots: np.ndarray) -> np.ndarray:
        age_factor = np.exp(self._growth * (storage.version[slots] - self.base))
        keys: np.ndarray = (self.priority[slots] + PRIORITY_EPS) ** self.alpha * age_factor
        return keys

    def _maybe_rebase(self, storage: EpisodeStorage, version: int) -> None:
        if self._growth * (version - self.base) <= self.REBASE_LOG_FACTOR:
            return
        self.base = version
        slots = np.flatnonzero(storage.valid)
        leaves = np.zeros(self.capacity)
        leaves[slots] = self._keys(storage, slots)
        self.tree.update(np.arange(self.capacity), leaves)
        self.tree.rebuild()

    def add(self, storage: EpisodeStorage, slots: np.ndarray, priorities: np.ndarray) -> None:
        self.update_priorities(storage, slots, priorities)  # a new episode's key is set like an updated one

    def remove(self, slots: np.ndarray) -> None:
        slots = np.asarray(slots, dtype=np.int64)
        if len(slots):
            self.priority[slots] = 0.0
            self.tree.update(slots, np.zeros(len(slots)))

    def update_priorities(self, storage: EpisodeStorage, slots: np.ndarray, priorities: np.ndarray) -> None:
        slots = np.asarray(slots, dtype=np.int64)
        if not len(slots):
            return
        self._maybe_rebase(storage, int(storage.version[slots].max()))
        self.priority[slots] = priorities
        self.tree.update(slots, self._keys(storage, slots))

    def sample(
        self, storage: EpisodeStorage, n: int, rng: np.random.Generator, beta: float
    ) -> tuple[np.ndarray, np.ndarray]:
        total, count = self.tree.total, len(storage)
        if count == 0 or not total > 0:
            raise ValueError(f"Cannot draw from a storage holding {count} episodes (total priority mass {total}).")
        bounds = np.linspace(0.0, total, n + 1)
        draws = rng.uniform(bounds[:-1], bounds[1:]).clip(0.0, np.nextafter(total, 0.0))
        slots = self.tree.find(draws)
        empty = self.tree.leaves(slots) <= 0  # a draw on a slice boundary can land on a freed slot by rounding
        while empty.any():
            slots[empty] = self.tree.find(rng.uniform(0.0, total, size=int(empty.sum())))
            empty = self.tree.leaves(slots) <= 0
        stored = self.tree.leaves()[storage.valid] / total  # O(N), once per draw
        stored = stored[stored > 0]  # episodes whose key underflowed (a tiny decay, very old) are never drawn
        weights = (len(stored) * self.tree.leaves(slots) / total) ** (-beta)
        expected = float(np.sum(stored * (len(stored) * stored) ** (-beta)))
        return slots, weights / expected

    def mean_priority(self, storage: EpisodeStorage) -> float | None:
        return float(self.priority[storage.valid].mean()) if storage.valid.any() else None

    def state_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "priority": self.priority.copy(),
            "base": self.base,
            "leaves": self.tree.leaves().copy(),
        }

    def check_state_dict(self, state: dict[str, Any], valid: np.ndarray) -> None:
        """Priorities and sampling keys non-negative, and zero exactly where no episode is stored."""
        for name in ("priority", "leaves"):
            if (state[name] < 0).any() or (state[name][~valid] != 0).any():
                raise ValueError(f"sampler {name} negative, or set for empty slots")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_schema(state, type(self).__name__)
        self.priority = state["priority"].copy()
        self.base = int(state["base"])
        self.tree = SumTree(self.capacity)
        self.tree.update(np.arange(self.capacity), state["leaves"])
        self.tree.rebuild()
