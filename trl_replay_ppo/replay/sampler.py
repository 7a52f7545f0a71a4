"""Samplers over storage slots: uniform, and prioritized (sum tree, staleness-aware)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from trl_replay_ppo.replay.storage import SCHEMA_VERSION, _check_schema
from trl_replay_ppo.replay.sumtree import SumTree

PRIORITY_EPS = 1e-6  # keeps every stored episode sampleable, whatever its advantage


class UniformSampler:
    """Uniform sampling without replacement over the occupied slots, O(k) per draw of k.

    Occupied slots live in a dense array with a position map (swap-remove), so adding, removing
    and sampling never scan the whole buffer.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._slots = np.zeros(capacity, dtype=np.int64)
        self._position = np.full(capacity, -1, dtype=np.int64)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, slots: np.ndarray, priorities: np.ndarray, version: int) -> None:
        for slot in np.asarray(slots).tolist():
            if self._position[slot] < 0:
                self._slots[self._size] = slot
                self._position[slot] = self._size
                self._size += 1

    def remove(self, slots: np.ndarray) -> None:
        for slot in np.asarray(slots).tolist():
            position = self._position[slot]
            if position < 0:
                continue
            last = self._slots[self._size - 1]
            self._slots[position] = last
            self._position[last] = position
            self._position[slot] = -1
            self._size -= 1

    def sample(self, n: int, rng: np.random.Generator, version: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` distinct slots and their importance weights (all 1)."""
        picks = rng.choice(self._size, size=n, replace=False)
        return self._slots[picks], np.ones(n)

    def update_priorities(self, slots: np.ndarray, priorities: np.ndarray, version: int) -> None:
        """Uniform sampling ignores priorities."""

    def mean_priority(self) -> float:
        return math.nan

    def state_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "slots": self._slots[: self._size].copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_schema(state, type(self).__name__)
        self.__init__(self.capacity)
        self.add(state["slots"], np.zeros(len(state["slots"])), 0)


class PrioritizedSampler:
    """Proportional prioritized sampling (Schaul et al. 2016) with staleness-aware priorities.

    An episode's sampling weight is ``(p * decay ** age) ** alpha``: ``p`` is its priority (mean
    |advantage| at its last use), ``age`` the number of updates since it was generated. Since
    every episode ages by one per update, the common factor ``decay ** (alpha * now)`` cancels
    out of the probabilities; the tree stores ``p ** alpha * decay ** (alpha * (version - base))``
    and is re-based (O(N)) only when that factor grows large. Sampling and priority updates are
    O(k log N). Importance weights are ``(N * P(i)) ** -beta`` divided by the batch maximum.
    """

    REBASE_LOG_FACTOR = 30.0  # rebase when stored factors could exceed e^30

    def __init__(self, capacity: int, alpha: float, beta: float, decay: float):
        self.capacity = capacity
        self.alpha = alpha
        self.beta = beta
        self.decay = decay
        self.tree = SumTree(capacity)
        self.priority = np.zeros(capacity, dtype=np.float64)  # raw priorities, for statistics
        self.born = np.zeros(capacity, dtype=np.int64)
        self.occupied = np.zeros(capacity, dtype=bool)
        self.base = 0

    def __len__(self) -> int:
        return int(self.occupied.sum())

    def _keys(self, slots: np.ndarray) -> np.ndarray:
        growth = -self.alpha * math.log(self.decay) if self.decay < 1 else 0.0
        return (self.priority[slots] + PRIORITY_EPS) ** self.alpha * np.exp(growth * (self.born[slots] - self.base))

    def _maybe_rebase(self, version: int) -> None:
        growth = -self.alpha * math.log(self.decay) if self.decay < 1 else 0.0
        if growth * (version - self.base) > self.REBASE_LOG_FACTOR:
            self.base = version
            slots = np.flatnonzero(self.occupied)
            leaves = np.zeros(self.capacity)
            leaves[slots] = self._keys(slots)
            self.tree.update(np.arange(self.capacity), leaves)
            self.tree.rebuild()

    def add(self, slots: np.ndarray, priorities: np.ndarray, version: int) -> None:
        self._maybe_rebase(version)
        slots = np.asarray(slots, dtype=np.int64)
        self.priority[slots] = priorities
        self.born[slots] = version
        self.occupied[slots] = True
        self.tree.update(slots, self._keys(slots))

    def remove(self, slots: np.ndarray) -> None:
        slots = np.asarray(slots, dtype=np.int64)
        if len(slots):
            self.occupied[slots] = False
            self.tree.update(slots, np.zeros(len(slots)))

    def update_priorities(self, slots: np.ndarray, priorities: np.ndarray, version: int) -> None:
        """Set new priorities (e.g. mean |advantage| recomputed at this use); the one entry point for them."""
        self._maybe_rebase(version)
        slots = np.asarray(slots, dtype=np.int64)
        self.priority[slots] = priorities
        self.tree.update(slots, self._keys(slots))

    def sample(self, n: int, rng: np.random.Generator, version: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` distinct slots drawn proportionally to their keys, and normalised IS weights.

        Stratified draws (one per equal slice of the total); slots drawn twice are set aside and
        the shortfall is redrawn from the rest, so the result has no duplicates.
        """
        total, count = self.tree.total, len(self)
        chosen: list[int] = []
        probabilities: list[float] = []
        held: list[tuple[np.ndarray, np.ndarray]] = []
        while len(chosen) < n:
            missing = n - len(chosen)
            mass = self.tree.total
            bounds = np.linspace(0.0, mass, missing + 1)
            draws = rng.uniform(bounds[:-1], bounds[1:]).clip(0.0, np.nextafter(mass, 0.0))
            slots = np.unique(self.tree.find(draws))
            slots = slots[self.tree.leaves(slots) > 0][:missing]
            leaves = self.tree.leaves(slots).copy()
            chosen.extend(slots.tolist())
            probabilities.extend((leaves / total).tolist())
            held.append((slots, leaves))
            self.tree.update(slots, np.zeros(len(slots)))  # without replacement: set aside while drawing
        for slots, leaves in held:
            self.tree.update(slots, leaves)
        weights = (count * np.asarray(probabilities)) ** (-self.beta)
        return np.asarray(chosen, dtype=np.int64), weights / weights.max()

    def mean_priority(self) -> float:
        slots = np.flatnonzero(self.occupied)
        return float(self.priority[slots].mean()) if len(slots) else math.nan

    def state_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "priority": self.priority.copy(),
            "born": self.born.copy(),
            "occupied": self.occupied.copy(),
            "base": self.base,
            "beta": self.beta,
            "leaves": self.tree.leaves().copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_schema(state, type(self).__name__)
        self.priority = state["priority"].copy()
        self.born = state["born"].copy()
        self.occupied = state["occupied"].copy()
        self.base = int(state["base"])
        self.beta = float(state["beta"])
        self.tree = SumTree(self.capacity)
        self.tree.update(np.arange(self.capacity), state["leaves"])
        self.tree.rebuild()
