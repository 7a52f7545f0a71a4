"""`PhasedPPOTrainer`: TRL's PPO loop as a short driver over overridable phases.

``train()`` runs, once per update::

    prompts  = next prompt batch                      (next_prompts)
    batch    = generate, score, ref/behaviour logprobs, values   (rollout)
    batch    = batch (+ replayed episodes, by self.replay)       (extend_batch)
    batch    = KL-shaped rewards, GAE, whitening      (compute_advantages)
    stats    = PPO epochs x minibatches x micro-batches          (ppo_update)
    replay bookkeeping (priorities, new episodes, eviction)     (after_ppo_update)
    log, then callbacks / evaluation / checkpoint                (log_update, end_update)

With every addition switched off it performs TRL's operations in TRL's order, so a run is bitwise
equal to ``trl.experimental.ppo.PPOTrainer.train()`` (``tests/test_parity.py``).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import gather_object
from datasets import Dataset
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_callback import EarlyStoppingCallback, ProgressCallback
from transformers.trainer_utils import TrainOutput
from transformers.utils import is_rich_available
from trl.experimental.ppo import PPOTrainer
from trl.experimental.ppo.ppo_trainer import (
    batch_generation,
    forward,
    print_rich_table,
    truncate_response,
)
from trl.experimental.utils import empty_cache, get_reward
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import log_table_to_comet_experiment, selective_log_softmax

from trl_replay_ppo.callbacks import MetricsFileCallback, RewardProgressCallback, TextLogCallback
from trl_replay_ppo.checkpoint import (
    load_checkpoint,
    load_trainable_params,
    resolve_checkpoint,
    rng_state,
    save_checkpoint,
)
from trl_replay_ppo.config import ReplayPPOConfig
from trl_replay_ppo.data import PromptCollator, PromptStream, is_conversational, prepare_prompt_dataset
from trl_replay_ppo.episodes import INVALID_LOGPROB, EpisodeBatch
from trl_replay_ppo.kl import make_kl_controller
from trl_replay_ppo.masking import last_token_index, masked_mean, response_padding_mask, suppress_token
from trl_replay_ppo.modeling import SharedValueHead, apply_value_lora, enable_gradient_checkpointing
from trl_replay_ppo.objectives import (
    compute_gae,
    entropy_from_logits,
    kl_estimate,
    policy_loss,
    shaped_rewards,
    value_loss,
    whiten_advantages,
    whiten_rewards,
)
from trl_replay_ppo.replay import ExperienceReplay
from trl_replay_ppo.rewards import (
    RewardFunc,
    call_reward_func,
    preflight_reward_funcs,
    reward_func_name,
    validate_reward_funcs,
)
from trl_replay_ppo.validation import check_arguments, check_output_dir, check_sizes, check_vocabularies

logger = logging.getLogger(__name__)

PROMPT_COLUMNS = ("input_ids", "attention_mask")
EMPTY_RESPONSE_WARNING = 0.25  # warn when more than this fraction of an update's responses is empty
STAT_NAMES = ("approxkl", "pg_clipfrac", "pg_loss", "vf_loss", "vf_clipfrac", "entropy", "ratio")


class _NoRewardModel(torch.nn.Module):
    """Stands in for ``reward_model`` while TRL's constructor runs, when only reward functions are given.

    TRL's constructor requires a module it can move to the device; ours allows no reward model, so
    this placeholder is passed through and replaced by ``None`` right after.
    """


class PhasedPPOTrainer(PPOTrainer):
    """TRL's `PPOTrainer` with the same constructor, whose `train()` is split into phases.

    Adds, beyond TRL: reward functions (``reward_funcs``, GRPO-style), ``prompt`` datasets (text or
    chat), several samples per prompt, gradient clipping, entropy bonus, adaptive KL, a non-finite
    step guard, bf16 autocast, LoRA on the value model and a shared value head.

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
        self.reward_funcs = validate_reward_funcs(reward_funcs)
        check_arguments(
            args, processing_class, train_dataset, eval_dataset, reward_model, self.reward_funcs, value_model
        )
        # TRL seeds torch only; the minibatch shuffles use numpy's global RNG, so seed it (and python's) as
        # transformers' Trainer does, for runs that repeat exactly.
        random.seed(args.seed)
        np.random.seed(args.seed)
        self.reward_names = ([reward_model_name(reward_model)] if reward_model is not None else []) + [
            reward_func_name(f) for f in self.reward_funcs
        ]
        self._check_metric_for_best_model(args)

        prepare = {"num_proc": args.dataset_num_proc, "chat_template_kwargs": args.chat_template_kwargs}
        train_dataset = prepare_prompt_dataset(
            train_dataset, processing_class, args.max_prompt_length, "train_dataset", **prepare
        )
        if eval_dataset is not None:
            eval_dataset = prepare_prompt_dataset(
                eval_dataset, processing_class, args.max_prompt_length, "eval_dataset", **prepare
            )
        check_sizes(args, train_dataset, eval_dataset, PartialState().num_processes)
        check_vocabularies(processing_class, model, reward_model, value_model)
        check_output_dir(args.output_dir)
        if self.reward_funcs:
            rows = train_dataset[: min(2, len(train_dataset))]
            preflight_reward_funcs(self.reward_funcs, rows, args.reward_nonfinite_value)
        if args.total_episodes is None:
            args.total_episodes = int(args.num_train_epochs * len(train_dataset) * args.num_generations)
        self._init_mixed_precision(args)
        if args.shared_value_head:
            value_model = SharedValueHead(model)
        elif args.lora_value_model:
            if peft_config is None:
                raise ValueError("`lora_value_model=True` needs a `peft_config` (the policy's LoRA settings).")
            value_model = apply_value_lora(value_model, peft_config)

        if getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing:
            enable_gradient_checkpointing(model, value_model, args.gradient_checkpointing_kwargs)

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
        if args.early_stopping_patience is not None:
            self.add_callback(EarlyStoppingCallback(args.early_stopping_patience))
        if not args.disable_tqdm:
            self.callback_handler.remove_callback(ProgressCallback)
            self.add_callback(RewardProgressCallback)
        self.add_callback(MetricsFileCallback())
        self.add_callback(TextLogCallback())
        weights = args.reward_weights or [1.0] * len(self.reward_names)
        self.reward_weights = torch.tensor(weights, dtype=torch.float32, device=self.accelerator.device)
        self.kl_ctl = make_kl_controller(args.kl_controller, args.kl_coef, args.kl_target, args.kl_horizon)
        self.prompt_stream = PromptStream.for_trainer(self)
        self.replay: ExperienceReplay | None = None
        if args.use_replay_buffer:
            self.replay = ExperienceReplay.from_config(args, self.local_seed, processing_class.pad_token_id)
        self.skipped_steps = 0
        self.nonfinite_rewards = 0
        self.whiten_fallbacks = 0
        self.trained_episodes = 0
        self.trained_tokens = 0
        self._consecutive_skips = 0
        self._warned_empty = False

    def eval_metric_names(self) -> list[str]:
        """Every metric ``evaluate()`` returns."""
        names = ["eval_reward", "eval_reward_std", "eval_kl", "eval_response_length"]
        return names + [f"eval_rewards/{name}" for name in self.reward_names]

    def _check_metric_for_best_model(self, args: ReplayPPOConfig) -> None:
        metric = args.metric_for_best_model
        if metric is None:
            return
        full = metric if metric.startswith("eval_") else f"eval_{metric}"
        if full not in self.eval_metric_names():
            raise ValueError(
                f"`metric_for_best_model={metric!r}` is not a metric `evaluate()` produces; choose one of "
                f"{self.eval_metric_names()}."
            )

    @staticmethod
    def _init_mixed_precision(args: ReplayPPOConfig) -> None:
        """Fix accelerate's precision before TRL's constructor builds its `Accelerator`.

        TRL creates ``Accelerator(gradient_accumulation_steps=...)`` without a precision, which
        reads it from ``accelerate launch``. Accelerate's state is shared by every `Accelerator`
        in the process, so creating one here first makes TRL's accelerator honour ``bf16``/``fp16``
        and ``use_cpu``. With none of them set, the launcher's settings stand.
        """
        mixed_precision = "bf16" if args.bf16 else "fp16" if args.fp16 else None
        if mixed_precision is not None or args.use_cpu:
            Accelerator(
                mixed_precision=mixed_precision,
                cpu=args.use_cpu,
                gradient_accumulation_steps=args.gradient_accumulation_steps,
            )

    # ------------------------------------------------------------------ driver

    def train(self, resume_from_checkpoint: bool | str | None = None, **kwargs) -> TrainOutput:
        """Run the updates: rollout -> advantages -> PPO update -> log / evaluate / save.

        ``resume_from_checkpoint``: a ``checkpoint-N`` directory, or True for the newest complete one
        in ``output_dir``; training then continues exactly where that checkpoint left off.
        """
        args = self.args
        checkpoint = None
        if resume_from_checkpoint not in (None, False):
            checkpoint = resolve_checkpoint(resume_from_checkpoint, args.output_dir)
        self.begin_training(checkpoint)
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

    def begin_training(self, checkpoint: Path | None = None) -> None:
        """Initialise (or restore) the trainer state and fire ``on_train_begin``."""
        args = self.args
        self.generation_kwargs = {
            "max_new_tokens": args.response_length,
            "temperature": (args.temperature + 1e-7),
            "top_k": 0.0,
            "top_p": 1.0,
            "do_sample": True,
            **self.suppress_kwargs(),
        }
        self.accelerator.print("===training policy===")
        self.start_time = time.time()
        self.model.train()
        if checkpoint is not None:
            load_checkpoint(self, checkpoint)
            self._load_callback_state()
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
        if args.eval_on_start and checkpoint is None:
            self.evaluate()

    def end_update(self, update: int, epoch_ended: bool = False) -> None:
        """Step the LR schedule and fire callbacks; sample completions, evaluate and save when due.

        The checkpoint is written last, so it captures every state (RNG included) the next update
        starts from.
        """
        args = self.args
        self.lr_scheduler.step()
        if args.torch_empty_cache_steps and update % args.torch_empty_cache_steps == 0:
            empty_cache()  # TRL empties the device cache several times per update; here only when asked
        self.control = self.callback_handler.on_step_end(args, self.state, self.control)
        if epoch_ended:
            self.control = self.callback_handler.on_epoch_end(args, self.state, self.control)
        if args.num_sample_generations > 0 and (update - 1) % self.sample_generations_freq == 0:
            self.generate_completions(sampling=True)
        if self.control.should_evaluate:
            metrics = self.evaluate()
            self._determine_best_metric(metrics=metrics, trial=None)
        if self.control.should_save:
            self._save_checkpoint(self.model, trial=None)
            self.control = self.callback_handler.on_save(args, self.state, self.control)

    def end_training(self) -> TrainOutput:
        """Fire ``on_train_end``; restore the best checkpoint's weights if ``load_best_model_at_end``."""
        self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
        if self.control.should_save:
            self._save_checkpoint(self.model, trial=None)
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)
        best = self.state.best_model_checkpoint
        if self.args.load_best_model_at_end and best is not None and Path(best).is_dir():
            load_trainable_params(self, Path(best))
            logger.info(
                "Loaded the best model (%s=%s) from %s.", self.args.metric_for_best_model, self.state.best_metric, best
            )
        metrics = {"train_runtime": time.time() - self.start_time, "episode": self.state.episode}
        return TrainOutput(self.state.global_step, float("nan"), metrics)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the policy (or its LoRA adapters) and the tokenizer with ``save_pretrained``.

        TRL's version saves the wrapped module under DDP, which fails on tied weights; this one
        unwraps first. Writes on the main process only and never waits for the others, so it is
        safe to call from code that runs on the main process alone. DeepSpeed keeps TRL's path
        (it gathers sharded weights).
        """
        if self.is_deepspeed_enabled:
            super().save_model(output_dir, _internal_call)
            return
        output_dir = output_dir or self.args.output_dir
        if self.accelerator.is_main_process:
            self.accelerator.unwrap_model(self.model).policy.save_pretrained(output_dir)
            self.processing_class.save_pretrained(output_dir)

    def _save_checkpoint(self, model, trial) -> None:
        """Write ``checkpoint-<step>`` with this package's writer (see `trl_replay_ppo.checkpoint`)."""
        save_checkpoint(self)

    def ppo_state(self) -> dict[str, Any]:
        """Trainer-wide state beyond transformers' `TrainerState`, saved in ``ppo_state.json``."""
        return {
            "world_size": self.accelerator.num_processes,
            "kl_controller": self.kl_ctl.state_dict(),
            "skipped_steps": self.skipped_steps,
            "consecutive_skips": self._consecutive_skips,
            "nonfinite_rewards": self.nonfinite_rewards,
            "whiten_fallbacks": self.whiten_fallbacks,
            "trained_episodes": self.trained_episodes,
            "trained_tokens": self.trained_tokens,
            "warned_empty": self._warned_empty,
            "accumulation_step": self.accelerator.step,
        }

    def load_ppo_state(self, state: dict[str, Any]) -> None:
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.skipped_steps = state["skipped_steps"]
        self._consecutive_skips = state["consecutive_skips"]
        self.nonfinite_rewards = state["nonfinite_rewards"]
        self.whiten_fallbacks = state["whiten_fallbacks"]
        self.trained_episodes = state["trained_episodes"]
        self.trained_tokens = state["trained_tokens"]
        self._warned_empty = state["warned_empty"]
        self.accelerator.step = state["accumulation_step"]

    def rank_state(self) -> dict[str, Any]:
        """This rank's state: RNG states, prompt-stream position, dataloader bookkeeping."""
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
        ``end_of_dataloader``); TRL's sample generations leave the eval dataloader in that list. A
        resumed run restores the same list so it synchronises exactly as the uninterrupted run.
        """
        names = {id(self.prompt_stream.dataloader): "train", id(self.eval_dataloader): "eval"}
        references = self.accelerator.gradient_state.dataloader_references
        return [names.get(id(ref), "other") for ref in references if ref is not None]

    def _restore_dataloader_tags(self, tags: list[str]) -> None:
        loaders = {"train": self.prompt_stream.dataloader, "eval": self.eval_dataloader}
        self.accelerator.gradient_state.dataloader_references = [None] + [loaders[t] for t in tags if t in loaders]

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
        """Generate responses and compute behaviour/reference log-probs, values and scores.

        Works in chunks of ``local_rollout_forward_batch_size`` like TRL. Returns a fresh batch
        of B = ``local_batch_size`` episodes.
        """
        args, accelerator = self.args, self.accelerator
        pad_token_id = self.processing_class.pad_token_id
        queries = prompts["input_ids"].to(accelerator.device)
        context_length = queries.shape[1]
        chunk = args.local_rollout_forward_batch_size
        with accelerator.autocast():
            query_responses, logitss = self.generate(queries, self.generation_kwargs, chunk)
            logprobs, ref_logprobs, postprocessed, values, model_scores = [], [], [], [], []
            for i in range(0, queries.shape[0], chunk):
                query_response = query_responses[i : i + chunk]
                response = query_response[:, context_length:]
                logprobs.append(selective_log_softmax(logitss[i : i + chunk].float(), response))
                ref_logprobs.append(self._ref_logprobs(query_response, context_length))
                postprocessed.append(self.truncate(response))
                values.append(self.response_values(query_response, context_length))
                model_scores.extend(self.reward_model_scores(queries[i : i + chunk], postprocessed[-1]))
        del logitss
        postprocessed_responses = torch.cat(postprocessed, 0)
        sequence_lengths = last_token_index(postprocessed_responses, pad_token_id)
        scores, source_scores = self.score(prompts, postprocessed_responses, sequence_lengths, model_scores)
        contain_eos_token = torch.any(postprocessed_responses == self.processing_class.eos_token_id, dim=-1)
        if args.missing_eos_penalty is not None:
            scores[~contain_eos_token] -= args.missing_eos_penalty
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

    def generate(
        self, queries: torch.Tensor, generation_kwargs: dict[str, Any], chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample responses with TRL's ``batch_generation``: (B, Lq + R) ids and (B, R, V) processed logits."""
        with unwrap_model_for_generation(
            self.model,
            self.accelerator,
            gather_deepspeed3_params=self.args.ds3_gather_for_generation,
            generation_kwargs=generation_kwargs,
        ) as unwrapped_model:
            return batch_generation(
                unwrapped_model.policy,
                queries,
                chunk,
                self.processing_class.pad_token_id,
                GenerationConfig(**generation_kwargs),
            )

    def truncate(self, responses: torch.Tensor) -> torch.Tensor:
        """Responses with everything after the first stop token replaced by padding (TRL's post-processing)."""
        if self.stop_token_id is None:
            return responses
        return truncate_response(self.stop_token_id, self.processing_class.pad_token_id, responses)

    def reward_model_scores(self, queries: torch.Tensor, responses: torch.Tensor) -> list[torch.Tensor]:
        """``[scores]`` (b,) of the reward model on truncated responses, or ``[]`` without one."""
        if self.reward_model is None:
            return []
        query_responses = torch.cat((queries, responses), 1)
        _, scores, _ = get_reward(
            self.reward_model, query_responses, self.processing_class.pad_token_id, queries.shape[1]
        )
        return [scores.float()]

    def response_logprobs(
        self, model: torch.nn.Module, query_responses: torch.Tensor, context_length: int
    ) -> torch.Tensor:
        """(b, R) log-probs of the responses under ``model``, from temperature-scaled logits (TRL's recipe).

        The suppressed pad token has probability 0, as in generation, so these describe the
        distribution that was sampled.
        """
        output = forward(model, query_responses, self.processing_class.pad_token_id)
        logits = output.logits[:, context_length - 1 : -1].float()
        logits /= self.args.temperature + 1e-7
        logits = suppress_token(logits, self.suppressed_token_id)
        return selective_log_softmax(logits, query_responses[:, context_length:])

    def response_values(self, query_responses: torch.Tensor, context_length: int) -> torch.Tensor:
        """(b, R) critic values at each response position (before the token is generated)."""
        value_model = self.accelerator.unwrap_model(self.model).value_model
        full_value, _, _ = get_reward(value_model, query_responses, self.processing_class.pad_token_id, context_length)
        return full_value[:, context_length - 1 : -1].squeeze(-1).float()

    def _ref_logprobs(self, query_responses: torch.Tensor, context_length: int) -> torch.Tensor:
        """(b, R) reference log-probs: the ref model, or the policy with its adapter disabled."""
        if self.ref_model is None:
            with self.null_ref_context():
                return self.response_logprobs(self.model.policy, query_responses, context_length)
        return self.response_logprobs(self.ref_model, query_responses, context_length)

    def score(
        self,
        prompts: dict[str, Any],
        responses: torch.Tensor,
        sequence_lengths: torch.Tensor,
        model_scores: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted sum (B,) of the reward sources, and each source's rewards (B, S).

        ``responses`` are the post-processed (truncated) responses; reward functions see them
        decoded up to their last token, as strings (or assistant messages for chat prompts).
        """
        sources = [torch.cat(model_scores, 0)] if model_scores else []
        if self.reward_funcs:
            completions = [
                self.processing_class.decode(r[: n + 1], skip_special_tokens=True)
                for r, n in zip(responses.tolist(), sequence_lengths.tolist(), strict=True)
            ]
            if "prompt" in prompts:
                prompt_values = prompts["prompt"]
            else:
                prompt_values = self.processing_class.batch_decode(prompts["input_ids"], skip_special_tokens=True)
            if is_conversational(prompt_values[0]):
                completions = [[{"role": "assistant", "content": c}] for c in completions]
            columns = {k: v for k, v in prompts.items() if k not in PROMPT_COLUMNS and k != "prompt"}
            for func in self.reward_funcs:
                values, replaced = call_reward_func(
                    func, prompt_values, completions, columns, self.args.reward_nonfinite_value
                )
                self.nonfinite_rewards += replaced
                sources.append(torch.tensor(values, dtype=torch.float32, device=responses.device))
        if sources and self.reward_model is not None and not torch.isfinite(sources[0]).all():
            raise ValueError(
                "The reward model returned a non-finite score; check its weights and inputs. No update was made."
            )
        source_scores = torch.stack(sources, dim=1)
        return (source_scores * self.reward_weights).sum(1), source_scores

    def extend_batch(self, batch: EpisodeBatch) -> EpisodeBatch:
        """Add replayed episodes (when replay is on and every rank's buffer holds enough)."""
        if self.replay is None:
            return batch
        sizes = self.accelerator.gather(torch.tensor([len(self.replay)], device=self.accelerator.device))
        return self.replay.augment(batch, self, self.state.global_step, int(sizes.min()))

    def after_ppo_update(self, batch: EpisodeBatch) -> None:
        """Store what replay needs of this update (priorities, fresh episodes) and evict."""
        if self.replay is not None:
            self.replay.record(batch, self.state.global_step)

    @torch.no_grad()
    def logprobs_and_values(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, R) log-probs of the current policy and values of the current critic, masked like a rollout's."""
        context_length, chunk = batch.context_length, self.args.local_rollout_forward_batch_size
        policy = self.accelerator.unwrap_model(self.model).policy
        logprobs, values = [], []
        with self.accelerator.autocast():
            for i in range(0, len(batch), chunk):
                query_response = batch.query_responses[i : i + chunk]
                logprobs.append(self.response_logprobs(policy, query_response, context_length))
                values.append(self.response_values(query_response, context_length))
        logprobs = torch.masked_fill(torch.cat(logprobs), batch.padding_mask, INVALID_LOGPROB)
        values = torch.masked_fill(torch.cat(values), batch.padding_mask_p1, 0)
        return logprobs, values

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
            self.whiten_fallbacks += not whitened
        batch.raw_advantages, batch.returns = compute_gae(rewards, batch.values, args.gamma, args.lam)
        batch.advantages, whitened = whiten_advantages(batch.raw_advantages, batch.padding_mask, batch.token_weights)
        self.whiten_fallbacks += not whitened
        return batch

    def ppo_update(self, batch: EpisodeBatch) -> dict[str, torch.Tensor]:
        """``num_ppo_epochs`` passes over the batch in shuffled minibatches of micro-batches.

        Gradients accumulate through ``accelerator.accumulate`` exactly as in TRL: the optimizer
        steps every ``gradient_accumulation_steps`` micro-batches. Returns per-micro-batch
        statistics shaped (epochs, minibatches, micro-batch slots).

        There are ``gradient_accumulation_steps`` slots per minibatch, as in TRL, even though a
        minibatch holds only ``gradient_accumulation_steps / num_mini_batches`` micro-batches:
        TRL averages its logged statistics over the unwritten (zero) slots too, and the phased
        loop keeps that so its metrics stay bitwise TRL's.
        """
        args, accelerator = self.args, self.accelerator
        num_rows = len(batch)
        mini_batch_size = num_rows // args.num_mini_batches
        micro_batch_size = args.per_device_train_batch_size
        slots = max(args.gradient_accumulation_steps, math.ceil(mini_batch_size / micro_batch_size))
        shape = (args.num_ppo_epochs, args.num_mini_batches, slots)
        stats = {name: torch.zeros(shape, device=accelerator.device) for name in STAT_NAMES}
        self._grad_norms: list[float] = []
        for epoch in range(args.num_ppo_epochs):
            order = np.random.permutation(num_rows)
            for mb, mb_start in enumerate(range(0, num_rows, mini_batch_size)):
                mini_batch = order[mb_start : mb_start + mini_batch_size]
                for mu, mu_start in enumerate(range(0, mini_batch_size, micro_batch_size)):
                    with accelerator.accumulate(self.model):
                        rows = mini_batch[mu_start : mu_start + micro_batch_size]
                        loss, micro_stats = self.micro_batch_loss(batch, rows)
                        accelerator.backward(loss)
                        if accelerator.sync_gradients:
                            self.optimizer_step()
                        for name, value in micro_stats.items():
                            stats.setdefault(name, torch.zeros(shape, device=accelerator.device))
                            stats[name][epoch, mb, mu] = value
        return stats

    def micro_batch_loss(self, batch: EpisodeBatch, rows: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward one micro-batch of ``rows`` and return ``(loss, statistics)``.

        loss = clipped policy loss + ``vf_coef`` * clipped value loss - ``entropy_coef`` * entropy.
        """
        args = self.args
        context_length = batch.context_length
        responses = batch.responses[rows]
        padding_mask, padding_mask_p1 = batch.padding_mask[rows], batch.padding_mask_p1[rows]
        output, vpred_temp = forward(self.model, batch.query_responses[rows], self.processing_class.pad_token_id)
        logits = output.logits[:, context_length - 1 : -1].float()
        logits /= args.temperature + 1e-7
        logits = suppress_token(logits, self.suppressed_token_id)
        new_logprobs = selective_log_softmax(logits, responses)
        new_logprobs = torch.masked_fill(new_logprobs, padding_mask, INVALID_LOGPROB)
        vpred = vpred_temp[:, context_length - 1 : -1].squeeze(-1).float()
        vpred = torch.masked_fill(vpred, padding_mask_p1, 0)
        row_weights = None if batch.row_weights is None else batch.row_weights[rows]
        vf_loss, vf_clipfrac = value_loss(
            vpred, batch.values[rows], batch.returns[rows], padding_mask_p1, args.cliprange_value, row_weights
        )
        token_weights = None if batch.token_weights is None else batch.token_weights[rows]
        pg_loss, clipped, ratio, logprobs_diff = policy_loss(
            new_logprobs,
            batch.policy_logprobs[rows],
            batch.advantages[rows],
            padding_mask,
            args.cliprange,
            token_weights,
        )
        loss = pg_loss + args.vf_coef * vf_loss
        with torch.set_grad_enabled(args.entropy_coef > 0):
            entropy = entropy_from_logits(logits)
        if args.entropy_coef > 0:
            loss = loss - args.entropy_coef * masked_mean(entropy, ~padding_mask)
        with torch.no_grad():
            micro_stats = {
                "approxkl": 0.5 * (logprobs_diff**2).mean(),
                "pg_clipfrac": masked_mean(clipped.float(), ~padding_mask),
                "pg_loss": pg_loss,
                "vf_loss": vf_loss,
                "vf_clipfrac": vf_clipfrac,
                "entropy": entropy.mean(),
                "ratio": ratio.mean(),
            }
            if token_weights is not None:  # off-policy rows: their clip fraction and importance weights
                replay_tokens = (
                    ~padding_mask & torch.as_tensor(rows >= batch.num_fresh, device=padding_mask.device)[:, None]
                )
                micro_stats["replay_tokens"] = replay_tokens.sum()
                micro_stats["replay_clipped"] = (clipped & replay_tokens).sum()
                micro_stats["replay_weight_sum"] = (token_weights * replay_tokens).sum()
        return loss, micro_stats

    def optimizer_step(self) -> None:
        """At a gradient-sync point: clip, skip the step if anything is non-finite, else step.

        The pre-clip global norm is recorded for ``policy/grad_norm``. A non-finite norm (from a
        non-finite loss or gradient on any rank, since gradients are already all-reduced) skips the
        step on every rank alike; too many in a row stop training.
        """
        args, accelerator = self.args, self.accelerator
        max_norm = args.max_grad_norm if args.max_grad_norm else math.inf
        grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        grad_norm = float(grad_norm) if grad_norm is not None else math.nan
        if math.isfinite(grad_norm) or self.is_deepspeed_enabled:
            self.optimizer.step()
            self._grad_norms.append(grad_norm)
            self._consecutive_skips = 0
        else:
            self.skipped_steps += 1
            self._consecutive_skips += 1
            logger.warning(
                "Skipped an optimizer step: non-finite loss or gradient (norm=%s); %d skipped so far.",
                grad_norm,
                self.skipped_steps,
            )
            if self._consecutive_skips >= args.max_skipped_steps:
                raise RuntimeError(
                    f"{self._consecutive_skips} consecutive optimizer steps had a non-finite loss or gradient "
                    f"(`max_skipped_steps`={args.max_skipped_steps}). Lower `learning_rate`, set `max_grad_norm`, "
                    "or check the reward for NaN/inf values."
                )
        self.optimizer.zero_grad()

    @torch.no_grad()
    def generate_completions(self, sampling: bool = False) -> None:
        """Complete eval prompts at temperature 0.01 (as TRL does), score them and log a sample table.

        With ``sampling=True`` only the first eval batch is used (the periodic debugging samples).
        """
        if self.eval_dataset is None:
            return
        generation_kwargs = {
            "max_new_tokens": self.args.response_length,
            "temperature": 0.01 + 1e-7,
            "top_k": 0.0,
            "top_p": 1.0,
            "do_sample": True,
            **self.suppress_kwargs(),
        }
        table = defaultdict(list)
        for prompts in self.eval_dataloader:
            queries, responses, scores, _ = self.complete(prompts, generation_kwargs)
            decode = self.processing_class.batch_decode
            table["query"].extend(gather_object(decode(queries, skip_special_tokens=True)))
            table["model response"].extend(gather_object(decode(responses)))
            table["score"].extend(self.accelerator.gather_for_metrics(scores).float().cpu().numpy())
            if sampling:
                break
        self.log_completions(pd.DataFrame(table))

    @torch.no_grad()
    def evaluate(
        self,
        eval_dataset: Dataset | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Generate on the eval prompts (greedy unless ``eval_temperature > 0``) and report rewards.

        Returns ``{prefix}_reward``, ``{prefix}_reward_std``, ``{prefix}_rewards/<name>`` per reward
        source, ``{prefix}_kl`` (per-sequence KL to the reference, nats) and
        ``{prefix}_response_length`` (tokens), averaged over every rank's prompts; logs them and
        fires ``on_evaluate``.
        """
        dataloader = self.eval_dataloader if eval_dataset is None else self.make_eval_dataloader(eval_dataset)
        if dataloader is None or (eval_dataset is None and self.eval_dataset is None):
            raise ValueError("`evaluate()` needs an `eval_dataset` (pass one to the trainer or to `evaluate`).")
        generation_kwargs = self.eval_generation_kwargs()
        gather = self.accelerator.gather_for_metrics
        scores, source_scores, kls, lengths = [], [], [], []
        for prompts in dataloader:
            queries, responses, batch_scores, batch_sources = self.complete(prompts, generation_kwargs)
            sequence_lengths = last_token_index(responses, self.processing_class.pad_token_id)
            kls.append(gather(self.sequence_kl(queries, responses, sequence_lengths)))
            scores.append(gather(batch_scores))
            source_scores.append(gather(batch_sources))
            lengths.append(gather((sequence_lengths + 1).float()))
        scores_t, sources_t = torch.cat(scores), torch.cat(source_scores)
        prefix = metric_key_prefix
        metrics = {f"{prefix}_reward": scores_t.mean().item(), f"{prefix}_reward_std": scores_t.std().item()}
        for name, value in zip(self.reward_names, sources_t.mean(0).tolist(), strict=True):
            metrics[f"{prefix}_rewards/{name}"] = value
        metrics[f"{prefix}_kl"] = torch.cat(kls).mean().item()
        metrics[f"{prefix}_response_length"] = torch.cat(lengths).mean().item()
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def make_eval_dataloader(self, eval_dataset: Dataset) -> torch.utils.data.DataLoader:
        """A prepared, unshuffled dataloader over ``eval_dataset`` (tokenized like the train prompts)."""
        dataset = prepare_prompt_dataset(
            eval_dataset,
            self.processing_class,
            self.args.max_prompt_length,
            "eval_dataset",
            chat_template_kwargs=self.args.chat_template_kwargs,
        )
        dataloader = torch.utils.data.DataLoader(
            dataset, batch_size=self.args.per_device_eval_batch_size, collate_fn=self.data_collator
        )
        return self.accelerator.prepare(dataloader)

    @torch.no_grad()
    def sequence_kl(
        self, queries: torch.Tensor, responses: torch.Tensor, sequence_lengths: torch.Tensor
    ) -> torch.Tensor:
        """(B,) KL(policy || reference) of each response, summed over its tokens (k1 estimator, nats)."""
        query_responses = torch.cat((queries, responses), 1)
        context_length = queries.shape[1]
        with self.accelerator.autocast():
            policy = self.accelerator.unwrap_model(self.model).policy
            logprobs = self.response_logprobs(policy, query_responses, context_length)
            ref_logprobs = self._ref_logprobs(query_responses, context_length)
        padding_mask = response_padding_mask(sequence_lengths, responses.shape[1])
        return torch.masked_fill(logprobs - ref_logprobs, padding_mask, 0).sum(1)

    @property
    def suppressed_token_id(self) -> int | None:
        """The pad token when it must never be sampled (``suppress_pad_token``, pad distinct from eos), else None.

        A sampled pad token is indistinguishable from padding: masked out of every loss, the policy
        would never learn not to emit it. When pad and eos are the same token, it stays a legal stop.
        """
        tokenizer = self.processing_class
        if not self.args.suppress_pad_token or tokenizer.pad_token_id == tokenizer.eos_token_id:
            return None
        return tokenizer.pad_token_id

    def suppress_kwargs(self) -> dict[str, Any]:
        """Generation settings that keep the suppressed token from being sampled."""
        token = self.suppressed_token_id
        return {} if token is None else {"suppress_tokens": [token]}

    def eval_generation_kwargs(self) -> dict[str, Any]:
        """Generation settings for evaluation: greedy, or sampling at ``eval_temperature`` when > 0."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.args.response_length, **self.suppress_kwargs()}
        if self.args.eval_temperature > 0:
            return {**kwargs, "temperature": self.args.eval_temperature, "top_k": 0.0, "top_p": 1.0, "do_sample": True}
        return {**kwargs, "do_sample": False}

    @torch.no_grad()
    def complete(
        self, prompts: dict[str, Any], generation_kwargs: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Generate for one batch of prompts and score it.

        Returns ``(queries (B, Lq), truncated responses (B, R), scores (B,), source scores (B, S))``.
        """
        queries = prompts["input_ids"].to(self.accelerator.device)
        with self.accelerator.autocast():
            query_responses, _ = self.generate(queries, generation_kwargs, queries.shape[0])
            responses = self.truncate(query_responses[:, queries.shape[1] :])
            model_scores = self.reward_model_scores(queries, responses)
        sequence_lengths = last_token_index(responses, self.processing_class.pad_token_id)
        scores, source_scores = self.score(prompts, responses, sequence_lengths, model_scores)
        return queries, responses, scores, source_scores

    def log_completions(self, table: pd.DataFrame) -> None:
        """Show a few completions in the console and send the table to W&B / Comet when enabled."""
        if not self.accelerator.is_main_process:
            return
        if is_rich_available():
            print_rich_table(table.iloc[:5])
        if "wandb" in self.args.report_to:
            import wandb

            if wandb.run is not None:
                wandb.log({"completions": wandb.Table(dataframe=table)})
        if "comet_ml" in self.args.report_to:
            log_table_to_comet_experiment(name="completions.csv", table=table)

    # ------------------------------------------------------------------ logging

    @torch.no_grad()
    def log_update(self, batch: EpisodeBatch, stats: dict[str, torch.Tensor]) -> None:
        """Log TRL's metrics (computed on the fresh episodes) plus this package's, then adapt the KL coefficient."""
        gather = self.accelerator.gather_for_metrics
        fresh = batch.fresh()
        mean_kl = fresh.kl.sum(1).mean()
        mean_entropy = ((-fresh.logprobs) * (~fresh.padding_mask).float()).sum(1).mean()
        mean_non_score_reward = fresh.non_score_reward.sum(1).mean()
        rlhf_reward = mean_non_score_reward + fresh.scores.mean()
        metrics: dict[str, float] = {}
        metrics["eps"] = int(self.state.episode / (time.time() - self.start_time))
        metrics["objective/kl"] = gather(mean_kl).mean().item()
        metrics["objective/entropy"] = gather(mean_entropy).mean().item()
        metrics["objective/non_score_reward"] = gather(mean_non_score_reward).mean().item()
        metrics["objective/rlhf_reward"] = gather(rlhf_reward).mean().item()
        metrics["objective/scores"] = gather(fresh.scores.mean()).mean().item()
        metrics["policy/approxkl_avg"] = gather(stats["approxkl"]).mean().item()
        metrics["policy/clipfrac_avg"] = gather(stats["pg_clipfrac"]).mean().item()
        metrics["loss/policy_avg"] = gather(stats["pg_loss"]).mean().item()
        metrics["loss/value_avg"] = gather(stats["vf_loss"]).mean().item()
        metrics["val/clipfrac_avg"] = gather(stats["vf_clipfrac"]).mean().item()
        metrics["policy/entropy_avg"] = gather(stats["entropy"]).mean().item()
        metrics["val/ratio"] = gather(stats["ratio"]).mean().item()
        metrics["val/ratio_var"] = gather(stats["ratio"]).var().item()
        metrics["val/num_eos_tokens"] = (fresh.responses == self.processing_class.eos_token_id).sum().item()
        metrics["lr"] = self.lr_scheduler.get_last_lr()[0]
        metrics["episode"] = self.state.episode
        metrics.update(self.extra_metrics(batch, stats))
        self.kl_ctl.update(metrics["objective/kl"], self.args.batch_size)
        self.state.epoch = self.state.episode / self.train_dataset_len
        self.state.global_step += 1
        self.log(metrics)

    def extra_metrics(self, batch: EpisodeBatch, stats: dict[str, torch.Tensor]) -> dict[str, float]:
        """This package's metrics beyond TRL's: reward sources, gradient norm, KL coefficient, skips."""
        gather = self.accelerator.gather_for_metrics
        source_means = gather(batch.fresh().source_scores).mean(0).tolist()
        metrics = {f"rewards/{name}": value for name, value in zip(self.reward_names, source_means, strict=True)}
        grad_norms = self._grad_norms or [math.nan]
        metrics["policy/grad_norm"] = float(np.mean(grad_norms))
        metrics["objective/kl_coef"] = self.kl_ctl.value
        metrics["train/skipped_steps"] = self.skipped_steps
        metrics["train/whiten_fallbacks"] = self.whiten_fallbacks
        tokens = (~batch.padding_mask).sum().reshape(1) * self.args.num_ppo_epochs
        self.trained_episodes += self.accelerator.gather(torch.tensor([len(batch)], device=tokens.device)).sum().item()
        self.trained_tokens += self.accelerator.gather(tokens).sum().item()
        metrics["efficiency/generated_episodes"] = self.state.episode
        metrics["efficiency/trained_episodes"] = self.trained_episodes
        metrics["efficiency/trained_tokens"] = self.trained_tokens
        metrics["efficiency/sample_efficiency"] = self.trained_episodes / max(1, self.state.episode)
        empty = gather(self.empty_responses(batch.fresh()).float()).mean().item()
        metrics["rollout/empty_fraction"] = empty
        self.warn_if_collapsing(empty)
        if self.replay is not None:
            metrics.update(self.replay_metrics(stats))
        if self.args.reward_nonfinite_value is not None:
            metrics["rewards/nonfinite"] = self.nonfinite_rewards
        return metrics

    def replay_metrics(self, stats: dict[str, torch.Tensor]) -> dict[str, float]:
        """``buffer/*`` and ``replay/*``: buffer statistics, the replayed tokens' clip fraction and weights."""
        gather = self.accelerator.gather_for_metrics
        metrics = self.replay.metrics(self.state.global_step + 1)
        sizes = gather(torch.tensor([float(len(self.replay))], device=self.accelerator.device))
        metrics["buffer/size"] = sizes.mean().item()
        if "replay_tokens" in stats:
            tokens = gather(stats["replay_tokens"].sum().reshape(1)).sum()
            metrics["replay/clipfrac"] = (gather(stats["replay_clipped"].sum().reshape(1)).sum() / tokens).item()
            metrics["replay/is_weight_mean"] = (
                gather(stats["replay_weight_sum"].sum().reshape(1)).sum() / tokens
            ).item()
        return metrics

    def empty_responses(self, batch: EpisodeBatch) -> torch.Tensor:
        """(B,) True for a response with no content: it starts with the pad, eos or stop token."""
        first = batch.responses[:, 0]
        stops = {self.processing_class.pad_token_id, self.processing_class.eos_token_id, self.stop_token_id} - {None}
        return (batch.sequence_lengths < 0) | torch.isin(first, torch.tensor(sorted(stops), device=first.device))

    def warn_if_collapsing(self, empty_fraction: float) -> None:
        """Warn once when many responses are empty: the usual first sign of a collapsing policy."""
        if empty_fraction <= EMPTY_RESPONSE_WARNING or self._warned_empty:
            return
        self._warned_empty = True
        logger.warning(
            "%.0f%% of the responses of update %d are empty (the first token was the pad, eos or stop token). "
            "A policy drifting towards empty responses usually means `learning_rate` or `num_ppo_epochs` is too "
            "high, or the pad token can be sampled (keep `suppress_pad_token=True`, or use a pad token distinct "
            "from eos). Training stops if every response of an update is empty.",
            100 * empty_fraction,
            self.state.global_step + 1,
        )


def reward_model_name(reward_model: torch.nn.Module) -> str:
    """Name of a reward model in logs: its checkpoint's last path component, or its class name."""
    name_or_path = getattr(getattr(reward_model, "config", None), "_name_or_path", "") or ""
    return name_or_path.rstrip("/").split("/")[-1] or type(reward_model).__name__


class ReplayPPOTrainer(PhasedPPOTrainer):
    """TRL's PPOTrainer with staleness-aware (optionally prioritized) experience replay.

    A drop-in replacement for ``trl.experimental.ppo.PPOTrainer``: same constructor (plus
    ``reward_funcs``), configured by `ReplayPPOConfig`. Replay is on by default
    (``use_replay_buffer``); with it off, training is the phased loop's, i.e. TRL's.
    """


PPOTrainerWithReplay = ReplayPPOTrainer
