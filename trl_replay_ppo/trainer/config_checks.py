"""Checks of a `ReplayPPOConfig`'s fields: types, finite ranges and how fields relate, each error naming the fix.

Run by ``ReplayPPOConfig.__post_init__``, so a bad value fails where the config is built (the CLI
included, before any model is loaded). Numbers written as strings (``5e-1`` in a YAML file, which
YAML reads as a string) are accepted for float fields; a non-integer in an integer field is not.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from trl_replay_ppo.integrations.annotations import checkable, describe, matches

INF = math.inf
MAX_EPISODES = 2**53  # the largest count a float64 (metrics, schedules) holds exactly

# Integer fields and their smallest allowed value; None is allowed for those in OPTIONAL_INTS.
INTS = {
    "per_device_train_batch_size": 1,
    "per_device_eval_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "response_length": 1,
    "num_ppo_epochs": 1,
    "num_mini_batches": 1,
    "local_rollout_forward_batch_size": 1,
    "num_generations": 1,
    "max_skipped_steps": 1,
    "replay_buffer_size": 1,
    "replay_ratio": 1,
    "replay_sample_size": 1,
    "replay_epochs": 1,
    "max_replay_reuse": 1,
    "num_sample_generations": 0,
    "min_replay_size": 0,
    "staleness_threshold": 0,
    "total_episodes": 1,
    "max_prompt_length": 1,
    "early_stopping_patience": 1,
    "vllm_tensor_parallel_size": 1,
    "vllm_max_model_length": 1,
    "generate_ahead_threads": 1,
}
OPTIONAL_INTS = {
    "total_episodes",
    "max_prompt_length",
    "early_stopping_patience",
    "replay_sample_size",
    "replay_epochs",
    "vllm_max_model_length",
}

# Float fields: (low, high, low included, high included); every one must be finite. None is allowed for
# those in OPTIONAL_FLOATS.
FLOATS = {
    "learning_rate": (0.0, INF, False, False),
    "weight_decay": (0.0, INF, True, False),
    "kl_coef": (0.0, INF, True, False),
    "vf_coef": (0.0, INF, True, False),
    "cliprange": (0.0, INF, False, False),
    "cliprange_value": (0.0, INF, False, False),
    "temperature": (0.0, INF, False, False),
    "gamma": (0.0, 1.0, False, True),
    "lam": (0.0, 1.0, True, True),
    "entropy_coef": (0.0, INF, True, False),
    "kl_target": (0.0, INF, False, False),
    "kl_horizon": (0.0, INF, False, False),
    "eval_temperature": (0.0, INF, True, False),
    "priority_alpha": (0.0, INF, True, False),
    "priority_beta": (0.0, 1.0, True, True),
    "priority_staleness_decay": (0.0, 1.0, False, True),
    "replay_importance_cap": (0.0, INF, False, False),
    "replay_min_ess": (0.0, 1.0, True, True),
    "self_imitation_coef": (0.0, INF, True, False),
    "missing_eos_penalty": (0.0, INF, True, False),
    "target_kl": (0.0, INF, False, False),
    "adaptive_lr_kl": (0.0, INF, False, False),
    "adaptive_lr_factor": (1.0, INF, False, False),
    "adaptive_lr_max_scale": (1.0, INF, True, False),
    "reward_timeout": (0.0, INF, False, False),
    "reward_watchdog": (0.0, INF, False, False),
    "reward_nonfinite_value": (-INF, INF, False, False),
    "vllm_gpu_memory_utilization": (0.0, 1.0, False, True),
}
OPTIONAL_FLOATS = {
    "missing_eos_penalty",
    "target_kl",
    "adaptive_lr_kl",
    "reward_timeout",
    "reward_watchdog",
    "reward_nonfinite_value",
}


def fail(name: str, value: Any, requirement: str) -> None:
    raise ValueError(f"`{name}` {requirement}; got {name}={value!r}.")


def _as_float(name: str, value: Any) -> float:
    """``value`` as a float; numeric strings (YAML reads ``5e-1`` as one) are converted."""
    if isinstance(value, bool):
        fail(name, value, "must be a number")
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            fail(name, value, "must be a number")
    if not isinstance(value, int | float):
        fail(name, value, "must be a number")
    return float(value)


def check_types_and_ranges(config: Any) -> None:
    """Integer fields hold integers in range; float fields hold finite numbers in range (converted in place)."""
    for name, low in INTS.items():
        value = getattr(config, name)
        if value is None and name in OPTIONAL_INTS:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            fail(name, value, "must be an integer")
        if value < low:
            fail(name, value, f"must be >= {low}" + (" (or None)" if name in OPTIONAL_INTS else ""))
    for name, (low, high, low_in, high_in) in FLOATS.items():
        value = getattr(config, name)
        if value is None and name in OPTIONAL_FLOATS:
            continue
        value = _as_float(name, value)
        setattr(config, name, value)
        in_range = (low <= value if low_in else low < value) and (value <= high if high_in else value < high)
        if not math.isfinite(value) or not in_range:
            bounds = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
            fail(name, value, f"must be a finite number in {bounds}")
    if config.max_grad_norm is not None:
        config.max_grad_norm = _as_float("max_grad_norm", config.max_grad_norm)
        if math.isnan(config.max_grad_norm) or config.max_grad_norm < 0:
            fail("max_grad_norm", config.max_grad_norm, "must be >= 0 (0 or None disables clipping)")
    if config.reward_weights is not None:
        if not isinstance(config.reward_weights, list | tuple):
            fail("reward_weights", config.reward_weights, "must be a list of numbers, one per reward source")
        config.reward_weights = [_as_float("reward_weights", w) for w in config.reward_weights]
        if not all(math.isfinite(w) for w in config.reward_weights):
            fail("reward_weights", config.reward_weights, "must hold finite numbers")
    epochs = _as_float("num_train_epochs", config.num_train_epochs)
    if config.total_episodes is None and not (0 < epochs < INF):
        fail("num_train_epochs", config.num_train_epochs, "must be a finite number > 0 (or set `total_episodes`)")
    if config.total_episodes is not None and config.total_episodes > MAX_EPISODES:
        fail("total_episodes", config.total_episodes, f"must be at most 2**53 = {MAX_EPISODES} (counters are exact)")


def check_annotated_types(config: Any, inherited: set[str]) -> None:
    """Every field whose annotation `matches` can decide holds a value of that type (after `check_types_and_ranges`
    converted numeric strings). Of the fields in ``inherited`` (transformers' `TrainingArguments`, which converts
    some values itself), only those of scalar type are checked."""
    hints = typing.get_type_hints(type(config))
    for item in dataclasses.fields(config):
        hint = hints[item.name]
        containers = [h for h in (hint, *typing.get_args(hint)) if typing.get_origin(h) in (list, dict)]
        if item.name in inherited and containers:
            continue
        value = getattr(config, item.name)
        if checkable(hint) and not matches(value, hint):
            fail(item.name, value, f"must be {describe(hint)}")


def check_choices(config: Any) -> None:
    """Fields with a fixed set of values, and mutually exclusive ones."""
    if config.kl_estimator not in ("k1", "k3"):
        fail("kl_estimator", config.kl_estimator, "must be 'k1' or 'k3'")
    if config.kl_controller not in ("fixed", "adaptive"):
        fail("kl_controller", config.kl_controller, "must be 'fixed' or 'adaptive'")
    if config.stop_token is not None and config.stop_token_id is not None:
        raise ValueError("Set one of `stop_token` and `stop_token_id`, not both.")
    if config.stop_token not in (None, "eos"):
        fail("stop_token", config.stop_token, "must be 'eos' or None")
    if config.chat_template_kwargs is not None and not isinstance(config.chat_template_kwargs, dict):
        fail(
            "chat_template_kwargs", config.chat_template_kwargs, "must be a mapping (e.g. {'enable_thinking': false})"
        )
    if config.vllm_mode != "colocate":
        fail(
            "vllm_mode",
            config.vllm_mode,
            "must be 'colocate' (server mode pushes weights over NCCL to a `vllm serve` process; not supported)",
        )
    if config.generate_ahead and config.use_vllm:
        raise ValueError(
            "`generate_ahead` samples with `generate` in a second process; `use_vllm` samples with vLLM in the "
            "training process. Set one of them to False."
        )
    if config.replay_epochs is not None and config.replay_epochs > config.num_ppo_epochs:
        fail("replay_epochs", config.replay_epochs, f"must be at most `num_ppo_epochs`={config.num_ppo_epochs}")
    if config.adaptive_lr_kl is not None and config.num_ppo_epochs * config.num_mini_batches == 1:
        raise ValueError(
            "`adaptive_lr_kl` needs more than one optimizer step per update: the KL it reads is measured at each "
            "step's forward, before that step, so a single step always reads 0; got num_ppo_epochs=1, "
            "num_mini_batches=1. Raise either."
        )
    if config.early_stopping_patience is not None and config.eval_strategy == "no":
        raise ValueError("`early_stopping_patience` needs evaluations: set `eval_strategy='steps'` and `eval_steps`.")


def _divides(name: str, value: int, local_batch: int, config: Any, fix: str) -> None:
    if local_batch % value:
        batch, accumulation = config.per_device_train_batch_size, config.gradient_accumulation_steps
        raise ValueError(
            f"`{name}`={value} must divide the per-rank batch per_device_train_batch_size * "
            f"gradient_accumulation_steps = {batch} * {accumulation} = {local_batch}; {fix}."
        )


def check_batch_arithmetic(config: Any) -> None:
    """How the per-rank batch splits into minibatches, prompt groups and replayed rows."""
    local_batch = config.per_device_train_batch_size * config.gradient_accumulation_steps
    _divides("num_mini_batches", config.num_mini_batches, local_batch, config, "change it or the batch size")
    _divides("num_generations", config.num_generations, local_batch, config, "change it or the batch size")
    mini_batch = local_batch // config.num_mini_batches
    if config.whiten_rewards and mini_batch < 8:
        raise ValueError(
            f"`whiten_rewards` needs at least 8 episodes per minibatch and rank; got {mini_batch} "
            "(per_device_train_batch_size * gradient_accumulation_steps / num_mini_batches). Raise the batch or "
            "turn `whiten_rewards` off."
        )
    if not config.use_replay_buffer:
        return
    replayed = config.replayed_per_update
    sample_name = (
        "`replay_sample_size`"
        if config.replay_sample_size is not None
        else f"`replay_ratio` * per-rank batch ({config.replay_ratio} * {local_batch})"
    )
    for name, value in ((sample_name, replayed), ("`min_replay_size`", config.min_replay_size)):
        if value > config.replay_buffer_size:
            raise ValueError(
                f"{name}={value} exceeds `replay_buffer_size`={config.replay_buffer_size}: replay would never "
                f"start; lower {name} or grow the buffer."
            )
    needed = max(config.min_replay_size, replayed)
    holdable = min(config.replay_buffer_size, config.staleness_threshold * local_batch)
    if holdable < needed:
        raise ValueError(
            f"Replay would never start: the buffer can hold at most min(`replay_buffer_size`, "
            f"`staleness_threshold` * per-rank batch) = min({config.replay_buffer_size}, {config.staleness_threshold} "
            f"* {local_batch}) = {holdable} episodes (older ones are evicted), fewer than max(`min_replay_size`, "
            f"{sample_name}) = {needed}. Raise `staleness_threshold` or lower `min_replay_size`."
        )
    if replayed % local_batch:
        suggestion = max(local_batch, replayed // local_batch * local_batch)
        raise ValueError(
            f"`replay_sample_size`={replayed} must be a multiple of the per-rank batch "
            f"per_device_train_batch_size * gradient_accumulation_steps = {local_batch}, so that every optimizer "
            f"step sees {local_batch} episodes; e.g. replay_sample_size={suggestion}, or None to use `replay_ratio`."
        )
