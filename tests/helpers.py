"""Helpers shared by the tests."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import TrainerCallback

from trl_replay_ppo import ReplayPPOConfig, ReplayPPOTrainer
from trl_replay_ppo.tasks.tiny import tiny_trainer

ROOT = Path(__file__).parent.parent  # the repository


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def digit_prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("0123456789") for _ in range(rng.randint(2, 5))) + "=" for _ in range(n)]


def tokenized_prompts(tokenizer, texts: list[str]) -> Dataset:
    return Dataset.from_dict({"input_ids": [tokenizer(t)["input_ids"] for t in texts]})


def tiny_config(tmp_path, **overrides) -> ReplayPPOConfig:
    """A config for fast CPU tests: everything this package adds is off unless overridden."""
    values = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "num_mini_batches": 1,
        "num_ppo_epochs": 1,
        "total_episodes": 16,
        "response_length": 6,
        "learning_rate": 1e-3,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
        "num_sample_generations": 0,
        "max_grad_norm": 0,
        "use_replay_buffer": False,
    }
    values.update(overrides)
    return ReplayPPOConfig(**values)


def make_trainer(tiny, args, train_dataset, **kwargs) -> ReplayPPOTrainer:
    """A trainer on the tiny models, scored by the tiny reward model unless ``kwargs`` say otherwise."""
    return tiny_trainer(tiny, args, train_dataset, **{"reward_model": tiny["reward_model"], **kwargs})


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    """Names of the parameters of ``module`` that differ from ``before``."""
    return {name for name, p in module.named_parameters() if name in before and not torch.equal(before[name], p)}


def stop_after(trainer: ReplayPPOTrainer, last_update: int) -> None:
    """Make ``trainer`` stop once update ``last_update`` has ended (its checkpoint written), as a pre-emption would."""
    end_update = trainer.end_update

    def end_and_stop(update: int, epoch_ended: bool = False) -> None:
        end_update(update, epoch_ended)
        if update == last_update:
            trainer.control.should_training_stop = True

    trainer.end_update = end_and_stop


class LogRecorder(TrainerCallback):
    """Keeps every dict passed to ``on_log``."""

    def __init__(self):
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def two_process_command(port: int, module: str, *args: str) -> list[str]:
    """`accelerate launch` of ``python -m module args`` on 2 CPU processes (gloo), rendezvous on ``port``."""
    accelerate = Path(sys.executable).parent / "accelerate"
    config = str(ROOT / "trl_replay_ppo/cli/examples/accelerate/cpu_2proc.yaml")
    return [str(accelerate), "launch", "--config_file", config, "--main_process_port", str(port), "-m", module, *args]


def launch_two_processes(port: int, module: str, models_dir: Path, output_dir: Path, mode: str, timeout: int) -> dict:
    """Run ``python -m module models_dir output_dir mode`` on 2 CPU processes and read the
    ``summary-<mode>.json`` it writes into ``output_dir``; a hang fails after ``timeout`` seconds."""
    command = two_process_command(port, module, str(models_dir), str(output_dir), mode)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # The script runs as a module of the repository (`-m tests.distributed...`).
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((output_dir / f"summary-{mode}.json").read_text())
