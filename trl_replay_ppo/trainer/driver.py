"""`ReplayPPOTrainer`: PPO for language models with experience replay, as a short driver over phases.

``train()`` runs, once per update::

    prompts = next_prompts()                    the next batch of prompts (x num_generations)
    batch   = rollout(prompts)                  generate, score, behaviour/reference log-probs, values
    batch   = extend_batch(batch)               + replayed episodes (`trl_replay_ppo.replay`)
    batch   = compute_advantages(batch)         KL-shaped rewards, GAE, whitening
    stats   = ppo_update(batch)                 epochs x minibatches x micro-batches
    after_ppo_update(batch)                     replay bookkeeping: priorities, storage, eviction
    log_update(batch, stats); end_update(...)   metrics, callbacks, evaluation, checkpoint

Each phase is a method a subclass can override. Where the rest lives: generation and forward
passes in `trl_replay_ppo.models.runner`, reward sources in `trl_replay_ppo.rewards.scorer`, evaluation in
`trl_replay_ppo.trainer.evaluation`, checkpointed state in `trl_replay_ppo.trainer.state` (written by
`trl_replay_ppo.checkpointing.checkpoint`), the losses in `trl_replay_ppo.core.losses` (assembled per
micro-batch in `trl_replay_ppo.trainer.loss`), the base (TRL's PPO, or this package's on TRL
1.13+) in `trl_replay_ppo.trainer.base`. With replay off and ``suppress_pad_token`` False, a run is
bitwise TRL 1.12's ``PPOTrainer.train()`` (``tests/test_parity.py``).
"""

from __future__ import annotations

import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_utils import TrainOutput

from trl_replay_ppo.checkpointing.checkpoint import load_trainable_params, resume, save_checkpoint
from trl_replay_ppo.core.advantages import compute_gae, shaped_rewards, whiten_advantages, whiten_rewards
from trl_replay_ppo.core.episodes import INVALID_LOGPROB, EpisodeBatch
from trl_replay_ppo.core.kl import KLEarlyStop, kl_estimate, make_kl_controller
from trl_replay_ppo.core.masking import last_token_index
from trl_replay_ppo.data.prompts import PromptCollator, PromptStream
from trl_replay_ppo.integrations.callbacks import add_package_callbacks
from trl_replay_ppo.integrations.compat import determine_best_metric, load_callback_state
from trl_replay_ppo.models.forwards import gather_logprobs
from trl_replay_ppo.models.runner import ModelPasses
from trl_replay_ppo.replay import ExperienceReplay
from trl_replay_ppo.rewards.calls import RewardFunc, validate_reward_funcs
from trl_replay_ppo.rewards.scorer import Scorer
from trl_replay_ppo.trainer.base import PPOTrainer
from trl_replay_ppo.trainer.config import ReplayPPOConfig
from trl_replay_ppo.trainer.evaluation import Evaluation
from trl_replay_ppo.trainer.inputs import prepare_inputs
from trl_replay_ppo.trainer.loss import MicroBatchLoss, UpdateProgress, micro_batch_rows
from trl_replay_ppo.trainer.metrics import (
    UpdateMetrics,
)
from trl_replay_ppo.trainer.optimizer_step import OptimizerStep
from trl_replay_ppo.trainer.state import Counters, ResumableState

logger = logging.getLogger(__name__)

STAT_NAMES = ("approxkl", "pg_clipfrac", "pg_loss", "vf_loss", "vf_clipfrac", "entropy", "ratio")


class _NoRewardModel(torch.nn.Module):
    """Stands in for ``reward_model`` while the base constructor runs, when only reward functions are given."""


