"""vLLM and the trainer sample from one distribution: after a weight sync their log-probs agree, and not before
(the negative control: a real update the engine has not been given)."""

from __future__ import annotations

import pytest

from tests.models.vllm_helpers import SYNCED_TOLERANCE, prompt_batch, sampler_trainer_gap, vllm_trainer

pytestmark = pytest.mark.vllm  # CI's vLLM job (`make test-vllm`), one engine per module


def test_log_probs_agree_after_a_sync_and_differ_before(tmp_path):
    trainer = vllm_trainer(tmp_path, learning_rate=1e-2)
    queries = prompt_batch(trainer)
    trainer.runner.sampler.sync()
    before_training = sampler_trainer_gap(trainer, queries)
    trainer.train()  # 2 updates: each rollout syncs first, so the engine now lags the last update
    stale = sampler_trainer_gap(trainer, queries)
    trainer.runner.sampler.sync()
    synced = sampler_trainer_gap(trainer, queries)
    print(f"max |log-prob gap|: fresh engine {before_training:.2e}, one update stale {stale:.2e}, synced {synced:.2e}")
    assert before_training < SYNCED_TOLERANCE and synced < SYNCED_TOLERANCE
    assert stale > 10 * SYNCED_TOLERANCE
    metrics = trainer.collector.last_metrics
    assert set(metrics) == {"vllm/logprob_diff_mean", "vllm/is_weight_mean", "vllm/truncated_fraction"}
    assert metrics["vllm/logprob_diff_mean"] < SYNCED_TOLERANCE and metrics["vllm/is_weight_mean"] > 0.9
