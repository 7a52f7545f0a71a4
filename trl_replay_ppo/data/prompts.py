"""Prompt datasets: tokenization of ``prompt`` columns, a collator that keeps extra columns, and the
resumable stream of prompt batches."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

TOKEN_COLUMNS = ("input_ids", "attention_mask")
ROW_COLUMN = "_trl_replay_ppo_row"  # each prompt's row in the dataset the user passed, for messages that name it


def is_conversational(prompt: Any) -> bool:
    """True for a chat prompt: a list of ``{"role": ..., "content": ...}`` messages."""
    return isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt)


def prepare_prompt_dataset(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_prompt_length: int | None,
    name: str = "train_dataset",
    num_proc: int | None = None,
    chat_template_kwargs: dict | None = None,
) -> Dataset:
    """Return ``dataset`` with an ``input_ids`` column, ready for the PPO dataloader.

    A dataset that already has ``input_ids`` is used as is (TRL's format), once checked to hold
    integer ids inside the tokenizer's vocabulary. Otherwise its ``prompt`` column (plain text, or
    chat messages rendered with the chat template and the generation prompt) is tokenized once;
    an empty prompt, or a chat message without ``role`` and ``content``, is an error naming its row.
    Prompts longer than ``max_prompt_length`` tokens are dropped, with the count logged, rather than
    silently truncated. Every other column is kept for the reward functions, and an internal `ROW_COLUMN`
    records each prompt's row for messages (never shown to reward functions or in messages).
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"`{name}` must be a `datasets.Dataset`, got {type(dataset).__name__}.")
    if len(dataset) == 0:
        raise ValueError(f"`{name}` is empty: it needs at least one prompt.")
    columns = dataset.column_names
    if ROW_COLUMN in columns:
        raise ValueError(f"`{name}` has a column named `{ROW_COLUMN}`, which this package reserves; rename it.")
    dataset = dataset.add_column(ROW_COLUMN, list(range(len(dataset))))
    if "input_ids" not in columns:
        if "prompt" not in columns:
            raise ValueError(
                f"`{name}` needs an `input_ids` column (tokenized prompts) or a `prompt` column (text or chat "
                f"messages); it has {columns}."
            )
        dataset = dataset.map(
            _tokenize_prompt,
            fn_kwargs={"tokenizer": tokenizer, "chat_template_kwargs": chat_template_kwargs or {}, "name": name},
            num_proc=num_proc,
            desc=f"Tokenizing {name}",
        )
    else:
        _check_token_ids(dataset, name, len(tokenizer))
    if max_prompt_length is not None:
        before = len(dataset)
        dataset = dataset.filter(
            lambda ids: len(ids) <= max_prompt_length, input_columns="input_ids", num_proc=num_proc
        )
        dropped = before - len(dataset)
        if dropped:
            logger.warning(
                "Dropped %d of %d prompts of `%s` longer than max_prompt_length=%d tokens.",
                dropped,
                before,
                name,
                max_prompt_length,
            )
        if len(dataset) == 0:
            raise ValueError(
                f"Every prompt of `{name}` is longer than max_prompt_length={max_prompt_length}; raise "
                "`max_prompt_length`."
            )
    return dataset


def _tokenize_prompt(example: dict, tokenizer: PreTrainedTokenizerBase, chat_template_kwargs: dict, name: str) -> dict:
    prompt, row = example["prompt"], example[ROW_COLUMN]
    if isinstance(prompt, list):
        for message in prompt:
            if not (isinstance(message, dict) and isinstance(message.get("content"), str) and "role" in message):
                raise ValueError(
                    f"`{name}` row {row}: every chat message needs a `role` and a string `content`; got {message!r}."
                )
        text = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, tokenize=False, **chat_template_kwargs
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    elif isinstance(prompt, str):
        ids = tokenizer(prompt)["input_ids"] if prompt.strip() else []
    else:
        raise TypeError(
            f"`{name}` row {row}: a `prompt` must be a string or a list of chat messages, got {type(prompt).__name__}."
        )
    if not ids:
        raise ValueError(f"`{name}` row {row}: the prompt {prompt!r} is empty; remove it or give it text.")
    return {"input_ids": ids}


def _check_token_ids(dataset: Dataset, name: str, vocab_size: int) -> None:
    """``input_ids`` must be non-empty lists of integer ids below ``vocab_size``."""
    for row, ids in zip(dataset[ROW_COLUMN], dataset["input_ids"], strict=True):
        if not ids:
            raise ValueError(f"`{name}` row {row}: `input_ids` is empty.")
        if not all(isinstance(i, int) for i in ids):
            raise TypeError(f"`{name}` row {row}: `input_ids` must be integer token ids, got {ids[:8]!r}.")
        if min(ids) < 0 or max(ids) >= vocab_size:
            raise ValueError(
                f"`{name}` row {row}: token id {max(ids) if max(ids) >= vocab_size else min(ids)} is outside the "
                f"tokenizer's vocabulary of {vocab_size}; tokenize the prompts with the policy's tokenizer."
            )


