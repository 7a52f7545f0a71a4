"""Prompt datasets (text, chat, tokenized), reward functions in training, several samples per prompt."""

from __future__ import annotations

import logging
import re

import pytest
from datasets import Dataset

from tests.helpers import changed, digit_prompts, make_trainer, snapshot, tiny_config, tokenized_prompts
from trl_replay_ppo.data.prompts import ROW_COLUMN, prepare_prompt_dataset
from trl_replay_ppo.rewards.calls import RewardFunctionError
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset


class Spy:
    """A reward function that records what it was called with."""

    __name__ = "spy"

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, prompts, completions, **columns):
        self.calls.append({"prompts": prompts, "completions": completions, **columns})
        return [float(len(c) if isinstance(c, str) else len(c[0]["content"])) for c in completions]


def test_text_prompts_train_and_extra_columns_reach_reward_funcs(tmp_path, tiny):
    dataset = make_digits_dataset(16, seed=1)
    spy = Spy()
    before = snapshot(tiny["policy"])
    trainer = make_trainer(tiny, tiny_config(tmp_path), dataset, reward_model=None, reward_funcs=[spy, digits_reward])
    trainer.train()
    assert changed(before, trainer.model.policy)
    call = spy.calls[1]  # calls[0] is the pre-flight check with empty completions
    assert set(call) == {"prompts", "completions", "digits", "completion_ids", "trainer_state", "log_metric"}
    assert [trainer.processing_class.decode(ids, skip_special_tokens=True) for ids in call["completion_ids"]] == call[
        "completions"
    ]
    assert call["trainer_state"] is trainer.state
    assert all(p == d + "=" for p, d in zip(call["prompts"], call["digits"], strict=True))
    assert all(isinstance(c, str) for c in call["completions"])
    log = trainer.state.log_history[-1]
    assert {"rewards/spy", "rewards/digits_reward"} <= log.keys()


def test_a_column_named_like_an_internal_one_reaches_reward_funcs(tmp_path, tiny):
    dataset = make_digits_dataset(8, seed=1).add_column("dataset_row", [f"id-{i}" for i in range(8)])
    spy = Spy()
    make_trainer(tiny, tiny_config(tmp_path, total_episodes=4), dataset, reward_model=None, reward_funcs=spy).train()
    assert set(spy.calls[1]["dataset_row"]) <= {f"id-{i}" for i in range(8)}  # the user's values
    assert not any(ROW_COLUMN in call for call in spy.calls)


def test_chat_prompts_train_with_chat_completions(tmp_path, tiny):
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in digit_prompts(8)]})
    spy = Spy()
    trainer = make_trainer(tiny, tiny_config(tmp_path, total_episodes=8), dataset, reward_model=None, reward_funcs=spy)
    expected_ids = tiny["tokenizer"](f"u:{dataset[0]['prompt'][0]['content']}\na:")["input_ids"]
    assert trainer.train_dataset[0]["input_ids"] == expected_ids
    trainer.train()
    completion = spy.calls[1]["completions"][0]
    assert completion[0]["role"] == "assistant" and isinstance(completion[0]["content"], str)


def test_reward_model_and_functions_combine_with_weights(tmp_path, tiny):
    dataset = make_digits_dataset(8)
    trainer = make_trainer(
        tiny, tiny_config(tmp_path, total_episodes=8, reward_weights=[0.5, 2.0]), dataset, reward_funcs=digits_reward
    )
    trainer.train()
    log = trainer.state.log_history[-1]
    model_name = next(k for k in log if k.startswith("rewards/") and k != "rewards/digits_reward")
    expected = 0.5 * log[model_name] + 2.0 * log["rewards/digits_reward"]
    assert log["objective/scores"] == pytest.approx(expected, abs=1e-6)


def test_num_generations_repeats_each_prompt(tmp_path, tiny):
    dataset = make_digits_dataset(16, seed=2)
    spy = Spy()
    args = tiny_config(tmp_path, num_generations=2, total_episodes=16)
    trainer = make_trainer(tiny, args, dataset, reward_model=None, reward_funcs=spy)
    trainer.train()
    assert len(spy.calls) == 1 + 4
    for call in spy.calls[1:]:
        prompts = call["prompts"]
        assert len(prompts) == 4 and prompts[0] == prompts[1] and prompts[2] == prompts[3]
    assert trainer.state.episode == 16


