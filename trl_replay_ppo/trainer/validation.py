"""Checks of the trainer's inputs that need more than the config: datasets, tokenizer and models, disk."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from trl_replay_ppo.trainer.config import ReplayPPOConfig

logger = logging.getLogger(__name__)


def check_arguments(
    args: ReplayPPOConfig,
    processing_class: PreTrainedTokenizerBase,
    train_dataset: Dataset | None,
    eval_dataset: Dataset | None,
    reward_model: torch.nn.Module | None,
    reward_funcs: list,
    value_model: torch.nn.Module | None,
) -> None:
    """The trainer's arguments taken together: types, a reward, the critic, evaluation."""
    if not isinstance(args, ReplayPPOConfig):
        raise TypeError(
            f"`args` must be a `ReplayPPOConfig` (a superset of TRL's `PPOConfig` with the same fields), got "
            f"{type(args).__name__}. Replace `PPOConfig(...)` by `ReplayPPOConfig(...)`."
        )
    if train_dataset is None:
        raise ValueError("`train_dataset` is required: a `datasets.Dataset` with `input_ids` or `prompt`.")
    if getattr(processing_class, "eos_token_id", None) is None:
        raise ValueError(
            "The tokenizer (`processing_class`) has no eos token, so responses cannot end. Set one before building "
            "the trainer, e.g. `tokenizer.eos_token = '<|endoftext|>'` (a token of the model's vocabulary)."
        )
    if getattr(processing_class, "pad_token_id", None) is None:
        raise ValueError(
            "The tokenizer (`processing_class`) has no pad token. Set one before building the trainer, e.g. "
            "`tokenizer.add_special_tokens({'pad_token': '[PAD]'})` and resize the model embeddings."
        )
    if reward_model is None and not reward_funcs:
        raise ValueError("No reward: pass `reward_model`, `reward_funcs`, or both.")
    num_sources = int(reward_model is not None) + len(reward_funcs)
    if args.reward_weights is not None and len(args.reward_weights) != num_sources:
        raise ValueError(
            f"`reward_weights` has {len(args.reward_weights)} entries but there are {num_sources} reward sources "
            "(the reward model, if any, then each reward function)."
        )
    if args.shared_value_head and value_model is not None:
        raise ValueError("`shared_value_head=True` builds the critic on the policy: pass `value_model=None`.")
    if not args.shared_value_head and value_model is None:
        raise ValueError("`value_model` is required (or set `shared_value_head=True`).")
    if eval_dataset is not None and not isinstance(eval_dataset, Dataset):
        raise TypeError(f"`eval_dataset` must be a `datasets.Dataset`, got {type(eval_dataset).__name__}.")
    if eval_dataset is None and (args.eval_strategy != "no" or args.eval_on_start):
        raise ValueError(
            f"`eval_strategy={args.eval_strategy!s}`/`eval_on_start` need an `eval_dataset`; pass one or set "
            "`eval_strategy='no'`."
        )


def check_sizes(args: ReplayPPOConfig, train_dataset: Dataset, world_size: int) -> None:
    """Every rank must get at least one full batch of training prompts (batches are drop_last, as in TRL).

    (Evaluation scores every prompt whatever its count, so the eval dataset may be of any size.)
    """
    prompts_per_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps // args.num_generations
    if len(train_dataset) < prompts_per_batch * world_size:
        raise ValueError(
            f"`train_dataset` has {len(train_dataset)} prompts but one update needs {prompts_per_batch * world_size} "
            f"(per_device_train_batch_size * gradient_accumulation_steps / num_generations = {prompts_per_batch}, "
            f"times {world_size} processes); add prompts or lower `per_device_train_batch_size`."
        )


def _vocab_size(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None)
    if hasattr(model, "get_input_embeddings"):
        embeddings = model.get_input_embeddings()
        size = embeddings.num_embeddings if embeddings is not None else size
    return size


