"""Reward functions in TRL's GRPO style, and the ones shipped with the package.

A reward function is ``f(prompts, completions, **columns) -> list[float]``: one float per
completion, where ``columns`` are the dataset's extra columns for the same rows (e.g. ``answer``).
Completions are strings for text prompts and ``[{"role": "assistant", "content": ...}]`` for chat
prompts, as in TRL's GRPO.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

RewardFunc = Callable[..., list[float]]

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


def reward_func_name(func: RewardFunc) -> str:
    """The name used in logs (``rewards/<name>``): the function's or the callable class's name."""
    return getattr(func, "__name__", type(func).__name__)


def validate_reward_funcs(
    reward_funcs: RewardFunc | Sequence[RewardFunc] | None,
) -> list[RewardFunc]:
    """Normalise ``reward_funcs`` to a list and check every entry is callable."""
    if reward_funcs is None:
        return []
    funcs = [reward_funcs] if callable(reward_funcs) else list(reward_funcs)
    for i, func in enumerate(funcs):
        if not callable(func):
            raise TypeError(
                f"`reward_funcs[{i}]` must be a callable `f(prompts, completions, **columns) -> list[float]`, "
                f"got {type(func).__name__}: {func!r}."
            )
    return funcs


class RewardFunctionError(RuntimeError):
    """A reward function raised; the message names it and the first sample it fails on."""


def call_reward_func(
    func: RewardFunc,
    prompts: list,
    completions: list,
    columns: dict[str, list],
    nonfinite_value: float | None = None,
) -> tuple[list[float], int]:
    """Call one reward function and check its answer: one finite float per completion.

    Returns ``(rewards, replaced)``. An exception inside the function is re-raised as
    `RewardFunctionError` naming the function and the first sample it fails on alone. NaN/inf
    values are an error naming the function and the sample, unless ``nonfinite_value`` is given:
    they are then replaced by it and counted in ``replaced``.
    """
    name = reward_func_name(func)
    try:
        values = func(prompts=prompts, completions=completions, **columns)
    except Exception as error:
        index = _first_failing_sample(func, prompts, completions, columns)
        where = f" on sample {index}" if index is not None else ""
        raise RewardFunctionError(f"Reward function `{name}` raised {type(error).__name__}{where}: {error}") from error
    if values is None or isinstance(values, str) or not hasattr(values, "__len__"):
        raise TypeError(f"Reward function `{name}` must return a list of floats, got {type(values).__name__}.")
    if len(values) != len(completions):
        raise ValueError(
            f"Reward function `{name}` returned {len(values)} values for {len(completions)} completions; it must "
            "return exactly one float per completion."
        )
    try:
        rewards = [float(v) for v in values]
    except (TypeError, ValueError) as error:
        raise TypeError(f"Reward function `{name}` must return floats: {error}.") from error
    bad = [i for i, value in enumerate(rewards) if not math.isfinite(value)]
    if bad and nonfinite_value is None:
        raise ValueError(
            f"Reward function `{name}` returned {rewards[bad[0]]} for sample {bad[0]} ({len(bad)} non-finite of "
            f"{len(rewards)}); fix the function or set `reward_nonfinite_value` to replace such values."
        )
    for i in bad:
        rewards[i] = nonfinite_value
    return rewards, len(bad)


def _first_failing_sample(func: RewardFunc, prompts: list, completions: list, columns: dict[str, list]) -> int | None:
    """Index of the first sample the function raises on when called on it alone (None if none does)."""
    for i in range(len(completions)):
        try:
            func(
                prompts=prompts[i : i + 1],
                completions=completions[i : i + 1],
                **{k: v[i : i + 1] for k, v in columns.items()},
            )
        except Exception:
            return i
    return None


def preflight_reward_funcs(
    funcs: Sequence[RewardFunc], rows: dict[str, list], nonfinite_value: float | None = None
) -> None:
    """Call each reward function once on ``rows`` (a few dataset rows) with empty completions.

    Catches a function that crashes, returns the wrong number of values or non-numbers before
    any generation is paid for. ``rows`` maps column names to lists, ``prompt`` included.
    """
    num_rows = len(next(iter(rows.values())))
    prompts = rows.get("prompt") or [""] * num_rows
    chat = isinstance(prompts[0], list)
    completions = [[{"role": "assistant", "content": ""}] if chat else "" for _ in prompts]
    columns = {k: v for k, v in rows.items() if k not in ("prompt", "input_ids", "attention_mask")}
    for func in funcs:
        try:
            call_reward_func(func, prompts, completions, columns, nonfinite_value)
        except (TypeError, ValueError, RewardFunctionError) as error:
            note = f" (pre-flight check on {num_rows} dataset rows with empty completions, before training)"
            raise type(error)(f"{error}{note}") from error
