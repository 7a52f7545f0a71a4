"""The one checkpoint writer and reader: atomic, every rank's state, exact resume.

A checkpoint ``output_dir/checkpoint-N`` holds::

    trainable_params.safetensors   every trainable weight of policy and critic (adapters, value head...)
    policy/                        the policy (or its adapters) and tokenizer, `from_pretrained`-ready
    optimizer.safetensors          optimizer state
    scheduler.safetensors          LR-scheduler state
    trainer_state.json             transformers' TrainerState: step, episode, log history, best metric,
                                   callbacks' state
    ppo_state.json                 checkpoint format, KL coefficient, skipped steps, world size
    rank_<i>.safetensors           per rank: python/numpy/torch RNG states, prompt-stream position,
                                   replay buffer

Nothing is pickled: tensors are safetensors, the rest JSON (`trl_replay_ppo.checkpointing.state_files`), so
loading a checkpoint someone else wrote can never run code. Checkpoints of the pickle format
(``*.pt`` files, before format 2) are refused.

It is written into ``tmp-checkpoint-N`` and renamed to ``checkpoint-N`` once every rank's files are
in: a process killed mid-write leaves only the temporary directory, which is never taken for a
checkpoint and is cleared by the next save.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from transformers import TrainerState
from transformers.trainer_callback import ExportableState

from trl_replay_ppo.checkpointing.directories import (
    CheckpointFormatError,
    check_not_pickle_format,
    checkpoint_dir,
    resolve_checkpoint,
    rotate_checkpoints,
)
from trl_replay_ppo.checkpointing.state_files import StateFileError, load_state, save_state


class Checkpointable(Protocol):
    """What the checkpoint writer and reader need of a trainer."""

    args: Any
    accelerator: Accelerator
    state: TrainerState
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    callback_handler: Any
    control: Any

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]: ...

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None: ...

    def ppo_state(self) -> dict[str, Any]: ...

    def load_ppo_state(self, state: dict[str, Any]) -> None: ...

    def rank_state(self) -> dict[str, Any]: ...

    def load_rank_state(self, state: dict[str, Any]) -> None: ...

    def resume_fingerprint(self) -> dict[str, Any]: ...


CHECKPOINT_FORMAT = 2


def trainable_state(trainer: Checkpointable) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in trainer.trainable_parameters().items()}


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.random.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.random.set_rng_state_all(state["cuda"])


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; earlier checkpoints are untouched."""


def save_checkpoint(trainer: Checkpointable) -> Path:
    """Write ``checkpoint-<global_step>`` atomically (all ranks take part); returns its path.

    An ``OSError`` on any rank (disk full, permissions...) is raised on every rank as
    `CheckpointWriteError` once the partial write is removed, so no rank waits forever.
    """
    args, accelerator, state = trainer.args, trainer.accelerator, trainer.state
    final = checkpoint_dir(args.output_dir, state.global_step)
    staging = final.with_name("tmp-" + final.name)

    def collectively(step) -> None:
        error = None
        try:
            step()
        except OSError as raised:
            error = raised
        failed = accelerator.gather(torch.tensor([int(error is not None)], device=accelerator.device)).sum() > 0
        if failed:
            if accelerator.is_main_process:
                shutil.rmtree(staging, ignore_errors=True)
            reason = f"{type(error).__name__}: {error}" if error is not None else "another process failed to write"
            raise CheckpointWriteError(
                f"Could not write checkpoint {final} ({reason}). Earlier checkpoints are untouched; free disk "
                "space or fix `output_dir`'s permissions, then resume with `resume_from_checkpoint=True`."
            ) from error

    def prepare() -> None:
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)  # left over by a run killed mid-save
            staging.mkdir(parents=True)

    def write_rank_state() -> None:
        save_state(trainer.rank_state(), staging / f"rank_{accelerator.process_index}.safetensors")

    def write_shared_state_and_commit() -> None:
        if not accelerator.is_main_process:
            return
        save_file(trainable_state(trainer), staging / "trainable_params.safetensors")
        trainer.save_model(str(staging / "policy"), _internal_call=True)
        save_state(trainer.optimizer.state_dict(), staging / "optimizer.safetensors")
        save_state(trainer.lr_scheduler.state_dict(), staging / "scheduler.safetensors")
        ppo_state = {"checkpoint_format": CHECKPOINT_FORMAT, **trainer.ppo_state()}
        (staging / "ppo_state.json").write_text(json.dumps(ppo_state, indent=2))
        state.stateful_callbacks = callback_states(trainer)
        if state.best_global_step == state.global_step:
            state.best_model_checkpoint = str(final)
        state.save_to_json(str(staging / "trainer_state.json"))
        if final.exists():  # re-saving the same step: replace the old copy only once the new one is complete
            shutil.rmtree(final)
        os.replace(staging, final)
        rotate_checkpoints(args.output_dir, args.save_total_limit, state.best_model_checkpoint, ppo_state["run_id"])

    collectively(prepare)
    collectively(write_rank_state)
    collectively(write_shared_state_and_commit)
    return final


