"""A run SIGKILLed right after each write of a checkpoint save or of its start loses nothing: the restart resumes
from the newest complete checkpoint and ends with the uninterrupted run's weights and metrics."""

from __future__ import annotations

import pytest

from benchmarks.fault_injection import WRITE_STEPS, run_write_steps

pytestmark = pytest.mark.faults  # CI's fault job (`make test-faults`)


def test_a_kill_at_every_write_step_loses_nothing(tmp_path):
    rows = run_write_steps(tmp_path, updates=4)
    assert [row["step"] for row in rows] == list(WRITE_STEPS)
    failed = {row["step"]: [check for check, ok in row.items() if ok is False] for row in rows}
    assert {step: checks for step, checks in failed.items() if checks} == {}
