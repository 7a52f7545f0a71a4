"""Every bad input fails fast: before any generation, with an error that names what to change."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

import trl_replay_ppo.models.runner as passes_module
from tests.helpers import make_trainer, tiny_config
from trl_replay_ppo import ReplayPPOConfig
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
from trl_replay_ppo.trainer.base import PPOConfig

pytestmark = pytest.mark.trl112  # also runs in the TRL 1.12 job

CONFIG_CASES = [
    ({"num_mini_batches": 3}, "num_mini_batches"),
    ({"whiten_rewards": True}, "whiten_rewards"),
    ({"response_length": 0}, "response_length"),
    ({"temperature": 0.0}, "temperature"),
    ({"cliprange": 0.0}, "cliprange"),
    ({"cliprange_value": -1.0}, "cliprange_value"),
    ({"vf_coef": -1.0}, "vf_coef"),
    ({"gamma": 1.5}, "gamma"),
    ({"lam": -0.1}, "lam"),
    ({"kl_estimator": "k2"}, "kl_estimator"),
    ({"kl_coef": -0.1}, "kl_coef"),
    ({"stop_token": "eos", "stop_token_id": 1}, "stop_token"),
    ({"missing_eos_penalty": -1.0}, "missing_eos_penalty"),
    ({"total_episodes": 0}, "total_episodes"),
    ({"num_ppo_epochs": 0}, "num_ppo_epochs"),
    ({"local_rollout_forward_batch_size": 0}, "local_rollout_forward_batch_size"),
    ({"num_generations": 3}, "num_generations"),
    ({"max_prompt_length": 0}, "max_prompt_length"),
    ({"reward_weights": [float("nan")]}, "reward_weights"),
    ({"reward_nonfinite_value": float("inf")}, "reward_nonfinite_value"),
    ({"entropy_coef": -1.0}, "entropy_coef"),
    ({"kl_controller": "pid"}, "kl_controller"),
    ({"kl_target": 0.0}, "kl_target"),
    ({"max_grad_norm": -1.0}, "max_grad_norm"),
    ({"use_replay_buffer": True, "replay_sample_size": 6}, "replay_sample_size"),
    ({"replay_buffer_size": 0}, "replay_buffer_size"),
    ({"priority_beta": 2.0}, "priority_beta"),
    ({"replay_importance_cap": 0.0}, "replay_importance_cap"),
    ({"early_stopping_patience": 2}, "early_stopping_patience"),
    ({"eval_temperature": -1.0}, "eval_temperature"),
    # Non-finite settings: infinity passes torch's own checks and poisons the weights.
    ({"learning_rate": float("inf")}, "learning_rate"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"kl_coef": float("inf")}, "kl_coef"),
    ({"vf_coef": float("inf")}, "vf_coef"),
    ({"cliprange": float("inf")}, "cliprange"),
    ({"temperature": float("nan")}, "temperature"),
    ({"priority_alpha": float("inf")}, "priority_alpha"),
    ({"target_kl": float("inf")}, "target_kl"),
    ({"reward_timeout": 0.0}, "reward_timeout"),
    # Batch sizes of 0 or below, and a run of no update at all.
    ({"per_device_train_batch_size": 0}, "per_device_train_batch_size"),
    ({"per_device_eval_batch_size": -1}, "per_device_eval_batch_size"),
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
    ({"num_mini_batches": 0}, "num_mini_batches"),
    ({"num_train_epochs": 0}, "num_train_epochs"),
    # Integer fields refuse non-integers (a YAML `num_ppo_epochs: 1.5`); mappings must be mappings.
    ({"num_ppo_epochs": 1.5}, "num_ppo_epochs"),
    ({"replay_sample_size": "32"}, "replay_sample_size"),
    ({"chat_template_kwargs": ["enable_thinking"]}, "chat_template_kwargs"),
    ({"learning_rate": "fast"}, "learning_rate"),
    # Episode counts past what counters hold exactly (`int(inf)` used to raise an unnamed OverflowError).
    ({"num_train_epochs": float("inf")}, "num_train_epochs"),
    ({"num_train_epochs": "1e400"}, "num_train_epochs"),
    ({"total_episodes": 10**30}, "total_episodes"),
    # A value of another type than the field's, which used to reach a constructor deep inside.
    ({"use_replay_buffer": "yes"}, "use_replay_buffer"),
    ({"suppress_pad_token": 1}, "suppress_pad_token"),
    ({"kl_estimator": 3}, "kl_estimator"),
    ({"reward_weights": 1.0}, "reward_weights"),
    ({"stop_token_id": "2"}, "stop_token_id"),
    ({"vllm_mode": None}, "vllm_mode"),
    ({"sft_model_path": 7}, "sft_model_path"),
    ({"seed": "0"}, "seed"),
    ({"save_total_limit": "2"}, "save_total_limit"),
    ({"run_name": 5}, "run_name"),
    ({"reward_watchdog": 0.0}, "reward_watchdog"),
]


@pytest.mark.parametrize(("overrides", "field"), CONFIG_CASES, ids=[str(c[0]) for c in CONFIG_CASES])
def test_bad_config_names_the_field(tmp_path, overrides, field):
    settings = {"output_dir": str(tmp_path), "per_device_train_batch_size": 4, "use_cpu": True, **overrides}
    with pytest.raises(ValueError, match=f"`{field}`"):
        ReplayPPOConfig(**settings)


def _without_eos(tiny):
    tiny["tokenizer"].eos_token = None
    return True


def _shrink_embeddings(model):
    model.resize_token_embeddings(10)
    return True


def _two_labels(tiny):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_config(
        tiny["value_model"].config.__class__(**{**tiny["value_model"].config.to_dict(), "num_labels": 2})
    )


def _poison(model):
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    return True


def _untokenizable(tiny, tmp_path):
    return make_trainer(tiny, tiny_config(tmp_path), Dataset.from_dict({"prompt": [1, 2, 3, 4]}))


def _no_pad_token(tiny, tmp_path):
    tiny["tokenizer"].pad_token = None
    return make_trainer(tiny, tiny_config(tmp_path), make_digits_dataset(8))


def _small_vocab_reward_model(tiny, tmp_path):
    tiny["reward_model"].resize_token_embeddings(50)
    return make_trainer(tiny, tiny_config(tmp_path), make_digits_dataset(8))


TRAINER_CASES = [
    (
        "no prompt column",
        lambda t, p: make_trainer(t, tiny_config(p), Dataset.from_dict({"text": ["1="] * 8})),
        ValueError,
        "`train_dataset` needs an `input_ids` column",
    ),
    (
        "empty dataset",
        lambda t, p: make_trainer(t, tiny_config(p), Dataset.from_dict({"prompt": []})),
        ValueError,
        "`train_dataset` is empty",
    ),
    (
        "dataset smaller than a batch",
        lambda t, p: make_trainer(t, tiny_config(p), make_digits_dataset(3)),
        ValueError,
        "`train_dataset` has 3 prompts but one update needs 4",
    ),
    (
        "prompts all too long",
        lambda t, p: make_trainer(t, tiny_config(p, max_prompt_length=2), make_digits_dataset(8)),
        ValueError,
        "longer than max_prompt_length=2",
    ),
    ("prompt of the wrong type", _untokenizable, TypeError, "must be a string or a list of chat messages"),
    (
        "no reward",
        lambda t, p: make_trainer(t, tiny_config(p), make_digits_dataset(8), reward_model=None),
        ValueError,
        "No reward",
    ),
    (
        "reward function not callable",
        lambda t, p: make_trainer(t, tiny_config(p), make_digits_dataset(8), reward_funcs=[digits_reward, 3]),
        TypeError,
        r"`reward_funcs\[1\]`",
    ),
    (
        "reward weights of the wrong length",
        lambda t, p: make_trainer(t, tiny_config(p, reward_weights=[1.0, 2.0]), make_digits_dataset(8)),
        ValueError,
        "`reward_weights` has 2 entries",
    ),
    ("tokenizer without pad token", _no_pad_token, ValueError, "no pad token"),
    ("reward model with another vocabulary", _small_vocab_reward_model, ValueError, "`reward_model` has a vocabulary"),
    (
        "metric never produced",
        lambda t, p: make_trainer(
            t,
            tiny_config(p, eval_strategy="steps", metric_for_best_model="accuracy"),
            make_digits_dataset(8),
            eval_dataset=make_digits_dataset(8),
        ),
        ValueError,
        "`metric_for_best_model='accuracy'`",
    ),
    (
        "evaluation without eval dataset",
        lambda t, p: make_trainer(t, tiny_config(p, eval_strategy="steps"), make_digits_dataset(8)),
        ValueError,
        "need an `eval_dataset`",
    ),
    (
        "the base PPOConfig (TRL's, or this package's on TRL 1.13+) instead of ReplayPPOConfig",
        lambda t, p: make_trainer(t, PPOConfig(output_dir=str(p), use_cpu=True, bf16=False), make_digits_dataset(8)),
        TypeError,
        "`args` must be a `ReplayPPOConfig`",
    ),
    (
        "value model with the shared head",
        lambda t, p: make_trainer(t, tiny_config(p, shared_value_head=True), make_digits_dataset(8)),
        ValueError,
        "pass `value_model=None`",
    ),
    (
        "output dir is a file",
        lambda t, p: (
            (p / "f").write_text("x")
            and make_trainer(t, tiny_config(p, output_dir=str(p / "f")), make_digits_dataset(8))
        ),
        PermissionError,
        "`output_dir`=",
    ),
    (
        "empty prompt",
        lambda t, p: make_trainer(t, tiny_config(p), Dataset.from_dict({"prompt": ["12=", "  ", "3=", "4="]})),
        ValueError,
        r"`train_dataset` row 1: the prompt '  ' is empty",
    ),
    (
        "chat message without content",
        lambda t, p: make_trainer(t, tiny_config(p), Dataset.from_dict({"prompt": [[{"role": "user"}]] * 4})),
        ValueError,
        r"row 0: every chat message needs a `role` and a string `content`",
    ),
    (
        "float input_ids",
        lambda t, p: make_trainer(t, tiny_config(p), Dataset.from_dict({"input_ids": [[5.0, 6.0]] * 4})),
        TypeError,
        r"row 0: `input_ids` must be integer token ids",
    ),
    (
        "out-of-vocabulary input_ids",
        lambda t, p: make_trainer(t, tiny_config(p), Dataset.from_dict({"input_ids": [[5, 100000]] * 4})),
        ValueError,
        r"row 0: token id 100000 is outside the tokenizer's vocabulary",
    ),
    (
        "tokenizer without eos",
        lambda t, p: _without_eos(t) and make_trainer(t, tiny_config(p), make_digits_dataset(8)),
        ValueError,
        "has no eos token",
    ),
    (
        "reference model with a smaller vocabulary",
        lambda t, p: _shrink_embeddings(t["ref_policy"]) and make_trainer(t, tiny_config(p), make_digits_dataset(8)),
        ValueError,
        "`ref_model` has a vocabulary of 10 tokens",
    ),
    (
        "value model with 2 labels",
        lambda t, p: make_trainer(t, tiny_config(p), make_digits_dataset(8), value_model=_two_labels(t)),
        ValueError,
        r"`value_model` must output one value per token .*num_labels=2",
    ),
    (
        "NaN in the policy's weights",
        lambda t, p: _poison(t["policy"]) and make_trainer(t, tiny_config(p), make_digits_dataset(8)),
        ValueError,
        "`model` holds NaN or inf weights",
    ),
    (
        "policy without a trainable parameter",
        lambda t, p: t["policy"].requires_grad_(False) and make_trainer(t, tiny_config(p), make_digits_dataset(8)),
        ValueError,
        "`model` has no trainable parameter",
    ),
    (
        "responses beyond the position table",
        lambda t, p: make_trainer(t, tiny_config(p, response_length=254), make_digits_dataset(8)),
        ValueError,
        r"plus `response_length`=254 exceeds the policy's 256 positions",
    ),
    (
        "resume from a missing path",
        lambda t, p: make_trainer(t, tiny_config(p), make_digits_dataset(8)).train(
            resume_from_checkpoint=str(p / "no")
        ),
        FileNotFoundError,
        "`resume_from_checkpoint`",
    ),
]


@pytest.fixture
def no_generation(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("generation started before the bad input was reported")

    monkeypatch.setattr(passes_module, "batch_generation", forbidden)


@pytest.mark.parametrize(("name", "build", "error", "match"), TRAINER_CASES, ids=[c[0] for c in TRAINER_CASES])
def test_bad_trainer_input_fails_before_generation(tmp_path, tiny, no_generation, name, build, error, match):
    with pytest.raises(error, match=match):
        build(tiny, tmp_path)


def test_epochs_past_what_counters_hold_exactly_are_refused_before_generation(tmp_path, tiny, no_generation):
    args = tiny_config(tmp_path, total_episodes=None, num_train_epochs=1e300)
    with pytest.raises(ValueError, match=r"`num_train_epochs`=1e\+300 passes over 8 prompts .* past 2\*\*53"):
        make_trainer(tiny, args, make_digits_dataset(8), reward_model=None, reward_funcs=digits_reward)
