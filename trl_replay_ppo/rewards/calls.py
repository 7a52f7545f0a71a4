"""Calling reward functions as TRL's GRPO does: sync or async, ``None`` for unscored samples, checked answers.

A reward function is ``f(prompts, completions, **kwargs) -> list[float | None]`` (or a coroutine
function returning one): one value per completion, ``None`` for a sample it does not score (a
multi-task dataset); a tuple or a 1-D array or tensor is accepted too. ``kwargs`` are the dataset's
extra columns for the same rows plus what GRPO passes: ``completion_ids`` (token ids of each
completion), ``trainer_state``, and ``log_metric(name, value)``. Each function gets its own copy of the
inputs, so one that edits them changes nothing for the next. Failures name the function and the dataset
rows; the function is never re-called to find the failing sample (it may be a paid API). A sync
function runs in the calling (main) thread unless ``reward_timeout`` is set: reward code that uses
``SIGALRM``, as ``math_verify`` does, needs the main thread.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import TrainerState

logger = logging.getLogger(__name__)

RewardFunc = Callable[..., Any]
NOT_COPIED = ("trainer_state", "log_metric")  # shared by every function: the trainer's own, never edited by it


class RewardFunctionError(RuntimeError):
    """A reward function raised, timed out or returned something unusable; the message names it and the rows."""


@dataclass(frozen=True)
class CallSettings:
    """How reward functions are called (the `ReplayPPOConfig` fields of the same names, in seconds).

    ``nonfinite_value`` replaces NaN/inf answers (None: they are an error); ``timeout`` stops a call
    (None: it may run forever); ``watchdog`` logs a warning every so many seconds while a call runs
    (None: silent); ``rank`` is this process's, named in those warnings.
    """

    nonfinite_value: float | None = None
    timeout: float | None = None
    watchdog: float | None = None
    rank: int = 0

    @classmethod
    def from_args(cls, args: Any, rank: int = 0) -> CallSettings:
        return cls(args.reward_nonfinite_value, args.reward_timeout, args.reward_watchdog, rank)


def reward_func_name(func: RewardFunc) -> str:
    """The function's or the callable class's name (`trl_replay_ppo.rewards.scorer.source_names` makes them unique)."""
    return getattr(func, "__name__", type(func).__name__)


def validate_reward_funcs(reward_funcs: RewardFunc | Sequence[RewardFunc] | None) -> list[RewardFunc]:
    """Normalise ``reward_funcs`` to a list and check every entry is callable."""
    if reward_funcs is None:
        return []
    if isinstance(reward_funcs, str):
        raise TypeError(
            f"`reward_funcs` is the string {reward_funcs!r}: pass a callable `f(prompts, completions, **kwargs) -> "
            "list[float]` or a list of them. (TRL's GRPOTrainer reads a string as a reward model's id: here load "
            "that model and pass it as `reward_model=`.)"
        )
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


@contextmanager
def _watchdog(name: str, settings: CallSettings, rows: str) -> Iterator[None]:
    """While the body runs, log a warning every ``settings.watchdog`` seconds naming the function and the rank."""
    if settings.watchdog is None:
        yield
        return
    done, started = threading.Event(), time.monotonic()

    def watch() -> None:
        while not done.wait(settings.watchdog):
            logger.warning(
                "Reward function `%s` has not returned after %.0f s on rank %d (%s); still waiting. Set "
                "`reward_timeout` to stop calls that take longer.",
                name,
                time.monotonic() - started,
                settings.rank,
                rows,
            )

    thread = threading.Thread(target=watch, daemon=True, name=f"reward-watchdog-{name}")
    thread.start()
    try:
        yield
    finally:
        done.set()


def _rows_text(rows: Sequence[int] | None) -> str:
    if rows is None:
        return "a batch"
    shown = ", ".join(map(str, list(rows)[:8])) + (", ..." if len(rows) > 8 else "")
    return f"the batch of dataset rows [{shown}]"


def _own_copy(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's inputs, deep-copied but for the trainer's own objects (`NOT_COPIED`)."""
    return {key: value if key in NOT_COPIED else copy.deepcopy(value) for key, value in kwargs.items()}


def _check_signature(func: RewardFunc, name: str, inputs: dict[str, Any]) -> None:
    """Refuse a function that cannot take the contract's arguments, showing the signature it needs.

    Only arguments it cannot receive are refused here; one it needs and does not get (a column the dataset
    lacks) is left to the call, whose error names the rows.
    """
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # a builtin or C callable without a signature: let the call decide
        return
    try:
        signature.bind_partial(**inputs)
    except TypeError as error:
        extra = ", ".join(k for k in inputs if k not in ("prompts", "completions"))
        raise TypeError(
            f"Reward function `{name}{signature}` cannot be called as GRPO's contract calls it ({error}): it must "
            f"accept `f(prompts, completions, **kwargs)`, where kwargs are {extra}."
        ) from error


