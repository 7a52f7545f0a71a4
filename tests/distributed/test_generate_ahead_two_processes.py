"""`generate_ahead` with two training processes (gloo): each rank samples ahead with its own generator; resume."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.helpers import launch_two_processes


def launch(models_dir: Path, output_dir: Path, mode: str) -> dict:
    return launch_two_processes(29533, "tests.distributed.ahead_run", models_dir, output_dir, mode, timeout=240)


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
