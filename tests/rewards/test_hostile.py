"""Reward functions that cannot corrupt a run: answers of the wrong shape refused by name before generation,
inputs each function cannot change for the others, unique metric names, rewards too large for float32 reported,
calls that hang reported while they run, eval rows checked before training."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np
import pytest
import torch

from tests.helpers import make_trainer, snapshot, tiny_config
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset

pytestmark = pytest.mark.trl112


def _trainer(tiny, tmp_path, reward_funcs, eval_dataset=None, **overrides):
    args = tiny_config(tmp_path, **{"total_episodes": 8, **overrides})
    return make_trainer(
        tiny, args, make_digits_dataset(8), reward_model=None, reward_funcs=reward_funcs, eval_dataset=eval_dataset
    )


def _no_generation(monkeypatch):
    import trl_replay_ppo.models.runner as runner

    def refuse(*args, **kwargs):
        raise AssertionError("generated before refusing")

    monkeypatch.setattr(runner.ModelRunner, "generate", refuse)


def _answers(make):
    def reward(prompts, completions, **kwargs):
        return make(len(completions))

    return reward


BAD_ANSWERS = {
    "a dict": (_answers(lambda n: {i: 1.0 for i in range(n)}), TypeError, r"got dict"),
    "a 0-d tensor": (_answers(lambda n: torch.tensor(1.0)), TypeError, r"got a 0-d Tensor"),
    "a 2-d array": (_answers(lambda n: np.ones((n, 1))), TypeError, r"got a 2-d ndarray"),
    "a generator": (_answers(lambda n: (1.0 for _ in range(n))), TypeError, r"got generator"),
    "a string": (_answers(lambda n: "1" * n), TypeError, r"got str"),
    "a set": (_answers(lambda n: set(range(n))), TypeError, r"got set"),
    "strings": (_answers(lambda n: ["1.0"] * n), TypeError, r"floats or None, got a str '1.0'"),
    "nested lists": (_answers(lambda n: [[1.0]] * n), TypeError, r"floats or None"),
    "one value too many": (_answers(lambda n: [0.0] * (n + 1)), ValueError, r"returned 3 values for 2 completions"),
}


def _shrinks(prompts, completions, **kwargs):
    completions.pop()  # its answer counts what is left: one short of what it was given
    return [0.0] * len(completions)


BAD_ANSWERS["completions shrunk"] = (_shrinks, ValueError, r"returned 1 values for 2 completions")


@pytest.mark.parametrize("case", list(BAD_ANSWERS))
def test_an_answer_of_the_wrong_shape_names_the_function_before_generation(tmp_path, tiny, monkeypatch, case):
    func, error, message = BAD_ANSWERS[case]
    func.__name__ = "judge"
    _no_generation(monkeypatch)
    with pytest.raises(error, match=message) as raised:
        _trainer(tiny, tmp_path, [func])
    assert "`judge`" in str(raised.value) and "pre-flight" in str(raised.value)


VALID_ANSWERS = {
    "bools": lambda n: [True, False] * (n // 2) + [True] * (n % 2),
    "a tuple": lambda n: (0.5,) * n,
    "a 1-d array": lambda n: np.full(n, 0.5, dtype=np.float32),
    "a 1-d tensor": lambda n: torch.full((n,), 0.5),
    "numpy scalars": lambda n: [np.float64(0.5)] * n,
}


@pytest.mark.parametrize("case", list(VALID_ANSWERS))
def test_valid_answers_train(tmp_path, tiny, case):
    trainer = _trainer(tiny, tmp_path, [_answers(VALID_ANSWERS[case])])
    trainer.train()
    assert trainer.state.global_step == 2


def test_a_function_returning_none_for_every_sample_is_valid_beside_another(tmp_path, tiny):
    def abstains(prompts, completions, **kwargs):
        return [None] * len(completions)

    trainer = _trainer(tiny, tmp_path, [abstains, digits_reward])
    trainer.train()
    assert trainer.state.global_step == 2


def test_a_function_that_edits_its_inputs_changes_nothing_for_the_next(tmp_path, tiny):
    seen = []

    def vandal(prompts, completions, completion_ids, digits, **kwargs):
        seen.append(("vandal", list(prompts), list(completions), [list(c) for c in completion_ids], list(digits)))
        prompts.clear()
        completions[0] = "hacked"
        completion_ids[0].append(99)
        digits.reverse()
        return [0.0] * len(seen[-1][2])

    def witness(prompts, completions, completion_ids, digits, **kwargs):
        seen.append(("witness", list(prompts), list(completions), [list(c) for c in completion_ids], list(digits)))
        return [0.0] * len(completions)

    trainer = _trainer(tiny, tmp_path, [vandal, witness])
    trainer.begin_training()
    trainer.rollout(trainer.next_prompts())
    assert len(seen) == 4  # the pre-flight call and one rollout, each function once
    for before, after in ((seen[0], seen[1]), (seen[2], seen[3])):
        assert before[1:] == after[1:]
    assert "hacked" not in seen[3][2]


def test_sync_reward_functions_run_in_the_main_thread(tmp_path, tiny):
    threads = []

    def uses_signals(prompts, completions, **kwargs):  # as `math_verify` does with SIGALRM
        threads.append(threading.current_thread() is threading.main_thread())
        return [0.0] * len(completions)

    _trainer(tiny, tmp_path, [uses_signals]).train()
    assert threads and all(threads)


def test_functions_of_the_same_name_get_numbered_metrics_and_a_note(tmp_path, tiny, caplog):
    def f(prompts, completions, **kwargs):
        return [1.0] * len(completions)

    def f_2(prompts, completions, **kwargs):  # the name the second `f` would take
        return [2.0] * len(completions)

    funcs = [_answers(lambda n: [0.0] * n), f, _answers(lambda n: [3.0] * n), f, f_2]
    for func in funcs[0], funcs[2]:
        func.__name__ = "<lambda>"
    with caplog.at_level(logging.WARNING):
        trainer = _trainer(tiny, tmp_path, funcs)
        trainer.train()
    names = ["<lambda>", "f", "<lambda>_2", "f_3", "f_2"]
    assert trainer.scorer.names == names
    logged = trainer.state.log_history[-1]
    assert [logged[f"rewards/{name}"] for name in names] == [0.0, 1.0, 3.0, 1.0, 2.0]
    assert "rewards/<lambda>_2 is reward_funcs[2] (" in caplog.text and "test_hostile.py:" in caplog.text


@pytest.mark.parametrize("reward", [1e30, -1e20])
def test_rewards_too_large_for_float32_are_reported_with_the_cause(tmp_path, tiny, caplog, reward):
    def huge(prompts, completions, **kwargs):
        return [reward] * len(completions)

    trainer = _trainer(tiny, tmp_path, [huge], learning_rate=1e-3)
    before = snapshot(trainer.model)
    with caplog.at_level(logging.WARNING):
        trainer.train()  # a short run: fewer skips than `max_skipped_steps`, so it returns
    assert trainer.state.log_history[-1]["update/skipped_steps"] == 2
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    assert f"Reward source `huge` gave {reward:g} for dataset row" in caplog.text
    assert "Training skipped 2 of its 2 optimizer steps as non-finite (0 applied)" in caplog.text
    assert "`learning_rate`=0.001" in caplog.text


def test_large_rewards_within_float32_range_say_nothing(tmp_path, tiny, caplog):
    def large(prompts, completions, **kwargs):
        return [1e6] * len(completions)

    with caplog.at_level(logging.WARNING):
        _trainer(tiny, tmp_path, [large]).train()
    assert "overflow float32" not in caplog.text and "Training skipped" not in caplog.text


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_call_that_does_not_return_is_reported_while_it_runs(tmp_path, tiny, caplog, kind):
    calls = []

    def slow(prompts, completions, **kwargs):
        calls.append(1)
        time.sleep(1.2 if len(calls) == 2 else 0)
        return [0.0] * len(completions)

    async def slow_async(prompts, completions, **kwargs):
        calls.append(1)
        await asyncio.sleep(1.2 if len(calls) == 2 else 0)
        return [0.0] * len(completions)

    slow_async.__name__ = "slow"
    with caplog.at_level(logging.WARNING):
        trainer = _trainer(tiny, tmp_path, [slow if kind == "sync" else slow_async], reward_watchdog=0.3)
        trainer.train()
    assert trainer.state.global_step == 2  # the slow call was waited for, not stopped
    warnings = [r.getMessage() for r in caplog.records if "has not returned" in r.getMessage()]
    assert len(warnings) >= 2  # repeated while the call runs
    assert "Reward function `slow` has not returned after " in warnings[0]
    assert " s on rank 0 (the batch of dataset rows [" in warnings[0]
    assert "`reward_timeout`" in warnings[0]
    calls.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _trainer(tiny, tmp_path / "quiet", [slow if kind == "sync" else slow_async], reward_watchdog=None).train()
    assert "has not returned" not in caplog.text


def test_an_eval_dataset_without_a_column_the_rewards_need_fails_before_training(tmp_path, tiny, monkeypatch):
    _no_generation(monkeypatch)
    eval_rows = make_digits_dataset(4).remove_columns("digits")
    with pytest.raises(Exception, match=r"`digits_reward` failed.*digits.*rows of `eval_dataset`") as raised:
        _trainer(tiny, tmp_path, [digits_reward], eval_dataset=eval_rows, eval_strategy="steps", eval_steps=1)
    assert "pre-flight" in str(raised.value)
    _trainer(tiny, tmp_path / "ok", [digits_reward], eval_dataset=make_digits_dataset(4), eval_strategy="no")
