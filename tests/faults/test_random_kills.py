"""A run SIGKILLed at random moments and resumed each time ends bitwise equal to an uninterrupted one."""

from __future__ import annotations

import pytest

from benchmarks.fault_injection import run_with_kills

pytestmark = pytest.mark.faults  # CI's fault job (`make test-faults`)


def test_random_kills_resume_to_identical_weights(tmp_path):
    # run_with_kills itself asserts that every restart resumed from the newest complete checkpoint.
    result = run_with_kills(tmp_path, kills=3, updates=12, seed=1)
    assert result["kills"] == 3
    assert result["bitwise_equal"]
