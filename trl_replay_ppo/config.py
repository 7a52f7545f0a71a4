"""`ReplayPPOConfig`: TRL's `PPOConfig` plus the fields this package implements."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Literal

from trl_replay_ppo.base import PPOConfig
from trl_replay_ppo.base.config import help_field


def _fail(name: str, value: object, requirement: str) -> None:
    raise ValueError(f"`{name}` {requirement}; got {name}={value!r}.")


@dataclass
class ReplayPPOConfig(PPOConfig):
    r"""Configuration for [`ReplayPPOTrainer`]: every field of TRL's `PPOConfig`, plus the ones below.

    The base is TRL's ``trl.experimental.ppo.PPOConfig`` on TRL <= 1.12 and this package's copy of
    it (same fields and defaults) on TRL 1.13 and later, which removed PPO (`trl_replay_ppo.base`).

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
        "Off unless set: TRL's PPO trainer ignored this flag.",
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
        "Stop an update's remaining PPO epochs once an epoch's mean approximate KL between the new and "
        "the old policy (over all ranks) exceeds 1.5 x this value (as Stable-Baselines3 does); None runs every "
        "epoch. The epochs run are logged as `train/ppo_epochs`.",
    )
    max_skipped_steps: int = help_field(
        10,
        "Optimizer steps with a non-finite loss or gradient are skipped (weights untouched, counted in "
        "`train/skipped_steps`); training stops with an error after this many consecutive skips.",
    )
    shared_value_head: bool = help_field(
        False,
        "Use a value head on the policy's own backbone instead of a separate value model, so one "
        "backbone serves policy, reference (adapter disabled, with LoRA) and critic.",
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
        "Train every update on its fresh episodes plus `replay_sample_size` replayed ones. Replayed "
        "tokens are weighted (truncated importance ratio times the prioritized-replay weight), and so is their "
        "share of the advantage whitening statistics and of the value loss; fresh tokens weigh 1.",
    )
    replay_buffer_size: int = help_field(1000, "Episodes kept per rank; the oldest is overwritten when full.")
    min_replay_size: int = help_field(
        100,
        "Replay starts once every rank's buffer holds this many episodes (the smallest buffer over the "
        "ranks decides, so all ranks replay together).",
    )
    replay_sample_size: int = help_field(
        32,
        "Replayed episodes added to each update, per rank. A multiple of "
        "`per_device_train_batch_size * gradient_accumulation_steps`, so each optimizer step sees as many "
        "episodes as without replay.",
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

    reward_timeout: float | None = help_field(
        None,
        "Seconds a reward function may take for one batch before training stops with an error naming it (on every "
        "rank); a sync function runs in a worker thread that is abandoned, an async one is cancelled. None waits.",
    )
    reward_nonfinite_value: float | None = help_field(
        None,
        "A reward function returning NaN/inf is an error naming it; set a number to replace such values "
        "instead (counted in `rewards/nonfinite`).",
    )

    def __post_init__(self) -> None:
        if self.metric_for_best_model is None and (self.load_best_model_at_end or self.early_stopping_patience):
            self.metric_for_best_model = "eval_reward"  # transformers would pick "loss", which evaluate() lacks
        super().__post_init__()
        if isinstance(self.chat_template_kwargs, str):
            self.chat_template_kwargs = json.loads(self.chat_template_kwargs)
        self._validate_ppo()
        self._validate_core()
        self._validate_replay()
        self._validate_production()

    def _validate_ppo(self) -> None:
        """TRL's PPO fields, checked here rather than deep in the trainer (or not at all)."""
        for name in ("response_length", "num_ppo_epochs", "num_mini_batches", "local_rollout_forward_batch_size"):
            if getattr(self, name) < 1:
                _fail(name, getattr(self, name), "must be >= 1")
        for name in ("cliprange", "cliprange_value", "temperature"):
            if not (getattr(self, name) > 0):
                _fail(name, getattr(self, name), "must be > 0")
        if not (self.vf_coef >= 0):
            _fail("vf_coef", self.vf_coef, "must be >= 0")
        if not (0 < self.gamma <= 1):
            _fail("gamma", self.gamma, "must be in (0, 1]")
        if not (0 <= self.lam <= 1):
            _fail("lam", self.lam, "must be in [0, 1]")
        if self.kl_estimator not in ("k1", "k3"):
            _fail("kl_estimator", self.kl_estimator, "must be 'k1' or 'k3'")
        if not (self.kl_coef >= 0):
            _fail("kl_coef", self.kl_coef, "must be >= 0")
        if self.stop_token is not None and self.stop_token_id is not None:
            raise ValueError("Set one of `stop_token` and `stop_token_id`, not both.")
        if self.stop_token not in (None, "eos"):
            _fail("stop_token", self.stop_token, "must be 'eos' or None")
        if self.missing_eos_penalty is not None and not (self.missing_eos_penalty >= 0):
            _fail("missing_eos_penalty", self.missing_eos_penalty, "must be >= 0 (it is subtracted from the score)")
        if self.total_episodes is not None and self.total_episodes < 1:
            _fail("total_episodes", self.total_episodes, "must be >= 1 (or None for num_train_epochs passes)")
        if self.num_sample_generations < 0:
            _fail("num_sample_generations", self.num_sample_generations, "must be >= 0")
        local_batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if local_batch % self.num_mini_batches:
            raise ValueError(
                f"`num_mini_batches`={self.num_mini_batches} must divide the per-rank batch "
                f"per_device_train_batch_size * gradient_accumulation_steps = {self.per_device_train_batch_size} * "
                f"{self.gradient_accumulation_steps} = {local_batch}; change `num_mini_batches` or the batch size."
            )
        mini_batch = local_batch // self.num_mini_batches
        if self.whiten_rewards and mini_batch < 8:
            raise ValueError(
                f"`whiten_rewards` needs at least 8 episodes per minibatch and rank; got {mini_batch} "
                "(per_device_train_batch_size * gradient_accumulation_steps / num_mini_batches). Raise the batch or "
                "turn `whiten_rewards` off."
            )

    def _validate_core(self) -> None:
        if self.max_grad_norm is not None and (math.isnan(self.max_grad_norm) or self.max_grad_norm < 0):
            _fail("max_grad_norm", self.max_grad_norm, "must be >= 0 (0 or None disables clipping)")
        if self.num_generations < 1:
            _fail("num_generations", self.num_generations, "must be >= 1")
        local_batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if local_batch % self.num_generations:
            raise ValueError(
                f"`num_generations`={self.num_generations} must divide the per-rank batch "
                f"per_device_train_batch_size * gradient_accumulation_steps = {local_batch}; change "
                "`num_generations` or `per_device_train_batch_size`."
            )
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            _fail("max_prompt_length", self.max_prompt_length, "must be >= 1 or None")
        if self.reward_weights is not None and not all(math.isfinite(w) for w in self.reward_weights):
            _fail("reward_weights", self.reward_weights, "must hold finite numbers")
        if self.reward_nonfinite_value is not None and not math.isfinite(self.reward_nonfinite_value):
            _fail("reward_nonfinite_value", self.reward_nonfinite_value, "must be a finite number or None")
        if not (self.entropy_coef >= 0):
            _fail("entropy_coef", self.entropy_coef, "must be >= 0")
        if self.kl_controller not in ("fixed", "adaptive"):
            _fail("kl_controller", self.kl_controller, "must be 'fixed' or 'adaptive'")
        if not (self.kl_target > 0):
            _fail("kl_target", self.kl_target, "must be > 0")
        if not (self.kl_horizon > 0):
            _fail("kl_horizon", self.kl_horizon, "must be > 0")
        if self.max_skipped_steps < 1:
            _fail("max_skipped_steps", self.max_skipped_steps, "must be >= 1")
        if self.target_kl is not None and not (self.target_kl > 0):
            _fail("target_kl", self.target_kl, "must be > 0 (or None)")
        if not (self.eval_temperature >= 0):
            _fail("eval_temperature", self.eval_temperature, "must be >= 0 (0 means greedy)")

    def _validate_production(self) -> None:
        if self.early_stopping_patience is not None:
            if self.early_stopping_patience < 1:
                _fail("early_stopping_patience", self.early_stopping_patience, "must be >= 1 (or None)")
            if self.eval_strategy == "no":
                raise ValueError(
                    "`early_stopping_patience` needs evaluations: set `eval_strategy='steps'` and `eval_steps`."
                )

    def _validate_replay(self) -> None:
        for name in ("replay_buffer_size", "replay_sample_size", "max_replay_reuse"):
            if getattr(self, name) < 1:
                _fail(name, getattr(self, name), "must be >= 1")
        if self.min_replay_size < 0:
            _fail("min_replay_size", self.min_replay_size, "must be >= 0")
        if self.staleness_threshold < 0:
            _fail("staleness_threshold", self.staleness_threshold, "must be >= 0 (updates)")
        if self.replay_sample_size > self.replay_buffer_size:
            raise ValueError(
                f"`replay_sample_size`={self.replay_sample_size} exceeds `replay_buffer_size`="
                f"{self.replay_buffer_size}; lower the sample size or grow the buffer."
            )
        if self.min_replay_size > self.replay_buffer_size:
            raise ValueError(
                f"`min_replay_size`={self.min_replay_size} exceeds `replay_buffer_size`={self.replay_buffer_size}: "
                "replay would never start; lower `min_replay_size`."
            )
        if not (self.priority_alpha >= 0):
            _fail("priority_alpha", self.priority_alpha, "must be >= 0")
        if not (0 <= self.priority_beta <= 1):
            _fail("priority_beta", self.priority_beta, "must be in [0, 1]")
        if not (0 < self.priority_staleness_decay <= 1):
            _fail("priority_staleness_decay", self.priority_staleness_decay, "must be in (0, 1]")
        if not (self.replay_importance_cap > 0):
            _fail("replay_importance_cap", self.replay_importance_cap, "must be > 0")
        local_batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        needed = max(self.min_replay_size, self.replay_sample_size)
        holdable = min(self.replay_buffer_size, self.staleness_threshold * local_batch)
        if self.use_replay_buffer and holdable < needed:
            raise ValueError(
                f"Replay would never start: the buffer can hold at most min(`replay_buffer_size`, "
                f"`staleness_threshold` * per-rank batch) = min({self.replay_buffer_size}, {self.staleness_threshold} "
                f"* {local_batch}) = {holdable} episodes (older ones are evicted), fewer than max(`min_replay_size`, "
                f"`replay_sample_size`) = {needed}. Raise `staleness_threshold` or lower `min_replay_size`."
            )
        if self.use_replay_buffer and self.replay_sample_size % local_batch:
            suggestion = max(local_batch, self.replay_sample_size // local_batch * local_batch)
            raise ValueError(
                f"`replay_sample_size`={self.replay_sample_size} must be a multiple of the per-rank batch "
                f"per_device_train_batch_size * gradient_accumulation_steps = {local_batch}, so that every optimizer "
                f"step sees {local_batch} episodes; e.g. replay_sample_size={suggestion}."
            )
