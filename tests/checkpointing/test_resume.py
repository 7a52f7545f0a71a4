"""Checkpoints: exact resume, atomic writes, rotation, bad resume requests."""

from __future__ import annotations

import math
import re

import pytest
import torch

from tests.helpers import ROOT, LogRecorder, make_trainer, stop_after, tiny_config
from trl_replay_ppo.checkpointing.directories import latest_checkpoint
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
from trl_replay_ppo.tasks.tiny import load_tiny_models

pytestmark = pytest.mark.trl112  # also runs in the TRL 1.12 job

RESUME_ARGS = {
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 2,
    "num_mini_batches": 2,
    "num_ppo_epochs": 2,
    "total_episodes": 64,  # 8 updates of 8 episodes
    "use_replay_buffer": True,
    "use_priority_sampling": True,
    "replay_buffer_size": 32,
    "min_replay_size": 8,
    "replay_sample_size": 8,
    "kl_controller": "adaptive",
    "max_grad_norm": 1.0,
    "num_sample_generations": 3,
    "per_device_eval_batch_size": 4,
    "eval_strategy": "steps",
    "eval_steps": 3,
    "save_strategy": "steps",
    "save_steps": 2,
}


def _trainer(tiny_dirs, tmp_path, output, recorder=None, reward_funcs=digits_reward, **overrides):
    tiny = load_tiny_models(tiny_dirs)
    args = tiny_config(tmp_path, **{**RESUME_ARGS, "output_dir": str(output), **overrides})
    trainer = make_trainer(
        tiny,
        args,
        make_digits_dataset(24, seed=3),
        reward_model=None,
        reward_funcs=reward_funcs,
        eval_dataset=make_digits_dataset(6, seed=4),
    )
    if recorder is not None:
        trainer.add_callback(recorder)
    return trainer


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def test_resume_is_exact(tmp_path, tiny_dirs):
    straight_logs = LogRecorder()
    straight = _trainer(tiny_dirs, tmp_path, tmp_path / "straight", straight_logs)
    straight.train()

    first = _trainer(tiny_dirs, tmp_path, tmp_path / "resumed")
    stop_after(first, 4)  # update 4 is a checkpoint step
    first.train()
    assert (tmp_path / "resumed" / "checkpoint-4").is_dir()

    resumed_logs = LogRecorder()
    resumed = _trainer(tiny_dirs, tmp_path, tmp_path / "resumed", resumed_logs)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-4"))

    straight_weights = straight.accelerator.unwrap_model(straight.model).state_dict()
    resumed_weights = resumed.accelerator.unwrap_model(resumed.model).state_dict()
    for name, weight in straight_weights.items():
        assert torch.equal(weight, resumed_weights[name]), name
    assert [log["step"] for log in resumed.state.log_history] == [log["step"] for log in straight.state.log_history]
    tail = [log for log in straight.state.log_history if log["step"] > 4]
    assert len(tail) == len(resumed_logs.logs) == 6  # updates 5-8, evaluations at step 6 and at the end
    for expected, got in zip(tail, resumed_logs.logs, strict=True):
        for key, value in expected.items():
            if key not in ("eps", "step"):
                assert _same(got[key], value), (expected["step"], key, got[key], value)
    assert resumed.kl_ctl.value == straight.kl_ctl.value
    assert resumed.replay.buffer.storage.cursor == straight.replay.buffer.storage.cursor
    assert resumed.replay.buffer.rng.bit_generator.state == straight.replay.buffer.rng.bit_generator.state


KILL_SCRIPT = """
import os, sys, time
from pathlib import Path
from tests.helpers import make_trainer, tiny_config
import trl_replay_ppo.checkpointing.writer as checkpoint
from trl_replay_ppo.checkpointing.directories import latest_checkpoint
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
from trl_replay_ppo.tasks.tiny import load_tiny_models

save_file = checkpoint.save_file

def slow_save(tensors, path):  # the second checkpoint's write hangs half-way, until the test kills us
    save_file(tensors, path)
    if "checkpoint-4" in str(path):
        Path({marker!r}).write_text("writing")
        time.sleep(600)

checkpoint.save_file = slow_save
tiny = load_tiny_models({{k: Path({models!r}) / k for k in ("tokenizer", "policy", "reward")}})
args = tiny_config(Path({out!r}), output_dir={out!r}, total_episodes=32, save_strategy="steps", save_steps=2)
trainer = make_trainer(tiny, args, make_digits_dataset(16), reward_model=None, reward_funcs=digits_reward)
trainer.train()
"""


