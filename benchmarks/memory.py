"""Memory of one PPO update on a Qwen3-0.6B-shaped model, and whether it fits a 16 GB GPU.

    python -m benchmarks.memory              # all modes, results in benchmarks/results/memory.{json,md}

Each mode runs in its own process (so peak RSS is its own): a Qwen3-0.6B-shaped model is built
from its config (random init, no download), and ``ReplayPPOTrainer`` runs one update with a
small batch. Parameter, gradient and optimizer-state bytes are read off the tensors at the
optimizer step; peak memory is the process's peak RSS on CPU (and CUDA peak on a GPU).

The 16 GB verdict comes from an analytic budget at the reference design's settings (4 episodes
per micro-batch, 192 prompt + 256 response tokens): weights, gradients and AdamW states exactly
as counted from the model, plus activations, logits and generation buffers from the formulas in
`analytic_budget` (bf16 activations, gradient checkpointing on, fp32 log-softmax over the vocab).
A mode whose CPU run would not fit this machine's RAM runs at reduced depth (said in the table).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig

from benchmarks.outputs import write_tables
from trl_replay_ppo import ReplayPPOConfig
from trl_replay_ppo.trainer.memory import GIB, QWEN3_0_6B, gpu_memory_budget, qwen3_0_6b_config

RESULTS = Path(__file__).parent / "results"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODES = {
    "full_fp32": "full fine-tune, fp32, separate value model",
    "lora_bf16_value": "bf16 + LoRA policy + separate (fully trained) value model",
    "lora_bf16_lora_value": "bf16 + LoRA policy + LoRA value model",
    "lora_bf16_shared_head": "bf16 + LoRA policy + shared-backbone value head",
}
SEED_SETTINGS = {"micro_batch": 4, "prompt_tokens": 192, "response_tokens": 256}


def build(mode: str, layers: int):
    """Policy and value model of a mode, built (random init) from the Qwen3-0.6B config."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = qwen3_0_6b_config(num_hidden_layers=layers)
    dtype = torch.float32 if mode == "full_fp32" else torch.bfloat16
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_config(config, dtype=dtype)
    value = None
    if mode in ("full_fp32", "lora_bf16_value"):
        value = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    elif mode == "lora_bf16_lora_value":
        value = AutoModelForSequenceClassification.from_config(config, dtype=torch.bfloat16)
    if value is not None and value.dtype == torch.bfloat16:
        value.score.to(torch.float32)
    return policy, value


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def run_mode(mode: str, layers: int, batch: int, prompt_tokens: int, response_tokens: int) -> dict:
    """One PPO update in this process; returns the measured figures."""
    from datasets import Dataset

    from trl_replay_ppo.tasks.tiny import build_tokenizer, tiny_trainer

    tokenizer = build_tokenizer()
    policy, value = build(mode, layers)
    prompts = Dataset.from_dict({"input_ids": [[5 + (i % 10)] * prompt_tokens for i in range(batch)]})
    args, lora = mode_config(
        mode,
        per_device_train_batch_size=batch,
        num_ppo_epochs=1,
        total_episodes=batch,
        response_length=response_tokens,
        max_prompt_length=None,
    )

    def length_reward(prompts, completions, **kwargs):
        return [float(len(c)) for c in completions]

    models = {"tokenizer": tokenizer, "policy": policy, "ref_policy": None, "value_model": value}  # ref: no adapter
    trainer = tiny_trainer(models, args, prompts, reward_funcs=length_reward, peft_config=lora)
    measured = {}
    step = trainer.optimizer_step

    def measuring_step():
        params = list(trainer.model.parameters())
        measured["grad_bytes"] = tensor_bytes(p.grad for p in params if p.grad is not None)
        step()
        states = [v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        measured["optimizer_bytes"] = tensor_bytes(states)

    trainer.optimizer_step = measuring_step
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    trainer.train()
    params = {id(p): p for p in trainer.model.parameters()}
    if trainer.ref_model is not None:
        params.update({id(p): p for p in trainer.ref_model.parameters()})
    return {
        "mode": mode,
        "layers": layers,
        "param_bytes": tensor_bytes(params.values()),
        "trainable_params": sum(p.numel() for p in params.values() if p.requires_grad),
        **measured,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "cuda_peak_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        "update_seconds": time.time() - start,
        "measured_batch": {"batch": batch, "prompt_tokens": prompt_tokens, "response_tokens": response_tokens},
    }


def mode_config(mode: str, **overrides) -> tuple[ReplayPPOConfig, LoraConfig | None]:
    """The trainer settings of a mode; ``overrides`` set batch and lengths."""
    lora = None if mode == "full_fp32" else LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS)
    args = ReplayPPOConfig(
        output_dir="/tmp/memory-benchmark",
        bf16=mode != "full_fp32",
        gradient_checkpointing=True,
        lora_value_model=mode == "lora_bf16_lora_value",
        shared_value_head=mode == "lora_bf16_shared_head",
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        num_sample_generations=0,
        use_replay_buffer=False,
        **overrides,
    )
    return args, lora


