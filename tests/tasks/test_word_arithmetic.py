"""Word arithmetic in GSM8K's format: distinct questions, disjoint splits, answers the GSM8K rewards accept."""

from __future__ import annotations

import re

from trl_replay_ppo.rewards import format_reward, gsm8k_accuracy
from trl_replay_ppo.tasks.word_arithmetic import INSTRUCTION, word_arithmetic


def solve(question: str) -> int:
    a, b = (int(n) for n in re.findall(r"\d+", question))
    if "gets" in question:
        return a + b
    return a - b if "gives away" in question else a * b


def test_splits_are_disjoint_distinct_and_seeded():
    data = word_arithmetic(num_train=300, num_eval=40, seed=3)
    train, evaluation = data["train"]["question"], data["eval"]["question"]
    assert len(set(train)) == 300 and len(set(evaluation)) == 40 and not set(train) & set(evaluation)
    assert word_arithmetic(num_train=300, num_eval=40, seed=3)["eval"]["question"] == evaluation
    assert word_arithmetic(num_train=300, num_eval=40, seed=4)["eval"]["question"] != evaluation


def test_answers_are_right_and_scored_by_the_gsm8k_rewards():
    rows = word_arithmetic(num_train=60, num_eval=0)["train"]
    kinds = {("gets" in q) + 2 * ("gives away" in q) for q in rows["question"]}
    assert kinds == {0, 1, 2}  # products, sums and differences
    for row in rows:
        assert row["answer"] == f"#### {solve(row['question'])}" and solve(row["question"]) >= 0
        assert row["prompt"] == [{"role": "user", "content": f"{row['question']} {INSTRUCTION}"}]
    completions = [f"So the answer is\n{answer}" for answer in rows["answer"]]
    assert gsm8k_accuracy(rows["prompt"], completions, answer=rows["answer"]) == [1.0] * 60
    assert format_reward(rows["prompt"], completions) == [1.0] * 60
