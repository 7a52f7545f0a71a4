"""Checks of the trainer's inputs that need more than the config: datasets, tokenizer and models, disk."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from trl_replay_ppo.config import ReplayPPOConfig


def check_sizes(args: ReplayPPOConfig, train_dataset: Dataset, eval_dataset: Dataset | None, world_size: int) -> None:
    """Every rank must get at least one full batch of prompts (batches are drop_last, as in TRL)."""
    prompts_per_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps // args.num_generations
    if len(train_dataset) < prompts_per_batch * world_size:
        raise ValueError(
            f"`train_dataset` has {len(train_dataset)} prompts but one update needs {prompts_per_batch * world_size} "
            f"(per_device_train_batch_size * gradient_accumulation_steps / num_generations = {prompts_per_batch}, "
            f"times {world_size} processes); add prompts or lower `per_device_train_batch_size`."
        )
    if eval_dataset is not None and len(eval_dataset) < args.per_device_eval_batch_size * world_size:
        raise ValueError(
            f"`eval_dataset` has {len(eval_dataset)} prompts, fewer than one batch of "
            f"`per_device_eval_batch_size`={args.per_device_eval_batch_size} per process ({world_size} processes); "
            "lower `per_device_eval_batch_size`."
        )


def _vocab_size(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None)
    if hasattr(model, "get_input_embeddings"):
        embeddings = model.get_input_embeddings()
        size = embeddings.num_embeddings if embeddings is not None else size
    return size


def check_vocabularies(
    tokenizer: PreTrainedTokenizerBase,
    policy: torch.nn.Module,
    reward_model: torch.nn.Module | None,
    value_model: torch.nn.Module | None,
) -> None:
    """The models read the policy tokenizer's ids: their vocabularies must cover it."""
    needed = len(tokenizer)
    for name, model in (("model", policy), ("reward_model", reward_model), ("value_model", value_model)):
        size = _vocab_size(model) if model is not None else None
        if size is not None and size < needed:
            raise ValueError(
                f"`{name}` has a vocabulary of {size} tokens but the tokenizer has {needed}: it was not trained with "
                "this tokenizer. Use models that share the policy's tokenizer (or resize their embeddings)."
            )


def check_output_dir(output_dir: str) -> None:
    """``output_dir`` must be a writable directory (checkpoints and logs go there)."""
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir):
            pass
    except OSError as error:
        raise PermissionError(f"`output_dir`={output_dir!r} is not a writable directory: {error}.") from error
