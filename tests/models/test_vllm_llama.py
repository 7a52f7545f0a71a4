"""Weights reach vLLM's CPU engine for a Llama policy with tied embeddings (SmolLM2's architecture).

vLLM's CPU backend repacks every linear layer after loading and keeps no per-tensor loader; Llama's weight
loader needs one, so pushing weights one tensor at a time failed there (the tiny Qwen3 model of the other
vLLM tests loads differently)."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from tests.models.vllm_helpers import SYNCED_TOLERANCE, gaps_around_training, prompt_batch, vllm_trainer
from trl_replay_ppo.tasks.tiny import build_vllm_tiny_models, load_tiny_models

pytestmark = pytest.mark.vllm  # CI's vLLM job (`make test-vllm`), one engine per module


def tiny_llama(tmp_path) -> dict:
    """The tiny models with the policy (and reference) replaced by a 2-layer Llama, head_dim 32, tied embeddings."""
    dirs = build_vllm_tiny_models(tmp_path / "models")
    tokenizer = AutoTokenizer.from_pretrained(dirs["tokenizer"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    llama = AutoModelForCausalLM.from_config(config)
    llama.generation_config.pad_token_id = tokenizer.pad_token_id
    llama.save_pretrained(dirs["policy"])
    tokenizer.save_pretrained(dirs["policy"])
    return load_tiny_models(dirs)


def test_a_llama_policy_with_tied_embeddings_syncs_fully(tmp_path):
    models = tiny_llama(tmp_path)
    assert type(models["policy"]).__name__ == "LlamaForCausalLM" and models["policy"].config.tie_word_embeddings
    trainer = vllm_trainer(tmp_path, models=models, learning_rate=1e-2)
    # training moves every parameter, the tied embedding and output layer included
    fresh, stale, synced = gaps_around_training(trainer, prompt_batch(trainer))
    assert fresh < SYNCED_TOLERANCE and synced < SYNCED_TOLERANCE
    assert stale > 10 * SYNCED_TOLERANCE
