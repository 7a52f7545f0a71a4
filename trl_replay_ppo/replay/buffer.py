"""`ReplayBuffer`: a storage, a sampler and an eviction policy, composed."""

from __future__ import annotations

from typing import Any

import numpy as np

from trl_replay_ppo.replay.eviction import EvictionPolicy
from trl_replay_ppo.replay.sampler import PrioritizedSampler, UniformSampler
from trl_replay_ppo.replay.storage import SCHEMA_VERSION, Episode, EpisodeStorage, _check_schema


class ReplayBuffer:
    """Episodes kept for replay, with their statistics.

    ``add`` stores episodes after their first (fresh) use, ``sample`` draws distinct episodes with
    importance weights, ``update_priorities`` is the one way priorities change, ``evict`` applies the
    eviction policy. Every piece has ``state_dict``/``load_state_dict``, and so does the buffer
    (including its sampling RNG), so a checkpoint restores it exactly.
    """

    def __init__(
        self,
        storage: EpisodeStorage,
        sampler: UniformSampler | PrioritizedSampler,
        eviction: EvictionPolicy,
        seed: int = 0,
    ):
        self.storage = storage
        self.sampler = sampler
        self.eviction = eviction
        self.rng = np.random.default_rng(seed)
        self.evicted = {"stale": 0, "reuse": 0, "fifo": 0}

    def __len__(self) -> int:
        return len(self.storage)

    def add(self, episodes: list[Episode], priorities: np.ndarray, version: int) -> np.ndarray:
        slots, overwritten = self.storage.add(episodes, version)
        self.sampler.remove(overwritten)
        self.evicted["fifo"] += len(overwritten)
        self.sampler.add(slots, priorities, version)
        return slots

    def sample(self, n: int, version: int) -> tuple[np.ndarray, list[Episode], np.ndarray]:
        """``(slots, episodes, importance weights)`` of ``n`` distinct stored episodes."""
        if n > len(self):
            raise ValueError(f"Cannot sample {n} episodes from a replay buffer holding {len(self)}.")
        slots, weights = self.sampler.sample(n, self.rng, version)
        return slots, self.storage.get(slots), weights

    def mark_replayed(self, slots: np.ndarray) -> None:
        np.add.at(self.storage.replays, slots, 1)

    def update_priorities(self, slots: np.ndarray, priorities: np.ndarray, version: int) -> None:
        self.sampler.update_priorities(slots, priorities, version)

    def evict(self, version: int) -> None:
        stale, reused = self.eviction.select(self.storage, version)
        for name, slots in (("stale", stale), ("reuse", reused)):
            self.storage.remove(slots)
            self.sampler.remove(slots)
            self.evicted[name] += len(slots)

    def stats(self, version: int) -> dict[str, float]:
        """``buffer/*`` metrics: size, mean age (updates), mean replay count, eviction counts, mean priority."""
        valid = self.storage.valid
        size = int(valid.sum())
        return {
            "buffer/size": size,
            "buffer/mean_age": float((version - self.storage.version[valid]).mean()) if size else 0.0,
            "buffer/mean_reuse": float(self.storage.replays[valid].mean()) if size else 0.0,
            "buffer/evicted_stale": self.evicted["stale"],
            "buffer/evicted_reuse": self.evicted["reuse"],
            "buffer/evicted_fifo": self.evicted["fifo"],
            "buffer/priority_mean": self.sampler.mean_priority(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "storage": self.storage.state_dict(),
            "sampler": self.sampler.state_dict(),
            "sampler_type": type(self.sampler).__name__,
            "rng": self.rng.bit_generator.state,
            "evicted": dict(self.evicted),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_schema(state, "ReplayBuffer")
        if state["sampler_type"] != type(self.sampler).__name__:
            raise ValueError(
                f"The saved replay buffer used {state['sampler_type']} but this run uses "
                f"{type(self.sampler).__name__}; resume with the same `use_priority_sampling`."
            )
        self.storage.load_state_dict(state["storage"])
        self.sampler.load_state_dict(state["sampler"])
        self.rng.bit_generator.state = state["rng"]
        self.evicted = dict(state["evicted"])
