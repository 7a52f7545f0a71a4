"""LoRA on policy and value model, and the shared-backbone value head: the right weights train."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig

from tests.helpers import make_trainer, snapshot, tiny_config
from trl_replay_ppo.models.wrappers import SharedValueHead
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset

LORA = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def _split(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> tuple[set[str], set[str]]:
    """Names of changed and unchanged parameters of ``module`` relative to ``before`` (same names)."""
    now = dict(module.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], now[n])}
    return moved, set(before) - moved


def test_lora_policy_and_lora_value_model(tmp_path, tiny):
    args = tiny_config(tmp_path, lora_value_model=True, total_episodes=12)
    trainer = make_trainer(
        tiny,
        args,
        make_digits_dataset(12),
        ref_model=None,
        reward_model=None,
        reward_funcs=digits_reward,
        peft_config=LORA,
    )
    policy, value = trainer.model.policy, trainer.model.value_model
    policy_before, value_before = snapshot(policy), snapshot(value)
    trainer.train()
    policy_moved, policy_still = _split(policy, policy_before)
    value_moved, value_still = _split(value, value_before)
    assert policy_moved and all("lora_" in n for n in policy_moved)
    assert {n for n in policy_before if "lora_" not in n} <= policy_still  # frozen base bitwise unchanged
    assert "score.weight" in value_moved
    assert any("lora_" in n for n in value_moved)
    assert {n for n in value_before if "lora_" not in n and not n.startswith("score")} <= value_still
    assert not any(p.requires_grad for n, p in value.named_parameters() if "lora_" not in n and "score" not in n)


def test_shared_value_head_trains_head_and_shared_lora(tmp_path, tiny):
    args = tiny_config(tmp_path, shared_value_head=True, total_episodes=12)
    trainer = make_trainer(
        tiny,
        args,
        make_digits_dataset(12),
        ref_model=None,
        reward_model=None,
        value_model=None,
        reward_funcs=digits_reward,
        peft_config=LORA,
    )
    value = trainer.model.value_model
    assert isinstance(value, SharedValueHead)
    assert value.backbone is trainer.model.policy.base_model.model.model  # the policy's own backbone
    head_before, policy_before = value.score.weight.detach().clone(), snapshot(trainer.model.policy)
    assert not head_before.any()  # an untrained critic predicts 0: the first advantages are the rewards
    trainer.train()
    assert not torch.equal(head_before, value.score.weight)
    moved, still = _split(trainer.model.policy, policy_before)
    assert moved and all("lora_" in n for n in moved)
    assert {n for n in policy_before if "lora_" not in n} <= still
    n_backbone = sum(p.numel() for p in trainer.model.policy.parameters())
    n_total = sum(p.numel() for p in trainer.model.parameters())
    assert n_total == n_backbone + value.score.weight.numel()  # one backbone serves policy and critic


def test_shared_value_head_without_lora_trains_everything(tmp_path, tiny):
    args = tiny_config(tmp_path, shared_value_head=True, total_episodes=8)
    trainer = make_trainer(tiny, args, make_digits_dataset(8), value_model=None)
    before = snapshot(trainer.model)
    trainer.train()
    moved, _ = _split(trainer.model, before)
    assert "value_model.score.weight" in moved
    assert any(n.startswith("policy.model.layers") for n in moved)


@pytest.mark.parametrize(
    ("overrides", "kwargs", "match"),
    [
        ({"shared_value_head": True}, {}, "pass `value_model=None`"),
        ({}, {"value_model": None}, "`value_model` is required"),
        ({"lora_value_model": True}, {}, "needs a `peft_config`"),
    ],
)
def test_bad_critic_settings(tmp_path, tiny, overrides, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_trainer(tiny, tiny_config(tmp_path, **overrides), make_digits_dataset(4), **kwargs)


@pytest.mark.parametrize(
    ("overrides", "extra"),
    [
        ({}, {}),  # a separate, fully trained critic
        ({"lora_value_model": True}, {"peft_config": LORA, "ref_model": None}),
        ({"shared_value_head": True}, {"peft_config": LORA, "ref_model": None, "value_model": None}),
    ],
    ids=["separate critic", "LoRA critic", "shared head on a LoRA policy"],
)
def test_saved_critic_reloads_with_from_pretrained(tmp_path, tiny, overrides, extra):
    from transformers import AutoModelForSequenceClassification

    from trl_replay_ppo.models.forwards import sequence_scores

    args = tiny_config(tmp_path, total_episodes=8, save_value_model=True, **overrides)
    trainer = make_trainer(tiny, args, make_digits_dataset(8), reward_model=None, reward_funcs=digits_reward, **extra)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved" / "value_model", num_labels=1)
    batch = trainer.rollout(trainer.next_prompts())
    pad = trainer.processing_class.pad_token_id
    live = trainer.runner.response_values(batch.query_responses, batch.context_length)
    values, _, _ = sequence_scores(reloaded, batch.query_responses, pad, batch.context_length)
    torch.testing.assert_close(values[:, batch.context_length - 1 : -1].squeeze(-1), live, rtol=1e-4, atol=1e-5)
