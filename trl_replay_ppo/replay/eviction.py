"""`EvictionPolicy`: which stored episodes are too old or too reused to be replayed again."""

from __future__ import annotations

import numpy as np

from trl_replay_ppo.replay.storage import EpisodeStorage


class EvictionPolicy:
    """Evicts an episode generated more than ``staleness_threshold`` updates ago, or replayed ``max_reuse`` times.

    (Capacity is the storage's concern: its ring overwrites the oldest episode, FIFO.)
    """

    def __init__(self, staleness_threshold: int, max_reuse: int):
        self.staleness_threshold = staleness_threshold
        self.max_reuse = max_reuse

    def select(self, storage: EpisodeStorage, version: int) -> tuple[np.ndarray, np.ndarray]:
        """Slots to evict at ``version``: ``(too old, too reused)``, disjoint."""
        stale = storage.valid & (version - storage.version > self.staleness_threshold)
        reused = storage.valid & ~stale & (storage.replays >= self.max_reuse)
        return np.flatnonzero(stale), np.flatnonzero(reused)
