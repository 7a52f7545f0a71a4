"""GPU checks that CPU-only CI cannot run; `examples/gpu_check.sh` runs them all.

    python examples/gpu_check.py bf16     # the digits task in bf16 on one GPU: learns, weights stay finite
    accelerate launch --config_file trl_replay_ppo/cli/examples/accelerate/deepspeed_zero3.yaml --num_processes 1 \\
        examples/gpu_check.py zero        # the same under DeepSpeed (ZeRO-2 or 3, as the config says)

Each prints one JSON line ``RESULT {...}`` and exits non-zero when the check fails.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from trl_replay_ppo import ReplayPPOConfig
from trl_replay_ppo.cli.demo import DIGITS_SETTINGS, digits_trainer
from trl_replay_ppo.tasks.tiny import build_tiny_models, load_tiny_models


def check(mode: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        models = load_tiny_models(build_tiny_models(Path(tmp) / "models"))
        settings = {**DIGITS_SETTINGS, "use_cpu": not torch.cuda.is_available(), "bf16": True, "disable_tqdm": True}
        args = ReplayPPOConfig(
            output_dir=str(Path(tmp) / "out"),
            total_episodes=1600,
            per_device_eval_batch_size=64,
            save_strategy="steps" if mode == "zero" else "no",
            save_steps=25,
            **{k: v for k, v in settings.items() if k != "save_strategy"},
        )
        trainer = digits_trainer(models, args)
        before = trainer.evaluate()["eval_reward"]
        trainer.train()
        after = trainer.evaluate()["eval_reward"]
        finite = all(torch.isfinite(p).all() for p in trainer.model.parameters())
        return {
            "mode": mode,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "eval_reward_before": before,
            "eval_reward_after": after,
            "finite": bool(finite),
            "cuda_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
            "passed": bool(finite and after > before + 0.2),
        }


if __name__ == "__main__":
    result = check(sys.argv[1])
    print("RESULT " + json.dumps(result), flush=True)
    sys.exit(0 if result["passed"] else 1)
