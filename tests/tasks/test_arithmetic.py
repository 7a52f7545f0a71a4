"""The sparse arithmetic task: reward, reward model, splits, and a base model right 2-5% of the time."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_replay_ppo.models.forwards import sequence_scores
from trl_replay_ppo.tasks.arithmetic import (
    FORMAT_CREDIT,
    HELD_OUT,
    SPARSE,
    ArithmeticRewardModel,
    answer_of_prompt,
    arithmetic_reward,
    build_arithmetic_models,
    digits_of,
    score_answer,
)
from trl_replay_ppo.tasks.tiny import build_tokenizer


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("64", "64", 1.0),
        (" 64\n", "64", 1.0),
        ("65", "64", FORMAT_CREDIT),
        ("7", "64", FORMAT_CREDIT),
        ("640", "64", FORMAT_CREDIT),
        ("6400", "64", 0.0),
        ("64 apples", "64", 0.0),
        ("", "64", 0.0),
        ("-3", "3", 0.0),
    ],
)
def test_score_by_hand(completion, answer, expected):
    assert score_answer(completion, answer) == expected


def test_reward_function_follows_the_grpo_contract():
    rewards = arithmetic_reward(
        prompts=["Q: 23+41=", "Q: 23+41=", "Q: 87-25="], completions=["64", "63", "62"], answer=["64", "64", "62"]
    )
    assert rewards == [1.0, FORMAT_CREDIT, 1.0]


def test_answer_of_prompt():
    assert answer_of_prompt("Q: 23+41=") == "64"
    assert answer_of_prompt("Q: 87-25=") == "62"
    assert answer_of_prompt("What is 2+2?") is None


def test_reward_model_scores_like_the_reward_function():
    tokenizer = build_tokenizer()
    model = ArithmeticRewardModel(tokenizer)
    texts = ["Q: 23+41=64", "Q: 23+41=65", "Q: 87-25=62", "Q: 12+30=x"]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    width = max(map(len, ids))
    query_responses = torch.tensor([[tokenizer.pad_token_id] * (width - len(i)) + i for i in ids])
    _, scores, _ = sequence_scores(model, query_responses, tokenizer.pad_token_id, context_length=width - 2)
    assert scores.tolist() == [1.0, pytest.approx(FORMAT_CREDIT), 1.0, 0.0]


@pytest.mark.parametrize("task", [SPARSE, HELD_OUT])
def test_splits_are_disjoint_and_never_carry(task):
    split = task.split()
    assert not set(split["train"]) & set(split["eval"])
    assert len(split["eval"]) == int(len(task.problems()) * task.eval_fraction)
    for a, b in task.problems():
        assert 10 ** (task.length - 1) <= min(a, b) and max(a, b) < 10**task.length
        for x, y in zip(digits_of(a, task.length), digits_of(b, task.length), strict=True):
            assert (x + y <= 9) if task.operation == "+" else (x >= y)
    data = task.dataset("eval", size=3)
    assert len(data) == 3 and all(
        answer_of_prompt(p) == a for p, a in zip(data["prompt"], data["answer"], strict=True)
    )


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    dirs = build_arithmetic_models(tmp_path_factory.mktemp("arithmetic"))
    return AutoTokenizer.from_pretrained(dirs["tokenizer"]), AutoModelForCausalLM.from_pretrained(dirs["policy"])


@pytest.mark.parametrize("task", [SPARSE, HELD_OUT])
def test_the_base_model_is_right_two_to_five_percent_of_the_time(base_model, task):
    tokenizer, policy = base_model
    data = task.dataset("train")
    prompts, answers = list(data["prompt"]) * 3, list(data["answer"]) * 3
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    with torch.no_grad():
        output = policy.generate(
            **encoded,
            max_new_tokens=6,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            suppress_tokens=[tokenizer.pad_token_id],
            pad_token_id=tokenizer.pad_token_id,
        )
    completions = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    rewards = arithmetic_reward(prompts, completions, answers)
    right = sum(r == 1.0 for r in rewards) / len(rewards)
    well_formed = sum(r > 0 for r in rewards) / len(rewards)
    assert 0.02 <= right <= 0.05, right
    assert well_formed > 0.9  # it knows the format
