"""The parts a `ReplayPPOTrainer` holds, built from its config and what the PPO base set up (`build_parts`).

Each part takes what it needs in its constructor and owns its state; the ones a checkpoint must
hold are registered in one `StateRegistry` (shared entries in ``ppo_state.json``, per-rank ones in
``rank_<i>.safetensors``; `trl_replay_ppo.checkpointing.format`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from trl_replay_ppo.checkpointing.lineage import Lineage
from trl_replay_ppo.checkpointing.registry import RNGState, StateRegistry
from trl_replay_ppo.core.kl import FixedKLController, make_kl_controller
from trl_replay_ppo.data.prompts import PromptStream, repeat_prompts, seeded_preparation
from trl_replay_ppo.models.generator_process import GeneratorProcess
from trl_replay_ppo.models.runner import ModelRunner, generation_kwargs, suppressed_token
from trl_replay_ppo.models.vllm_sampler import VLLMSampler
from trl_replay_ppo.models.wrappers import embedding_rows
from trl_replay_ppo.replay import ExperienceReplay
from trl_replay_ppo.rewards.calls import RewardFunc
from trl_replay_ppo.rewards.scorer import Scorer
from trl_replay_ppo.trainer.advantages import AdvantageEstimator
from trl_replay_ppo.trainer.config import ReplayPPOConfig
from trl_replay_ppo.trainer.evaluation import Evaluator
from trl_replay_ppo.trainer.generate_ahead import GenerateAhead
from trl_replay_ppo.trainer.loss import PPOLoss
from trl_replay_ppo.trainer.metrics import UpdateMetrics
from trl_replay_ppo.trainer.optimizer_step import OptimizerStep
from trl_replay_ppo.trainer.rollout import RolloutCollector
from trl_replay_ppo.trainer.state import AccumulationState, DataloaderTags, resume_fingerprint
from trl_replay_ppo.trainer.step_size import AdaptiveStepSize


@dataclass
class TrainerParts:
    runner: ModelRunner
    scorer: Scorer
    kl_ctl: FixedKLController
    prompt_stream: PromptStream
    collector: RolloutCollector
    replay: ExperienceReplay | None
    advantages: AdvantageEstimator
    loss: PPOLoss
    optimizer_steps: OptimizerStep
    update_metrics: UpdateMetrics
    evaluator: Evaluator
    resumable: StateRegistry
    run_id: str
    lineage: Lineage
    fingerprint: dict[str, Any]  # settings a checkpoint can only be resumed with (`resume_fingerprint`)
    step_size: AdaptiveStepSize | None  # `adaptive_lr_kl`
    ahead: GenerateAhead | None  # `generate_ahead`: the prompt source and sampler


def prompt_dataloader(
    args: ReplayPPOConfig,
    accelerator: Accelerator,
    train_dataloader: DataLoader,
    train_dataset: Dataset,
    data_collator: Any,
    local_seed: int,
) -> DataLoader:
    """The base's train dataloader, rebuilt with ``local_batch_size / num_generations`` prompts per batch if needed.

    A rebuilt dataloader is prepared under the same seeding as TRL's constructor, so every rank shuffles alike.
    """
    if args.num_generations == 1:
        return train_dataloader
    dataloader = DataLoader(
        train_dataset,
        batch_size=args.local_batch_size // args.num_generations,
        shuffle=True,
        collate_fn=data_collator,
        drop_last=True,
    )
    with seeded_preparation(args.seed, local_seed):
        return accelerator.prepare(dataloader)


def build_parts(
    args: ReplayPPOConfig,
    tokenizer: PreTrainedTokenizerBase,
    accelerator: Accelerator,
    *,
    model: torch.nn.Module,
    ref_model: torch.nn.Module | None,
    reward_model: torch.nn.Module | None,
    reward_funcs: list[RewardFunc],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    train_dataset: Dataset,
    train_dataloader: DataLoader,
    data_collator: Any,
    eval_dataset: Dataset | None,
    eval_dataloader: DataLoader | None,
    null_ref_context: Callable[[], AbstractContextManager],
    stop_token_id: int | None,
    local_seed: int,
    trained_weights: list[torch.nn.Parameter],
    deepspeed: bool,
) -> TrainerParts:
    """Every part, wired together; ``model`` and ``optimizer`` are the prepared ones."""
    scorer = Scorer.from_args(args, tokenizer, reward_model, reward_funcs, accelerator)
    rows = embedding_rows(accelerator.unwrap_model(model))
    suppressed = suppressed_token(args.suppress_pad_token, tokenizer.pad_token_id, tokenizer.eos_token_id, rows)
    dataloader = prompt_dataloader(args, accelerator, train_dataloader, train_dataset, data_collator, local_seed)
    prompt_stream = PromptStream(dataloader)
    policy = accelerator.unwrap_model(model).policy
    ahead = generate_ahead(args, accelerator, tokenizer, policy, suppressed, prompt_stream, deepspeed)
    runner = ModelRunner(
        model,
        accelerator,
        tokenizer.pad_token_id,
        ref_model=ref_model,
        null_ref_context=null_ref_context,
        temperature=args.temperature,
        suppressed_token_id=suppressed,
        stop_token_id=stop_token_id,
        forward_batch_size=args.local_rollout_forward_batch_size,
        gather_deepspeed3_params=args.ds3_gather_for_generation,
        sampler=ahead or vllm_sampler(args, accelerator, tokenizer, policy, suppressed),
    )
    kl_ctl = make_kl_controller(args.kl_controller, args.kl_coef, args.kl_target, args.kl_horizon)
    collector = RolloutCollector(
        runner,
        scorer,
        tokenizer,
        generation_kwargs=runner.generation_kwargs(args.response_length, args.temperature),
        missing_eos_penalty=args.missing_eos_penalty,
        importance_cap=args.replay_importance_cap,
    )
    replay = None
    if args.use_replay_buffer:
        vocab_size = max(len(tokenizer), embedding_rows(accelerator.unwrap_model(model)))
        replay = ExperienceReplay.from_config(args, local_seed, tokenizer.pad_token_id, vocab_size)
    advantages = AdvantageEstimator(
        gamma=args.gamma, lam=args.lam, kl_estimator=args.kl_estimator, whiten_rewards=args.whiten_rewards
    )
    loss = PPOLoss(
        runner,
        cliprange=args.cliprange,
        cliprange_value=args.cliprange_value,
        vf_coef=args.vf_coef,
        entropy_coef=args.entropy_coef,
        self_imitation_coef=args.self_imitation_coef,
    )
    optimizer_steps = OptimizerStep(
        model,
        optimizer,
        accelerator,
        trained_weights,
        max_grad_norm=args.max_grad_norm,
        max_skipped_steps=args.max_skipped_steps,
        steps_in_backward=deepspeed,
    )
    stop_ids = {tokenizer.pad_token_id, tokenizer.eos_token_id, stop_token_id} - {None}
    update_metrics = UpdateMetrics(
        accelerator, eos_token_id=tokenizer.eos_token_id, stop_ids=stop_ids, source_names=scorer.names
    )
    evaluator = Evaluator(
        runner,
        scorer,
        accelerator,
        tokenizer,
        data_collator,
        eval_dataloader=eval_dataloader,
        eval_dataset=eval_dataset,
        response_length=args.response_length,
        eval_temperature=args.eval_temperature,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        max_prompt_length=args.max_prompt_length,
        chat_template_kwargs=args.chat_template_kwargs,
        report_to=args.report_to,
    )
    step_size = None
    if args.adaptive_lr_kl is not None:
        step_size = AdaptiveStepSize(
            lr_scheduler,
            args.adaptive_lr_kl,
            args.adaptive_lr_factor,
            args.adaptive_lr_max_scale,
            all_reduce_sum=lambda t: accelerator.reduce(t.to(accelerator.device), "sum"),
        )
    run_id = uuid.uuid4().hex
    resumable = StateRegistry()
    resumable.register("kl_controller", kl_ctl)
    resumable.register("optimizer_steps", optimizer_steps)
    resumable.register("advantages", advantages)
    resumable.register("update_metrics", update_metrics)
    resumable.register("scorer", scorer)
    resumable.register("accumulation", AccumulationState(accelerator))
    resumable.register("prompt_stream", prompt_stream, per_rank=True)
    resumable.register("dataloaders", DataloaderTags(accelerator, dataloader, eval_dataloader), per_rank=True)
    if step_size is not None:
        resumable.register("step_size", step_size)
    if replay is not None:
        resumable.register("replay", replay, per_rank=True)
    if ahead is not None:
        resumable.register("generate_ahead", ahead, per_rank=True)
    resumable.register("rng", RNGState(), per_rank=True)  # last: loading the others may draw random numbers
    return TrainerParts(
        runner=runner,
        scorer=scorer,
        kl_ctl=kl_ctl,
        prompt_stream=prompt_stream,
        collector=collector,
        replay=replay,
        advantages=advantages,
        loss=loss,
        optimizer_steps=optimizer_steps,
        update_metrics=update_metrics,
        evaluator=evaluator,
        resumable=resumable,
        run_id=run_id,
        lineage=Lineage(run_id),
        fingerprint=resume_fingerprint(args, scorer.names, tokenizer),
        step_size=step_size,
        ahead=ahead,
    )


def vllm_sampler(
    args: ReplayPPOConfig, accelerator: Accelerator, tokenizer: PreTrainedTokenizerBase, policy, suppressed: int | None
) -> VLLMSampler | None:
    """The colocated vLLM engine of ``use_vllm`` (None without it)."""
    if not args.use_vllm:
        return None
    engine = {
        "gpu_memory_utilization": args.vllm_gpu_memory_utilization,
        "tensor_parallel_size": args.vllm_tensor_parallel_size,
        "max_model_length": args.vllm_max_model_length,
        "enable_sleep_mode": args.vllm_enable_sleep_mode,
    }
    return VLLMSampler(
        policy,
        accelerator,
        tokenizer,
        seed=args.seed,
        temperature=args.temperature,
        suppressed_token_id=suppressed,
        engine_kwargs=engine,
    )


def generate_ahead(
    args: ReplayPPOConfig,
    accelerator: Accelerator,
    tokenizer: PreTrainedTokenizerBase,
    policy: torch.nn.Module,
    suppressed: int | None,
    prompt_stream: PromptStream,
    deepspeed: bool,
) -> GenerateAhead | None:
    """The one-update-ahead sampler of ``generate_ahead`` (None without it; one generator process per training
    process); refused where it cannot work."""
    if not args.generate_ahead:
        return None
    device = next(policy.parameters()).device
    problem = None
    if deepspeed:
        problem = "DeepSpeed shards or offloads the policy, which the generator copies whole. Train without DeepSpeed"
    elif device.type != "cpu":
        problem = (
            f"the policy is on {device}; the generator process copies it into shared CPU memory and samples on CPU "
            "cores. Use `use_vllm=True` to sample on the accelerator"
        )
    if problem is not None:
        raise ValueError(f"`generate_ahead=True` cannot run here: {problem}, or set `generate_ahead=False`.")
    generator = GeneratorProcess(
        policy,
        pad_token_id=tokenizer.pad_token_id,
        generation_kwargs=generation_kwargs(args.response_length, args.temperature, suppressed),
        chunk=args.local_rollout_forward_batch_size,
        seed=args.seed,
        rank=accelerator.process_index,
        threads=args.generate_ahead_threads,
    )
    return GenerateAhead(
        generator,
        policy=policy,
        fetch_prompts=lambda: repeat_prompts(prompt_stream.next(), args.num_generations),
        last_update=args.num_total_batches,
    )
