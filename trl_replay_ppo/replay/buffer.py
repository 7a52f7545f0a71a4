"""`ReplayBuffer`: a storage, a sampler and an eviction policy, composed."""

from __future__ import annotations

from typing import Any

import numpy as np

from trl_replay_ppo.replay.eviction import EvictionPolicy
from trl_replay_ppo.replay.sampler import Sampler
from trl_replay_ppo.replay.storage import SCHEMA_VERSION, Episode, EpisodeStorage, check_schema


class ReplayBuffer:
    """Episodes kept for replay, with their statistics.

    ``add`` stores episodes after their first (fresh) use, ``sample`` draws episodes with importance
    weights, ``update_priorities`` is the one way priorities change, ``evict`` applies the eviction
    policy. A priority that is not finite is never stored: a new episode with one is not kept, a
    stored one keeps its previous priority; both are counted in ``nonfinite_priorities``. Every
    piece has ``state_dict``/``load_state_dict``, and so does the buffer (including its sampling
    RNG), so a checkpoint restores it exactly.
    """

    def __init__(self, storage: EpisodeStorage, sampler: Sampler, eviction: EvictionPolicy, seed: int = 0):
        self.storage = storage
        self.sampler = sampler
        self.eviction = eviction
        self.rng = np.random.default_rng(seed)
        self.evicted = {"stale": 0, "reuse": 0, "fifo": 0}
        self.nonfinite_priorities = 0

    def __len__(self) -> int:
        return len(self.storage)

    def _finite(self, priorities: np.ndarray) -> np.ndarray:
        finite = np.isfinite(np.asarray(priorities, dtype=np.float64))
        self.nonfinite_priorities += int((~finite).sum())
        return finite

    def add(self, episodes: list[Episode], priorities: np.ndarray, version: int) -> np.ndarray:
        """Store ``episodes`` generated at ``version``; returns the slots written."""
        keep = self._finite(priorities)
        slots, overwritten = self.storage.add([e for e, k in zip(episodes, keep, strict=True) if k], version)
        self.sampler.remove(overwritten)
        self.evicted["fifo"] += len(overwritten)
        self.sampler.add(self.storage, slots, np.asarray(priorities)[keep])
        return slots

    def sample(self, n: int, beta: float = 1.0) -> tuple[np.ndarray, list[Episode], np.ndarray]:
        """``(slots, episodes, importance weights)`` of ``n`` replayed rows."""
        slots, weights = self.sampler.sample(self.storage, n, self.rng, beta)
        return slots, self.storage.get(slots), weights

    def mark_replayed(self, slots: np.ndarray) -> None:
        np.add.at(self.storage.replays, slots, 1)

    def update_priorities(self, slots: np.ndarray, priorities: np.ndarray) -> None:
        keep = self._finite(priorities)
        slots, priorities = np.asarray(slots)[keep], np.asarray(priorities)[keep]
        present = self.storage.valid[slots]  # a slot may have been overwritten since it was sampled
        self.sampler.update_priorities(self.storage, slots[present], priorities[present])

    def evict(self, version: int) -> None:
        stale, reused = self.eviction.select(self.storage, version)
        for name, slots in (("stale", stale), ("reuse", reused)):
            self.storage.remove(slots)
            self.sampler.remove(slots)
            self.evicted[name] += len(slots)

    def stats(self, version: int) -> dict[str, float]:
        """``buffer/*`` metrics: size, mean age (updates), mean replay count, evictions, mean priority."""
        valid = self.storage.valid
        size = int(valid.sum())
        stats = {
            "buffer/size": size,
            "buffer/mean_age": float((version - self.storage.version[valid]).mean()) if size else 0.0,
            "buffer/mean_reuse": float(self.storage.replays[valid].mean()) if size else 0.0,
            "buffer/evicted_stale": self.evicted["stale"],
            "buffer/evicted_reuse": self.evicted["reuse"],
            "buffer/evicted_fifo": self.evicted["fifo"],
            "buffer/nonfinite_priorities": self.nonfinite_priorities,
        }
        priority = self.sampler.mean_priority(self.storage)
        if priority is not None:
            stats["buffer/priority_mean"] = priority
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "storage": self.storage.state_dict(),
            "sampler": self.sampler.state_dict(),
            "sampler_type": type(self.sampler).__name__,
            "rng": self.rng.bit_generator.state,
            "evicted": dict(self.evicted),
            "nonfinite_priorities": self.nonfinite_priorities,
        }

    def check_state_dict(self, state: dict[str, Any], vocab_size: int) -> None:
        """Refuse an inconsistent saved buffer (``vocab_size``: token ids must lie below it)."""
        check_schema(state, "ReplayBuffer")
        if state["sampler_type"] != type(self.sampler).__name__:
            raise ValueError(f"the saved buffer used {state['sampler_type']}, this one {type(self.sampler).__name__}")
        self.storage.check_state_dict(state["storage"], vocab_size)
        self.sampler.check_state_dict(state["sampler"], state["storage"]["valid"])
        try:
            np.random.PCG64().state = state["rng"]
        except (TypeError, ValueError, KeyError) as error:
            raise ValueError(f"the sampling RNG state is not a PCG64 state ({error})") from error

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_schema(state, "ReplayBuffer")
        if state["sampler_type"] != type(self.sampler).__name__:
            raise ValueError(f"The saved buffer used {state['sampler_type']}, this one {type(self.sampler).__name__}.")
        self.storage.load_state_dict(state["storage"])
        self.sampler.load_state_dict(state["sampler"])
        self.rng.bit_generator.state = state["rng"]
        self.evicted = dict(state["evicted"])
        self.nonfinite_priorities = int(state["nonfinite_priorities"])
