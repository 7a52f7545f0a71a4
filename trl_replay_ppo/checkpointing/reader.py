"""The checkpoint reader: every file is read and checked (`read_checkpoint`) before anything of the trainer
changes (`apply_checkpoint`).

The layout is `trl_replay_ppo.checkpointing.format`; which checkpoint to resume from is
`trl_replay_ppo.checkpointing.directories.resolve_checkpoint`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import TrainerState

from trl_replay_ppo.checkpointing.directories import CHECKPOINT_PATTERN, check_not_pickle_format, resolve_checkpoint
from trl_replay_ppo.checkpointing.format import Checkpointable, check_format
from trl_replay_ppo.checkpointing.lineage import Lineage, continue_or_fork
from trl_replay_ppo.checkpointing.state_files import StateFileError, load_state
from trl_replay_ppo.checkpointing.validation import (
    check_optimizer,
    check_ppo_state,
    check_scheduler,
    check_trainable,
    check_trainer_state,
)
from trl_replay_ppo.integrations.compat import rebase_learning_rate

logger = logging.getLogger(__name__)


def read_json(file: Path) -> dict[str, Any]:
    """A checkpoint's JSON object; `StateFileError` naming the file when it is not one."""
    try:
        content = json.loads(file.read_text())
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: JSON nested past the parser's depth
        raise StateFileError(f"{file} is not a valid checkpoint file of trl_replay_ppo ({error}).") from error
    if not isinstance(content, dict):
        raise StateFileError(f"{file} is not a valid checkpoint file of trl_replay_ppo (not a JSON object).")
    return content