def callback_states(trainer: Checkpointable) -> dict[str, Any]:
    """``{class name: state}`` of every stateful callback and of the trainer control (as transformers keeps it)."""
    states: dict[str, Any] = {}
    for callback in [*trainer.callback_handler.callbacks, trainer.control]:
        if isinstance(callback, ExportableState):
            name = type(callback).__name__
            if name in states:
                states[name] = [
                    *(states[name] if isinstance(states[name], list) else [states[name]]),
                    callback.state(),
                ]
            else:
                states[name] = callback.state()
    return states


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
    return saved


def load_trainable_params(trainer: Checkpointable, path: Path) -> None:
    """Copy the checkpoint's trainable weights into the trainer's policy and critic."""
    saved = read_trainable_params(trainer, path)
    with torch.no_grad():
        for name, param in trainer.trainable_parameters().items():
            param.copy_(saved[name])


def read_json(file: Path) -> dict[str, Any]:
    """A checkpoint's JSON file; `StateFileError` naming it when it is not valid JSON."""
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise StateFileError(f"{file} is not a valid checkpoint file of trl_replay_ppo ({error}).") from error


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
    """Read and check every file of ``path`` for this rank, without changing anything of the trainer.

    A damaged file is a `StateFileError` naming it; a checkpoint written with other batch
    arithmetic, reward sources or model shapes than this run's is a ``ValueError`` naming the field.
    """
    accelerator = trainer.accelerator
    check_not_pickle_format(path)
    ppo_state = read_json(path / "ppo_state.json")
    if ppo_state.get("checkpoint_format") != CHECKPOINT_FORMAT:
        raise CheckpointFormatError(
            f"{path} has checkpoint format {ppo_state.get('checkpoint_format')}; this version of trl_replay_ppo "
            f"reads format {CHECKPOINT_FORMAT}."
        )
    if ppo_state["world_size"] != accelerator.num_processes:
        raise ValueError(
            f"{path} was written by {ppo_state['world_size']} processes but this run has "
            f"{accelerator.num_processes}; resume with the same number of processes (each rank's replay buffer "
            "and data position are its own)."
        )
    _check_fingerprint(path, ppo_state.get("fingerprint", {}), trainer.resume_fingerprint())
    rank_file = path / f"rank_{accelerator.process_index}.safetensors"
    if not rank_file.is_file():
        raise ValueError(f"{path} has no state for rank {accelerator.process_index} ({rank_file.name}).")
    try:
        trainer_state = type(trainer.state)(**read_json(path / "trainer_state.json"))
    except TypeError as error:
        raise StateFileError(f"{path / 'trainer_state.json'} is not a valid trainer state ({error}).") from error
    return CheckpointContents(
        path=path,
        ppo_state=ppo_state,
        trainable=read_trainable_params(trainer, path),
        optimizer=load_state(path / "optimizer.safetensors"),
        scheduler=load_state(path / "scheduler.safetensors"),
        trainer_state=trainer_state,
        rank_state=load_state(rank_file),
    )


def _check_fingerprint(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume with settings that change the data order or the meaning of the saved state."""
    for field, value in current.items():
        if field in saved and saved[field] != value:
            raise ValueError(
                f"{path} was written with {field}={saved[field]!r} but this run has {field}={value!r}; resuming would "
                f"misalign the saved data position or state. Resume with the same `{field}`, or start a new run."
            )


def apply_checkpoint(trainer: Checkpointable, contents: CheckpointContents) -> None:
    """Restore what `read_checkpoint` read, on this rank. RNG states are restored last."""
    with torch.no_grad():
        for name, param in trainer.trainable_parameters().items():
            param.copy_(contents.trainable[name])
    trainer.optimizer.load_state_dict(contents.optimizer)
    trainer.lr_scheduler.load_state_dict(contents.scheduler)
    trainer.state = contents.trainer_state
    trainer.load_ppo_state(contents.ppo_state)
    trainer.load_rank_state(contents.rank_state)
    set_rng_state(contents.rank_state["rng"])


def resume(trainer: Checkpointable, resume_from_checkpoint: bool | str | os.PathLike) -> Path:
    """Find (skipping damaged ones when asked for the newest), read and restore a checkpoint; returns its path."""
    contents = resolve_checkpoint(
        resume_from_checkpoint, trainer.args.output_dir, lambda p: read_checkpoint(trainer, p)
    )
    apply_checkpoint(trainer, contents)
    return contents.path
