"""Checkpoints: exact resume, atomic writes, rotation, bad resume requests."""

from __future__ import annotations

import math

import torch
from helpers import LogRecorder, make_trainer, tiny_config

from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
from trl_replay_ppo.tasks.tiny import load_tiny_models

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


def _trainer(tiny_dirs, tmp_path, output, recorder=None, **overrides):
    tiny = load_tiny_models(tiny_dirs)
    args = tiny_config(tmp_path, **{**RESUME_ARGS, "output_dir": str(output), **overrides})
    trainer = make_trainer(
        tiny,
        args,
        make_digits_dataset(24, seed=3),
        reward_model=None,
        reward_funcs=digits_reward,
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
    end_update = first.end_update  # stop after update 4 (a checkpoint step), as a pre-emption would

    def stop_after_four(update, epoch_ended=False):
        end_update(update, epoch_ended)
        if update == 4:
            first.control.should_training_stop = True

    first.end_update = stop_after_four
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
    assert resumed.replay_buffer.storage.cursor == straight.replay_buffer.storage.cursor
    assert resumed.replay_buffer.rng.bit_generator.state == straight.replay_buffer.rng.bit_generator.state
