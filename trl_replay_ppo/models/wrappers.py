"""The policy + critic module the trainer optimises, and critic variants that save memory.

`PolicyAndValueWrapper` holds the policy and the value model as one module (one optimizer, one
``accelerator.prepare``); `SharedValueHead` is a critic on the policy's own backbone; `apply_value_lora`
puts LoRA adapters on a separate value model.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from trl_replay_ppo.integrations.compat import is_checkpointing


class PolicyAndValueWrapper(torch.nn.Module):
    """``policy`` and ``value_model`` as one module; calling it runs the critic, then the policy, on the same inputs.

    A `SharedValueHead` reads the policy's own last hidden states, so policy and critic then cost one
    backbone pass (forward and backward) instead of two. Parameter names are ``policy.*`` and
    ``value_model.*`` (what checkpoints store).
    ``is_gradient_checkpointing`` is read by TRL's ``unwrap_model_for_generation``, which turns
    checkpointing off while generating.
    """

    def __init__(self, policy: PreTrainedModel, value_model: torch.nn.Module):
        super().__init__()
        self.policy = policy
        self.value_model = value_model
        self.critic_backbone = getattr(value_model, value_model.base_model_prefix)
        self.shares_backbone = isinstance(value_model, SharedValueHead)
        self.is_gradient_checkpointing = is_checkpointing(policy)

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.policy.gradient_checkpointing_enable(**kwargs)
        self.is_gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.policy.gradient_checkpointing_disable()
        self.is_gradient_checkpointing = False

    def forward(self, **kwargs):
        """``(policy output, (B, T, 1) critic values)``; the policy output holds its hidden states."""
        kwargs = {**kwargs, "output_hidden_states": True}
        if self.shares_backbone:
            # A causal LM's last hidden state is its backbone's output (after the final norm), bitwise.
            output = self.policy(**kwargs)
            return output, self.value_model.score(output.hidden_states[-1])
        values = self.value_model.score(self.critic_backbone(**kwargs).hidden_states[-1])
        return self.policy(**kwargs), values


def embedding_rows(model: torch.nn.Module) -> int:
    """Rows of the input embedding of ``model`` (or of its ``policy``): every token id it can generate lies below."""
    policy = getattr(model, "policy", model)
    return int(policy.get_input_embeddings().num_embeddings)


class NoRewardModel(torch.nn.Module):
    """Stands in for ``reward_model`` while the PPO base's constructor runs, when only reward functions are given."""


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability to 0 (log-probs must not change between two passes over the same tokens)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0


def create_reference_model(model: PreTrainedModel) -> PreTrainedModel:
    """A frozen copy of ``model`` in eval mode, to serve as the KL reference."""
    reference = copy.deepcopy(model)
    for param in reference.parameters():
        param.requires_grad = False
    return reference.eval()


class Float32Linear(torch.nn.Linear):
    """A linear layer kept in fp32 that accepts bf16/fp16 inputs (a small head trains best in fp32)."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden.to(self.weight.dtype))


class SharedValueHead(torch.nn.Module):
    """A critic that reuses the policy's transformer backbone and adds one linear head.

    It exposes what TRL's PPO expects of a value model (``base_model_prefix`` naming a backbone
    that returns hidden states, and a ``score`` head), so TRL's ``PolicyAndValueWrapper`` and
    ``get_reward`` use it unchanged. The backbone is the policy's own module (shared parameters,
    LoRA adapters included when the policy gets a ``peft_config``); only ``score`` is new.

    ``score`` starts at zero: an untrained critic predicts 0 for every state, so the first advantages are
    the rewards (and KL penalties) alone, and no value-loss gradient reaches the shared backbone until the
    head has learned something. A randomly initialised head predicts values of order 1 on a pretrained
    model's hidden states; its TD differences then dominate the advantages, and the policy is pushed
    towards whatever states that random function rates high.
    """

    base_model_prefix = "backbone"

    def __init__(self, policy: PreTrainedModel):
        super().__init__()
        self.backbone = getattr(policy, policy.base_model_prefix)
        hidden_size = policy.config.hidden_size
        self.score = Float32Linear(hidden_size, 1, bias=False)
        torch.nn.init.zeros_(self.score.weight)
        self.config = policy.config


def export_value_model(value_model: torch.nn.Module, policy: torch.nn.Module) -> PreTrainedModel:
    """A standalone copy of the critic that ``AutoModelForSequenceClassification.from_pretrained`` loads.

    LoRA adapters are merged into the copy (on the value model, or on the policy backbone a
    `SharedValueHead` uses); the live models are not touched. A shared head becomes a sequence
    classifier of the policy's architecture: its backbone plus the head as ``score``.
    """
    from transformers import AutoModelForSequenceClassification

    if not isinstance(value_model, SharedValueHead):
        exported = copy.deepcopy(value_model)
        prefix = exported.base_model_prefix
        backbone = getattr(exported, prefix)
        if hasattr(backbone, "merge_and_unload"):
            setattr(exported, prefix, backbone.merge_and_unload())
        return exported
    merged = copy.deepcopy(policy)
    if hasattr(merged, "merge_and_unload"):
        merged = merged.merge_and_unload()
    config = copy.deepcopy(merged.config)
    config.num_labels = 1
    exported = AutoModelForSequenceClassification.from_config(config)
    prefix = exported.base_model_prefix
    state = {f"{prefix}.{k}": v for k, v in getattr(merged, merged.base_model_prefix).state_dict().items()}
    state["score.weight"] = value_model.score.weight.detach().to(exported.score.weight.dtype)
    exported.load_state_dict(state)
    return exported


def save_pretrained_policy(
    model: PolicyAndValueWrapper, tokenizer: Any, output_dir: str | Path, *, with_value_model: bool
) -> None:
    """``save_pretrained`` of the policy (or its LoRA adapters) and the tokenizer into ``output_dir``.

    With ``with_value_model`` the trained critic goes to ``output_dir/value_model`` (`export_value_model`).
    The unwrapped model is saved: transformers' DDP path fails on tied weights.
    """
    model.policy.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    if with_value_model:
        export_value_model(model.value_model, model.policy).save_pretrained(Path(output_dir) / "value_model")


def apply_value_lora(value_model: PreTrainedModel, peft_config) -> PreTrainedModel:
    """Put LoRA adapters on the value model's backbone; its ``score`` head stays fully trainable.

    The backbone is replaced in place by a ``PeftModel`` (base weights frozen), so TRL's
    ``get_reward`` and ``PolicyAndValueWrapper`` still find ``base_model_prefix`` and ``score``.
    """
    from peft import get_peft_model

    config = copy.deepcopy(peft_config)
    config.task_type = None
    prefix = value_model.base_model_prefix
    setattr(value_model, prefix, get_peft_model(getattr(value_model, prefix), config))
    for param in value_model.score.parameters():
        param.requires_grad_(True)
    return value_model


def enable_gradient_checkpointing(
    policy: PreTrainedModel, value_model: torch.nn.Module | None, kwargs: dict | None = None
) -> None:
    """Turn on activation recomputation in the policy and, when it is a transformers model, the critic.

    Non-reentrant checkpointing is the default: it needs no ``requires_grad`` inputs, so it works
    with frozen embeddings under LoRA.
    """
    kwargs = {"use_reentrant": False, **(kwargs or {})}
    policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if isinstance(value_model, PreTrainedModel):
        value_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
