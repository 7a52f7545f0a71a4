"""The one place this package touches other libraries' private or unstable surface, with the versions checked.

Checked against TRL 1.12 and 1.16, transformers 5.24 and accelerate 1.15 (the versions CI tests):

- TRL ``trl.experimental.ppo`` (``PPOConfig``, ``PPOTrainer``): present in TRL 1.0-1.12, removed in 1.13.
  `trl_replay_ppo.trainer.base` builds on it where present (see `trl_ppo`), on this package's own base elsewhere.
- TRL ``trl.models.utils.unwrap_model_for_generation`` and ``prepare_deepspeed``: the DeepSpeed ZeRO-3
  gathering for generation; same leading arguments in 1.12 and 1.16.
- TRL ``trl.trainer.utils.log_table_to_comet_experiment``: present in 1.12 and 1.16.
- transformers ``Trainer._determine_best_metric`` and ``Trainer._load_callback_state``: private methods that
  keep ``state.best_metric`` and restore stateful callbacks as ``Trainer`` itself does.
- transformers: ``is_gradient_checkpointing`` is deprecated in favour of ``is_activation_checkpointing`` (5.x).
- accelerate ``gradient_state.dataloader_references`` and ``Accelerator.step``: the bookkeeping that decides
  when gradients synchronise; a checkpoint saves and restores them for an exact resume.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from accelerate import Accelerator
from transformers import Trainer
from trl.models.utils import prepare_deepspeed, unwrap_model_for_generation
from trl.trainer.utils import log_table_to_comet_experiment

__all__ = [
    "accumulation_step",
    "dataloader_references",
    "determine_best_metric",
    "is_checkpointing",
    "load_callback_state",
    "log_table_to_comet_experiment",
    "prepare_deepspeed",
    "set_accumulation_step",
    "set_dataloader_references",
    "trl_ppo",
    "unwrap_model_for_generation",
]


def trl_ppo() -> tuple[type, type] | None:
    """TRL's ``(PPOConfig, PPOTrainer)`` where TRL still ships them (TRL <= 1.12), else None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TRL warns on each first import of trl.experimental; nothing to act on
            from trl.experimental.ppo import PPOConfig, PPOTrainer
    except ImportError:
        return None
    return PPOConfig, PPOTrainer


def is_checkpointing(model: torch.nn.Module) -> bool:
    """Whether activation (gradient) checkpointing is on, under either of transformers' names."""
    if hasattr(type(model), "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def determine_best_metric(trainer: Any, metrics: dict[str, float]) -> None:
    """Update ``state.best_metric`` / ``best_global_step`` from evaluation ``metrics``, as `Trainer` does."""
    trainer._determine_best_metric(metrics=metrics, trial=None)


def load_callback_state(trainer: Any) -> None:
    """Restore stateful callbacks (early stopping counters...) from ``state.stateful_callbacks``, as `Trainer` does."""
    trainer._load_callback_state()


def dataloader_references(accelerator: Accelerator) -> list:
    """The dataloaders accelerate tracks as being iterated (it reads the end-of-data flag from the last one)."""
    return accelerator.gradient_state.dataloader_references


def set_dataloader_references(accelerator: Accelerator, references: list) -> None:
    accelerator.gradient_state.dataloader_references = references


def accumulation_step(accelerator: Accelerator) -> int:
    """Micro-batches seen by ``accelerator.accumulate``: when it reaches the accumulation steps, gradients sync."""
    return accelerator.step


def set_accumulation_step(accelerator: Accelerator, step: int) -> None:
    accelerator.step = step


def rebase_learning_rate(scheduler: Any, base_lrs: list[float]) -> None:
    """Give a resumed schedule (a ``LambdaLR``, as transformers builds) new base rates, keeping its position.

    Each group's rate becomes ``base * lr_lambda(last_epoch)``, what the schedule would have reached with
    this base; torch has no public way to change the base of a live schedule.
    """
    scheduler.base_lrs = list(base_lrs)
    for group, base, lr_lambda in zip(scheduler.optimizer.param_groups, base_lrs, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = base
        group["lr"] = base * lr_lambda(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def save_policy_with_deepspeed(trainer: Any, output_dir: str | None, internal_call: bool) -> None:
    """Save the (sharded) policy with transformers' ``Trainer.save_model``, which gathers DeepSpeed shards.

    That method saves ``trainer.model`` and reads ``trainer.deepspeed``: the policy stands in for both
    while it runs (the critic is not saved there).
    """
    wrapped, engine = trainer.model, trainer.deepspeed
    trainer.model = trainer.deepspeed = trainer.model.policy
    try:
        Trainer.save_model(trainer, output_dir, internal_call)
    finally:
        trainer.model, trainer.deepspeed = wrapped, engine