def _as_list(values: Any, name: str, count: int) -> list:
    """A function's answer as a list of ``count`` entries: a list or tuple, or a 1-D array or tensor."""
    shape = f"a {values.ndim}-d {type(values).__name__}" if isinstance(values, torch.Tensor | np.ndarray) else None
    if isinstance(values, torch.Tensor | np.ndarray) and values.ndim == 1:
        values = values.tolist()
    if not isinstance(values, list | tuple):
        raise TypeError(
            f"Reward function `{name}` must return a list (or a 1-D array or tensor) of one float per completion, "
            f"got {shape or type(values).__name__}."
        )
    if len(values) != count:
        raise ValueError(
            f"Reward function `{name}` returned {len(values)} values for {count} completions; it must return "
            "exactly one float (or None) per completion."
        )
    return list(values)


def _as_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str | bytes):
        raise TypeError(f"a {type(value).__name__} {value!r}")
    return float(value)


def call_reward_func(
    func: RewardFunc,
    prompts: list,
    completions: list,
    kwargs: dict[str, Any],
    settings: CallSettings,
    rows: Sequence[int] | None = None,
    name: str | None = None,
) -> tuple[list[float | None], int]:
    """Call one reward function on its own copy of the inputs and check its answer: one finite float (or None)
    per completion.

    ``rows`` are the dataset rows of the samples and ``name`` the function's name in logs, both used in
    messages. Returns ``(values, replaced)``: NaN/inf values are an error naming the function and the row,
    unless ``settings.nonfinite_value`` is given; they are then replaced by it and counted in ``replaced``.
    """
    name = name or reward_func_name(func)
    count = len(completions)
    inputs = _own_copy({"prompts": prompts, "completions": completions, **kwargs})
    _check_signature(func, name, inputs)
    try:
        with _watchdog(name, settings, _rows_text(rows)):
            values = _run(func, inputs, settings.timeout)
    except Exception as error:
        raise RewardFunctionError(
            f"Reward function `{name}` failed on {_rows_text(rows)}: {type(error).__name__}: {error}"
        ) from error
    try:
        rewards = [_as_float(v) for v in _as_list(values, name, count)]
    except (TypeError, ValueError) as error:
        if str(error).startswith("Reward function"):
            raise
        raise TypeError(f"Reward function `{name}` must return floats or None, got {error}.") from error
    bad = [i for i, value in enumerate(rewards) if value is not None and not math.isfinite(value)]
    if bad and settings.nonfinite_value is None:
        row = rows[bad[0]] if rows is not None else bad[0]
        raise ValueError(
            f"Reward function `{name}` returned {rewards[bad[0]]} for dataset row {row} ({len(bad)} non-finite of "
            f"{len(rewards)}); fix the function or set `reward_nonfinite_value` to replace such values."
        )
    for i in bad:
        rewards[i] = settings.nonfinite_value
    return rewards, len(bad)


def preflight_reward_funcs(
    funcs: Sequence[RewardFunc],
    names: Sequence[str],
    prompts: list,
    columns: dict[str, list],
    settings: CallSettings,
    rows: Sequence[int] | None = None,
    dataset: str = "train_dataset",
) -> None:
    """Call each reward function once on a few rows of ``dataset`` with empty completions, before any generation.

    Catches a function that crashes (a column it needs is missing), returns the wrong number of values
    or non-numbers. ``prompts`` are the rows' prompts as training passes them (text, chat messages, or
    decoded ``input_ids``); ``names`` the functions' names in logs. The functions get every argument GRPO
    passes: ``trainer_state`` is a fresh `TrainerState` (``global_step`` 0), the completions are empty.
    """
    chat = isinstance(prompts[0], list)
    completions = [[{"role": "assistant", "content": ""}] if chat else "" for _ in prompts]
    kwargs: dict[str, Any] = {
        **columns,
        "completion_ids": [[] for _ in prompts],
        "trainer_state": TrainerState(),  # what the first update passes: global_step 0
        "log_metric": _ignore,
    }
    for func, name in zip(funcs, names, strict=True):
        try:
            call_reward_func(func, prompts, completions, kwargs, settings, rows, name)
        except (TypeError, ValueError, RewardFunctionError) as error:
            note = f" (pre-flight check on {len(prompts)} rows of `{dataset}` with empty completions, before training)"
            raise type(error)(f"{error}{note}") from error


def _ignore(*args: Any, **kwargs: Any) -> None:
    """``log_metric`` of the pre-flight call: nothing is logged before training."""
