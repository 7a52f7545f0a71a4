"""Two processes on CPU through `accelerate launch` (gloo): replay + PER + self-imitation + the ESS gate +
`target_kl`, checkpoint of both ranks, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import launch_two_processes

pytestmark = pytest.mark.trl112  # also runs in the TRL 1.12 job


def launch(models_dir: Path, output_dir: Path, mode: str) -> dict:
    return launch_two_processes(29517, "tests.distributed.two_process_run", models_dir, output_dir, mode, timeout=120)


def test_two_processes_train_checkpoint_and_resume(tmp_path, tiny_dirs):
    models = tiny_dirs["policy"].parent
    straight = launch(models, tmp_path / "straight", "fresh")
    assert straight["world_size"] == 2 and straight["ranks_equal"]
    assert straight["global_step"] == 12 and straight["episode"] == 96
    rank0, rank1 = straight["buffer_sizes"]
    # The buffers drifted so far that one rank had enough episodes to replay while the other had not.
    assert any((a >= 14) != (b >= 14) for a, b in zip(rank0, rank1, strict=True)), straight["buffer_sizes"]
    assert straight["replayed"] > 0  # ... and replay ran anyway, on both ranks alike (no hang, equal weights)
    # With self-imitation on and the ESS gate collective run at every replay; the ranks skipped alike.
    assert straight["low_ess_skips"][0] == straight["low_ess_skips"][1]
    # `target_kl` stopped some updates early (in their second epoch) and not others; each rank counted its own
    # epochs, and both stopped after the same micro-batch of every update.
    rank0_epochs, rank1_epochs = straight["ppo_epochs"]
    assert rank0_epochs == rank1_epochs and min(rank0_epochs) < 2 == max(rank0_epochs), straight["ppo_epochs"]
    # 10 eval prompts over 2 processes, 8 per batch: each scored once, the padding of the uneven shards dropped.
    assert straight["eval_prompts"] == 10 and straight["eval_reward"] == pytest.approx(
        straight["expected_eval_reward"]
    )
    # A reward function failing on rank 1 only stops both ranks with its message (no rank waits forever).
    assert all("judge down on rank 1" in outcome for outcome in straight["reward_failure"]), straight["reward_failure"]
    checkpoint = tmp_path / "straight" / "checkpoint-8"
    assert (checkpoint / "rank_0.safetensors").is_file() and (checkpoint / "rank_1.safetensors").is_file()
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    assert len(train_records) == 12 and train_records[-1]["buffer/size"] > 0  # rank 0 writes what ranks gathered

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(checkpoint, resumed_dir / "checkpoint-8")
    resumed = launch(models, resumed_dir, "resume")
    assert resumed["ranks_equal"] and resumed["global_step"] == 12
    assert resumed["weights_sum"] == straight["weights_sum"]  # exact resume across both ranks

    # Rank 1's file of the newest checkpoint is damaged: both ranks fall back to checkpoint-4 together.
    damaged_dir = tmp_path / "damaged"
    for step in (4, 8):
        shutil.copytree(tmp_path / "straight" / f"checkpoint-{step}", damaged_dir / f"checkpoint-{step}")
    (damaged_dir / "checkpoint-8" / "rank_1.safetensors").write_bytes(b"not a safetensors file")
    fallback = launch(models, damaged_dir, "resume")
    assert fallback["ranks_equal"] and fallback["global_step"] == 12
    assert fallback["weights_sum"] == straight["weights_sum"]
