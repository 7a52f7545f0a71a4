"""`ReplayPPOTrainer`: PPO for language models with experience replay, as a short driver over phases.

``train()`` runs, once per update::

    prompts = next_prompts()                    the next batch of prompts (x num_generations)
    batch   = rollout(prompts)                  generate, score, behaviour/reference log-probs, values
    batch   = extend_batch(batch)               + replayed episodes (`trl_replay_ppo.replay`)
    batch   = compute_advantages(batch)         KL-shaped rewards, GAE, whitening
    stats   = ppo_update(batch)                 epochs x minibatches x micro-batches
    after_ppo_update(batch)                     replay bookkeeping: priorities, storage, eviction
    advance_clock(batch)                        global step, epoch, KL controller
    log_update(batch, stats); end_update(...)   metrics; LR schedule, callbacks, evaluation, checkpoint

Callbacks fire in ``Trainer``'s order, an update being its step (``on_step_begin``, ``on_substep_end`` per micro-batch
that does not step, ``on_pre_optimizer_step``/``on_optimizer_step`` per optimizer step, ``on_step_end``).

Each phase is a method a subclass can override, delegating to a part the trainer holds (`trl_replay_ppo.trainer.parts`;
``resumable`` registers what checkpoints keep of them). The base is TRL's PPO, or this package's on TRL 1.13+.
With replay off and ``suppress_pad_token`` False, a run is bitwise TRL 1.12's (``tests/trainer/test_parity.py``).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_utils import TrainOutput

from trl_replay_ppo.checkpointing.ownership import claim_output_dir
from trl_replay_ppo.checkpointing.reader import load_trainable_params, resume
from trl_replay_ppo.checkpointing.writer import save_checkpoint
from trl_replay_ppo.core.episodes import EpisodeBatch
from trl_replay_ppo.core.kl import KLEarlyStop
from trl_replay_ppo.data.prompts import PromptCollator, repeat_prompts
from trl_replay_ppo.integrations.callbacks import add_package_callbacks
from trl_replay_ppo.integrations.compat import determine_best_metric, load_callback_state, save_policy_with_deepspeed
from trl_replay_ppo.models.wrappers import NoRewardModel, save_pretrained_policy
from trl_replay_ppo.rewards.calls import RewardFunc, validate_reward_funcs
from trl_replay_ppo.trainer.base import PPOTrainer
from trl_replay_ppo.trainer.config import ReplayPPOConfig
from trl_replay_ppo.trainer.conventions import UnsupportedTrainerMethods, load_named_models, mean_training_loss
from trl_replay_ppo.trainer.epochs import EpochPlan, UpdateProgress
from trl_replay_ppo.trainer.inputs import prepare_inputs
from trl_replay_ppo.trainer.metrics import mean_sequence_kl
from trl_replay_ppo.trainer.parts import build_parts
from trl_replay_ppo.trainer.state import set_step_counts

logger = logging.getLogger(__name__)

STAT_NAMES = ("approxkl", "pg_clipfrac", "pg_loss", "vf_loss", "vf_clipfrac", "entropy", "ratio")


class ReplayPPOTrainer(UnsupportedTrainerMethods, PPOTrainer):
    """PPO with staleness-aware (optionally prioritized) experience replay; a drop-in for TRL's ``PPOTrainer``.

    Same constructor as ``trl.experimental.ppo.PPOTrainer`` plus ``reward_funcs``, configured by
    `ReplayPPOConfig` (replay is on by default; ``use_replay_buffer``). What it adds to TRL: the README.

    Args:
        reward_model: optional when ``reward_funcs`` are given; both may be combined.
        reward_funcs: a callable or a list of them, ``f(prompts, completions, **columns) -> list[float]``.
        value_model: the critic; leave it None with ``args.shared_value_head=True``.
        Models may be given as Hub ids or local paths, as TRL's GRPOTrainer takes them (`load_named_models`);
        ``processing_class`` is then loaded from ``model``'s when None. Every other argument is TRL's.
    """

    def __init__(
        self,
        args: ReplayPPOConfig,
        processing_class: PreTrainedTokenizerBase | None,
        model: PreTrainedModel | str,
        ref_model: PreTrainedModel | str | None = None,
        reward_model: torch.nn.Module | str | None = None,
        train_dataset: Dataset | None = None,
        value_model: torch.nn.Module | str | None = None,
        data_collator: Callable | None = None,
        eval_dataset: Dataset | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        callbacks: list[TrainerCallback] | None = None,
        peft_config: Any | None = None,
        reward_funcs: RewardFunc | Sequence[RewardFunc] | None = None,
    ) -> None:
        # The minibatch shuffles use numpy's global RNG: seed it (and python's) as transformers' Trainer does.
        random.seed(args.seed)
        np.random.seed(args.seed)
        reward_funcs = validate_reward_funcs(reward_funcs)
        models = {"model": model, "ref_model": ref_model, "reward_model": reward_model, "value_model": value_model}
        models, processing_class = load_named_models(models, processing_class)
        model, ref_model, reward_model = models["model"], models["ref_model"], models["reward_model"]
        train_dataset, eval_dataset, value_model = prepare_inputs(
            args, processing_class, models, train_dataset, eval_dataset, peft_config, reward_funcs
        )
        super().__init__(
            args=args,
            processing_class=processing_class,
            model=model,
            ref_model=ref_model,
            reward_model=reward_model if reward_model is not None else NoRewardModel(),
            train_dataset=train_dataset,
            value_model=value_model,
            data_collator=data_collator if data_collator is not None else PromptCollator(processing_class),
            eval_dataset=eval_dataset,
            optimizers=optimizers,
            callbacks=callbacks,
            peft_config=peft_config,
        )
        if reward_model is None:
            self.reward_model = None
        add_package_callbacks(self, args)
        parts = build_parts(
            args,
            processing_class,
            self.accelerator,
            model=self.model,
            ref_model=self.ref_model,
            reward_model=self.reward_model,
            reward_funcs=reward_funcs,
            optimizer=self.optimizer,
            lr_scheduler=self.lr_scheduler,
            train_dataset=self.train_dataset,
            train_dataloader=self.dataloader,
            data_collator=self.data_collator,
            eval_dataset=self.eval_dataset,
            eval_dataloader=self.eval_dataloader,
            null_ref_context=self.null_ref_context,
            stop_token_id=self.stop_token_id,
            local_seed=self.local_seed,
            trained_weights=list(self.trainable_parameters().values()),
            deepspeed=self.is_deepspeed_enabled,
        )
        self.runner, self.scorer, self.kl_ctl = parts.runner, parts.scorer, parts.kl_ctl
        self.collector, self.prompt_stream, self.replay = parts.collector, parts.prompt_stream, parts.replay
        self.advantages, self.loss, self.optimizer_steps = parts.advantages, parts.loss, parts.optimizer_steps
        self.update_metrics, self.evaluator, self.resumable = parts.update_metrics, parts.evaluator, parts.resumable
        self.dataloader = self.prompt_stream.dataloader
        self.update_progress = UpdateProgress(micro_batches_per_epoch=(1,))
        self.run_id, self.lineage, self.fingerprint = parts.run_id, parts.lineage, parts.fingerprint  # see checkpoints
        self.step_size, self.ahead = parts.step_size, parts.ahead

    # ------------------------------------------------------------------ driver

    def train(self, resume_from_checkpoint: bool | str | None = None, **kwargs) -> TrainOutput:
        """Run the updates, holding ``output_dir`` (`claim_output_dir`): rollout -> advantages -> PPO update -> log.

        ``resume_from_checkpoint``: a ``checkpoint-N`` directory, or True for the newest complete one
        in ``output_dir``; training then continues exactly where that checkpoint left off.
        """
        args, resuming = self.args, resume_from_checkpoint not in (None, False)
        lock = claim_output_dir(self.accelerator, args.output_dir, resuming=resuming, saves=args.save_strategy != "no")
        try:
            self.begin_training(resume_from_checkpoint)
            for update in range(self.state.global_step + 1, args.num_total_batches + 1):
                self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
                self.state.episode += args.batch_size
                epoch = self.prompt_stream.epoch
                prompts = self.next_prompts()
                batch = self.rollout(prompts)
                batch = self.extend_batch(batch)
                batch = self.compute_advantages(batch)
                stats = self.ppo_update(batch)
                self.after_ppo_update(batch)
                self.advance_clock(batch)
                self.log_update(batch, stats)
                self.end_update(update, epoch_ended=self.prompt_stream.epoch > epoch)
                if self.control.should_training_stop:
                    break
            return self.end_training()
        finally:
            if self.ahead is not None:
                self.ahead.close()
            lock.release()

    def begin_training(self, resume_from_checkpoint: bool | str | None = None) -> None:
        """Initialise (or restore from a checkpoint) the trainer state and fire ``on_train_begin``."""
        args = self.args
        self.accelerator.print("===training policy===")
        self.start_time = time.time()
        self.model.train()
        resuming = resume_from_checkpoint not in (None, False)
        if resuming:
            checkpoint = resume(self, resume_from_checkpoint)
            load_callback_state(self)
            logger.info("Resumed from %s at update %d.", checkpoint, self.state.global_step)
        else:
            self.state.global_step, self.state.episode = 0, 0
        self.state.num_train_epochs = args.total_episodes / self.train_dataset_len
        set_step_counts(self.state, args)
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        self.control = self.callback_handler.on_epoch_begin(args, self.state, self.control)
        if self.is_deepspeed_enabled:
            self.deepspeed = self.model
            self.model_wrapped = self.model
        if args.eval_on_start and not resuming:
            self.evaluate()

    def advance_clock(self, batch: EpisodeBatch) -> None:
        """Count the update (``global_step``, ``epoch``) and step the KL controller on its mean KL (all ranks)."""
        self.state.global_step += 1
        self.state.epoch = self.state.episode / self.train_dataset_len
        kl = mean_sequence_kl(batch.fresh(), self.accelerator.gather_for_metrics)
        self.kl_ctl.update(kl, self.args.batch_size)

    def end_update(self, update: int, epoch_ended: bool = False) -> None:
        """Step the LR schedule and fire callbacks; sample completions, evaluate and save when due.

        The checkpoint is written last, so it captures every state (RNG included) the next update
        starts from.
        """
        args = self.args
        self.lr_scheduler.step()
        if args.torch_empty_cache_steps and update % args.torch_empty_cache_steps == 0 and torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.control = self.callback_handler.on_step_end(args, self.state, self.control)
        if epoch_ended:
            self.control = self.callback_handler.on_epoch_end(args, self.state, self.control)
            self.control = self.callback_handler.on_epoch_begin(args, self.state, self.control)
        if args.num_sample_generations > 0 and (update - 1) % self.sample_generations_freq == 0:
            self.generate_completions(sampling=True)
        if self.control.should_evaluate:
            determine_best_metric(self, self.evaluate())
        if self.control.should_save:
            self.save_checkpoint()

    def end_training(self) -> TrainOutput:
        """Fire ``on_train_end``; restore the best checkpoint's weights if ``load_best_model_at_end``."""
        self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
        self.optimizer_steps.warn_if_mostly_skipped(self.args.learning_rate)
        if self.control.should_save:
            self.save_checkpoint()
        best = self.state.best_model_checkpoint
        if self.args.load_best_model_at_end and best is not None and Path(best).is_dir():
            load_trainable_params(self, Path(best))
            logger.info(
                "Loaded the best model (%s=%s) from %s.", self.args.metric_for_best_model, self.state.best_metric, best
            )
        metrics = {"train_runtime": time.time() - self.start_time, "episode": self.state.episode}
        loss = mean_training_loss(self.state.log_history, self.args.vf_coef)
        return TrainOutput(self.state.global_step, loss, metrics)

    def save_checkpoint(self) -> Path:
        """Write ``checkpoint-<step>`` (`trl_replay_ppo.checkpointing.writer`) and fire ``on_save``."""
        path = save_checkpoint(self)
        self.control = self.callback_handler.on_save(self.args, self.state, self.control)
        return path

    # ------------------------------------------------------------------ phases

    def next_prompts(self) -> dict[str, Any]:
        """The next per-rank batch of prompts x ``num_generations`` (``generate_ahead``: those sampled ahead)."""
        ahead = self.ahead
        return ahead.prompts() if ahead else repeat_prompts(self.prompt_stream.next(), self.args.num_generations)

    def rollout(self, prompts: dict[str, Any]) -> EpisodeBatch:
        """Generate and score responses, with behaviour and reference log-probs and values (`RolloutCollector`).

        Returns the fresh batch of B = ``local_batch_size`` episodes.
        """
        return self.collector(prompts, self.state)

    def extend_batch(self, batch: EpisodeBatch) -> EpisodeBatch:
        """Add replayed episodes (when replay is on and every rank's buffer holds enough)."""
        if self.replay is None:
            return batch
        fewest = int(self.runner.min_over_ranks(len(self.replay)))
        return self.replay.augment(batch, self.runner, self.state.global_step, fewest)

    def compute_advantages(self, batch: EpisodeBatch) -> EpisodeBatch:
        """KL-shaped per-token rewards, GAE advantages and returns, whitened advantages (`AdvantageEstimator`)."""
        return self.advantages(batch, self.kl_ctl.value, self.state.global_step + 1)

    def ppo_update(self, batch: EpisodeBatch) -> dict[str, torch.Tensor]:
        """``num_ppo_epochs`` passes over the batch in shuffled minibatches of micro-batches; the optimizer steps
        every ``gradient_accumulation_steps`` micro-batches. Returns statistics shaped (epochs, minibatches, slots),
        ``written`` 1 where a micro-batch filled the slot. With ``target_kl``, a step over the limit (`KLEarlyStop`)
        is dropped and ends the update; ``self.update_progress`` says how far it got.
        """
        args, accelerator = self.args, self.accelerator
        plan = EpochPlan.from_config(args, num_rows=len(batch), num_fresh=batch.num_fresh)
        shape = (args.num_ppo_epochs, args.num_mini_batches, plan.stat_slots())
        stats = {name: torch.zeros(shape, device=accelerator.device) for name in (*STAT_NAMES, "written")}
        self.optimizer_steps.begin_update()
        progress = self.update_progress = UpdateProgress(plan.micro_batches_per_epoch())
        kl_stop = None
        if args.target_kl is not None:
            kl_stop = KLEarlyStop(args.target_kl, lambda t: accelerator.reduce(t.to(accelerator.device), "sum"))
        for epoch, minibatch, micro, rows in plan.schedule():
            with accelerator.accumulate(self.model):
                loss, micro_stats = self.micro_batch_loss(batch, rows)
                accelerator.backward(loss)
                progress.add(int(micro_stats["valid_tokens"]))
                if kl_stop is not None:
                    kl_stop.add(micro_stats["kl_sum"], micro_stats["kl_weight"])
                for name, value in {**micro_stats, "written": 1.0}.items():
                    stats.setdefault(name, torch.zeros(shape, device=accelerator.device))
                    stats[name][epoch, minibatch, micro] = value
                if not accelerator.sync_gradients:
                    self.control = self.callback_handler.on_substep_end(args, self.state, self.control)
                else:
                    if kl_stop is not None and kl_stop.exceeded():
                        self.optimizer.zero_grad()  # DeepSpeed's engine steps inside backward: there it is taken
                        progress.drop()
                        break
                    self.optimizer_step()
                    progress.keep()
        progress.keep()
        if kl_stop is not None:
            progress.early_stop_kl = kl_stop.last
        if self.step_size is not None:
            self.step_size.update(stats["kl_sum"], stats["kl_weight"])
        return stats

    def micro_batch_loss(self, batch: EpisodeBatch, rows: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss and statistics of the micro-batch of ``rows`` (`trl_replay_ppo.trainer.loss.PPOLoss`)."""
        return self.loss(batch, rows)

    def optimizer_step(self) -> None:
        """At a gradient-sync point: clip, skip a non-finite step, else step (`OptimizerStep`)."""
        self.control = self.callback_handler.on_pre_optimizer_step(self.args, self.state, self.control)
        self.optimizer_steps(self.state.global_step + 1)
        self.control = self.callback_handler.on_optimizer_step(self.args, self.state, self.control)

    def after_ppo_update(self, batch: EpisodeBatch) -> None:
        """Store what replay needs of this update (priorities, fresh episodes) and evict."""
        if self.replay is not None:
            self.replay.record(batch, self.state.global_step)

    @torch.no_grad()
    def log_update(self, batch: EpisodeBatch, stats: dict[str, torch.Tensor]) -> None:
        """Log TRL's metrics (on the fresh episodes) and this package's; nothing else changes."""
        metrics = self.update_metrics(
            batch,
            stats,
            self.update_progress,
            episode=self.state.episode,
            elapsed=time.time() - self.start_time,
            lr=self.lr_scheduler.get_last_lr()[0],
            update=self.state.global_step,
        )
        metrics.update(self.optimizer_steps.metrics())
        metrics.update(self.advantages.metrics() | (self.step_size.metrics() if self.step_size else {}))
        if self.replay is not None:
            metrics.update(self.replay.metrics(self.state.global_step))
            size = torch.tensor([float(len(self.replay))], device=self.accelerator.device)
            metrics["buffer/size"] = self.accelerator.gather_for_metrics(size).mean().item()
        metrics.update(self.scorer.metrics() | self.collector.last_metrics)
        self.log(metrics)

    def evaluate(
        self,
        eval_dataset: Dataset | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Score the eval prompts (`Evaluator.evaluate`), log the metrics and fire ``on_evaluate``."""
        metrics = self.evaluator.evaluate(self.state, eval_dataset, metric_key_prefix)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def generate_completions(self, sampling: bool = False) -> None:
        """Complete eval prompts at temperature 0.01 (as TRL does), score them and log a sample table."""
        table = self.evaluator.completions(self.state, sampling)
        if table is not None:
            self.evaluator.log_completions(table)

    # ------------------------------------------------------------------ what checkpoints read

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Every trainable weight of policy and critic (LoRA adapters, value head...), by name."""
        model = self.accelerator.unwrap_model(self.model)
        return {name: p for name, p in model.named_parameters() if p.requires_grad}

    def resume_fingerprint(self) -> dict[str, Any]:
        """Settings a checkpoint can only be resumed with (`trl_replay_ppo.trainer.state.resume_fingerprint`)."""
        return dict(self.fingerprint)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the policy (or its LoRA adapters) and the tokenizer with ``save_pretrained``.

        Writes on the main process only, never waiting for the others (safe from main-process-only code); under
        DeepSpeed, transformers' ``Trainer.save_model`` gathers the sharded policy (the critic is not saved there).
        """
        if self.is_deepspeed_enabled:
            save_policy_with_deepspeed(self, output_dir, _internal_call)
            return
        if self.accelerator.is_main_process:
            save_pretrained_policy(
                self.accelerator.unwrap_model(self.model),
                self.processing_class,
                output_dir or self.args.output_dir,
                with_value_model=self.args.save_value_model,
            )
