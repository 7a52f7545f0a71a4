"""`EpisodeStorage`: a fixed-capacity ring of episodes kept on CPU, and the schema of replay state."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from trl_replay_ppo.core.episodes import Episode

SCHEMA_VERSION = 2


def check_schema(state: dict[str, Any], name: str) -> None:
    """Refuse replay state written with another schema version, naming the piece."""
    if state.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"{name} state has schema version {state.get('schema_version')}; this version of trl_replay_ppo reads "
            f"version {SCHEMA_VERSION}."
        )


class EpisodeStorage:
    """Fixed-capacity ring: a new episode takes the next slot, overwriting the oldest when full (FIFO).

    Per slot it also keeps the policy version (update index) the episode was generated at, how
    many times it has been replayed, and whether the slot holds an episode (``valid``); samplers
    read these instead of keeping copies. Slots freed by eviction are marked invalid; the ring
    reuses them when its write position comes round.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"A storage needs a capacity of at least 1 episode; got {capacity}.")
        self.capacity = capacity
        self.episodes: list[Episode | None] = [None] * capacity
        self.version = np.zeros(capacity, dtype=np.int64)
        self.replays = np.zeros(capacity, dtype=np.int64)
        self.valid = np.zeros(capacity, dtype=bool)
        self.cursor = 0

    def __len__(self) -> int:
        return int(self.valid.sum())

    def add(self, episodes: list[Episode], version: int) -> tuple[np.ndarray, np.ndarray]:
        """Store ``episodes`` generated at ``version``; returns ``(slots written, slots overwritten)``."""
        if len(episodes) > self.capacity:
            raise ValueError(f"Cannot add {len(episodes)} episodes to a storage of capacity {self.capacity}.")
        slots = (self.cursor + np.arange(len(episodes))) % self.capacity
        overwritten = slots[self.valid[slots]]
        for slot, episode in zip(slots.tolist(), episodes, strict=True):
            self.episodes[slot] = episode
        self.version[slots] = version
        self.replays[slots] = 0
        self.valid[slots] = True
        self.cursor = int((self.cursor + len(episodes)) % self.capacity)
        return slots, overwritten

    def remove(self, slots: np.ndarray) -> None:
        for slot in np.asarray(slots).tolist():
            self.episodes[slot] = None
        self.valid[slots] = False

    def get(self, slots: np.ndarray) -> list[Episode]:
        return [self.episodes[slot] for slot in np.asarray(slots).tolist()]

    def state_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "capacity": self.capacity,
            "episodes": [None if e is None else {k: _clone(v) for k, v in vars(e).items()} for e in self.episodes],
            "version": self.version.copy(),
            "replays": self.replays.copy(),
            "valid": self.valid.copy(),
            "cursor": self.cursor,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_schema(state, "EpisodeStorage")
        if state["capacity"] != self.capacity:
            raise ValueError(f"The saved storage has capacity {state['capacity']}, this one {self.capacity}.")
        self.episodes = [
            None if e is None else Episode(**{k: _clone(v) for k, v in e.items()}) for e in state["episodes"]
        ]
        self.version = state["version"].copy()
        self.replays = state["replays"].copy()
        self.valid = state["valid"].copy()
        self.cursor = int(state["cursor"])


def _clone(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value