def test_long_prompts_are_dropped_and_counted(tiny, caplog):
    dataset = Dataset.from_dict({"prompt": ["12=", "1234567890=", "9="]})
    with caplog.at_level(logging.WARNING):
        prepared = prepare_prompt_dataset(dataset, tiny["tokenizer"], max_prompt_length=4)
    assert len(prepared) == 2
    assert "Dropped 1 of 3 prompts" in caplog.text


@pytest.mark.parametrize(
    ("dataset", "error", "match"),
    [
        (
            Dataset.from_dict({"text": ["a"]}),
            ValueError,
            r"`input_ids` column .* or a `prompt` column.* has \['text'\]\.$",
        ),
        (
            Dataset.from_dict({"prompt": ["1="], ROW_COLUMN: [0]}),
            ValueError,
            f"column named `{ROW_COLUMN}`, .* rename it",
        ),
        (Dataset.from_dict({"prompt": []}), ValueError, "`train_dataset` is empty"),
        ({"prompt": ["1="]}, TypeError, "must be a `datasets.Dataset`"),
    ],
)
def test_bad_datasets_fail_before_generation(tmp_path, tiny, dataset, error, match):
    with pytest.raises(error, match=match):
        make_trainer(tiny, tiny_config(tmp_path), dataset)


def test_reward_func_with_wrong_length_fails_before_generation(tmp_path, tiny):
    def short(prompts, completions, **kwargs):
        return [0.0]

    with pytest.raises(ValueError, match="`short` returned 1 values for 2 completions"):
        make_trainer(tiny, tiny_config(tmp_path), make_digits_dataset(8), reward_funcs=short)


def test_reward_func_that_crashes_is_named_before_generation(tmp_path, tiny):
    def needs_answer(prompts, completions, answer, **kwargs):
        return [0.0] * len(completions)

    with pytest.raises(
        RewardFunctionError, match=r"`needs_answer` failed on the batch of dataset rows \[0, 1\]: Type.*'answer'"
    ):
        make_trainer(tiny, tiny_config(tmp_path), make_digits_dataset(8), reward_funcs=needs_answer)


def test_reward_func_checked_again_during_training(tmp_path, tiny):
    calls = []

    def flaky(prompts, completions, **kwargs):
        calls.append(len(completions))
        return [0.0] * (len(completions) if len(calls) == 1 else 1)

    trainer = make_trainer(tiny, tiny_config(tmp_path), make_digits_dataset(8), reward_funcs=flaky)
    before = snapshot(trainer.model)
    with pytest.raises(ValueError, match="`flaky` returned 1 values for 4 completions"):
        trainer.train()
    assert not changed(before, trainer.model)


def test_tokenized_dataset_is_used_as_is(tiny):
    dataset = tokenized_prompts(tiny["tokenizer"], ["12=", "3="])
    assert prepare_prompt_dataset(dataset, tiny["tokenizer"], None)["input_ids"] == dataset["input_ids"]


def test_non_finite_reward_is_named_and_nothing_is_trained(tmp_path, tiny):
    calls = []

    def sometimes_nan(prompts, completions, **kwargs):
        calls.append(prompts)
        values = [0.5] * len(completions)
        if len(calls) > 1:  # the pre-flight call is fine; the first rollout is not
            values[2] = float("nan")
        return values

    dataset = make_digits_dataset(8)
    trainer = make_trainer(tiny, tiny_config(tmp_path), dataset, reward_funcs=sometimes_nan)
    before = snapshot(trainer.model)
    with pytest.raises(
        ValueError, match=r"`sometimes_nan` returned nan for dataset row (\d) .*`reward_nonfin"
    ) as error:
        trainer.train()
    row = int(re.search(r"dataset row (\d)", str(error.value)).group(1))
    assert row == list(dataset["prompt"]).index(calls[1][2])  # the dataset row, not the index in the batch
    assert not changed(before, trainer.model)


def test_non_finite_rewards_can_be_replaced_and_counted(tmp_path, tiny):
    def all_inf(prompts, completions, **kwargs):
        return [float("inf")] * len(completions)

    args = tiny_config(tmp_path, total_episodes=8, reward_nonfinite_value=-1.0)
    trainer = make_trainer(tiny, args, make_digits_dataset(8), reward_model=None, reward_funcs=all_inf)
    trainer.train()
    log = trainer.state.log_history[-1]
    assert log["objective/scores"] == -1.0
    assert log["rewards/nonfinite"] == 4 + 4  # two updates of 4 episodes (the pre-flight call is not counted)