def read_trainable_params(trainer: Checkpointable, path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's trainable weights, checked against the trainer's (names and shapes)."""
    file = path / "trainable_params.safetensors"
    try:
        saved = load_file(file)
    except Exception as error:
        raise StateFileError(f"{file} is not a valid checkpoint file of trl_replay_ppo ({error}).") from error
    trainable = trainer.trainable_parameters()
    if saved.keys() != trainable.keys():
        missing, unexpected = sorted(trainable.keys() - saved.keys()), sorted(saved.keys() - trainable.keys())
        raise ValueError(
            f"{path} does not match this model: its trainable weights differ (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}). Resume with the same model, `peft_config` and critic settings."
        )
    shapes = [
        f"{n}: {tuple(saved[n].shape)} saved, {tuple(p.shape)} now"
        for n, p in trainable.items()
        if saved[n].shape != p.shape
    ]
    if shapes:
        raise ValueError(
            f"{path} does not match this model's shapes ({'; '.join(shapes[:3])}); resume with the same model."
        )
    check_trainable(saved, trainable, str(file))
    return saved


def copy_trainable_params(trainer: Checkpointable, saved: dict[str, torch.Tensor]) -> None:
    """Copy checked weights (`read_trainable_params`) into the trainer's policy and critic."""
    with torch.no_grad():
        for name, param in trainer.trainable_parameters().items():
            param.copy_(saved[name])


def load_trainable_params(trainer: Checkpointable, path: Path) -> None:
    """Copy the checkpoint's trainable weights into the trainer (``load_best_model_at_end``)."""
    copy_trainable_params(trainer, read_trainable_params(trainer, path))


@dataclass
class CheckpointContents:
    """Every file of a checkpoint, read and checked, ready to restore."""

    path: Path
    ppo_state: dict[str, Any]
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    trainer_state: TrainerState
    rank_state: dict[str, Any]


def read_checkpoint(trainer: Checkpointable, path: Path) -> CheckpointContents:
    """Read and check every file of ``path`` for this rank (`trl_replay_ppo.checkpointing.validation`), without
    changing anything of the trainer.

    A damaged file is a `StateFileError` naming it and what is wrong; another format is a
    `CheckpointFormatError`; a checkpoint written with other batch arithmetic, reward sources, tokenizer
    or model shapes than this run's is a ``ValueError`` naming the field.
    """
    accelerator, resumable = trainer.accelerator, trainer.resumable
    check_not_pickle_format(path)
    ppo_file = path / "ppo_state.json"
    ppo_state = read_json(ppo_file)
    check_format(path, ppo_state)
    fingerprint = trainer.resume_fingerprint()
    check_ppo_state(ppo_state, fingerprint, str(ppo_file))
    if ppo_state["world_size"] != accelerator.num_processes:
        raise ValueError(
            f"{path} was written by {ppo_state['world_size']} processes but this run has "
            f"{accelerator.num_processes}; resume with the same number of processes (each rank's replay buffer "
            "and data position are its own)."
        )
    _check_fingerprint(path, ppo_state["fingerprint"], fingerprint)
    resumable.check("shared", ppo_state["state"], str(ppo_file))
    rank_file = path / f"rank_{accelerator.process_index}.safetensors"
    if not rank_file.is_file():
        raise ValueError(f"{path} has no state for rank {accelerator.process_index} ({rank_file.name}).")
    rank_state = load_state(rank_file)
    resumable.check("rank", rank_state, str(rank_file))
    scheduler = _read_state(path / "scheduler.safetensors", check_scheduler, trainer.lr_scheduler)
    if scheduler["base_lrs"] != trainer.lr_scheduler.state_dict()["base_lrs"] and not hasattr(
        trainer.lr_scheduler, "lr_lambdas"
    ):
        raise ValueError(
            f"{path} was written with another `learning_rate`, and this run's scheduler "
            f"({type(trainer.lr_scheduler).__name__}) cannot take a new base rate mid-schedule; resume with the "
            "checkpoint's `learning_rate`."
        )
    return CheckpointContents(
        path=path,
        ppo_state=ppo_state,
        trainable=read_trainable_params(trainer, path),
        optimizer=_read_state(path / "optimizer.safetensors", check_optimizer, trainer.optimizer),
        scheduler=scheduler,
        trainer_state=_read_trainer_state(trainer, path),
        rank_state=rank_state,
    )


def _read_state(file: Path, check: Callable[[Any, Any, str], None], receiver: Any) -> Any:
    state = load_state(file)
    check(state, receiver, str(file))
    return state


def _read_trainer_state(trainer: Checkpointable, path: Path) -> TrainerState:
    file = path / "trainer_state.json"
    saved = read_json(file)
    check_trainer_state(saved, str(file))
    try:
        state = type(trainer.state)(**saved)
    except TypeError as error:
        raise StateFileError(f"{file} is not a valid trainer state ({error}).") from error
    named = CHECKPOINT_PATTERN.match(path.resolve().name)  # a symlink or a copy under another name is not checked
    if named is not None and int(named.group(1)) != state.global_step:
        raise StateFileError(
            f"{file} is at update {state.global_step!r}, not the directory's: the checkpoint was renamed or its "
            "files mixed with another's."
        )
    if state.episode != state.global_step * trainer.args.batch_size:
        raise StateFileError(
            f"{file} is damaged: {state.episode} episodes after {state.global_step} updates of "
            f"{trainer.args.batch_size} episodes each."
        )
    return state


def _check_fingerprint(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume with settings that change the data order or the meaning of the saved state."""
    for field, value in current.items():
        if field in saved and (saved[field] != value or type(saved[field]) is not type(value)):
            raise ValueError(
                f"{path} was written with {field}={saved[field]!r} but this run has {field}={value!r}; resuming would "
                f"misalign the saved data position or state. Resume with the same `{field}`, or start a new run."
            )


def apply_checkpoint(trainer: Checkpointable, contents: CheckpointContents) -> None:
    """Restore what `read_checkpoint` read, on this rank; the registry's entries in their order (RNG last).

    A changed ``learning_rate`` is applied: the schedule continues from the checkpoint's update with
    this run's base rate (`rebase_learning_rate`), and a warning says so. The run continues the
    checkpoint's line of training, or forks a new one from an earlier checkpoint (`continue_or_fork`).
    """
    base_lrs = list(trainer.lr_scheduler.state_dict()["base_lrs"])
    copy_trainable_params(trainer, contents.trainable)
    trainer.optimizer.load_state_dict(contents.optimizer)
    trainer.lr_scheduler.load_state_dict(contents.scheduler)
    if contents.scheduler["base_lrs"] != base_lrs:
        logger.warning(
            "learning_rate changed since %s (base rates %s, now %s): the schedule continues from update %d with "
            "the new rate.",
            contents.path,
            contents.scheduler["base_lrs"],
            base_lrs,
            contents.trainer_state.global_step,
        )
        rebase_learning_rate(trainer.lr_scheduler, base_lrs)
    trainer.state = contents.trainer_state
    trainer.run_id = contents.ppo_state["run_id"]
    trainer.lineage = continue_or_fork(
        Lineage.from_state(contents.ppo_state["lineage"]),
        trainer.run_id,
        contents.path,
        trainer.args.output_dir,
        contents.trainer_state.global_step,
    )
    trainer.resumable.load("shared", contents.ppo_state["state"])
    trainer.resumable.load("rank", contents.rank_state)


def read_agreed(trainer: Checkpointable, path: Path) -> CheckpointContents:
    """`read_checkpoint` on every rank, with one outcome for all: read, damaged, or refused.

    Each rank checks its own files; the worst outcome over the ranks (one all-gather) is raised on
    every rank, so all resume the same checkpoint, fall back past it together, or all fail.
    """
    accelerator = trainer.accelerator
    outcome, error = 0, None
    try:
        contents = read_checkpoint(trainer, path)
    except StateFileError as damaged:
        outcome, error = 1, damaged
    except ValueError as refused:
        outcome, error = 2, refused
    worst = int(accelerator.gather(torch.tensor([outcome], device=accelerator.device)).max())
    if worst == 0:
        return contents
    if outcome == worst and error is not None:
        raise error
    if worst == 1:
        raise StateFileError(f"{path}: another rank's files of this checkpoint are damaged (see that rank's error).")
    raise ValueError(f"{path}: another rank refused this checkpoint (see that rank's error).")


def resume(trainer: Checkpointable, resume_from_checkpoint: bool | str | os.PathLike) -> Path:
    """Find (skipping damaged ones when asked for the newest), read and restore a checkpoint; returns its path."""
    contents = resolve_checkpoint(resume_from_checkpoint, trainer.args.output_dir, lambda p: read_agreed(trainer, p))
    apply_checkpoint(trainer, contents)
    return contents.path
