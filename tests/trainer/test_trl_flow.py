"""TRL's own PPO test flow, with ReplayPPOTrainer swapped in for PPOTrainer."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM

from tests.helpers import changed, digit_prompts, make_trainer, snapshot, tiny_config, tokenized_prompts

pytestmark = pytest.mark.trl112  # also runs in the TRL 1.12 job


def test_basic_training_updates_policy_and_critic(tmp_path, tiny):
    dataset = tokenized_prompts(tiny["tokenizer"], digit_prompts(16))
    policy_before, critic_before = snapshot(tiny["policy"]), snapshot(tiny["value_model"])
    trainer = make_trainer(tiny, tiny_config(tmp_path, num_ppo_epochs=2), dataset, eval_dataset=dataset)
    trainer.train()
    assert changed(critic_before, trainer.model.value_model)
    assert changed(policy_before, trainer.model.policy)
    assert trainer.state.global_step == 4 and trainer.state.episode == 16


def test_peft_training_updates_lora_weights_only(tmp_path, tiny):
    dataset = tokenized_prompts(tiny["tokenizer"], digit_prompts(16))
    base_before = snapshot(tiny["policy"])
    critic_before = snapshot(tiny["value_model"])
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    trainer = make_trainer(tiny, tiny_config(tmp_path), dataset, ref_model=None, peft_config=lora)
    trainer.train()
    policy = trainer.model.policy
    lora_weights = {n: p for n, p in policy.named_parameters() if "lora_B" in n}
    assert lora_weights and any(p.abs().sum() > 0 for p in lora_weights.values())
    for name, param in policy.named_parameters():
        if "lora" not in name:
            original = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(param, base_before[original]), f"frozen base weight {name} changed"
    assert changed(critic_before, trainer.model.value_model)


def test_save_model_reloads_equal(tmp_path, tiny):
    dataset = tokenized_prompts(tiny["tokenizer"], digit_prompts(8))
    trainer = make_trainer(tiny, tiny_config(tmp_path, total_episodes=8), dataset)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    for name, param in trainer.model.policy.state_dict().items():
        assert torch.equal(param, reloaded.state_dict()[name]), name


def test_generate_completions_scores_every_eval_prompt(tmp_path, tiny, capsys):
    prompts = digit_prompts(8)
    dataset = tokenized_prompts(tiny["tokenizer"], prompts)
    trainer = make_trainer(tiny, tiny_config(tmp_path, per_device_eval_batch_size=4), dataset, eval_dataset=dataset)
    table = trainer.evaluator.completions(trainer.state)
    assert table["query"].tolist() == prompts  # both eval batches, in order, decoded
    assert len(table) == 8 and table["score"].notna().all()
    trainer.generate_completions(sampling=True)  # the periodic samples: the first batch, shown in the console
    shown = capsys.readouterr().out
    assert all(prompt in shown for prompt in prompts[:4])
