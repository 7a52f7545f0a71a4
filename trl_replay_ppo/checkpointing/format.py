"""The checkpoint format (version 3): what ``output_dir/checkpoint-N`` holds, and what a trainer must offer.

::

    trainable_params.safetensors   every trainable weight of policy and critic (adapters, value head...)
    policy/                        the policy (or its adapters) and tokenizer, `from_pretrained`-ready
    optimizer.safetensors          optimizer state
    scheduler.safetensors          LR-scheduler state
    trainer_state.json             transformers' TrainerState: step, episode, log history, best metric,
                                   callbacks' state
    ppo_state.json                 {"checkpoint_format": 3, "world_size": W, "run_id": "...",
                                    "lineage": {"id": "...", "generation": G, "ancestors": {id: update}},
                                    "fingerprint": {settings a resume must share},
                                    "state": {name: state of each shared entry of the `StateRegistry`}}
    rank_<i>.safetensors           {name: state of each per-rank entry} for rank i (RNG states, prompt-stream
                                   position, dataloader bookkeeping, replay buffer)

Nothing is pickled: tensors are safetensors, the rest JSON (`trl_replay_ppo.checkpointing.state_files`),
so loading a checkpoint someone else wrote can never run code. Other formats are refused with
`CheckpointFormatError` and what to do: format 2 (trl_replay_ppo 0.2, whose ``ppo_state.json`` kept the
trainer's counters at its top level) and the pickle format of 0.1 (``*.pt`` files).

A checkpoint is written into ``tmp-checkpoint-N`` and renamed to ``checkpoint-N`` once every rank's
files are in (`trl_replay_ppo.checkpointing.writer`), and every file is read and checked before
anything of the trainer changes (`trl_replay_ppo.checkpointing.reader`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from transformers import TrainerState

from trl_replay_ppo.checkpointing.directories import CheckpointFormatError
from trl_replay_ppo.checkpointing.lineage import Lineage
from trl_replay_ppo.checkpointing.registry import StateRegistry

CHECKPOINT_FORMAT = 3


class Checkpointable(Protocol):
    """What the checkpoint writer and reader need of a trainer."""

    args: Any  # ``output_dir`` and ``save_total_limit``
    accelerator: Accelerator
    state: TrainerState
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    callback_handler: Any
    control: Any
    run_id: str  # stamps this run's checkpoints (rotation only deletes its own)
    lineage: Lineage  # the line of training within the run (`trl_replay_ppo.checkpointing.lineage`)
    resumable: StateRegistry

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]: ...

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None: ...

    def resume_fingerprint(self) -> dict[str, Any]: ...


def check_format(path: Path, ppo_state: dict[str, Any]) -> None:
    """Refuse a checkpoint of another format, saying which version wrote it and what to do."""
    found = ppo_state.get("checkpoint_format")
    if found == CHECKPOINT_FORMAT and "lineage" not in ppo_state and "run_id" in ppo_state:
        raise CheckpointFormatError(
            f"{path} was written by a development build of trl_replay_ppo 0.3 from before checkpoints recorded "
            "their lineage (and tokenizer digest); this build reads the released format 3. Finish that run with the "
            "build that wrote it, or start a new run from its `policy/` folder (`from_pretrained`)."
        )
    if found == CHECKPOINT_FORMAT:
        return
    if found == 2:
        raise CheckpointFormatError(
            f"{path} has checkpoint format 2, written by trl_replay_ppo 0.2; this version reads format "
            f"{CHECKPOINT_FORMAT}. Finish that run with trl_replay_ppo 0.2 (`pip install 'trl_replay_ppo==0.2.*'`), "
            "or start a new run from its `policy/` folder (`from_pretrained`)."
        )
    raise CheckpointFormatError(
        f"{path} has checkpoint format {found!r}; this version of trl_replay_ppo reads format {CHECKPOINT_FORMAT}. "
        "Resume it with the version that wrote it, or start a new run from its `policy/` folder."
    )
