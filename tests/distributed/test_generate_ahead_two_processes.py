"""`generate_ahead` with two training processes (gloo): each rank samples ahead with its own generator; resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.helpers import ROOT, two_process_command


def launch(models_dir: Path, output_dir: Path, mode: str) -> dict:
    command = two_process_command(29533, "tests.distributed.ahead_run", str(models_dir), str(output_dir), mode)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((output_dir / f"summary-{mode}.json").read_text())


def test_two_processes_sample_ahead_and_resume_exactly(tmp_path, tiny_dirs):
    models = tiny_dirs["policy"].parent
    straight = launch(models, tmp_path / "straight", "fresh")
    assert straight["world_size"] == 2 and straight["global_step"] == 6
    rank0, rank1 = straight["weights_sums"]
    assert rank0 == rank1  # the ranks' own generators fed one DDP update
    assert straight["staleness"] == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert straight["generators_stopped"] == [True, True]

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "straight" / "checkpoint-3", resumed_dir / "checkpoint-3")
    resumed = launch(models, resumed_dir, "resume")
    assert resumed["global_step"] == 6 and resumed["weights_sums"] == straight["weights_sums"]
    assert resumed["staleness"][3:] == [1.0, 1.0, 1.0]  # update 4's batch came from the checkpoint
