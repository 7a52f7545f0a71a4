"""`PPOConfig` for TRL 1.13 and later, which no longer ship one.

Same field names and defaults as ``trl.experimental.ppo.PPOConfig`` of TRL 1.12, so a config written
for TRL's PPO reads the same here; `trl_replay_ppo.integrations.compat` picks TRL's class where it exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import TrainingArguments


def help_field(default: Any, help: str) -> Any:
    """A dataclass field with its help text (what ``--help`` and the config reference show)."""
    return field(default=default, metadata={"help": help})


@dataclass
class PPOConfig(TrainingArguments):
    """Training arguments of PPO for language models: `transformers.TrainingArguments` plus the PPO fields.

    The fields marked "set by the trainer" are filled in from the batch arithmetic when the trainer
    is built; leave them unset.
    """

    logging_steps: float = help_field(
        10, "Log every this many updates (a float in [0, 1) is a fraction of all updates)."
    )
    gradient_checkpointing: bool = help_field(
        True, "Recompute activations in the backward pass to save memory (at some extra compute)."
    )
    bf16: bool | None = help_field(None, "Use bfloat16 mixed precision; None means yes unless `fp16` is set.")
    learning_rate: float = help_field(3e-6, "Initial learning rate of AdamW.")
    dataset_num_proc: int | None = help_field(None, "Processes used to prepare the datasets (None: this process).")
    num_mini_batches: int = help_field(1, "Minibatches each update's batch is split into.")
    total_episodes: int | None = help_field(
        None, "Episodes (prompt + response) to generate in all; None means `num_train_epochs` passes."
    )
    local_rollout_forward_batch_size: int = help_field(
        64, "Sequences per generation and per no-grad forward pass in the rollout, per rank."
    )
    num_sample_generations: int = help_field(
        10, "How many times to print sample completions of the eval prompts during training (0: never)."
    )
    response_length: int = help_field(53, "Maximum new tokens per response.")
    stop_token: Literal["eos"] | None = help_field(
        None, "'eos' ends responses at the tokenizer's eos token; None generates `response_length` tokens."
    )
    stop_token_id: int | None = help_field(None, "A token id that ends responses (instead of `stop_token`).")
    temperature: float = help_field(0.7, "Sampling temperature of the rollouts.")
    missing_eos_penalty: float | None = help_field(
        None, "Subtracted from the score of a response that has no eos token (None: no penalty)."
    )
    sft_model_path: str = help_field("EleutherAI/pythia-160m", "Path of the supervised model (scripts only).")
    world_size: int | None = help_field(None, "Number of processes (set by the trainer).")
    num_total_batches: int | None = help_field(None, "Number of updates (set by the trainer).")
    micro_batch_size: int | None = help_field(None, "Episodes per micro-batch over all ranks (set by the trainer).")
    local_batch_size: int | None = help_field(None, "Episodes per update and rank (set by the trainer).")
    batch_size: int | None = help_field(None, "Episodes per update over all ranks (set by the trainer).")
    local_mini_batch_size: int | None = help_field(None, "Episodes per minibatch and rank (set by the trainer).")
    mini_batch_size: int | None = help_field(None, "Episodes per minibatch over all ranks (set by the trainer).")
    push_to_hub: bool = help_field(False, "Push the model to the Hub at the end.")
    reward_model_path: str = help_field("EleutherAI/pythia-160m", "Path of the reward model (scripts only).")
    model_adapter_name: str | None = help_field(
        None, "Name of the policy's trainable adapter when the model has several."
    )
    ref_adapter_name: str | None = help_field(None, "Name of the adapter that acts as the reference policy, if any.")
    num_ppo_epochs: int = help_field(4, "Passes over each update's batch.")
    whiten_rewards: bool = help_field(False, "Scale the per-token rewards to unit variance.")
    kl_coef: float = help_field(0.05, "Coefficient of the KL penalty to the reference policy.")
    kl_estimator: Literal["k1", "k3"] = help_field(
        "k1", "Per-token KL estimator: 'k1' (log pi - log ref) or 'k3' (lower variance, also unbiased)."
    )
    cliprange: float = help_field(0.2, "Clip range of the policy ratio.")
    vf_coef: float = help_field(0.1, "Coefficient of the value loss.")
    cliprange_value: float = help_field(0.2, "Clip range of the value prediction.")
    gamma: float = help_field(1.0, "Discount factor.")
    lam: float = help_field(0.95, "GAE lambda.")
    ds3_gather_for_generation: bool = help_field(
        True,
        "Under DeepSpeed ZeRO-3, gather the policy's weights for generation (faster; off lets models "
        "larger than one GPU's memory train, with slower generation).",
    )

    def __post_init__(self) -> None:
        self.bf16 = not self.fp16 if self.bf16 is None else self.bf16
        super().__post_init__()
