"""A sum tree over non-negative leaf values: O(log N) updates and proportional sampling, vectorised."""

from __future__ import annotations

import numpy as np


class SumTree:
    """Binary tree in an array: node ``i`` holds ``tree[2i] + tree[2i+1]``; leaves start at ``size``.

    ``update`` and ``find`` take arrays of k indices / prefix sums and cost O(k log N) numpy work.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.size = 1 << max(0, (capacity - 1).bit_length())
        self.tree = np.zeros(2 * self.size, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def leaves(self, indices: np.ndarray | None = None) -> np.ndarray:
        """Leaf values at ``indices`` (all leaves when None)."""
        leaves = self.tree[self.size : self.size + self.capacity]
        return leaves if indices is None else leaves[indices]

    def update(self, indices: np.ndarray, values: np.ndarray) -> None:
        """Set leaves ``indices`` to ``values`` and refresh their ancestors."""
        nodes = np.asarray(indices, dtype=np.int64) + self.size
        self.tree[nodes] = values
        nodes = np.unique(nodes >> 1)
        while nodes[0] >= 1:
            self.tree[nodes] = self.tree[2 * nodes] + self.tree[2 * nodes + 1]
            if nodes[0] == 1:
                break
            nodes = np.unique(nodes >> 1)

    def rebuild(self) -> None:
        """Recompute every inner node from the leaves (clears accumulated rounding)."""
        for level_start in (self.size >> s for s in range(1, self.size.bit_length())):
            nodes = np.arange(level_start, 2 * level_start)
            self.tree[nodes] = self.tree[2 * nodes] + self.tree[2 * nodes + 1]

    def find(self, prefix_sums: np.ndarray) -> np.ndarray:
        """Leaf index ``i`` for each value ``v`` in [0, total): the first leaf whose cumulative sum exceeds ``v``."""
        values = np.asarray(prefix_sums, dtype=np.float64).copy()
        nodes = np.ones(values.shape, dtype=np.int64)
        while nodes[0] < self.size:
            left = self.tree[2 * nodes]
            go_right = values >= left
            values -= left * go_right
            nodes = 2 * nodes + go_right
        return nodes - self.size
