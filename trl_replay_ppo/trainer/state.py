"""`ResumableState`: what of the trainer a checkpoint saves and restores, beyond weights and optimizer.

A mixin of `trl_replay_ppo.trainer.driver.ReplayPPOTrainer`; `trl_replay_ppo.checkpointing.checkpoint` writes and reads
what these methods return.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from trl_replay_ppo.checkpointing.checkpoint import rng_state
from trl_replay_ppo.integrations.compat import (
    accumulation_step,
    dataloader_references,
    set_accumulation_step,
    set_dataloader_references,
)
from trl_replay_ppo.models.wrappers import export_value_model


@dataclass
class Counters:
    """Run-wide counters, logged as metrics and saved with every checkpoint."""

    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss or gradient
    consecutive_skips: int = 0
    whiten_fallbacks: int = 0  # whitenings left out for lack of 2 valid tokens
    trained_episodes: int = 0  # rows trained on (fresh + replayed), all ranks
    trained_tokens: int = 0  # response tokens trained on, times the PPO epochs, all ranks
    warned_empty: bool = False  # the collapse warning was given


class ResumableState:
    """``ppo_state`` (shared by all ranks, JSON) and ``rank_state`` (each rank's own), and their loaders."""

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Every trainable weight of policy and critic (LoRA adapters, value head...), by name."""
        model = self.accelerator.unwrap_model(self.model)
        return {name: p for name, p in model.named_parameters() if p.requires_grad}

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the policy (or its LoRA adapters) and the tokenizer with ``save_pretrained``.

        The base's version saves the wrapped module under DDP, which fails on tied weights; this one
        unwraps first. Writes on the main process only and never waits for the others, so it is safe
        to call from code that runs on the main process alone. With ``save_value_model`` the trained
        critic goes to ``output_dir/value_model`` (see `export_value_model`). DeepSpeed keeps the
        base's path (it gathers sharded weights; the critic is not saved there).
        """
        if self.is_deepspeed_enabled:
            super().save_model(output_dir, _internal_call)
            return
        output_dir = output_dir or self.args.output_dir
        if self.accelerator.is_main_process:
            model = self.accelerator.unwrap_model(self.model)
            model.policy.save_pretrained(output_dir)
            self.processing_class.save_pretrained(output_dir)
            if self.args.save_value_model:
                export_value_model(model.value_model, model.policy).save_pretrained(Path(output_dir) / "value_model")

    def ppo_state(self) -> dict[str, Any]:
        """Trainer-wide state beyond transformers' `TrainerState`, saved in ``ppo_state.json``."""
        return {
            "world_size": self.accelerator.num_processes,
            "run_id": self.run_id,
            "fingerprint": self.resume_fingerprint(),
            "kl_controller": self.kl_ctl.state_dict(),
            "counters": asdict(self.counters),
            "nonfinite_rewards": self.scorer.nonfinite,
            "accumulation_step": accumulation_step(self.accelerator),
        }

    def resume_fingerprint(self) -> dict[str, Any]:
        """Settings a checkpoint can only be resumed with: they fix the data order or the saved state's meaning."""
        args = self.args
        fields = (
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "num_mini_batches",
            "num_generations",
            "use_replay_buffer",
            "replay_buffer_size",
            "use_priority_sampling",
        )
        return {**{name: getattr(args, name) for name in fields}, "reward sources": list(self.scorer.names)}

    def load_ppo_state(self, state: dict[str, Any]) -> None:
        self.run_id = state["run_id"]
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.counters = Counters(**state["counters"])
        self.scorer.nonfinite = state["nonfinite_rewards"]
        set_accumulation_step(self.accelerator, state["accumulation_step"])

    def rank_state(self) -> dict[str, Any]:
        """This rank's state: RNG states, prompt-stream position, dataloader bookkeeping, replay buffer."""
        return {
            "rng": rng_state(),
            "prompt_stream": self.prompt_stream.state_dict(),
            "active_dataloaders": self._dataloader_tags(),
            "replay": None if self.replay is None else self.replay.state_dict(),
        }

    def load_rank_state(self, state: dict[str, Any]) -> None:
        if (state["replay"] is None) != (self.replay is None):
            raise ValueError(
                "The checkpoint and this run disagree on `use_replay_buffer`; resume with the value it was saved with."
            )
        self.prompt_stream.load_state_dict(state["prompt_stream"])
        self._restore_dataloader_tags(state["active_dataloaders"])
        if self.replay is not None:
            self.replay.load_state_dict(state["replay"])

    def _dataloader_tags(self) -> list[str]:
        """Which dataloaders accelerate currently tracks as being iterated, in order.

        Accelerate decides gradient synchronisation partly from the last of them (its
        ``end_of_dataloader``); sample generations leave the eval dataloader in that list. A resumed
        run restores the same list so it synchronises exactly as the uninterrupted run.
        """
        names = {id(self.prompt_stream.dataloader): "train", id(self.eval_dataloader): "eval"}
        references = dataloader_references(self.accelerator)
        return [names.get(id(ref), "other") for ref in references if ref is not None]

    def _restore_dataloader_tags(self, tags: list[str]) -> None:
        loaders = {"train": self.prompt_stream.dataloader, "eval": self.eval_dataloader}
        set_dataloader_references(self.accelerator, [None] + [loaders[t] for t in tags if t in loaders])
