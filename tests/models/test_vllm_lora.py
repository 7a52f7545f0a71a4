"""With LoRA adapters, the sync pushes the merged weights (adapters merged for the push, unmerged after)."""

from __future__ import annotations

import pytest
from peft import LoraConfig
from peft.tuners.lora import LoraLayer

from tests.models.vllm_helpers import SYNCED_TOLERANCE, prompt_batch, sampler_trainer_gap, vllm_trainer

pytestmark = pytest.mark.vllm  # CI's vLLM job (`make test-vllm`), one engine per module


def test_lora_adapters_reach_the_engine_merged(tmp_path):
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = vllm_trainer(tmp_path, learning_rate=3e-2, peft_config=lora)
    queries = prompt_batch(trainer)
    trainer.train()
    stale = sampler_trainer_gap(trainer, queries)
    trainer.runner.sampler.sync()
    synced = sampler_trainer_gap(trainer, queries)
    print(f"max |log-prob gap| with LoRA: one update stale {stale:.2e}, synced {synced:.2e}")
    assert synced < SYNCED_TOLERANCE < stale
    lora_layers = [m for m in trainer.runner.policy.modules() if isinstance(m, LoraLayer)]
    assert lora_layers and not any(layer.merged for layer in lora_layers)  # unmerged again after the push
