"""The offline demo: a tiny model learns the digits task on CPU in a couple of minutes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from trl_replay_ppo.cli.plots import plot_runs
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
from trl_replay_ppo.tasks.tiny import build_tiny_models, load_tiny_models, tiny_trainer
from trl_replay_ppo.trainer.config import ReplayPPOConfig

if TYPE_CHECKING:
    from trl_replay_ppo.trainer.driver import ReplayPPOTrainer

# Hyper-parameters that learn the digits task in about two minutes on two CPU cores; the demo and
# benchmarks/overhead.py train with them (benchmarks/fairness.py uses the same values).
DIGITS_SETTINGS = {
    "per_device_train_batch_size": 32,
    "num_ppo_epochs": 4,
    "response_length": 8,
    "learning_rate": 3e-4,
    "lr_scheduler_type": "constant",
    "kl_coef": 0.01,
    "temperature": 1.0,
    "use_cpu": True,
    "report_to": "none",
    "save_strategy": "no",
    "num_sample_generations": 0,
}


def demo_config(output_dir: str | Path, **overrides) -> ReplayPPOConfig:
    """The demo's settings: `DIGITS_SETTINGS` with a 6,400-episode budget."""
    values = {
        **DIGITS_SETTINGS,
        "output_dir": str(output_dir),
        "per_device_eval_batch_size": 64,
        "total_episodes": 6400,
        "seed": 0,
        "eval_on_start": True,  # the score before training is logged, and plotted, like the others
        "eval_strategy": "steps",
        "eval_steps": 0.25,  # and at each quarter of training, the last one at its end
    }
    values.update(overrides)
    return ReplayPPOConfig(**values)


def digits_trainer(models: dict, args: ReplayPPOConfig) -> ReplayPPOTrainer:
    """A trainer of the tiny ``models`` on the digits task: 2,000 training prompts, 128 evaluation prompts."""
    return tiny_trainer(
        models,
        args,
        make_digits_dataset(2000, seed=0),
        reward_funcs=digits_reward,
        eval_dataset=make_digits_dataset(128, seed=1),
    )


def run_demo(output_dir: str | Path = "outputs/demo", **overrides) -> dict[str, float]:
    """Build the tiny models and train, evaluating before, during and at the end; return the first and last eval
    rewards and the reward plot."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    output_dir = Path(output_dir)
    models = load_tiny_models(build_tiny_models(output_dir / "models"))
    args = demo_config(output_dir, **overrides)
    trainer = digits_trainer(models, args)
    trainer.train()
    evaluations = [log["eval_reward"] for log in trainer.state.log_history if "eval_reward" in log]
    before, after = evaluations[0], evaluations[-1]
    trainer.save_model(str(output_dir / "policy"))
    plots = plot_runs([output_dir])
    return {"eval_reward_before": before, "eval_reward_after": after, "plot": plots[0]}
