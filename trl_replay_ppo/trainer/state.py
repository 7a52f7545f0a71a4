"""The trainer's resumable state beyond its parts: accelerate's loop bookkeeping, and the settings a resume must share.

The parts themselves (KL controller, optimizer step, advantages, metrics, scorer, prompt stream,
replay) are registered in the trainer's `trl_replay_ppo.checkpointing.registry.StateRegistry`.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from trl_replay_ppo.integrations.compat import (
    accumulation_step,
    dataloader_references,
    set_accumulation_step,
    set_dataloader_references,
)

RESUME_FIELDS = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_mini_batches",
    "num_generations",
    "use_replay_buffer",
    "replay_buffer_size",
    "use_priority_sampling",
)


def resume_fingerprint(args: Any, source_names: list[str], tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """Settings a checkpoint can only be resumed with: they fix the data order or the saved state's meaning.

    ``tokenizer`` is a digest of the vocabulary (every token and its id): stored token ids mean
    something else under a tokenizer of the same size with its tokens permuted.
    """
    vocabulary = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode()
    return {
        **{name: getattr(args, name) for name in RESUME_FIELDS},
        "reward sources": list(source_names),
        "tokenizer": hashlib.sha256(vocabulary).hexdigest()[:16],
    }


def set_step_counts(state: Any, args: Any) -> None:
    """``max_steps`` (updates) and the logging, eval and save intervals in updates (a fraction < 1 is of the run)."""
    state.max_steps = args.num_total_batches
    for name in ("logging_steps", "eval_steps", "save_steps"):
        value = getattr(args, name)
        if value is not None:
            setattr(state, name, math.ceil(state.max_steps * value) if value < 1 else value)


class AccumulationState:
    """Accelerate's gradient-accumulation counter, which decides at which micro-batch gradients synchronise."""

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator

    def state_dict(self) -> dict[str, Any]:
        return {"step": accumulation_step(self.accelerator)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_accumulation_step(self.accelerator, state["step"])


class DataloaderTags:
    """Which dataloaders accelerate currently tracks as being iterated, in order (per rank), and which of them
    reached their last batch.

    Accelerate decides gradient synchronisation partly from the last of them (its
    ``end_of_dataloader``); sample generations leave the eval dataloader in that list. A resumed
    run restores the same list and flags so it synchronises exactly as the uninterrupted run. A tag is
    ``train``, ``eval`` or ``other``, with ``:end`` when that dataloader was at its end.
    """

    def __init__(self, accelerator: Accelerator, train: DataLoader, eval_: DataLoader | None):
        self.accelerator = accelerator
        self.loaders = {"train": train, "eval": eval_}

    def state_dict(self) -> dict[str, Any]:
        names = {id(loader): tag for tag, loader in self.loaders.items() if loader is not None}
        references = [ref for ref in dataloader_references(self.accelerator) if ref is not None]
        ends = [":end" if getattr(ref, "end_of_dataloader", False) else "" for ref in references]
        return {"active": [names.get(id(ref), "other") + end for ref, end in zip(references, ends, strict=True)]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        loaders = []
        for tag in state["active"]:
            name, _, end = tag.partition(":")
            loader = self.loaders.get(name)
            if loader is not None:
                loader.end_of_dataloader = end == "end"
                loaders.append(loader)
        set_dataloader_references(self.accelerator, [None, *loaders])
