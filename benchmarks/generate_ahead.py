"""Seconds per update with `generate_ahead` against sampling in the training process, side by side.

    python -m benchmarks.generate_ahead     # results in benchmarks/results/generate_ahead.{json,md}

The profile is the fair benchmark's generation-heavy one (`benchmarks.fairness_profiles.LONG`: digits, 32 episodes
per update, 64-token responses generated 4 at a time). Every arm gets the same two cores: an arm that
samples in the training process trains on 2 threads; an arm with ``generate_ahead`` trains on 1 and
samples on the other (``generate_ahead_threads=1``). Arms run one after another in one process, in an
order rotated each repeat. An update's time is the wall time between the ends of two updates (rollout,
replay, PPO epochs; with ``generate_ahead``, the wait for the batch sampled ahead); the first
``--warmup`` updates are left out (the generator's start, replay's buffer warm-up). Reported: the median
over repeats of each arm's median seconds per update, and its ratio to the on-policy arm's, measured in the
same repeat. This is time per update only; what one update of staleness costs in episodes to a target is
the fair benchmark's question.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from accelerate.state import AcceleratorState
from transformers import TrainerCallback

from benchmarks.fairness_profiles import LONG
from benchmarks.outputs import write_tables
from trl_replay_ppo import ReplayPPOConfig
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
from trl_replay_ppo.tasks.tiny import build_tiny_models, load_tiny_models, tiny_trainer

RESULTS = Path(__file__).parent / "results"
CORES = 2
ARMS = {  # name: (config overrides, torch threads of the training process)
    "on-policy": ({"use_replay_buffer": False}, CORES),
    "on-policy, generate_ahead": ({"use_replay_buffer": False, "generate_ahead": True}, CORES - 1),
    "replay defaults": ({"use_replay_buffer": True}, CORES),
    "replay defaults, generate_ahead": ({"use_replay_buffer": True, "generate_ahead": True}, CORES - 1),
}


class UpdateClock(TrainerCallback):
    """Wall time between the ends of consecutive updates (the first from the start of training)."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.seconds: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.seconds.append(now - self.last)
        self.last = now


def one_run(overrides: dict, threads: int, models_dir: Path, updates: int, settings: dict) -> list[float]:
    """Seconds of each update of one run."""
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.set_num_threads(threads)
    models = load_tiny_models({k: models_dir / k for k in ("tokenizer", "policy", "reward")})
    args = ReplayPPOConfig(
        **settings,
        **overrides,
        output_dir="/tmp/trl_replay_ppo_generate_ahead",
        total_episodes=settings["per_device_train_batch_size"] * updates,
        generate_ahead_threads=max(CORES - threads, 1),  # read only with generate_ahead
        lr_scheduler_type="constant",
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        num_sample_generations=0,
        disable_tqdm=True,
        bf16=False,
        seed=0,
    )
    trainer = tiny_trainer(models, args, make_digits_dataset(2000, seed=0), reward_funcs=digits_reward)
    clock = UpdateClock()
    trainer.add_callback(clock)
    trainer.train()
    return clock.seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--updates", type=int, default=12)
    parser.add_argument(
        "--warmup", type=int, default=4, help="Updates left out at the start of each run (replay runs from the 5th)."
    )
    parser.add_argument("--response_length", type=int, default=LONG.settings["response_length"])
    parser.add_argument("--output_dir", default=str(RESULTS))
    options = parser.parse_args(argv)
    models_dir = Path("/tmp/trl_replay_ppo_generate_ahead/models")
    build_tiny_models(models_dir)
    settings = {**LONG.settings, "response_length": options.response_length}
    names = list(ARMS)
    repeats: list[dict[str, list[float]]] = []
    for repeat in range(options.repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        repeats.append({name: one_run(*ARMS[name], models_dir, options.updates, settings) for name in order})
    base = names[0]

    def median_update(seconds: list[float]) -> float:
        return statistics.median(seconds[options.warmup :])

    summary = {
        name: {
            "seconds_per_update": statistics.median(median_update(r[name]) for r in repeats),
            "ratio": statistics.median(median_update(r[name]) / median_update(r[base]) for r in repeats),
            "training_threads": ARMS[name][1],
            "generator_threads": CORES - ARMS[name][1] if ARMS[name][0].get("generate_ahead") else 0,
        }
        for name in names
    }
    command = (
        f"python -m benchmarks.generate_ahead --repeats {options.repeats} --updates {options.updates} "
        f"--warmup {options.warmup} --response_length {options.response_length}"
    )
    result = {"command": command, "summary": summary, "repeats": repeats}
    lines = [
        "# Seconds per update with generate_ahead",
        "",
        f"Command: `{command}`; the generation-heavy profile ({options.response_length}-token responses), "
        f"{CORES} cores for every arm, medians over {options.repeats} repeats of each run's median update "
        f"(the first {options.warmup} left out).",
        "",
        "| arm | training threads | generator threads | s / update | x on-policy |",
        "|---|---|---|---|---|",
        *[
            f"| {name} | {s['training_threads']} | {s['generator_threads']} | {s['seconds_per_update']:.3f} "
            f"| {s['ratio']:.2f}x |"
            for name, s in summary.items()
        ],
    ]
    write_tables(options.output_dir, "generate_ahead", result, lines)
    return result


if __name__ == "__main__":
    main()
