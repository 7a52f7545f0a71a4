"""Checks a checkpoint's contents pass before any of it is applied; each failure is a `StateFileError` naming
the file and what is wrong (`trl_replay_ppo.checkpointing.reader` calls them).

`conform` compares a saved state with the state the receiving part has now (its fresh ``state_dict()``):
same keys, same value types, tensors and arrays of the same dtype and shape, numbers finite, counters
non-negative. The optimizer, scheduler, trainer state and ``ppo_state.json`` have their own checks,
against the optimizer and scheduler the state goes into.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from trl_replay_ppo.checkpointing.state_files import StateFileError
from trl_replay_ppo.integrations.annotations import describe, matches


def damaged(where: str, what: str) -> StateFileError:
    return StateFileError(f"{where} is damaged: {what}.")


def conform(saved: Any, template: Any, where: str) -> None:
    """Refuse ``saved`` unless it has ``template``'s structure (a ``None`` in ``template`` accepts anything).

    Dicts: the same keys. Tuples: the same length; a list's entries are checked against the template's
    entry at their index (its last, past its end). ``int``: a non-negative integer (every counter and
    position here is one); ``float``: a finite number; tensors and arrays: the same dtype and shape,
    and finite when floating point.
    """
    if template is None:
        return
    kind = type(template).__name__
    if isinstance(template, bool | str):
        if type(saved) is not type(template):
            raise damaged(where, f"a {type(saved).__name__} where a {kind} belongs")
    elif isinstance(template, int):
        if isinstance(saved, bool) or not isinstance(saved, int) or saved < 0:
            raise damaged(where, f"{saved!r} where a non-negative integer belongs")
    elif isinstance(template, float):
        if isinstance(saved, bool) or not isinstance(saved, int | float) or not math.isfinite(saved):
            raise damaged(where, f"{saved!r} where a finite number belongs")
    elif isinstance(template, torch.Tensor | np.ndarray):
        check_array(saved, where, dtype=template.dtype, shape=tuple(template.shape))
    elif isinstance(template, dict):
        if not isinstance(saved, dict):
            raise damaged(where, f"a {type(saved).__name__} where a mapping belongs")
        if saved.keys() != template.keys():
            missing, extra = (
                sorted(map(str, template.keys() - saved.keys())),
                sorted(map(str, saved.keys() - template)),
            )
            raise damaged(where, f"its keys differ from this version's (missing {missing}, unexpected {extra})")
        for key, value in template.items():
            conform(saved[key], value, f"{where}[{key!r}]")
    elif isinstance(template, tuple | list):
        if type(saved) is not type(template):
            raise damaged(where, f"a {type(saved).__name__} where a {kind} belongs")
        if isinstance(template, tuple) and len(saved) != len(template):
            raise damaged(where, f"{len(saved)} entries where {len(template)} belong")
        for i, value in enumerate(saved if template else []):
            conform(value, template[min(i, len(template) - 1)], f"{where}[{i}]")


def check_array(value: Any, where: str, dtype: Any = None, shape: tuple[int, ...] | None = None) -> None:
    """Refuse ``value`` unless it is a tensor or array (of ``dtype`` and ``shape`` when given), finite if floating."""
    if not isinstance(value, torch.Tensor | np.ndarray):
        raise damaged(where, f"a {type(value).__name__} where a tensor belongs")
    if dtype is not None and value.dtype != dtype:
        raise damaged(where, f"dtype {value.dtype} where {dtype} belongs")
    if shape is not None and tuple(value.shape) != shape:
        raise damaged(where, f"shape {tuple(value.shape)} where {shape} belongs")
    finite = torch.isfinite(value).all() if isinstance(value, torch.Tensor) else np.isfinite(value).all()
    floating = value.is_floating_point() if isinstance(value, torch.Tensor) else value.dtype.kind in "fc"
    if floating and not bool(finite):
        raise damaged(where, "it holds NaN or infinite values")


def check_trainable(saved: dict[str, torch.Tensor], parameters: dict[str, torch.nn.Parameter], file: str) -> None:
    """Every saved weight has its parameter's dtype and is finite (names and shapes are checked by the reader)."""
    for name, parameter in parameters.items():
        check_array(saved[name], f"{file}: {name}", dtype=parameter.dtype)


