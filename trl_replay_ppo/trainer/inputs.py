"""Preparing and checking the trainer's inputs, before any model is wrapped or any generation is paid for.

Every check raises an error that names the argument or field and the fix (`trl_replay_ppo.trainer.validation`,
`trl_replay_ppo.trainer.config_checks`); the datasets are tokenized here, the reward functions tried once on
two rows, and the critic variant (shared head, LoRA) built.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import trl
from accelerate import Accelerator, PartialState
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trl_replay_ppo.data.prompts import ROW_COLUMN, prepare_prompt_dataset
from trl_replay_ppo.integrations.compat import trl_ppo
from trl_replay_ppo.models.vllm_sampler import vllm_import_error
from trl_replay_ppo.models.wrappers import SharedValueHead, apply_value_lora, enable_gradient_checkpointing
from trl_replay_ppo.rewards.calls import CallSettings, RewardFunc, preflight_reward_funcs
from trl_replay_ppo.rewards.scorer import NOT_REWARD_COLUMNS, prompts_as_passed, source_names
from trl_replay_ppo.trainer.config import ReplayPPOConfig
from trl_replay_ppo.trainer.config_checks import MAX_EPISODES
from trl_replay_ppo.trainer.conventions import differences_from_trl
from trl_replay_ppo.trainer.evaluation import eval_metric_names
from trl_replay_ppo.trainer.validation import (
    check_arguments,
    check_models,
    check_output_dir,
    check_sizes,
    check_vocabularies,
)

logger = logging.getLogger(__name__)


def prepare_inputs(
    args: ReplayPPOConfig,
    processing_class: PreTrainedTokenizerBase,
    models: dict[str, PreTrainedModel | torch.nn.Module | None],
    train_dataset: Dataset | None,
    eval_dataset: Dataset | None,
    peft_config: Any | None,
    reward_funcs: list[RewardFunc],
) -> tuple[Dataset, Dataset | None, torch.nn.Module]:
    """Check everything, tokenize the datasets, build the critic; returns ``(train, eval, value model)``.

    ``models`` holds the constructor's ``model``, ``ref_model``, ``reward_model`` and ``value_model``.
    """
    model, reward_model, value_model = models["model"], models["reward_model"], models["value_model"]
    check_arguments(args, processing_class, train_dataset, eval_dataset, reward_model, reward_funcs, value_model)
    if args.use_vllm and trl_ppo() is not None:
        raise ValueError(
            "`use_vllm=True` is verified on TRL >= 1.13, where this package brings its own PPO base; this is TRL "
            f"{trl.__version__}, whose PPOTrainer it builds on. Upgrade TRL (`pip install -U trl`) or set "
            "`use_vllm=False`."
        )
    if args.use_vllm and (missing := vllm_import_error()) is not None:
        raise ImportError(missing)
    _check_metric_for_best_model(args, source_names(reward_model, reward_funcs))
    prepare = {"num_proc": args.dataset_num_proc, "chat_template_kwargs": args.chat_template_kwargs}
    train_dataset = prepare_prompt_dataset(
        train_dataset, processing_class, args.max_prompt_length, "train_dataset", **prepare
    )
    if eval_dataset is not None:
        eval_dataset = prepare_prompt_dataset(
            eval_dataset, processing_class, args.max_prompt_length, "eval_dataset", **prepare
        )
    check_sizes(args, train_dataset, PartialState().num_processes)
    check_vocabularies(processing_class, models, {"train_dataset": train_dataset, "eval_dataset": eval_dataset})
    longest = max(len(ids) for ids in train_dataset["input_ids"])
    if eval_dataset is not None:
        longest = max(longest, max(len(ids) for ids in eval_dataset["input_ids"]))
    check_models(args, model, value_model, peft_config, longest)
    check_output_dir(args.output_dir)
    if (differences := differences_from_trl(args)) and PartialState().is_main_process:
        logger.warning(differences)
    names = source_names(reward_model, reward_funcs)[int(reward_model is not None) :]
    for name, dataset in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
        if reward_funcs and dataset is not None and len(dataset):
            rows = dataset[: min(2, len(dataset))]
            columns = {k: v for k, v in rows.items() if k not in NOT_REWARD_COLUMNS}
            prompts = prompts_as_passed(rows, processing_class)
            settings = CallSettings.from_args(args, PartialState().process_index)
            preflight_reward_funcs(reward_funcs, names, prompts, columns, settings, rows[ROW_COLUMN], name)
    if args.total_episodes is None:
        episodes = float(args.num_train_epochs) * len(train_dataset) * args.num_generations
        if episodes > MAX_EPISODES:
            raise ValueError(
                f"`num_train_epochs`={args.num_train_epochs} passes over {len(train_dataset)} prompts x "
                f"{args.num_generations} generations is {episodes:g} episodes, past 2**53; lower `num_train_epochs` "
                "or set `total_episodes`."
            )
        args.total_episodes = int(episodes)
    _init_mixed_precision(args)
    _check_launch(args)
    if args.shared_value_head:
        value_model = SharedValueHead(model)
    elif args.lora_value_model:
        if peft_config is None:
            raise ValueError("`lora_value_model=True` needs a `peft_config` (the policy's LoRA settings).")
        value_model = apply_value_lora(value_model, peft_config)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model, value_model, args.gradient_checkpointing_kwargs)
    return train_dataset, eval_dataset, value_model


def _check_metric_for_best_model(args: ReplayPPOConfig, source_names: list[str]) -> None:
    metric = args.metric_for_best_model
    if metric is None:
        return
    names = eval_metric_names(source_names)
    full = metric if metric.startswith("eval_") else f"eval_{metric}"
    if full not in names:
        raise ValueError(
            f"`metric_for_best_model={metric!r}` is not a metric `evaluate()` produces; choose one of {names}."
        )


def _check_launch(args: ReplayPPOConfig) -> None:
    """The launcher's processes form this run: N processes each training alone would share one `output_dir`."""
    launched, joined = int(os.environ.get("WORLD_SIZE", "1")), PartialState().num_processes
    if launched != joined:
        cpu = "" if args.use_cpu else " On a machine without a GPU, set `use_cpu=True` (`--use_cpu true`)."
        raise RuntimeError(
            f"The launcher started {launched} processes (WORLD_SIZE={launched}) but this one trains as one of "
            f"{joined}: they would run {launched} separate trainings into one `output_dir`.{cpu} Otherwise "
            "launch a single process, or check the launcher's distributed settings."
        )


def _init_mixed_precision(args: ReplayPPOConfig) -> None:
    """Fix accelerate's precision before the base constructor builds its `Accelerator`.

    The base creates ``Accelerator(gradient_accumulation_steps=...)`` without a precision, which
    reads it from ``accelerate launch``. Accelerate's state is shared by every `Accelerator` in the
    process, so creating one here first makes the base's accelerator honour ``bf16``/``fp16`` and
    ``use_cpu``. With none of them set, the launcher's settings stand.
    """
    mixed_precision = "bf16" if args.bf16 else "fp16" if args.fp16 else None
    if mixed_precision is not None or args.use_cpu:
        Accelerator(
            mixed_precision=mixed_precision,
            cpu=args.use_cpu,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
        )
