"""The shipped reward functions, on GSM8K-format problems written for these tests."""

from __future__ import annotations

import pytest

from trl_replay_ppo.rewards.builtin import (
    format_reward,
    gsm8k_accuracy,
    gsm8k_reference,
    last_number,
)

ANSWER_72 = "She sold 48/2 = <<48/2=24>>24 clips in May.\nIn total 48+24 = <<48+24=72>>72 clips.\n#### 72"

GSM8K_CASES = [
    # (completion, answer, expected reward)
    ("48 + 24 = 72. #### 72", ANSWER_72, 1.0),
    ("She sold 72 clips in total.", ANSWER_72, 1.0),
    ("The answer is 72.", ANSWER_72, 1.0),
    ("#### 72.0", ANSWER_72, 1.0),
    ("In May 24, so 48 + 24 = 72", ANSWER_72, 1.0),
    ("The answer is 71.", ANSWER_72, 0.0),
    ("#### 27", ANSWER_72, 0.0),
    ("I am not sure.", ANSWER_72, 0.0),
    ("", ANSWER_72, 0.0),
    ("72 clips? No wait, 70.", ANSWER_72, 0.0),
    ("#### 72 then 5", ANSWER_72, 0.0),
    ("The total is 1,234 dollars.", "1000 + 234 = 1234\n#### 1,234", 1.0),
    ("The total is 1234.", "#### 1,234", 1.0),
    ("#### 1,234", "#### 1234", 1.0),
    ("He owes -5 dollars.", "#### -5", 1.0),
    ("He owes 5 dollars.", "#### -5", 0.0),
    ("#### -12", "#### -12", 1.0),
    ("It costs $18.50 in total.", "#### 18.5", 1.0),
    ("It costs 18.05.", "#### 18.5", 0.0),
    ("The answer is 0.25", "#### .25", 1.0),
    ("So she earns $10.", "#### 10", 1.0),
    ("Total: 3.0 hours", "#### 3", 1.0),
    ("#### 7\n", "step one\n#### 7", 1.0),
]


@pytest.mark.parametrize(("completion", "answer", "expected"), GSM8K_CASES)
def test_gsm8k_accuracy(completion, answer, expected):
    assert gsm8k_accuracy(prompts=["q"], completions=[completion], answer=[answer]) == [expected]


def test_gsm8k_accuracy_accepts_chat_completions():
    completions = [[{"role": "assistant", "content": "so #### 72"}], [{"role": "assistant", "content": "9"}]]
    assert gsm8k_accuracy(prompts=["q", "q"], completions=completions, answer=[ANSWER_72] * 2) == [1.0, 0.0]


def test_number_parsing():
    assert gsm8k_reference(ANSWER_72) == 72
    assert last_number("a 1,000,000 b") == 1_000_000
    assert last_number("costs $-3.5.") == -3.5
    assert last_number("none here") is None


@pytest.mark.parametrize(
    ("completion", "expected"),
    [("work\n#### 72", 1.0), ("#### -1,234.5", 1.0), ("#### 72 done", 0.0), ("72", 0.0), ("#### x", 0.0)],
)
def test_format_reward(completion, expected):
    assert format_reward(prompts=["q"], completions=[completion]) == [expected]