def check_vocabularies(
    tokenizer: PreTrainedTokenizerBase, models: dict[str, torch.nn.Module | None], datasets: dict[str, Dataset | None]
) -> None:
    """Every token id that can reach a model's embedding (``models``: ``{argument name: model}``) lies inside it.

    Those ids are the prompts' (``datasets``, tokenized) and the ones the policy generates (below its own
    rows), so each model needs at least the policy's rows. The pad token is masked out of every model input:
    a tokenizer larger than the embeddings only by tokens that never reach them (TRL's PPO example adds a
    ``[PAD]`` without resizing) is accepted with a warning, as TRL's PPO accepts it.
    """
    sizes = {name: size for name, model in models.items() if model is not None and (size := _vocab_size(model))}
    policy = sizes.get("model", len(tokenizer))
    for name, size in sizes.items():
        if size < policy:
            raise ValueError(
                f"`{name}` has a vocabulary of {size} tokens but `model` generates ids up to {policy - 1}: it was not "
                "trained with this tokenizer. Use models that share the policy's tokenizer (or resize embeddings)."
            )
    smallest = min(sizes.values(), default=policy)
    if tokenizer.eos_token_id >= policy:
        raise ValueError(
            f"The eos token (id {tokenizer.eos_token_id}) is past `model`'s {policy} embedding rows, so no response "
            "could end; resize the embeddings (`model.resize_token_embeddings(len(tokenizer))`) or use its own eos."
        )
    pad = tokenizer.pad_token_id
    for name, dataset in datasets.items():
        top = max((i for ids in dataset["input_ids"] for i in ids if i != pad), default=-1) if dataset else -1
        if top >= smallest:
            raise ValueError(
                f"`{name}` holds token id {top}, past the {smallest} embedding rows of the models: resize their "
                "embeddings (`resize_token_embeddings(len(tokenizer))`) before training on the added tokens."
            )
    if len(tokenizer) > smallest:
        past = tokenizer.convert_ids_to_tokens(list(range(smallest, len(tokenizer)))[:5])
        logger.warning(
            "The tokenizer has %d tokens, the models' embeddings %d rows: the ids past them (%s) never reach a model "
            "(the pad token is masked out of every input, the policy cannot generate them, no prompt holds them), so "
            "training goes on without resizing, as TRL's PPO does. Resize the embeddings to silence this.",
            len(tokenizer),
            smallest,
            ", ".join(past),
        )


def check_output_dir(output_dir: str) -> None:
    """``output_dir`` must be a writable directory (checkpoints and logs go there)."""
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir):
            pass
    except OSError as error:
        raise PermissionError(f"`output_dir`={output_dir!r} is not a writable directory: {error}.") from error


def check_models(
    args: ReplayPPOConfig,
    policy: torch.nn.Module,
    value_model: torch.nn.Module | None,
    peft_config: object | None,
    longest_prompt: int,
) -> None:
    """What the models must be: a trainable, finite policy with room for prompt + response, a 1-output critic."""
    if peft_config is None and not any(p.requires_grad for p in policy.parameters()):
        raise ValueError(
            "`model` has no trainable parameter, so only the critic would train. Unfreeze it "
            "(`requires_grad_(True)`) or pass a `peft_config` to train adapters."
        )
    bad = [name for name, p in policy.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise ValueError(f"`model` holds NaN or inf weights ({', '.join(bad[:3])}); load a healthy checkpoint.")
    if value_model is not None:
        labels = getattr(getattr(value_model, "config", None), "num_labels", 1)
        head = getattr(value_model, "score", None)
        outputs = getattr(head, "out_features", 1)
        if labels != 1 or outputs != 1:
            raise ValueError(
                f"`value_model` must output one value per token (a 1-label sequence classifier); it has "
                f"num_labels={labels}. Load it with `AutoModelForSequenceClassification.from_pretrained(..., "
                "num_labels=1)`."
            )
    positions = getattr(getattr(policy, "config", None), "max_position_embeddings", None)
    if positions is not None and longest_prompt + args.response_length > positions:
        raise ValueError(
            f"The longest prompt ({longest_prompt} tokens) plus `response_length`={args.response_length} exceeds the "
            f"policy's {positions} positions (`max_position_embeddings`); lower `response_length` or "
            "`max_prompt_length`."
        )
