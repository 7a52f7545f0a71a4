"""Schedules for replay parameters that change over training (e.g. the prioritized-replay exponent beta)."""

from __future__ import annotations


class LinearSchedule:
    """``start`` at step 0, moving linearly to ``end`` at ``steps``, constant after."""

    def __init__(self, start: float, end: float, steps: int):
        self.start, self.end, self.steps = start, end, max(1, steps)

    def __call__(self, step: int) -> float:
        progress = min(1.0, max(0.0, step / self.steps))
        return self.start + (self.end - self.start) * progress
