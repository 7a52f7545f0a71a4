"""The checkpoint writer: every rank's state, atomically (the layout is `trl_replay_ppo.checkpointing.format`).

It is written into ``tmp-checkpoint-N`` and renamed to ``checkpoint-N`` once every rank's files are
in: a process killed mid-write leaves only the temporary directory, which is never taken for a
checkpoint and is cleared by the next save.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from transformers.trainer_callback import ExportableState

from trl_replay_ppo.checkpointing.directories import checkpoint_dir, replace_directory, stamp_of
from trl_replay_ppo.checkpointing.format import CHECKPOINT_FORMAT, Checkpointable
from trl_replay_ppo.checkpointing.lineage import move_aside, rotate_checkpoints
from trl_replay_ppo.checkpointing.state_files import save_state


def trainable_state(parameters: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """The trainable weights as contiguous CPU tensors, for ``trainable_params.safetensors``."""
    return {name: p.detach().cpu().contiguous() for name, p in parameters.items()}


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
        except (OSError, SafetensorError) as raised:  # a full disk reaches safetensors' writer as SafetensorError
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
        save_state(trainer.resumable.state("rank"), staging / f"rank_{accelerator.process_index}.safetensors")

    def write_shared_state_and_commit() -> None:
        if not accelerator.is_main_process:
            return
        save_file(trainable_state(trainer.trainable_parameters()), staging / "trainable_params.safetensors")
        trainer.save_model(str(staging / "policy"), _internal_call=True)
        save_state(trainer.optimizer.state_dict(), staging / "optimizer.safetensors")
        save_state(trainer.lr_scheduler.state_dict(), staging / "scheduler.safetensors")
        ppo_state = {
            "checkpoint_format": CHECKPOINT_FORMAT,
            "world_size": accelerator.num_processes,
            "run_id": trainer.run_id,
            "lineage": trainer.lineage.state_dict(),
            "fingerprint": trainer.resume_fingerprint(),
            "state": trainer.resumable.state("shared"),
        }
        (staging / "ppo_state.json").write_text(json.dumps(ppo_state, indent=2))
        state.stateful_callbacks = callback_states(trainer)
        if state.best_global_step == state.global_step:
            state.best_model_checkpoint = str(final)
        state.save_to_json(str(staging / "trainer_state.json"))
        commit(trainer, staging, final)
        keep = [str(final), state.best_model_checkpoint]
        rotate_checkpoints(args.output_dir, args.save_total_limit, keep, trainer.lineage, trainer.run_id)

    collectively(prepare)
    collectively(write_rank_state)
    collectively(write_shared_state_and_commit)
    return final


def commit(trainer: Checkpointable, staging: Path, final: Path) -> None:
    """Put the written ``staging`` at ``final``. A checkpoint already there of this line is swapped out in one
    step (one complete copy exists at every instant); one of another line or run is moved aside, never lost."""
    if final.exists():
        stamp = stamp_of(final)
        if stamp is None or not trainer.lineage.holds(stamp, trainer.run_id):
            move_aside(final, trainer.args.output_dir)
    replace_directory(staging, final)


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
