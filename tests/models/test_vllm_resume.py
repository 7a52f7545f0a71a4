"""Replay with vLLM rollouts trains, and a resumed run generates and trains what the uninterrupted one did."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests.helpers import ROOT, LogRecorder
from tests.models.vllm_helpers import vllm_trainer

pytestmark = pytest.mark.vllm  # CI's vLLM job (`make test-vllm`), one engine per module (and one in a child)

SETTINGS = {
    "total_episodes": 16,
    "save_strategy": "steps",
    "save_steps": 1,
    "use_replay_buffer": True,
    "min_replay_size": 4,
    "replay_sample_size": 4,
}
RESUME = """
from pathlib import Path
from tests.models.vllm_helpers import vllm_trainer
vllm_trainer(Path({tmp!r}), **{settings!r}).train(resume_from_checkpoint={checkpoint!r})
"""


def test_replay_trains_and_a_resumed_run_retraces_the_uninterrupted_one(tmp_path):
    trainer = vllm_trainer(tmp_path, **SETTINGS)
    recorder = LogRecorder()
    trainer.add_callback(recorder)
    trainer.train()
    train_logs = [logs for logs in recorder.logs if "objective/scores" in logs]
    assert sum(logs.get("replay/episodes", 0) for logs in train_logs) > 0  # replayed vLLM episodes trained on
    assert all("vllm/is_weight_mean" in logs for logs in train_logs)
    out = tmp_path / "out"
    script = RESUME.format(tmp=str(tmp_path), settings=SETTINGS, checkpoint=str(out / "checkpoint-2"))
    # The engine set this process's distributed variables (RANK, MASTER_PORT...): the child is a fresh single process.
    launch = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launch}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    uninterrupted = next((out / "abandoned").iterdir()) / "checkpoint-4"  # the rollback moved the first run's aside
    first, resumed = (load_file(p / "trainable_params.safetensors") for p in (uninterrupted, out / "checkpoint-4"))
    assert first.keys() == resumed.keys()
    assert all(first[k].equal(resumed[k]) for k in first)  # bitwise: seeded requests, same weights, same kernels
