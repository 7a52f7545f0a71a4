"""Reward functions in TRL's GRPO style, and the ones shipped with the package.

A reward function is ``f(prompts, completions, **columns) -> list[float]``: one float per
completion, where ``columns`` are the dataset's extra columns for the same rows (e.g. ``answer``).
Completions are strings for text prompts and ``[{"role": "assistant", "content": ...}]`` for chat
prompts, as in TRL's GRPO; how they are called is `trl_replay_ppo.rewards.calls`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from trl_replay_ppo.rewards.calls import RewardFunc

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_GSM8K_ANSWER = re.compile(r"####\s*(.+)")
_FORMAT = re.compile(r"####\s*-?\$?\d[\d,]*(?:\.\d+)?\s*$")


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """The text of a completion, whether it is a string or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    return "".join(str(message.get("content", "")) for message in completion)


def parse_number(text: str) -> float | None:
    """Parse ``"1,234.50"``, ``"$-7"``, ``"-0.5"`` into a float; None when it is not a number."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        return float(cleaned)
    except ValueError:
        return None


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (commas, signs and decimals allowed), or None."""
    matches = _NUMBER.findall(text)
    return parse_number(matches[-1]) if matches else None


def gsm8k_reference(answer: str) -> float | None:
    """The reference number of a GSM8K ``answer`` field: what follows its ``####``."""
    match = _GSM8K_ANSWER.search(answer)
    return parse_number(match.group(1)) if match else last_number(answer)


def gsm8k_accuracy(prompts: list, completions: list, answer: list[str], **kwargs) -> list[float]:
    """1.0 when the completion's final number equals the ``#### N`` of the ``answer`` column, else 0.0.

    The completion's final number is the one after its own ``####`` if it writes one, otherwise
    the last number it contains.
    """
    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        text = completion_text(completion)
        target = gsm8k_reference(reference)
        predicted = gsm8k_reference(text) if "####" in text else last_number(text)
        correct = predicted is not None and target is not None and math.isclose(predicted, target, abs_tol=1e-6)
        rewards.append(1.0 if correct else 0.0)
    return rewards


def format_reward(prompts: list, completions: list, **kwargs) -> list[float]:
    """1.0 when the completion ends with a GSM8K-style final answer line ``#### <number>``, else 0.0."""
    return [1.0 if _FORMAT.search(completion_text(c)) else 0.0 for c in completions]


REWARD_FUNCTIONS: dict[str, RewardFunc] = {"gsm8k_accuracy": gsm8k_accuracy, "format": format_reward}