def test_kill_during_checkpoint_write_leaves_previous_checkpoint_usable(tmp_path, tiny_dirs):
    import os
    import signal
    import subprocess
    import sys
    import time

    out, marker = tmp_path / "run", tmp_path / "marker"
    script = KILL_SCRIPT.format(marker=str(marker), models=str(tiny_dirs["policy"].parent), out=str(out))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT)
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert marker.exists(), "the run never reached the second checkpoint"
    process.send_signal(signal.SIGKILL)
    process.wait()

    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-4").exists()
    assert (out / "tmp-checkpoint-4").is_dir()  # the partial write, never taken for a checkpoint
    assert latest_checkpoint(out) == out / "checkpoint-2"

    tiny = load_tiny_models(tiny_dirs)
    args = tiny_config(tmp_path, output_dir=str(out), total_episodes=32, save_strategy="steps", save_steps=2)
    trainer = make_trainer(tiny, args, make_digits_dataset(16), reward_model=None, reward_funcs=digits_reward)
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 8
    assert latest_checkpoint(out) == out / "checkpoint-8"
    assert not (out / "tmp-checkpoint-4").exists()


def test_save_total_limit_keeps_the_best_checkpoint(tmp_path, tiny):
    calls = []

    def falling(prompts, completions, **kwargs):  # best at the first evaluation, worse after
        calls.append(1)
        return [1.0 / len(calls)] * len(completions)

    args = tiny_config(
        tmp_path,
        total_episodes=40,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        save_total_limit=2,
        load_best_model_at_end=True,
        per_device_eval_batch_size=4,
    )
    trainer = make_trainer(
        tiny,
        args,
        make_digits_dataset(8),
        reward_model=None,
        reward_funcs=falling,
        eval_dataset=make_digits_dataset(4),
    )
    trainer.train()
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-2", "checkpoint-8"]
    assert trainer.state.best_model_checkpoint == str(out / "checkpoint-2")


def test_early_stopping_on_a_plateau_and_best_model_loaded(tmp_path, tiny):
    from safetensors.torch import load_file

    def plateau(prompts, completions, **kwargs):  # never improves after the first evaluation
        return [0.5] * len(completions)

    args = tiny_config(
        tmp_path,
        total_episodes=80,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        early_stopping_patience=2,
        per_device_eval_batch_size=4,
    )
    trainer = make_trainer(
        tiny,
        args,
        make_digits_dataset(8),
        reward_model=None,
        reward_funcs=plateau,
        eval_dataset=make_digits_dataset(4),
    )
    trainer.train()
    assert trainer.state.global_step == 6  # evaluations at 2 (best), 4 and 6 (no improvement): stop
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2")
    best = load_file(tmp_path / "out" / "checkpoint-2" / "trainable_params.safetensors")
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert all(torch.equal(p, best[n]) for n, p in model.named_parameters() if p.requires_grad)
    last = load_file(tmp_path / "out" / "checkpoint-6" / "trainable_params.safetensors")
    assert any(not torch.equal(last[n], best[n]) for n in best)


def test_failing_checkpoint_write_is_a_clear_error_and_keeps_earlier_checkpoints(
    tmp_path, tiny, tiny_dirs, monkeypatch
):
    import trl_replay_ppo.checkpointing.writer as checkpoint

    save_state = checkpoint.save_state

    def disk_full_at_step_4(state, path):
        if "checkpoint-4" in str(path):
            raise OSError(28, "No space left on device")
        return save_state(state, path)

    monkeypatch.setattr(checkpoint, "save_state", disk_full_at_step_4)
    args = tiny_config(tmp_path, total_episodes=32, save_strategy="steps", save_steps=2)
    trainer = make_trainer(tiny, args, make_digits_dataset(16), reward_model=None, reward_funcs=digits_reward)
    with pytest.raises(checkpoint.CheckpointWriteError, match=r"checkpoint-4 \(OSError: .*No space left on device"):
        trainer.train()
    out = tmp_path / "out"
    assert latest_checkpoint(out) == out / "checkpoint-2"
    assert not (out / "tmp-checkpoint-4").exists() and not (out / "checkpoint-4").exists()

    monkeypatch.setattr(checkpoint, "save_state", save_state)
    fresh = load_tiny_models(tiny_dirs)
    resumed = make_trainer(fresh, args, make_digits_dataset(16), reward_model=None, reward_funcs=digits_reward)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 8


