"""Shared by the vLLM tests (CI's vLLM job, `make test-vllm`): one engine per test module, on the vLLM tiny model."""

from __future__ import annotations

import os

import torch

from tests.helpers import make_trainer, tiny_config
from trl_replay_ppo.core.episodes import INVALID_LOGPROB
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
from trl_replay_ppo.tasks.tiny import build_vllm_tiny_models, load_tiny_models

# In-process engine (colocate), 1 GiB of KV cache, vLLM's eager CPU path (no inductor compile at engine start).
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_CI_ENV": "1"}
for name, value in ENGINE_ENV.items():
    os.environ.setdefault(name, value)

# vLLM's CPU kernels and the trainer's forward agree to this on the same weights (max over a batch's valid
# tokens, measured: 3e-3); two updates at lr 1e-2 move the trainer's log-probs by 0.5.
SYNCED_TOLERANCE = 0.01


def vllm_trainer(tmp_path, peft_config=None, models=None, **overrides):
    """A trainer generating with vLLM on ``models`` (default: the vLLM tiny models), digits task; ``overrides`` are
    config fields."""
    args = tiny_config(tmp_path, **{"use_vllm": True, "total_episodes": 8, **overrides})
    return make_trainer(
        models or load_tiny_models(build_vllm_tiny_models(tmp_path / "models")),
        args,
        make_digits_dataset(16),
        reward_model=None,
        reward_funcs=digits_reward,
        peft_config=peft_config,
    )


def sampler_trainer_gap(trainer, queries: torch.Tensor) -> float:
    """Largest |log pi_vllm - log pi_trainer| over the valid tokens of responses the engine samples now."""
    runner = trainer.runner
    query_responses, behaviour = runner.sampler.generate(queries, trainer.args.response_length, update=99)
    with torch.no_grad():
        trainer_logprobs = runner.response_logprobs(runner.policy, query_responses, queries.shape[1])
    valid = behaviour != INVALID_LOGPROB
    return float((trainer_logprobs - behaviour)[valid].abs().max())


def prompt_batch(trainer, n: int = 8) -> torch.Tensor:
    return next(iter(trainer.prompt_stream.dataloader))["input_ids"][:n]


def gaps_around_training(trainer, queries: torch.Tensor) -> tuple[float, float, float]:
    """`sampler_trainer_gap` of a freshly synced engine, of the engine after ``trainer.train()`` (which syncs before
    each rollout, so it lags the last update), and after one more sync."""
    trainer.runner.sampler.sync()
    fresh = sampler_trainer_gap(trainer, queries)
    trainer.train()
    stale = sampler_trainer_gap(trainer, queries)
    trainer.runner.sampler.sync()
    synced = sampler_trainer_gap(trainer, queries)
    print(f"max |log-prob gap|: fresh engine {fresh:.2e}, one update stale {stale:.2e}, synced {synced:.2e}")
    return fresh, stale, synced
