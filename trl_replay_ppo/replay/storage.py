"""`EpisodeStorage`: a fixed-capacity ring of episodes kept on CPU, and the schema of replay state."""

from __future__ import annotations

import dataclasses
import math
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

    def check_state_dict(self, state: dict[str, Any], vocab_size: int) -> None:
        """A consistent saved ring: cursor inside it, ``valid`` exactly where episodes are, each episode whole."""
        check_schema(state, "EpisodeStorage")
        if state["capacity"] != self.capacity or len(state["episodes"]) != self.capacity:
            raise ValueError(f"the saved storage holds {len(state['episodes'])} slots, this one {self.capacity}")
        if not 0 <= state["cursor"] < self.capacity:
            raise ValueError(f"write position {state['cursor']} outside a ring of {self.capacity}")
        present = np.array([episode is not None for episode in state["episodes"]])
        if not np.array_equal(present, state["valid"]):
            raise ValueError("`valid` does not mark exactly the slots holding an episode")
        for slot, fields in enumerate(state["episodes"]):
            if fields is not None:
                check_episode(fields, vocab_size, f"episode in slot {slot}")

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


def check_episode(fields: Any, vocab_size: int, where: str) -> None:
    """A saved episode (its fields as a dict): token ids inside the vocabulary, per-token tensors of the
    response's length, every number finite."""
    names = [f.name for f in dataclasses.fields(Episode)]
    if not isinstance(fields, dict) or sorted(fields) != sorted(names):
        raise ValueError(f"{where} does not have the fields {names}")
    for name in names:
        value = fields[name]
        if name == "score":
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{where}: score {value!r} is not a finite number")
            continue
        if not isinstance(value, torch.Tensor) or value.dim() != 1:
            raise ValueError(f"{where}: {name} is not a 1-D tensor")
        if name in ("query", "response"):
            if value.is_floating_point() or (
                len(value) and not (0 <= int(value.min()) <= int(value.max()) < vocab_size)
            ):
                raise ValueError(f"{where}: {name} holds token ids outside the vocabulary of {vocab_size}")
        elif not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            raise ValueError(f"{where}: {name} is not finite floating point")
    length = len(fields["response"])
    for name in ("logprobs", "ref_logprobs"):
        if len(fields[name]) != length:
            raise ValueError(f"{where}: {len(fields[name])} {name} for a response of {length} tokens")


def _clone(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value