def test_unwritable_output_dir_fails_before_training(tmp_path, tiny):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    args = tiny_config(tmp_path, output_dir=str(blocker / "out"))
    with pytest.raises(PermissionError, match=r"`output_dir`=.* is not a writable directory"):
        make_trainer(tiny, args, make_digits_dataset(8))


def test_save_total_limit_never_deletes_what_this_run_wrote(tmp_path, tiny):
    args = tiny_config(tmp_path, total_episodes=16, save_strategy="steps", save_steps=1, save_total_limit=1)
    trainer = make_trainer(tiny, args, make_digits_dataset(16), reward_model=None, reward_funcs=digits_reward)
    trainer.train()
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-4"]


def _saved_run(tiny_dirs, tmp_path, output, **overrides):
    trainer = _trainer(tiny_dirs, tmp_path, output, **{"save_steps": 2, "eval_strategy": "no", **overrides})
    trainer.train()
    return output


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4}, "per_device_train_batch_size"),
        ({"num_mini_batches": 1}, "num_mini_batches"),
        ({"num_generations": 2}, "num_generations"),
        ({"use_priority_sampling": False}, "use_priority_sampling"),
    ],
)
def test_resuming_with_other_batch_arithmetic_is_refused(tmp_path, tiny_dirs, overrides, field):
    output = _saved_run(tiny_dirs, tmp_path, tmp_path / "run")
    trainer = _trainer(tiny_dirs, tmp_path, output, save_steps=2, eval_strategy="no", **overrides)
    with pytest.raises(ValueError, match=rf"written with {field}=.* but this run has {field}=.*Resume with the same"):
        trainer.train(resume_from_checkpoint=True)


def test_resuming_with_another_reward_source_or_model_shape_is_refused(tmp_path, tiny_dirs):
    output = _saved_run(tiny_dirs, tmp_path, tmp_path / "run")

    def format_reward(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    trainer = _trainer(
        tiny_dirs, tmp_path, output, reward_funcs=[digits_reward, format_reward], save_steps=2, eval_strategy="no"
    )
    with pytest.raises(ValueError, match=r"reward sources=\['digits_reward'\] but this run has reward sources="):
        trainer.train(resume_from_checkpoint=True)
    trainer = _trainer(tiny_dirs, tmp_path, output, save_steps=2, eval_strategy="no")
    with torch.no_grad():
        head = trainer.accelerator.unwrap_model(trainer.model).value_model.score
        head.weight = torch.nn.Parameter(torch.zeros(1, head.weight.shape[1] + 1))
    with pytest.raises(ValueError, match=r"does not match this model's shapes .*value_model.score.weight"):
        trainer.train(resume_from_checkpoint=True)


@pytest.mark.parametrize(
    ("damaged", "content"),
    [
        ("optimizer.safetensors", b"truncated"),
        ("rank_0.safetensors", b"\x00garbage"),
        ("trainer_state.json", b"{not json"),
    ],
)
def test_a_damaged_checkpoint_is_named_and_the_newest_intact_one_suggested(tmp_path, tiny_dirs, damaged, content):
    output = _saved_run(tiny_dirs, tmp_path, tmp_path / "run")
    newest = latest_checkpoint(output)
    assert newest == output / "checkpoint-8"
    (newest / damaged).write_bytes(content)
    trainer = _trainer(tiny_dirs, tmp_path, output, save_steps=2, eval_strategy="no")
    message = rf"{re.escape(str(newest / damaged))}.* The newest intact checkpoint there is .*checkpoint-6"
    with pytest.raises(ValueError, match=message):
        trainer.train(resume_from_checkpoint=str(newest))


def test_resume_true_skips_a_damaged_newest_checkpoint_and_keeps_it(tmp_path, tiny_dirs, caplog):
    output = _saved_run(tiny_dirs, tmp_path, tmp_path / "run")
    (output / "checkpoint-8" / "optimizer.safetensors").write_bytes(b"truncated")
    trainer = _trainer(tiny_dirs, tmp_path, output, save_steps=2, eval_strategy="no", save_strategy="no")
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 8  # resumed from checkpoint-6 and trained the last two updates
    assert "skipped damaged checkpoints: checkpoint-8" in caplog.text and "optimizer.safetensors" in caplog.text
    assert (output / "checkpoint-8" / "optimizer.safetensors").read_bytes() == b"truncated"  # kept for inspection
