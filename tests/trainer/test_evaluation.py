"""Evaluation scores every eval prompt exactly once, whatever the sizes."""

from __future__ import annotations

import pytest
from datasets import Dataset

from tests.helpers import make_trainer, tiny_config
from trl_replay_ppo.tasks.digits import make_digits_dataset


def digit_value(prompts, completions, **kwargs):
    """A reward that depends on the prompt only: its first digit."""
    return [float(p[0]) for p in prompts]


@pytest.mark.parametrize(("prompts", "batch"), [(100, 64), (8, 64), (6, 4)])
def test_every_eval_prompt_is_scored_once(tmp_path, tiny, prompts, batch):
    eval_dataset = make_digits_dataset(prompts, seed=5)
    seen = []

    def recording(prompts, completions, **kwargs):
        seen.extend(prompts)
        return digit_value(prompts, completions)

    args = tiny_config(tmp_path, per_device_eval_batch_size=batch)
    trainer = make_trainer(
        tiny, args, make_digits_dataset(8), reward_model=None, reward_funcs=recording, eval_dataset=eval_dataset
    )
    seen.clear()  # the pre-flight call
    metrics = trainer.evaluate()
    assert sorted(seen) == sorted(eval_dataset["prompt"])
    assert metrics["eval_prompts"] == prompts
    assert metrics["eval_reward"] == pytest.approx(sum(float(p[0]) for p in eval_dataset["prompt"]) / prompts)


def test_an_eval_dataset_smaller_than_a_batch_trains(tmp_path, tiny):
    args = tiny_config(tmp_path, per_device_eval_batch_size=8, eval_strategy="steps", eval_steps=1, total_episodes=8)
    eval_dataset = Dataset.from_dict({"prompt": ["12=", "34="]})
    trainer = make_trainer(
        tiny, args, make_digits_dataset(8), reward_model=None, reward_funcs=digit_value, eval_dataset=eval_dataset
    )
    trainer.train()
    evaluations = [log for log in trainer.state.log_history if "eval_reward" in log]
    assert [log["eval_prompts"] for log in evaluations] == [2, 2] and evaluations[0]["eval_reward"] == 2.0
