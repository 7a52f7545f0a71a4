"""vLLM and the trainer sample from one distribution: after a weight sync their log-probs agree, and not before
(the negative control: a real update the engine has not been given)."""

from __future__ import annotations

import pytest

from tests.models.vllm_helpers import SYNCED_TOLERANCE, gaps_around_training, prompt_batch, vllm_trainer

pytestmark = pytest.mark.vllm  # CI's vLLM job (`make test-vllm`), one engine per module


def test_log_probs_agree_after_a_sync_and_differ_before(tmp_path):
    trainer = vllm_trainer(tmp_path, learning_rate=1e-2)
    before_training, stale, synced = gaps_around_training(trainer, prompt_batch(trainer))  # 2 updates between
    assert before_training < SYNCED_TOLERANCE and synced < SYNCED_TOLERANCE
    assert stale > 10 * SYNCED_TOLERANCE
    metrics = trainer.collector.last_metrics
    assert set(metrics) == {"vllm/logprob_diff_mean", "vllm/is_weight_mean", "vllm/truncated_fraction"}
    assert metrics["vllm/logprob_diff_mean"] < SYNCED_TOLERANCE and metrics["vllm/is_weight_mean"] > 0.9
