"""Rollbacks: a run resumed from an earlier checkpoint trains on a new line; nothing the old line wrote is lost."""

from __future__ import annotations

import json
import logging

import pytest
from safetensors.torch import load_file

from tests.helpers import make_trainer, tiny_config
from trl_replay_ppo.checkpointing.directories import REQUIRED_FILES, latest_checkpoint
from trl_replay_ppo.checkpointing.lineage import ABANDONED_DIR, Lineage, rotate_checkpoints
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
from trl_replay_ppo.tasks.tiny import load_tiny_models

pytestmark = pytest.mark.trl112  # also runs in the TRL 1.12 job


def _stamped(path, run_id, lineage, generation=0):
    path.mkdir()
    for name in REQUIRED_FILES:
        (path / name).write_text("{}")
    stamp = {"run_id": run_id, "lineage": {"id": lineage, "generation": generation, "ancestors": {}}}
    (path / "ppo_state.json").write_text(json.dumps(stamp))


def test_rotation_counts_only_this_line_and_keeps_what_was_just_written(tmp_path, caplog):
    for step in (2, 4, 6, 10):
        _stamped(tmp_path / f"checkpoint-{step}", "run", "A")
    _stamped(tmp_path / "checkpoint-8", "run", "B", generation=1)  # B forked from A's checkpoint-6
    _stamped(tmp_path / "checkpoint-100", "another run", "C")
    (tmp_path / "tmp-checkpoint-12").mkdir()  # a partial write is not rotation's business
    line = Lineage("B", 1, {"A": 6})
    just_written, best = str(tmp_path / "checkpoint-8"), str(tmp_path / "checkpoint-4")
    rotate_checkpoints(str(tmp_path), limit=1, keep=[just_written, best], lineage=line, run_id="run")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-10",  # abandoned by the rollback: never rotated, though it is newer than anything of B's
        "checkpoint-100",  # another run's
        "checkpoint-4",  # the best
        "checkpoint-8",  # just written
        "tmp-checkpoint-12",
    ]
    assert "checkpoints this run did not write (checkpoint-100)" in caplog.text


def test_resume_true_continues_the_newest_line(tmp_path):
    _stamped(tmp_path / "checkpoint-10", "run", "A")
    _stamped(tmp_path / "checkpoint-7", "run", "B", generation=1)
    _stamped(tmp_path / "checkpoint-6", "run", "A")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-7"


def _trainer(tiny_dirs, tmp_path, updates, **overrides):
    args = tiny_config(
        tmp_path, total_episodes=4 * updates, save_strategy="steps", save_steps=1, eval_strategy="no", **overrides
    )
    return make_trainer(
        load_tiny_models(tiny_dirs), args, make_digits_dataset(16), reward_model=None, reward_funcs=digits_reward
    )


def _lineage(path):
    return json.loads((path / "ppo_state.json").read_text())["lineage"]


def test_a_rollback_forks_a_line_that_keeps_every_checkpoint_of_the_old_one(tmp_path, tiny_dirs, caplog):
    out = tmp_path / "out"
    _trainer(tiny_dirs, tmp_path, updates=4).train()
    old = _lineage(out / "checkpoint-4")
    old_weights = {step: load_file(out / f"checkpoint-{step}/trainable_params.safetensors") for step in (3, 4)}

    with caplog.at_level(logging.WARNING):  # roll back to update 2, with a limit that once deleted its own save
        _trainer(tiny_dirs, tmp_path, updates=3, save_total_limit=1).train(
            resume_from_checkpoint=str(out / "checkpoint-2")
        )
    assert "went on to checkpoint-3, checkpoint-4" in caplog.text
    new = _lineage(out / "checkpoint-3")
    assert new["id"] != old["id"] and new["generation"] == 1 and new["ancestors"] == {old["id"]: 2}
    abandoned = out / ABANDONED_DIR / old["id"]
    assert sorted(p.name for p in abandoned.iterdir()) == ["checkpoint-3"]  # moved out of the new save's way
    assert (out / "checkpoint-4").is_dir() and _lineage(out / "checkpoint-4") == old  # kept, not rotated
    assert not (out / "checkpoint-1").exists() and not (out / "checkpoint-2").exists()  # this line's, rotated
    moved = load_file(abandoned / "checkpoint-3/trainable_params.safetensors")
    assert all(moved[k].equal(v) for k, v in old_weights[3].items())  # the moved copy is whole
    redone = load_file(out / "checkpoint-3/trainable_params.safetensors")
    assert all(redone[k].equal(v) for k, v in old_weights[3].items())  # and the new line retraced it exactly

    caplog.clear()
    trainer = _trainer(tiny_dirs, tmp_path, updates=4)
    with caplog.at_level(logging.INFO):
        trainer.train(resume_from_checkpoint=True)  # continues the new line (from its 3), not the old line's 4
    assert f"Resumed from {out / 'checkpoint-3'} at update 3" in caplog.text
    assert _lineage(out / "checkpoint-4")["id"] == new["id"]
    assert sorted(p.name for p in abandoned.iterdir()) == ["checkpoint-3", "checkpoint-4"]