def analytic_budget(mode: str) -> dict[str, float]:
    """GPU budget at the reference design's settings, from `trl_replay_ppo.trainer.memory.gpu_memory_budget`."""
    args, lora = mode_config(
        mode,
        per_device_train_batch_size=SEED_SETTINGS["micro_batch"],
        response_length=SEED_SETTINGS["response_tokens"],
    )
    return gpu_memory_budget(qwen3_0_6b_config(), args, lora, prompt_tokens=SEED_SETTINGS["prompt_tokens"])


def available_ram() -> int:
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--batch", type=int, default=2, help="Episodes in the measured update.")
    parser.add_argument("--prompt_tokens", type=int, default=32)
    parser.add_argument("--response_tokens", type=int, default=16)
    parser.add_argument("--run", choices=list(MODES), help=argparse.SUPPRESS)
    layers = QWEN3_0_6B["num_hidden_layers"]
    parser.add_argument("--layers", type=int, default=layers, help="Decoder layers run (at most: RAM caps it).")
    parser.add_argument("--output_dir", default=str(RESULTS))
    options = parser.parse_args(argv)
    if options.run:
        torch.set_num_threads(os.cpu_count() or 1)
        result = run_mode(options.run, options.layers, options.batch, options.prompt_tokens, options.response_tokens)
        print("RESULT " + json.dumps(result))
        return []

    rows = []
    for mode in options.modes:
        budget = analytic_budget(mode)
        layers = options.layers
        cpu_need = (budget["weights"] + budget["gradients"] + budget["optimizer"]) * GIB * 1.15 + 2 * GIB
        if not torch.cuda.is_available() and cpu_need > 0.85 * available_ram():
            layers = max(1, int(layers * 0.85 * available_ram() / cpu_need))
        command = [sys.executable, "-m", "benchmarks.memory", "--run", mode, "--layers", str(layers)]
        command += ["--batch", str(options.batch), "--prompt_tokens", str(options.prompt_tokens)]
        command += ["--response_tokens", str(options.response_tokens)]
        print(f"[{mode}] {MODES[mode]} ({layers} layers) ...", flush=True)
        root = Path(__file__).parent.parent
        output = subprocess.run(command, capture_output=True, text=True, check=False, cwd=root)
        line = next((x for x in output.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"mode {mode} failed:\n{output.stderr[-3000:]}")
        measured = json.loads(line[len("RESULT ") :])
        rows.append({"mode": mode, "description": MODES[mode], "measured": measured, "budget_16gb": budget})
        print(f"  peak RSS {measured['peak_rss_bytes'] / GIB:.2f} GiB, analytic GPU total {budget['total']:.2f} GiB")
    write_results(rows, options)
    return rows


def write_results(rows: list[dict], options) -> None:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    lines = [
        "# Memory of one PPO update, Qwen3-0.6B-shaped model",
        "",
        f"Command: `python -m benchmarks.memory` on {device}. Measured update: {options.batch} episodes, "
        f"{options.prompt_tokens} prompt + {options.response_tokens} response tokens, gradient checkpointing on.",
        "",
        "| mode | layers run | params | trainable | gradients | AdamW state | peak RSS (measured) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m = row["measured"]
        lines.append(
            f"| {row['description']} | {m['layers']}/28 | {m['param_bytes'] / GIB:.2f} GiB | "
            f"{m['trainable_params'] / 1e6:.1f} M | {m['grad_bytes'] / GIB:.3f} GiB | "
            f"{m['optimizer_bytes'] / GIB:.3f} GiB | {m['peak_rss_bytes'] / GIB:.2f} GiB |"
        )
    settings = SEED_SETTINGS
    lines += [
        "",
        f"Analytic GPU budget at the reference settings ({settings['micro_batch']} episodes per micro-batch, "
        f"{settings['prompt_tokens']} prompt + {settings['response_tokens']} response tokens, bf16 activations "
        "with gradient checkpointing), GiB:",
        "",
        "| mode | weights | grads | AdamW | activations | logits | generation | total | fits 16 GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        b = row["budget_16gb"]
        verdict = "yes" if b["total"] <= 16 * 1e9 / GIB * 0.8 else ("tight" if b["total"] <= 16 * 1e9 / GIB else "no")
        lines.append(
            f"| {row['description']} | {b['weights']:.2f} | {b['gradients']:.2f} | {b['optimizer']:.2f} | "
            f"{b['activations']:.2f} | {b['logits']:.2f} | {b['generation']:.2f} | {b['total']:.2f} | {verdict} |"
        )
    lines += ["", "'yes' means at most 80% of 16 GB (14.9 GiB): a margin for allocator fragmentation."]
    write_tables(options.output_dir, "memory", {"device": device, "rows": rows}, lines)


if __name__ == "__main__":
    main()
