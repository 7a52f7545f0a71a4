"""vLLM against Hugging Face ``generate`` on SmolLM2-135M-Instruct (CPU): sampling time per update in the trainer.

    make test-vllm && .venv-vllm/bin/python -m benchmarks.smollm2_generation   # results/smollm2_generation.md

The SmolLM2 benchmark's replay-off settings (`benchmarks.smollm2`: LoRA, 8 word problems per update, 32-token
responses), with ``use_vllm`` off and on, in one process of the vLLM environment, one backend after the
other, on both cores. Timed per update: `ModelRunner.sample` (generation; with vLLM also the LoRA merge and
weight push, and the trainer's forward over the samples that stock generation gets from ``generate``) and
the whole update; the first update of each backend is left out (warm-up, and vLLM's engine start).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.outputs import write_tables
from benchmarks.smollm2 import MODEL_DIR, RESULTS, return_freed_memory, settings
from benchmarks.vllm_generation import ENGINE_ENV


def time_backend(use_vllm: bool, updates: int, model_dir: Path) -> dict:
    """Seconds of sampling and of the whole update, per update after the first."""
    import torch
    from accelerate.state import AcceleratorState
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_replay_ppo import ReplayPPOConfig, ReplayPPOTrainer
    from trl_replay_ppo.rewards import format_reward, gsm8k_accuracy
    from trl_replay_ppo.tasks.word_arithmetic import word_arithmetic

    AcceleratorState._reset_state(reset_partial_state=True)
    torch.set_num_threads(2)
    fields = settings("replay_off", 1, 8 * updates, 8 * updates, tempfile.mkdtemp(prefix="smollm2-generation-"))
    fields.update(eval_strategy="no", use_vllm=use_vllm)
    trainer = ReplayPPOTrainer(
        args=ReplayPPOConfig(**fields, reward_weights=[1.0, 0.0]),
        processing_class=AutoTokenizer.from_pretrained(model_dir, padding_side="left"),
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        value_model=None,
        train_dataset=word_arithmetic(num_train=256, num_eval=0)["train"],
        reward_funcs=[gsm8k_accuracy, format_reward],
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    sampling: list[float] = []
    ends: list[float] = []
    sample, end_update = trainer.runner.sample, trainer.end_update

    def timed_sample(*args, **kwargs):
        started = time.perf_counter()
        try:
            return sample(*args, **kwargs)
        finally:
            sampling.append(time.perf_counter() - started)

    def timed_end(*args, **kwargs):
        end_update(*args, **kwargs)
        ends.append(time.perf_counter())

    trainer.runner.sample, trainer.end_update = timed_sample, timed_end
    trainer.train()
    updates_s = [b - a for a, b in itertools.pairwise(ends)]
    return {
        "sampling_s": statistics.median(sampling[1:]),
        "update_s": statistics.median(updates_s),
        "updates_timed": len(updates_s),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=4, help="Updates per backend (the first is not timed).")
    parser.add_argument("--model_dir", default=str(MODEL_DIR), help="Written by `trl-replay-ppo smollm2` if absent.")
    parser.add_argument("--output_dir", default=str(RESULTS))
    options = parser.parse_args(argv)
    os.environ.update({k: os.environ.get(k, v) for k, v in ENGINE_ENV.items()})
    return_freed_memory()
    from trl_replay_ppo.tasks.smollm2 import save_smollm2

    model_dir = save_smollm2(options.model_dir)
    result = {backend: time_backend(backend == "vllm", options.updates, model_dir) for backend in ("generate", "vllm")}
    ratio = result["vllm"]["sampling_s"] / result["generate"]["sampling_s"]
    command = f"python -m benchmarks.smollm2_generation --updates {options.updates}"
    lines = [
        "# SmolLM2-135M-Instruct: vLLM against `generate` (CPU)",
        "",
        f"Command: `{command}` in the vLLM environment; medians over {result['generate']['updates_timed']} updates "
        "per backend after the first, one process on 2 cores.",
        "",
        "| backend | sampling s / update | update s |",
        "|---|---|---|",
        *[f"| {name} | {r['sampling_s']:.2f} | {r['update_s']:.2f} |" for name, r in result.items()],
        "",
        f"Sampling time, vLLM / generate: {ratio:.2f}.",
    ]
    write_tables(options.output_dir, "smollm2_generation", {"command": command, **result}, lines)
    return result


if __name__ == "__main__":
    main()
