"""Calling reward functions as TRL's GRPO does: sync or async, ``None`` for unscored samples, checked answers.

A reward function is ``f(prompts, completions, **kwargs) -> list[float | None]`` (or a coroutine
function returning one): one value per completion, ``None`` for a sample it does not score (a
multi-task dataset). ``kwargs`` are the dataset's extra columns for the same rows plus what GRPO
passes: ``completion_ids`` (token ids of each completion), ``trainer_state``, and ``log_metric(name,
value)``. Failures name the function and the dataset rows; the function is never re-called to find
the failing sample (it may be a paid API).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

RewardFunc = Callable[..., Any]


class RewardFunctionError(RuntimeError):
    """A reward function raised, timed out or returned something unusable; the message names it and the rows."""


def reward_func_name(func: RewardFunc) -> str:
    """The name used in logs (``rewards/<name>``): the function's or the callable class's name."""
    return getattr(func, "__name__", type(func).__name__)


def validate_reward_funcs(reward_funcs: RewardFunc | Sequence[RewardFunc] | None) -> list[RewardFunc]:
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


def _is_async(func: RewardFunc) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__)


def _run(func: RewardFunc, kwargs: dict[str, Any], timeout: float | None) -> Any:
    """Call ``func(**kwargs)``; with a ``timeout`` (seconds) in a daemon thread abandoned when it expires."""

    def call() -> Any:
        if not _is_async(func):
            return func(**kwargs)
        if timeout is None:
            return asyncio.run(func(**kwargs))
        return asyncio.run(asyncio.wait_for(func(**kwargs), timeout))

    if timeout is None and not (_is_async(func) and _running_loop()):
        return call()
    outcome: dict[str, Any] = {}

    def worker() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # handed to the calling thread
            outcome["error"] = error

    thread = threading.Thread(target=worker, daemon=True, name=f"reward-{reward_func_name(func)}")
    thread.start()
    thread.join(timeout)
    if thread.is_alive() or isinstance(outcome.get("error"), asyncio.TimeoutError):
        raise TimeoutError(f"no answer within `reward_timeout`={timeout} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _rows_text(rows: Sequence[int] | None) -> str:
    if rows is None:
        return "a batch"
    shown = ", ".join(map(str, list(rows)[:8])) + (", ..." if len(rows) > 8 else "")
    return f"the batch of dataset rows [{shown}]"


def call_reward_func(
    func: RewardFunc,
    prompts: list,
    completions: list,
    kwargs: dict[str, Any],
    nonfinite_value: float | None = None,
    timeout: float | None = None,
    rows: Sequence[int] | None = None,
) -> tuple[list[float | None], int]:
    """Call one reward function and check its answer: one finite float (or None) per completion.

    ``rows`` are the dataset rows of the samples, used in messages. Returns ``(values, replaced)``:
    NaN/inf values are an error naming the function and the row, unless ``nonfinite_value`` is
    given; they are then replaced by it and counted in ``replaced``.
    """
    name = reward_func_name(func)
    try:
        values = _run(func, {"prompts": prompts, "completions": completions, **kwargs}, timeout)
    except Exception as error:
        raise RewardFunctionError(
            f"Reward function `{name}` failed on {_rows_text(rows)}: {type(error).__name__}: {error}"
        ) from error
    if values is None or isinstance(values, str) or not hasattr(values, "__len__"):
        raise TypeError(f"Reward function `{name}` must return a list of floats, got {type(values).__name__}.")
    if len(values) != len(completions):
        raise ValueError(
            f"Reward function `{name}` returned {len(values)} values for {len(completions)} completions; it must "
            "return exactly one float (or None) per completion."
        )
    try:
        rewards = [None if v is None else float(v) for v in values]
    except (TypeError, ValueError) as error:
        raise TypeError(f"Reward function `{name}` must return floats or None: {error}.") from error
    bad = [i for i, value in enumerate(rewards) if value is not None and not math.isfinite(value)]
    if bad and nonfinite_value is None:
        row = rows[bad[0]] if rows is not None else bad[0]
        raise ValueError(
            f"Reward function `{name}` returned {rewards[bad[0]]} for dataset row {row} ({len(bad)} non-finite of "
            f"{len(rewards)}); fix the function or set `reward_nonfinite_value` to replace such values."
        )
    for i in bad:
        rewards[i] = nonfinite_value
    return rewards, len(bad)


def preflight_reward_funcs(
    funcs: Sequence[RewardFunc],
    prompts: list,
    columns: dict[str, list],
    nonfinite_value: float | None = None,
    timeout: float | None = None,
    rows: Sequence[int] | None = None,
) -> None:
    """Call each reward function once on a few dataset rows with empty completions, before any generation.

    Catches a function that crashes, returns the wrong number of values or non-numbers. ``prompts``
    are the rows' prompts as training passes them (text, chat messages, or decoded ``input_ids``).
    """
    chat = isinstance(prompts[0], list)
    completions = [[{"role": "assistant", "content": ""}] if chat else "" for _ in prompts]
    kwargs: dict[str, Any] = {
        **columns,
        "completion_ids": [[] for _ in prompts],
        "trainer_state": None,
        "log_metric": _ignore,
    }
    for func in funcs:
        try:
            call_reward_func(func, prompts, completions, kwargs, nonfinite_value, timeout, rows)
        except (TypeError, ValueError, RewardFunctionError) as error:
            note = f" (pre-flight check on {len(prompts)} dataset rows with empty completions, before training)"
            raise type(error)(f"{error}{note}") from error


def _ignore(*args: Any, **kwargs: Any) -> None:
    """``log_metric`` of the pre-flight call: nothing is logged before training."""