def check_optimizer(saved: Any, optimizer: torch.optim.Optimizer, file: str) -> None:
    """Saved optimizer state against ``optimizer``: its groups and their sizes, hyperparameters, and every
    per-parameter moment (the shape of its parameter, finite)."""
    fresh = optimizer.state_dict()
    if not isinstance(saved, dict) or saved.keys() != fresh.keys():
        raise damaged(file, "not an optimizer state (keys 'state' and 'param_groups')")
    groups = saved["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(fresh["param_groups"]):
        raise damaged(file, f"its parameter groups are not this optimizer's {len(fresh['param_groups'])}")
    shapes: dict[int, tuple[int, ...]] = {}
    for i, (group, fresh_group, live) in enumerate(
        zip(groups, fresh["param_groups"], optimizer.param_groups, strict=True)
    ):
        where = f"{file}: param_groups[{i}]"
        template = {key: value for key, value in fresh_group.items() if key not in ("params", "initial_lr", "lr")}
        conform({key: group.get(key) for key in template} if isinstance(group, dict) else group, template, where)
        if not isinstance(group, dict) or "params" not in group or len(group["params"]) != len(fresh_group["params"]):
            raise damaged(where, f"not a group of {len(fresh_group['params'])} parameters")
        if not isinstance(group.get("lr"), int | float) or not 0 <= group["lr"] < math.inf:
            raise damaged(where, f"learning rate {group.get('lr')!r}")
        shapes.update(zip(fresh_group["params"], (tuple(p.shape) for p in live["params"]), strict=True))
    if list(group["params"] for group in groups) != [group["params"] for group in fresh["param_groups"]]:
        raise damaged(file, "its groups index other parameters than this optimizer's")
    state = saved["state"]
    if not isinstance(state, dict) or not set(state) <= set(shapes):
        raise damaged(file, "it holds state for parameters this optimizer does not have")
    for index, moments in state.items():
        if not isinstance(moments, dict):
            raise damaged(f"{file}: state[{index}]", "not a mapping of moments")
        for key, value in moments.items():
            where = f"{file}: state[{index}][{key!r}]"
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                check_array(value, where, shape=shapes[index])
            elif isinstance(value, torch.Tensor):
                check_array(value, where)
            else:
                conform(value, 0.0 if isinstance(value, float) else value, where)


def check_scheduler(saved: Any, scheduler: Any, file: str) -> None:
    """Saved scheduler state against ``scheduler``'s own ``state_dict()`` (keys, one rate per group, counters)."""
    fresh = scheduler.state_dict()
    if not isinstance(saved, dict) or saved.keys() != fresh.keys():
        raise damaged(file, f"its keys differ from this scheduler's ({sorted(fresh)})")
    conform(saved, {**fresh, "lr_lambdas": None}, file)  # a lambda is code, never saved: only its slot
    if len(saved["base_lrs"]) != len(fresh["base_lrs"]):
        raise damaged(f"{file}: base_lrs", f"{len(saved['base_lrs'])} rates for {len(fresh['base_lrs'])} groups")
    for i, rate in enumerate(saved["base_lrs"]):
        if rate < 0:
            raise damaged(f"{file}: base_lrs[{i}]", f"a negative learning rate {rate}")


JSON_SCALAR = float | str | bool | None
# What each key of a saved `TrainerState` holds (transformers' annotations are looser than what it writes: an
# epoch is None before the first update, a log entry holds strings too, the callbacks' states are a mapping).
TRAINER_STATE_TYPES = {
    "epoch": float | None,
    "global_step": int,
    "episode": int,
    "max_steps": int,
    "logging_steps": float,
    "eval_steps": float,
    "save_steps": float,
    "train_batch_size": int | None,
    "num_train_epochs": float,
    "num_input_tokens_seen": int,
    "total_flos": float,
    "log_history": list[dict[str, JSON_SCALAR]],
    "best_metric": float | None,
    "best_global_step": int | None,
    "best_model_checkpoint": str | None,
    "is_local_process_zero": bool,
    "is_world_process_zero": bool,
    "is_hyper_param_search": bool,
    "trial_name": str | None,
    "trial_params": dict | None,
    "stateful_callbacks": dict,
}


def check_trainer_state(state: Any, file: str) -> None:
    """``trainer_state.json``: each key of the type in `TRAINER_STATE_TYPES`, counters non-negative integers,
    the best metric a finite number or null (a key it does not know is refused where the state is built)."""
    if not isinstance(state, dict):
        raise damaged(file, "not a JSON object")
    for key, hint in TRAINER_STATE_TYPES.items():
        if key in state and not matches(state[key], hint):
            raise damaged(f"{file}: {key}", f"{str(state[key])[:40]!r} where {describe(hint)} belongs")
    for key in ("global_step", "episode", "max_steps"):
        conform(state.get(key), 0, f"{file}: {key}")
    if state.get("best_metric") is not None:
        conform(state["best_metric"], 0.0, f"{file}: best_metric")
    if state.get("best_global_step") is not None:
        conform(state["best_global_step"], 0, f"{file}: best_global_step")


PPO_STATE_TEMPLATE = {
    "checkpoint_format": 0,
    "world_size": 0,
    "run_id": "",
    "lineage": {"id": "", "generation": 0, "ancestors": None},
    "fingerprint": None,
    "state": None,
}


def check_ppo_state(ppo_state: Any, fingerprint: dict[str, Any], file: str) -> None:
    """``ppo_state.json``: every key this format has; a fingerprint holding every field this run checks."""
    conform(ppo_state, PPO_STATE_TEMPLATE, file)
    if ppo_state["world_size"] < 1:
        raise damaged(f"{file}: world_size", "fewer than one process")
    ancestors = ppo_state["lineage"]["ancestors"]
    if not isinstance(ancestors, dict) or not all(isinstance(s, int) and s >= 0 for s in ancestors.values()):
        raise damaged(f"{file}: lineage", "its ancestors are not {lineage id: last update}")
    saved = ppo_state["fingerprint"]
    if not isinstance(saved, dict) or not set(fingerprint) <= set(saved):
        missing = sorted(set(fingerprint) - set(saved)) if isinstance(saved, dict) else "all"
        raise damaged(f"{file}: fingerprint", f"it lacks the settings {missing}")
    if not isinstance(ppo_state["state"], dict):
        raise damaged(f"{file}: state", "not a mapping")
