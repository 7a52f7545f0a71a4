"""Callbacks fire in transformers' `Trainer` order, an update being its step; a resumed run's restored control
flags (``should_save``...) are reset where `Trainer` resets them: a resume never writes an unscheduled checkpoint."""

from __future__ import annotations

import pytest
from transformers import TrainerCallback

from tests.helpers import make_trainer, tiny_config
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset

pytestmark = pytest.mark.trl112  # also runs in the TRL 1.12 job

EVENTS = (
    "on_epoch_begin",
    "on_step_begin",
    "on_substep_end",
    "on_pre_optimizer_step",
    "on_optimizer_step",
    "on_step_end",
    "on_epoch_end",
    "on_save",
)


class EventRecorder(TrainerCallback):
    def __init__(self):
        self.events: list[str] = []

    def __getattribute__(self, name):
        if name in EVENTS:
            return lambda args, state, control, **kwargs: self.events.append(name)
        return super().__getattribute__(name)


def _trainer(tiny, tmp_path, **overrides):
    args = tiny_config(tmp_path, **{"total_episodes": 8, **overrides})
    return make_trainer(tiny, args, make_digits_dataset(16), reward_model=None, reward_funcs=digits_reward)


def test_an_update_fires_the_events_of_a_trainer_step_in_order(tmp_path, tiny):
    # 4 rows per update in micro-batches of 2, accumulated in pairs: one optimizer step per update
    trainer = _trainer(tiny, tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    recorder = EventRecorder()
    trainer.add_callback(recorder)
    trainer.train()
    update = ["on_step_begin", "on_substep_end", "on_pre_optimizer_step", "on_optimizer_step", "on_step_end"]
    assert recorder.events == ["on_epoch_begin", *update, *update]


def test_a_plain_resume_saves_only_on_schedule(tmp_path, tiny, tiny_dirs):
    from trl_replay_ppo.tasks.tiny import load_tiny_models

    _trainer(tiny, tmp_path, save_strategy="steps", save_steps=2).train()  # its checkpoint-2 saved should_save=True
    trainer = _trainer(load_tiny_models(tiny_dirs), tmp_path, total_episodes=20, save_strategy="steps", save_steps=2)
    trainer.train(resume_from_checkpoint=True)
    saved = sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*"))
    assert saved == ["checkpoint-2", "checkpoint-4", "checkpoint-5"]  # 5: the last update; no unscheduled 3