class ReplayPPOTrainer(
    Evaluation, ModelPasses, MicroBatchLoss, OptimizerStep, UpdateMetrics, ResumableState, PPOTrainer
):
    """PPO with staleness-aware (optionally prioritized) experience replay; a drop-in for TRL's ``PPOTrainer``.

    Same constructor as ``trl.experimental.ppo.PPOTrainer`` plus ``reward_funcs``, configured by
    `ReplayPPOConfig`. Beyond TRL: reward functions (GRPO's contract), ``prompt`` datasets (text or
    chat), several samples per prompt, gradient clipping, entropy bonus, adaptive KL, a non-finite
    step guard, bf16 autocast, LoRA on the value model or a shared value head, checkpoints with exact
    resume, evaluation and early stopping, and replay (on by default; ``use_replay_buffer``).

    Args:
        reward_model: optional when ``reward_funcs`` are given; both may be combined.
        reward_funcs: a callable or a list of them, ``f(prompts, completions, **columns) -> list[float]``.
        value_model: the critic; leave it None with ``args.shared_value_head=True``.
        Every other argument is TRL's.
    """

    def __init__(
        self,
        args: ReplayPPOConfig,
        processing_class: PreTrainedTokenizerBase,
        model: PreTrainedModel,
        ref_model: PreTrainedModel | None = None,
        reward_model: torch.nn.Module | None = None,
        train_dataset: Dataset | None = None,
        value_model: torch.nn.Module | None = None,
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
        train_dataset, eval_dataset, value_model = prepare_inputs(
            args, processing_class, models, train_dataset, eval_dataset, peft_config, reward_funcs
        )
        super().__init__(
            args=args,
            processing_class=processing_class,
            model=model,
            ref_model=ref_model,
            reward_model=reward_model if reward_model is not None else _NoRewardModel(),
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
        self.scorer = Scorer.from_args(args, processing_class, self.reward_model, reward_funcs, self.accelerator)
        add_package_callbacks(self, args)
        self.kl_ctl = make_kl_controller(args.kl_controller, args.kl_coef, args.kl_target, args.kl_horizon)
        self.prompt_stream = PromptStream.for_trainer(self)
        self.replay: ExperienceReplay | None = None
        if args.use_replay_buffer:
            self.replay = ExperienceReplay.from_config(args, self.local_seed, processing_class.pad_token_id)
        self.counters = Counters()
        self.run_id = uuid.uuid4().hex  # stamps this run's checkpoints; a resumed run takes its checkpoint's

    # ------------------------------------------------------------------ driver

    def train(self, resume_from_checkpoint: bool | str | None = None, **kwargs) -> TrainOutput:
        """Run the updates: rollout -> advantages -> PPO update -> log / evaluate / save.

        ``resume_from_checkpoint``: a ``checkpoint-N`` directory, or True for the newest complete one
        in ``output_dir``; training then continues exactly where that checkpoint left off.
        """
        args = self.args
        self.begin_training(resume_from_checkpoint)
        for update in range(self.state.global_step + 1, args.num_total_batches + 1):
            self.state.episode += args.batch_size
            epoch = self.prompt_stream.epoch
            prompts = self.next_prompts()
            batch = self.rollout(prompts)
            batch = self.extend_batch(batch)
            batch = self.compute_advantages(batch)
            stats = self.ppo_update(batch)
            self.after_ppo_update(batch)
            self.log_update(batch, stats)
            self.end_update(update, epoch_ended=self.prompt_stream.epoch > epoch)
            if self.control.should_training_stop:
                break
        return self.end_training()

    def begin_training(self, resume_from_checkpoint: bool | str | None = None) -> None:
        """Initialise (or restore from a checkpoint) the trainer state and fire ``on_train_begin``."""
        args = self.args
        self.generation_kwargs = {
            "max_new_tokens": args.response_length,
            "temperature": (args.temperature + 1e-7),
            "top_k": 0,
            "top_p": 1.0,
            "do_sample": True,
            **self.suppress_kwargs(),
        }
        self.accelerator.print("===training policy===")
        self.start_time = time.time()
        self.model.train()
        resuming = resume_from_checkpoint not in (None, False)
        if resuming:
            checkpoint = resume(self, resume_from_checkpoint)
            load_callback_state(self)
            logger.info("Resumed from %s at update %d.", checkpoint, self.state.global_step)
        else:
            self.state.global_step = 0
            self.state.episode = 0
        self.state.max_steps = args.num_total_batches
        self.state.num_train_epochs = args.total_episodes / self.train_dataset_len
        for name in ("logging_steps", "eval_steps", "save_steps"):
            value = getattr(args, name)
            if value is not None:
                setattr(self.state, name, math.ceil(self.state.max_steps * value) if value < 1 else value)
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        if self.is_deepspeed_enabled:
            self.deepspeed = self.model
            self.model_wrapped = self.model
        if args.eval_on_start and not resuming:
            self.evaluate()

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
        if args.num_sample_generations > 0 and (update - 1) % self.sample_generations_freq == 0:
            self.generate_completions(sampling=True)
        if self.control.should_evaluate:
            determine_best_metric(self, self.evaluate())
        if self.control.should_save:
            self.save_checkpoint()

    def end_training(self) -> TrainOutput:
        """Fire ``on_train_end``; restore the best checkpoint's weights if ``load_best_model_at_end``."""
        self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
        if self.control.should_save:
            self.save_checkpoint()
        best = self.state.best_model_checkpoint
        if self.args.load_best_model_at_end and best is not None and Path(best).is_dir():
            load_trainable_params(self, Path(best))
            logger.info(
                "Loaded the best model (%s=%s) from %s.", self.args.metric_for_best_model, self.state.best_metric, best
            )
        metrics = {"train_runtime": time.time() - self.start_time, "episode": self.state.episode}
        return TrainOutput(self.state.global_step, float("nan"), metrics)

    def save_checkpoint(self) -> Path:
        """Write ``checkpoint-<step>`` (`trl_replay_ppo.checkpointing.checkpoint`) and fire ``on_save``."""
        path = save_checkpoint(self)
        self.control = self.callback_handler.on_save(self.args, self.state, self.control)
        return path

    # ------------------------------------------------------------------ phases

    def next_prompts(self) -> dict[str, Any]:
        """The next per-rank batch of prompts, each repeated ``num_generations`` times."""
        prompts = self.prompt_stream.next()
        groups = self.args.num_generations
        if groups == 1:
            return prompts
        return {
            key: value.repeat_interleave(groups, dim=0)
            if isinstance(value, torch.Tensor)
            else [v for v in value for _ in range(groups)]
            for key, value in prompts.items()
        }

    @torch.no_grad()
    def rollout(self, prompts: dict[str, Any]) -> EpisodeBatch:
        """Generate responses; compute behaviour and reference log-probs, values and scores.

        Works in chunks of ``local_rollout_forward_batch_size``. Returns the fresh batch of
        B = ``local_batch_size`` episodes.
        """
        args, accelerator = self.args, self.accelerator
        pad_token_id = self.processing_class.pad_token_id
        queries = prompts["input_ids"].to(accelerator.device)
        context_length = queries.shape[1]
        chunk = args.local_rollout_forward_batch_size
        with accelerator.autocast():
            query_responses, sampled_logits = self.generate(queries, self.generation_kwargs, chunk)
            logprobs, ref_logprobs, truncated, values, model_scores = [], [], [], [], []
            for i in range(0, queries.shape[0], chunk):
                query_response = query_responses[i : i + chunk]
                response = query_response[:, context_length:]
                logprobs.append(gather_logprobs(sampled_logits[i : i + chunk].float(), response))
                ref_logprobs.append(self.ref_logprobs(query_response, context_length))
                truncated.append(self.truncate(response))
                values.append(self.response_values(query_response, context_length))
                model_scores.extend(self.scorer.model_scores(queries[i : i + chunk], truncated[-1]))
        del sampled_logits
        responses = torch.cat(truncated, 0)
        sequence_lengths = last_token_index(responses, pad_token_id)
        scores, source_scores = self.scorer.score(prompts, responses, sequence_lengths, model_scores, self.state)
        if args.missing_eos_penalty is not None:
            has_eos = torch.any(responses == self.processing_class.eos_token_id, dim=-1)
            scores[~has_eos] -= args.missing_eos_penalty
        batch = EpisodeBatch(
            query_responses=query_responses,
            context_length=context_length,
            logprobs=torch.cat(logprobs, 0),
            ref_logprobs=torch.cat(ref_logprobs, 0),
            values=torch.cat(values, 0),
            scores=scores,
            source_scores=source_scores,
            sequence_lengths=sequence_lengths,
            num_fresh=queries.shape[0],
        )
        batch.logprobs = torch.masked_fill(batch.logprobs, batch.padding_mask, INVALID_LOGPROB)
        batch.ref_logprobs = torch.masked_fill(batch.ref_logprobs, batch.padding_mask, INVALID_LOGPROB)
        batch.values = torch.masked_fill(batch.values, batch.padding_mask_p1, 0)
        return batch

    def extend_batch(self, batch: EpisodeBatch) -> EpisodeBatch:
        """Add replayed episodes (when replay is on and every rank's buffer holds enough)."""
        if self.replay is None:
            return batch
        fewest = int(self.min_over_ranks(len(self.replay)))
        return self.replay.augment(batch, self, self.state.global_step, fewest)

    @torch.no_grad()
    def compute_advantages(self, batch: EpisodeBatch) -> EpisodeBatch:
        """KL-shaped per-token rewards, GAE advantages and returns, whitened advantages."""
        args = self.args
        if bool(batch.padding_mask.all()):
            raise RuntimeError(
                f"Every response of update {self.state.global_step + 1} is empty: the policy emitted the pad token "
                "first, so there is nothing to train on. The policy has collapsed; lower `learning_rate`, keep "
                "`max_grad_norm` on, and use a pad token distinct from the stop token."
            )
        batch.kl = kl_estimate(batch.policy_logprobs, batch.ref_logprobs, args.kl_estimator)
        rewards, batch.non_score_reward = shaped_rewards(batch.kl, batch.scores, batch.score_index, self.kl_ctl.value)
        if args.whiten_rewards:
            rewards, whitened = whiten_rewards(rewards, batch.padding_mask_p1)
            self.counters.whiten_fallbacks += not whitened
        batch.raw_advantages, batch.returns = compute_gae(rewards, batch.values, args.gamma, args.lam)
        batch.advantages, whitened = whiten_advantages(batch.raw_advantages, batch.padding_mask, batch.token_weights)
        self.counters.whiten_fallbacks += not whitened
        return batch

    def ppo_update(self, batch: EpisodeBatch) -> dict[str, torch.Tensor]:
        """``num_ppo_epochs`` passes over the batch in shuffled minibatches of micro-batches.

        Gradients accumulate through ``accelerator.accumulate``: the optimizer steps every
        ``gradient_accumulation_steps`` micro-batches. Returns per-micro-batch statistics shaped
        (epochs, minibatches, slots), with ``gradient_accumulation_steps`` slots per minibatch (as
        TRL; it averages its logged statistics over unwritten slots too, and so does this loop).
        With ``target_kl`` set, each step is checked first (`trl_replay_ppo.core.kl.KLEarlyStop`); a step
        over the limit is dropped and ends the update. ``self.update_progress`` says how far it got.
        """
        args, accelerator = self.args, self.accelerator
        num_rows = len(batch)
        mini_batch_size = num_rows // args.num_mini_batches
        micro_batch_size = args.per_device_train_batch_size
        micro_per_minibatch = math.ceil(mini_batch_size / micro_batch_size)
        slots = max(args.gradient_accumulation_steps, micro_per_minibatch)
        shape = (args.num_ppo_epochs, args.num_mini_batches, slots)
        stats = {name: torch.zeros(shape, device=accelerator.device) for name in STAT_NAMES}
        self._grad_norms: list[float] = []
        progress = self.update_progress = UpdateProgress(args.num_mini_batches * micro_per_minibatch)
        kl_stop = None
        if args.target_kl is not None:
            kl_stop = KLEarlyStop(args.target_kl, lambda t: accelerator.reduce(t.to(accelerator.device), "sum"))
        for epoch, minibatch, micro, rows in micro_batch_rows(
            num_rows, args.num_ppo_epochs, mini_batch_size, micro_batch_size
        ):
            with accelerator.accumulate(self.model):
                loss, micro_stats = self.micro_batch_loss(batch, rows)
                accelerator.backward(loss)
                progress.add(int(micro_stats["valid_tokens"]))
                if kl_stop is not None:
                    kl_stop.add(micro_stats["kl_sum"], micro_stats["valid_tokens"])
                for name, value in micro_stats.items():
                    stats.setdefault(name, torch.zeros(shape, device=accelerator.device))
                    stats[name][epoch, minibatch, micro] = value
                if accelerator.sync_gradients:
                    if kl_stop is not None and kl_stop.exceeded():
                        self.optimizer.zero_grad()  # DeepSpeed's engine steps inside backward: there it is taken
                        progress.drop()
                        break
                    self.optimizer_step()
                    progress.keep()
        progress.keep()
        if kl_stop is not None:
            progress.early_stop_kl = kl_stop.last
        return stats

    def after_ppo_update(self, batch: EpisodeBatch) -> None:
        """Store what replay needs of this update (priorities, fresh episodes) and evict."""
        if self.replay is not None:
            self.replay.record(batch, self.state.global_step)
