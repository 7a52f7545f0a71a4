"""The PPO trainer base for TRL 1.13 and later, which no longer ship one.

`PPOTrainer` takes the constructor of TRL 1.12's ``trl.experimental.ppo.PPOTrainer`` and builds the
same things in the same order (models wrapped as one module, reference model or adapter, optimizer
and scheduler, accelerator and DeepSpeed preparation, dataloaders seeded alike on every rank,
callbacks and state), so a run is the same on either base. It subclasses `transformers.Trainer` for
its optimizer, scheduler, callback, logging and Hub plumbing, but not its training loop: the loop
is `trl_replay_ppo.trainer.driver`'s.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import (
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
)
from transformers.integrations import get_reporting_integration_callbacks
from transformers.trainer import DEFAULT_CALLBACKS, DEFAULT_PROGRESS_CALLBACK
from transformers.trainer_callback import CallbackHandler, ExportableState, PrinterCallback

from trl_replay_ppo.data.prompts import seeded_preparation
from trl_replay_ppo.integrations.compat import prepare_deepspeed
from trl_replay_ppo.models.wrappers import PolicyAndValueWrapper, create_reference_model, disable_dropout
from trl_replay_ppo.trainer.base.config import PPOConfig


@dataclass
class OnlineTrainerState(TrainerState):
    """`transformers.TrainerState` plus ``episode``: generated episodes so far."""

    episode: int = 0


def _exact_div(a: int, b: int, what: str) -> int:
    if a % b:
        raise ValueError(f"{what}: {a} is not a multiple of {b}.")
    return a // b


class PPOTrainer(Trainer):
    """Sets up PPO training exactly as TRL 1.12's ``PPOTrainer`` did; the training loop is the subclass's."""

    def __init__(
        self,
        args: PPOConfig,
        processing_class: PreTrainedTokenizerBase,
        model: PreTrainedModel,
        ref_model: PreTrainedModel | None,
        reward_model: torch.nn.Module,
        train_dataset: Dataset,
        value_model: torch.nn.Module,
        data_collator: Callable | None = None,
        eval_dataset: Dataset | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        callbacks: list[TrainerCallback] | None = None,
        peft_config: Any | None = None,
    ) -> None:
        if ref_model is model:
            raise ValueError("`model` and `ref_model` must be different objects: pass a copy, or None with PEFT.")
        self.args = args
        self.processing_class = processing_class
        self.policy_model = model
        if data_collator is None:
            data_collator = DataCollatorWithPadding(processing_class)
        self.stop_token_id = processing_class.eos_token_id if args.stop_token == "eos" else args.stop_token_id
        self.policy_model.generation_config.eos_token_id = self.stop_token_id
        self._setup_peft(peft_config)
        if ref_model is not None:
            self.ref_model = ref_model
        elif self.is_peft_model:
            self.ref_model = None  # the policy with its adapter disabled
        else:
            self.ref_model = create_reference_model(self.policy_model)
        self.reward_model = reward_model
        self.train_dataset = train_dataset
        self.train_dataset_len = len(train_dataset)
        self.value_model = value_model
        self.data_collator = data_collator
        self.eval_dataset = eval_dataset
        self.optimizer, self.lr_scheduler = optimizers
        self.optimizer_cls_and_kwargs = None
        self.accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps)
        self._set_batch_sizes(args)
        for module in (self.policy_model, self.ref_model, self.value_model, self.reward_model):
            if module is not None:
                disable_dropout(module)
        self.model = PolicyAndValueWrapper(self.policy_model, self.value_model)
        self.model.config = self.policy_model.config  # what `push_to_hub` reads
        self.create_optimizer_and_scheduler(num_training_steps=args.num_total_batches)  # stepped once per update
        self._setup_callbacks_and_state(callbacks)
        self._setup_dataloaders()
        self._place_frozen_models()

    def _setup_peft(self, peft_config: Any | None) -> None:
        """Wrap the policy in LoRA (or another PEFT adapter) when ``peft_config`` is given."""
        if peft_config is not None:
            from peft import PeftConfig, PeftModel, get_peft_model

            if not isinstance(peft_config, PeftConfig):
                raise TypeError(f"`peft_config` must be a `peft.PeftConfig`, got {type(peft_config).__name__}.")
            if isinstance(self.policy_model, PeftModel):
                raise ValueError(
                    "`model` is already a `PeftModel` and `peft_config` is given: merge and unload the adapter first, "
                    "or pass the base model."
                )
            self.policy_model = get_peft_model(self.policy_model, peft_config)
        try:
            from peft import PeftModel

            self.is_peft_model = isinstance(self.policy_model, PeftModel)
        except ImportError:
            self.is_peft_model = False
        self.model_adapter_name = self.args.model_adapter_name
        self.ref_adapter_name = self.args.ref_adapter_name

    def _set_batch_sizes(self, args: PPOConfig) -> None:
        """The batch arithmetic every phase relies on, stored on ``args`` (and the per-rank seed).

        ``args.total_episodes`` is already resolved (`trl_replay_ppo.trainer.inputs`).
        """
        args.world_size = self.accelerator.num_processes
        args.local_batch_size = args.per_device_train_batch_size * args.gradient_accumulation_steps
        args.micro_batch_size = int(args.per_device_train_batch_size * args.world_size)
        args.batch_size = int(args.local_batch_size * args.world_size)
        args.mini_batch_size = _exact_div(args.batch_size, args.num_mini_batches, "`batch_size`")
        args.local_mini_batch_size = _exact_div(args.local_batch_size, args.num_mini_batches, "`local_batch_size`")
        args.num_total_batches = math.ceil(args.total_episodes / args.batch_size)  # may exceed `total_episodes`
        self.local_seed = args.seed + self.accelerator.process_index * 100003  # a prime: distinct per rank
        if args.num_sample_generations > 0:
            self.sample_generations_freq = max(1, args.num_total_batches // args.num_sample_generations)
        self.local_dataloader_batch_size = args.local_batch_size

    def _setup_callbacks_and_state(self, callbacks: list[TrainerCallback] | None) -> None:
        default_callbacks = DEFAULT_CALLBACKS + get_reporting_integration_callbacks(self.args.report_to)
        self.callbacks = default_callbacks if callbacks is None else default_callbacks + callbacks
        self.callback_handler = CallbackHandler(
            self.callbacks, self.model, self.processing_class, self.optimizer, self.lr_scheduler
        )
        self.add_callback(PrinterCallback if self.args.disable_tqdm else DEFAULT_PROGRESS_CALLBACK)
        self.control = TrainerControl()
        self.state = OnlineTrainerState(
            is_local_process_zero=self.is_local_process_zero(),
            is_world_process_zero=self.is_world_process_zero(),
            stateful_callbacks=[
                cb for cb in [*self.callback_handler.callbacks, self.control] if isinstance(cb, ExportableState)
            ],
        )
        self.current_flos = 0
        self.hp_search_backend = None
        self.is_deepspeed_enabled = getattr(self.accelerator.state, "deepspeed_plugin", None) is not None
        self.is_fsdp_enabled = getattr(self.accelerator.state, "fsdp_plugin", None) is not None
        self.hub_model_id = None
        if self.args.push_to_hub:
            self.init_hf_repo()
        if self.args.should_save:
            os.makedirs(self.args.output_dir, exist_ok=True)

    def _setup_dataloaders(self) -> None:
        """Shuffled train batches (drop_last), prepared with the global seed so every rank shuffles alike."""
        args = self.args
        self.dataloader = DataLoader(
            self.train_dataset,
            batch_size=self.local_dataloader_batch_size,
            shuffle=True,
            collate_fn=self.data_collator,
            drop_last=True,
        )
        with seeded_preparation(args.seed, self.local_seed):
            self.model, self.optimizer, self.dataloader = self.accelerator.prepare(
                self.model, self.optimizer, self.dataloader
            )
        self.eval_dataloader = None
        if self.eval_dataset is not None:
            self.eval_dataloader = self.accelerator.prepare(
                DataLoader(
                    self.eval_dataset,
                    batch_size=args.per_device_eval_batch_size,
                    collate_fn=self.data_collator,
                    drop_last=True,
                )
            )

    def _place_frozen_models(self) -> None:
        """Reference and reward models on the device (or in DeepSpeed inference engines)."""
        if self.ref_model is None and not self.is_peft_model:
            raise ValueError("No reference model, and the policy has no adapter to disable: pass `ref_model`.")
        if self.is_deepspeed_enabled:
            if self.reward_model is not None:
                self.reward_model = prepare_deepspeed(self.reward_model, self.accelerator)
            if self.ref_model is not None:
                self.ref_model = prepare_deepspeed(self.ref_model, self.accelerator)
            return
        if self.ref_model is not None:
            self.ref_model = self.ref_model.to(self.accelerator.device)
        if self.reward_model is not None:
            self.reward_model = self.reward_model.to(self.accelerator.device)

    def get_train_dataloader(self) -> DataLoader:
        return self.dataloader

    def get_eval_dataloader(self, eval_dataset: Dataset | None = None) -> DataLoader | None:
        return self.eval_dataloader

    @contextmanager
    def null_ref_context(self):
        """Within it, the policy acts as the reference: its adapter disabled (or the reference adapter set)."""
        policy = self.accelerator.unwrap_model(self.model.policy)
        with policy.disable_adapter() if self.is_peft_model and not self.ref_adapter_name else nullcontext():
            if self.ref_adapter_name:
                self.model.policy.set_adapter(self.ref_adapter_name)
            yield
            if self.ref_adapter_name:
                self.model.policy.set_adapter(self.model_adapter_name or "default")