@dataclass
class PromptCollator:
    """Pads ``input_ids`` on the left and passes every other column as a list.

    Token columns go through transformers' ``DataCollatorWithPadding``, so a dataset with only
    ``input_ids`` is batched exactly as TRL's PPO batches it.
    """

    tokenizer: PreTrainedTokenizerBase

    def __post_init__(self) -> None:
        tokenizer = self.tokenizer
        if tokenizer.padding_side != "left":  # generation continues the last position: prompts are left-padded
            logger.warning(
                "The tokenizer pads on the %s; prompts are left-padded for generation (the tokenizer is unchanged).",
                tokenizer.padding_side,
            )
            tokenizer = copy.copy(tokenizer)
            tokenizer.padding_side = "left"
        self._pad = DataCollatorWithPadding(tokenizer)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self._pad([{k: f[k] for k in TOKEN_COLUMNS if k in f} for f in features])
        for key in features[0]:
            if key not in TOKEN_COLUMNS:
                batch[key] = [f[key] for f in features]
        return batch


class PromptStream:
    """Endless stream of prompt batches from a prepared dataloader, epoch after epoch.

    Equivalent to TRL's ``while True: yield from dataloader`` (same batches, same RNG draws), but
    it knows its position (epoch, batches consumed) so a checkpoint can restore it.
    """

    def __init__(self, dataloader: DataLoader):
        self.dataloader = dataloader
        self.epoch = 0
        self.position = 0
        self._iterator = None
        self._epoch_rng: dict[str, Any] | None = None

    def next(self) -> dict[str, Any]:
        if self._iterator is None:
            self._start_epoch()
        try:
            batch = next(self._iterator)
        except StopIteration:
            self.epoch += 1
            self.position = 0
            self._start_epoch()
            batch = next(self._iterator)
        self.position += 1
        return batch

    def _start_epoch(self) -> None:
        # The epoch's shuffle is drawn from these RNGs when its first batch is fetched; keeping them
        # lets a checkpoint replay the same epoch.
        generator = _sampler_generator(self.dataloader)
        self._epoch_rng = {
            "torch": torch.random.get_rng_state(),
            "generator": generator.get_state() if generator is not None else None,
            "iteration": getattr(self.dataloader, "iteration", 0),
        }
        self._iterator = iter(self.dataloader)

    def state_dict(self) -> dict[str, Any]:
        """Epoch, batches consumed in it, and the RNG states its shuffle was drawn from."""
        return {"epoch": self.epoch, "position": self.position, "epoch_rng": self._epoch_rng}

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """The position lies inside an epoch of this dataloader; the epoch's RNG states are ones it can replay."""
        if state["position"] > len(self.dataloader):
            raise ValueError(
                f"prompt position {state['position']} is past the {len(self.dataloader)} batches of an epoch of this "
                "dataset (was the dataset changed?)"
            )
        saved = state["epoch_rng"]
        if saved is None:
            return
        if not isinstance(saved, dict) or set(saved) != {"torch", "generator", "iteration"}:
            raise ValueError("the epoch's RNG states are not {torch, generator, iteration}")
        rng_size = torch.random.get_rng_state().shape
        for key in ("torch", "generator"):
            value = saved[key]
            if key == "generator" and value is None:
                continue
            if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.shape != rng_size:
                raise ValueError(f"the epoch's {key} RNG state is not a torch RNG state")
        if not isinstance(saved["iteration"], int) or saved["iteration"] < 0:
            raise ValueError(f"dataloader iteration {saved['iteration']!r}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replay the saved epoch's shuffle and skip the batches already consumed.

        Consumes the torch RNG; the caller restores the checkpoint's RNG states afterwards.
        """
        self.epoch, self.position = state["epoch"], state["position"]
        self._iterator, self._epoch_rng = None, state["epoch_rng"]
        if self._epoch_rng is None:
            return
        torch.random.set_rng_state(self._epoch_rng["torch"])
        generator = _sampler_generator(self.dataloader)
        if generator is not None and self._epoch_rng["generator"] is not None:
            generator.set_state(self._epoch_rng["generator"])
        if hasattr(self.dataloader, "iteration"):
            self.dataloader.iteration = self._epoch_rng["iteration"]
        self._iterator = iter(self.dataloader)
        for _ in range(self.position):
            next(self._iterator)


def repeat_prompts(prompts: dict[str, Any], groups: int) -> dict[str, Any]:
    """A collated batch with every prompt (and its columns) repeated ``groups`` times in a row."""
    if groups == 1:
        return prompts
    return {
        key: value.repeat_interleave(groups, dim=0)
        if isinstance(value, torch.Tensor)
        else [v for v in value for _ in range(groups)]
        for key, value in prompts.items()
    }


@contextmanager
def seeded_preparation(seed: int, local_seed: int) -> Iterator[None]:
    """Prepare dataloaders as TRL's constructor does: under the global ``seed``, so every rank shuffles alike,
    then back to this rank's ``local_seed``."""
    torch.manual_seed(seed)
    yield
    torch.manual_seed(local_seed)


def _sampler_generator(dataloader: DataLoader) -> torch.Generator | None:
    """The generator a (prepared) dataloader shuffles with, if it has its own; None means torch's global RNG."""
    generator = getattr(dataloader, "synchronized_generator", None)
    if generator is not None:
        return generator
    sampler = getattr(dataloader, "sampler", None)
    return getattr(sampler, "generator", None)
