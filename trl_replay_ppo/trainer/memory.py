"""An analytic GPU memory budget for one PPO update, from a model config and a `ReplayPPOConfig`.

Parameter counts are exact (the models are built on the ``meta`` device, LoRA applied); activations,
logits and generation buffers come from standard formulas, stated in `gpu_memory_budget`.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PretrainedConfig, Qwen3Config

from trl_replay_ppo.models.wrappers import apply_value_lora
from trl_replay_ppo.trainer.config import ReplayPPOConfig

GIB = 1024**3
# Qwen/Qwen3-0.6B's config.json, so the budget needs no download.
QWEN3_0_6B = {
    "vocab_size": 151936,
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
}


def qwen3_0_6b_config(**overrides) -> Qwen3Config:
    return Qwen3Config(**{**QWEN3_0_6B, **overrides}, pad_token_id=0, num_labels=1)


def parameter_counts(model_config: PretrainedConfig, args: ReplayPPOConfig, peft_config=None) -> dict[str, int]:
    """Exact parameter counts: policy (total, trainable) and critic (total, trainable)."""
    from peft import get_peft_model

    with torch.device("meta"):
        policy = AutoModelForCausalLM.from_config(model_config)
        policy_total = sum(p.numel() for p in policy.parameters())
        if peft_config is not None:
            policy = get_peft_model(policy, peft_config)
        policy_trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
        if args.shared_value_head:
            value_total = value_trainable = model_config.hidden_size
        else:
            value = AutoModelForSequenceClassification.from_config(model_config)
            if args.lora_value_model:
                value = apply_value_lora(value, peft_config)
            value_total = sum(p.numel() for p in value.parameters())
            value_trainable = sum(p.numel() for p in value.parameters() if p.requires_grad)
    adapters = policy_trainable if peft_config is not None else 0
    return {
        "policy": policy_total + adapters,
        "policy_trainable": policy_trainable,
        "value": value_total,
        "value_trainable": value_trainable,
    }


def gpu_memory_budget(
    model_config: PretrainedConfig, args: ReplayPPOConfig, peft_config=None, prompt_tokens: int | None = None
) -> dict[str, float]:
    """GiB per component at the peak of one update on one GPU, and their ``total``.

    - weights: trainable weights in fp32, frozen ones in bf16 with ``bf16=True`` (else fp32); a full
      fine-tune keeps a reference copy, LoRA uses the policy with adapters disabled;
    - gradients: fp32 for trainable weights; AdamW: two fp32 moments;
    - activations: policy and critic passes of one micro-batch (``per_device_train_batch_size``
      episodes of ``prompt_tokens + response_length`` tokens): with gradient checkpointing one saved
      hidden state per layer plus one layer recomputed (Korthikanti et al. 2022), else every layer;
    - logits: the lm-head output, plus four fp32 (B, R, V) tensors (sliced logits, softmax for the
      entropy, their gradients);
    - generation: KV cache and the stacked fp32 scores kept for the behaviour log-probs;
    - overhead: 1 GiB for the CUDA context, workspace and allocator fragmentation.
    """
    c = parameter_counts(model_config, args, peft_config)
    b, r = args.per_device_train_batch_size, args.response_length
    p = prompt_tokens if prompt_tokens is not None else (args.max_prompt_length or 256)
    t, h, vocab = p + r, model_config.hidden_size, model_config.vocab_size
    layers, heads = model_config.num_hidden_layers, model_config.num_attention_heads
    low = 2 if args.bf16 else 4
    frozen = (c["policy"] - c["policy_trainable"]) + (c["value"] - c["value_trainable"])
    trainable = c["policy_trainable"] + c["value_trainable"]
    reference = c["policy"] * low if peft_config is None else 0
    per_layer = b * t * h * (34 + 5 * heads * t / h) * low / 2
    checkpointed = layers * b * t * h * low + per_layer
    activations = 2 * (checkpointed if args.gradient_checkpointing else layers * per_layer)
    kv_cache = 2 * layers * model_config.num_key_value_heads * getattr(model_config, "head_dim", h // heads) * t * b
    parts = {
        "weights": frozen * low + trainable * 4 + reference,
        "gradients": trainable * 4,
        "optimizer": trainable * 8,
        "activations": activations,
        "logits": b * t * vocab * low + 4 * b * r * vocab * 4,
        "generation": kv_cache * low + 2 * b * r * vocab * 4,
        "overhead": GIB,
    }
    training = sum(parts[k] for k in ("weights", "gradients", "optimizer", "activations", "logits", "overhead"))
    rollout = sum(parts[k] for k in ("weights", "optimizer", "generation", "logits", "overhead"))
    parts["total"] = max(training, rollout)
    return {k: v / GIB for k, v in parts.items()}
