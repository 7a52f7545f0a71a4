"""What a replayed row costs: per-update training time of replay's levers against an on-policy update, side by side.

    python -m benchmarks.training_cost      # results in benchmarks/results/training_cost.{json,md}

Timed per update: the training cost, ``extend_batch`` + ``compute_advantages`` + ``ppo_update`` (replay's
sampling and its proximal forward, GAE, the PPO epochs), and the rollout (Hugging Face ``generate``, with
the reference and value forwards) apart. The profile is the fair benchmark's generation-heavy one
(`benchmarks.fairness_profiles.LONG`: digits, 32 episodes per update, 64-token responses generated 4 at a time) at
``replay_ratio=3``. Arms run one after another in one process on one thread, in an order rotated each
repeat so that load and warm-up fall on every arm alike; a replay arm's updates count once replay runs (the
buffer's warm-up is left out), an on-policy arm's after its first. Reported: the median over the repeats
of each arm's median seconds per update, and its ratio to the on-policy arm's training cost measured in
the same repeat. The package's rule of thumb, at replayed-row cost c (1 = a fresh row's): an update costs
g + (1 + c r)(1 - g) on-policy updates, g the generation share of an on-policy update.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from accelerate.state import AcceleratorState

from benchmarks.fairness_profiles import LONG
from benchmarks.outputs import write_tables
from trl_replay_ppo import ReplayPPOConfig
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
from trl_replay_ppo.tasks.tiny import build_tiny_models, load_tiny_models, tiny_trainer

RESULTS = Path(__file__).parent / "results"
ARMS = {
    "on-policy (replay off)": {"use_replay_buffer": False},
    "replay defaults": {"use_replay_buffer": True},
    "replay_epochs=2": {"use_replay_buffer": True, "replay_epochs": 2},
    "replay_epochs=1": {"use_replay_buffer": True, "replay_epochs": 1},
}
TIMED = ("extend_batch", "compute_advantages", "ppo_update")


def one_run(overrides: dict, models_dir: Path, updates: int, settings: dict) -> dict:
    """Median seconds per update of one run: training (`TIMED`) and rollout, over the updates that count."""
    AcceleratorState._reset_state(reset_partial_state=True)
    models = load_tiny_models({k: models_dir / k for k in ("tokenizer", "policy", "reward")})
    args = ReplayPPOConfig(
        **settings,
        **overrides,
        output_dir="/tmp/trl_replay_ppo_training_cost",
        total_episodes=settings["per_device_train_batch_size"] * updates,
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
    seconds: dict[str, float] = {}
    per_update: list[dict] = []

    def timed(name: str):
        method = getattr(trainer, name)

        def call(*call_args):
            started = time.perf_counter()
            try:
                return method(*call_args)
            finally:
                seconds[name] = time.perf_counter() - started
                if name == "ppo_update":  # the last timed step of an update
                    per_update.append({**seconds, "replayed": len(call_args[0]) - call_args[0].num_fresh})

        setattr(trainer, name, call)

    for name in ("rollout", *TIMED):
        timed(name)
    trainer.train()
    replaying = overrides.get("use_replay_buffer", True)
    counted = [u for u in per_update if u["replayed"] > 0] if replaying else per_update[1:]
    return {
        "training": statistics.median(sum(u[name] for name in TIMED) for u in counted),
        "extend_batch": statistics.median(u["extend_batch"] for u in counted),
        "rollout": statistics.median(u["rollout"] for u in counted),
        "updates_counted": len(counted),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--updates", type=int, default=10, help="Updates per run (replay starts at the 5th).")
    parser.add_argument("--response_length", type=int, default=LONG.settings["response_length"])
    parser.add_argument("--output_dir", default=str(RESULTS))
    options = parser.parse_args(argv)
    torch.set_num_threads(1)
    models_dir = Path("/tmp/trl_replay_ppo_training_cost/models")
    build_tiny_models(models_dir)
    settings = {**LONG.settings, "response_length": options.response_length}
    names = list(ARMS)
    repeats: list[dict[str, dict]] = []
    for repeat in range(options.repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        repeats.append({name: one_run(ARMS[name], models_dir, options.updates, settings) for name in order})
    base = names[0]
    summary = {}
    for name in names:
        summary[name] = {
            "training_s": statistics.median(r[name]["training"] for r in repeats),
            "rollout_s": statistics.median(r[name]["rollout"] for r in repeats),
            "extend_batch_s": statistics.median(r[name]["extend_batch"] for r in repeats),
            "training_ratio": statistics.median(r[name]["training"] / r[base]["training"] for r in repeats),
            "update_ratio": statistics.median(
                (r[name]["training"] + r[name]["rollout"]) / (r[base]["training"] + r[base]["rollout"])
                for r in repeats
            ),
        }
    generation_share = summary[base]["rollout_s"] / (summary[base]["rollout_s"] + summary[base]["training_s"])
    command = (
        f"python -m benchmarks.training_cost --repeats {options.repeats} --updates {options.updates} "
        f"--response_length {options.response_length}"
    )
    result = {"command": command, "generation_share": generation_share, "summary": summary, "repeats": repeats}
    lines = [
        "# Training cost per update: replay's levers against on-policy",
        "",
        f"Command: `{command}`; the generation-heavy profile ({options.response_length}-token responses), "
        f"`replay_ratio=3`, one thread, medians over {options.repeats} repeats. Generation is "
        f"{generation_share:.0%} of an on-policy update.",
        "",
        "| arm | training s / update | of which `extend_batch` | rollout s / update | training, x on-policy "
        "| whole update, x on-policy |",
        "|---|---|---|---|---|---|",
        *[
            f"| {name} | {s['training_s']:.3f} | {s['extend_batch_s']:.3f} | {s['rollout_s']:.3f} "
            f"| {s['training_ratio']:.2f}x | {s['update_ratio']:.2f}x |"
            for name, s in summary.items()
        ],
    ]
    write_tables(options.output_dir, "training_cost", result, lines)
    return result


if __name__ == "__main__":
    main()
