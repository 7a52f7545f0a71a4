"""The offline synthetic task: answer a few digits with digits drawn from them.

A prompt is ``"<d1><d2>...<dk>="`` (e.g. ``"4071="``); the completion is scored character by
character over its first ``target_length`` characters: 1 for a digit that appears in the prompt,
``other_digit_credit`` for any other digit, 0 for anything else (missing characters score 0).

The reward is dense and graded, so a randomly initialised tiny model learns it in a few minutes on
two CPU cores: first "answer with digits" (about 0.55), then "copy digits from the prompt" (1.0).
"""

from __future__ import annotations

import random

from datasets import Dataset

from trl_replay_ppo.tasks.rule_reward import RuleRewardModel

SEPARATOR = "="
TARGET_LENGTH = 8
OTHER_DIGIT_CREDIT = 0.25


def make_digits_dataset(num_prompts: int, seed: int = 0, num_digits: int = 4) -> Dataset:
    """Prompts as plain text, plus a ``digits`` column that reaches the reward function."""
    rng = random.Random(seed)
    digits = ["".join(rng.choice("0123456789") for _ in range(num_digits)) for _ in range(num_prompts)]
    return Dataset.from_dict({"prompt": [d + SEPARATOR for d in digits], "digits": digits})


def score_completion(completion: str, digits: str, target_length: int = TARGET_LENGTH) -> float:
    """Score in [0, 1] of one completion against the prompt's digits."""
    points = 0.0
    for char in completion[:target_length]:
        if char in digits:
            points += 1.0
        elif char.isdigit():
            points += OTHER_DIGIT_CREDIT
    return points / target_length


def digits_reward(prompts: list, completions: list, digits: list[str], **kwargs) -> list[float]:
    """Reward function in TRL's GRPO style: ``digits`` is the dataset's extra column."""
    return [score_completion(completion, target) for completion, target in zip(completions, digits, strict=True)]


class DigitsRewardModel(RuleRewardModel):
    """The digits reward as a parameter-free reward model (`RuleRewardModel`), usable by stock TRL PPO."""

    def score_text(self, text: str) -> float:
        prompt, _, completion = text.partition(SEPARATOR)
        return score_completion(completion, prompt)
