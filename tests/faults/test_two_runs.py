"""Two training processes on one output directory: the second is refused at once, naming the first; the first
trains on undisturbed."""

from __future__ import annotations

import json
import time

import pytest

from benchmarks.fault_injection import start, wait_for
from trl_replay_ppo.tasks.tiny import build_tiny_models

pytestmark = pytest.mark.faults  # CI's fault job (`make test-faults`)


def test_a_second_process_on_a_held_output_dir_is_refused_naming_the_first(tmp_path):
    models, output = tmp_path / "models", tmp_path / "out"
    build_tiny_models(models)
    first = start(output, models, updates=30)  # checkpoints slowed to 0.2 s each: it runs for a while
    wait_for(first, "RESUMING")
    deadline = time.time() + 120
    while not (output / "checkpoint-1").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert first.poll() is None, "the first run ended before the second could start"
    second = start(output, models, updates=30, capture_errors=True)
    _, errors = second.communicate(timeout=120)
    assert second.returncode != 0
    assert f"OutputDirInUseError: {output} is in use by another run (host " in errors
    assert f"pid {first.pid}, since" in errors
    wait_for(first, "FINISHED")
    first.wait()
    steps = [json.loads(line)["step"] for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31))  # one record per update, none from the refused run
