"""TRL's GRPO reward contract: async functions, None for unscored samples, GRPO's keyword arguments, timeouts."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.helpers import make_trainer, tiny_config, tokenized_prompts
from trl_replay_ppo.rewards.calls import RewardFunctionError
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset


def _trainer(tiny, tmp_path, reward_funcs, **overrides):
    args = tiny_config(tmp_path, **{"total_episodes": 8, **overrides})
    return make_trainer(tiny, args, make_digits_dataset(8), reward_model=None, reward_funcs=reward_funcs)


def test_async_reward_functions_train(tmp_path, tiny):
    async def slow_digits(prompts, completions, digits, **kwargs):
        await asyncio.sleep(0)
        return digits_reward(prompts, completions, digits)

    trainer = _trainer(tiny, tmp_path, [slow_digits])
    trainer.train()
    assert "rewards/slow_digits" in trainer.state.log_history[-1]


def test_none_leaves_a_source_out_of_the_sum(tmp_path, tiny):
    def only_even(prompts, completions, digits, **kwargs):  # a multi-task function: scores half the samples
        return [1.0 if int(d) % 2 == 0 else None for d in digits]

    def always_one(prompts, completions, **kwargs):
        return [1.0] * len(completions)

    trainer = _trainer(tiny, tmp_path, [only_even, always_one], reward_weights=[3.0, 1.0])
    trainer.begin_training()
    batch = trainer.rollout(trainer.next_prompts())
    scored = ~batch.source_scores[:, 0].isnan()
    assert scored.any() and (~scored).any()
    assert batch.scores[scored].tolist() == [4.0] * int(scored.sum())  # 3 * 1 + 1 * 1
    assert batch.scores[~scored].tolist() == [1.0] * int((~scored).sum())  # only `always_one`


def test_a_sample_no_source_scores_is_an_error(tmp_path, tiny):
    calls = []

    def never_after_preflight(prompts, completions, **kwargs):
        calls.append(1)
        return [0.0 if len(calls) == 1 else None for _ in completions]

    trainer = _trainer(tiny, tmp_path, [never_after_preflight])
    with pytest.raises(ValueError, match=r"No reward source scored dataset rows \[\d"):
        trainer.train()


def test_a_failing_function_is_called_once_and_named_with_its_rows(tmp_path, tiny):
    calls = []

    def paid_judge(prompts, completions, **kwargs):
        calls.append(len(completions))
        if len(calls) > 1:
            raise ConnectionError("judge API down")
        return [0.0] * len(completions)

    trainer = _trainer(tiny, tmp_path, [paid_judge])
    with pytest.raises(
        RewardFunctionError, match=r"`paid_judge` failed on the batch of dataset rows \[.*ConnectionError"
    ):
        trainer.train()
    assert calls == [2, 4]  # the pre-flight call, then one call for the batch: never once per sample


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_function_that_never_answers_times_out(tmp_path, tiny, kind):
    calls = []

    def hangs(prompts, completions, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            time.sleep(30)
        return [0.0] * len(completions)

    async def hangs_async(prompts, completions, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            await asyncio.sleep(30)
        return [0.0] * len(completions)

    hangs_async.__name__ = "hangs"
    trainer = _trainer(tiny, tmp_path, [hangs if kind == "sync" else hangs_async], reward_timeout=0.5)
    started = time.time()
    with pytest.raises(
        RewardFunctionError, match=r"`hangs` failed .*TimeoutError: no answer within `reward_timeout`=0.5"
    ):
        trainer.train()
    assert time.time() - started < 10


def test_log_metric_reaches_the_logs(tmp_path, tiny):
    def judged(prompts, completions, log_metric, **kwargs):
        log_metric("judge_cost", 2.0)
        return [0.0] * len(completions)

    trainer = _trainer(tiny, tmp_path, [judged])
    trainer.train()
    assert trainer.state.log_history[-1]["rewards/logged/judge_cost"] == 2.0


def test_preflight_sees_decoded_prompts_of_a_tokenized_dataset(tmp_path, tiny):
    seen = []

    def spy(prompts, completions, **kwargs):
        seen.append(list(prompts))
        return [0.0] * len(completions)

    dataset = tokenized_prompts(tiny["tokenizer"], ["12=", "345="] * 4)
    make_trainer(tiny, tiny_config(tmp_path), dataset, reward_model=None, reward_funcs=spy)
    assert seen == [["12=", "345="]]  # what training passes too, not empty strings
