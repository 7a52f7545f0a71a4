"""Nothing already written is lost: one run per output directory, no fresh run over another's checkpoints,
a re-saved checkpoint always whole, a metrics file rewritten atomically and torn lines set aside."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

import trl_replay_ppo.checkpointing.directories as directories
from tests.helpers import make_trainer, tiny_config
from trl_replay_ppo import CheckpointWriteError, OutputDirInUseError, StateFileError
from trl_replay_ppo.checkpointing.directories import replace_directory
from trl_replay_ppo.checkpointing.ownership import LOCK_FILE, OutputDirLock
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
from trl_replay_ppo.tasks.tiny import load_tiny_models

pytestmark = pytest.mark.trl112  # also runs in the TRL 1.12 job


def _trainer(tiny, tmp_path, **overrides):
    args = tiny_config(tmp_path, **{"total_episodes": 8, "save_strategy": "steps", "save_steps": 1, **overrides})
    return make_trainer(tiny, args, make_digits_dataset(8), reward_model=None, reward_funcs=digits_reward)


def _snapshot(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _no_generation(trainer):
    def refuse(*args, **kwargs):
        raise AssertionError("generated before refusing")

    trainer.runner.generate = refuse


def test_a_second_run_on_a_held_output_dir_is_refused_naming_the_holder(tmp_path, tiny):
    holder = OutputDirLock(tmp_path / "out")
    assert holder.acquire() is None
    holder.announce()
    trainer = _trainer(tiny, tmp_path)
    _no_generation(trainer)
    with pytest.raises(OutputDirInUseError, match=r"out is in use by another run \(host .*, pid \d+, since"):
        trainer.train()
    assert not list((tmp_path / "out").glob("checkpoint-*"))
    holder.release()
    trainer = _trainer(tiny, tmp_path)
    trainer.train()  # free again: the run takes the directory, and gives it back at the end
    assert OutputDirLock(tmp_path / "out").acquire() is None
    assert (tmp_path / "out" / LOCK_FILE).is_file()


def test_the_lock_is_given_back_when_training_fails(tmp_path, tiny):
    trainer = _trainer(tiny, tmp_path)

    def failing(*args, **kwargs):
        raise ConnectionError("judge down")

    trainer.scorer.reward_funcs = [failing]
    with pytest.raises(Exception, match="judge down"):
        trainer.train()
    assert OutputDirLock(tmp_path / "out").acquire() is None


@pytest.mark.parametrize("resume", [None, False])
def test_a_fresh_run_never_starts_over_another_runs_checkpoints(tmp_path, tiny, resume):
    _trainer(tiny, tmp_path).train()
    before = _snapshot(tmp_path / "out")
    trainer = _trainer(tiny, tmp_path)
    _no_generation(trainer)
    with pytest.raises(OutputDirInUseError, match=r"holds checkpoints of another run \(checkpoint-2, checkpoint-1\)"):
        trainer.train(resume_from_checkpoint=resume)
    assert _snapshot(tmp_path / "out") == before  # every file as it was, metrics included


def test_a_run_that_saves_nothing_or_resumes_may_use_the_directory(tmp_path, tiny):
    _trainer(tiny, tmp_path).train()
    _trainer(tiny, tmp_path, save_strategy="no").train()
    resumed = _trainer(tiny, tmp_path, total_episodes=12)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 3


def test_a_resaved_checkpoint_is_whole_at_every_instant(tmp_path, monkeypatch):
    target, new = tmp_path / "checkpoint-2", tmp_path / "tmp-checkpoint-2"
    for directory, text in ((target, "old"), (new, "new")):
        directory.mkdir()
        (directory / "state.json").write_text(text)

    def killed(path, *args, **kwargs):  # a kill right after the swap: the old copy is not removed yet
        raise KeyboardInterrupt

    monkeypatch.setattr(directories.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        replace_directory(new, target)
    assert (target / "state.json").read_text() == "new" and (new / "state.json").read_text() == "old"
    monkeypatch.setattr(directories.shutil, "rmtree", shutil.rmtree)
    replace_directory(new, tmp_path / "checkpoint-4")  # no old copy: a plain rename
    assert (tmp_path / "checkpoint-4" / "state.json").read_text() == "old" and not new.exists()


def test_without_an_atomic_exchange_the_old_copy_stays_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    target, new = tmp_path / "checkpoint-2", tmp_path / "tmp-checkpoint-2"
    for directory, text in ((target, "old"), (new, "new")):
        directory.mkdir()
        (directory / "state.json").write_text(text)
    monkeypatch.setattr(directories, "_exchange", lambda a, b: False)
    replace_directory(new, target)
    assert (target / "state.json").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-2"
    ]


def test_a_torn_metrics_line_is_set_aside_and_the_file_rewritten_whole(tmp_path, tiny, caplog):
    _trainer(tiny, tmp_path).train()
    out = tmp_path / "out"
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines) + '\n{"step": 3, "episo')  # a kill cut the last write short
    shutil.rmtree(out / "checkpoint-2")  # resume from step 1: step 2's line is superseded
    resumed = _trainer(tiny, tmp_path)
    resumed.train(resume_from_checkpoint=True)
    assert (out / "metrics.unreadable.jsonl").read_text() == '{"step": 3, "episo\n'
    assert "1 line(s) that are not metric records" in caplog.text
    assert [json.loads(line)["step"] for line in (out / "metrics.superseded.jsonl").read_text().splitlines()] == [2]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [1, 2] and not (out / "metrics.jsonl.tmp").exists()


def test_archived_metrics_files_never_overwrite_each_other(tmp_path, tiny):
    from trl_replay_ppo.integrations.callbacks import _unused_name

    contents = []
    for _ in range(3):  # runs a second or less apart
        _trainer(tiny, tmp_path, save_strategy="no").train()
        contents.append((tmp_path / "out" / "metrics.jsonl").read_text())
    archived = {p.read_text() for p in (tmp_path / "out").glob("metrics.*.jsonl")}
    assert archived == set(contents[:2])  # both earlier files kept, whatever their start seconds
    (tmp_path / "metrics.7.jsonl").touch()
    (tmp_path / "metrics.7.1.jsonl").touch()
    assert _unused_name(tmp_path / "metrics.7.jsonl").name == "metrics.7.2.jsonl"


def _directory_bytes(directory) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_a_really_full_disk_is_a_checkpoint_write_error_and_the_earlier_checkpoint_stays(tmp_path, tiny, tiny_dirs):
    _trainer(tiny, tmp_path / "sizing").train()
    one_checkpoint = _directory_bytes(tmp_path / "sizing" / "out" / "checkpoint-1")
    disk = tmp_path / "disk"
    disk.mkdir()
    size_kib = (one_checkpoint * 3 // 2) // 1024 + 64  # room for one checkpoint and the logs, not for two
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(disk)], check=True)
    try:
        trainer = _trainer(load_tiny_models(tiny_dirs), tmp_path, output_dir=str(disk / "out"))
        with pytest.raises(CheckpointWriteError, match=r"checkpoint-2 \(\w+Error: .*No space left on device"):
            trainer.train()
        out = disk / "out"
        assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-1"]  # no partial left
        shutil.copytree(out / "checkpoint-1", tmp_path / "copy" / "checkpoint-1")
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)
    resumed = _trainer(load_tiny_models(tiny_dirs), tmp_path, output_dir=str(tmp_path / "copy"), save_strategy="no")
    resumed.train(resume_from_checkpoint=True)  # the earlier checkpoint is whole
    assert resumed.state.global_step == 2


def test_damage_a_parser_cannot_reach_and_a_renamed_step_are_named(tmp_path, tiny, tiny_dirs):
    _trainer(tiny, tmp_path).train()
    out = tmp_path / "out"
    (out / "checkpoint-2" / "ppo_state.json").write_text("[" * 100_000 + "]" * 100_000)  # past the parser's depth
    shutil.copytree(out / "checkpoint-1", out / "checkpoint-3")  # a step-1 checkpoint under step 3's name
    resumed = _trainer(load_tiny_models(tiny_dirs), tmp_path, total_episodes=12)
    with pytest.raises(StateFileError, match=r"checkpoint-3/trainer_state.json is at update 1, not the directory"):
        resumed.train(resume_from_checkpoint=str(out / "checkpoint-3"))
    with pytest.raises(StateFileError, match=r"checkpoint-2/ppo_state.json is not a valid checkpoint file"):
        resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    shutil.rmtree(out / "checkpoint-3")
    resumed.train(resume_from_checkpoint=True)  # the newest intact one: checkpoint-1, checkpoint-2 skipped
    assert resumed.state.global_step == 3


def test_a_symlinked_checkpoint_still_resumes(tmp_path, tiny, tiny_dirs):
    _trainer(tiny, tmp_path).train()
    link = tmp_path / "latest"
    link.symlink_to(tmp_path / "out" / "checkpoint-2", target_is_directory=True)
    resumed = _trainer(load_tiny_models(tiny_dirs), tmp_path, total_episodes=12)
    resumed.train(resume_from_checkpoint=str(link))
    assert resumed.state.global_step == 3
