"""Time per update of this package with replay off, against stock TRL PPO, in one process.

    python -m benchmarks.overhead            # results in benchmarks/results/overhead.{json,md}

Both train the digits task from the same tiny models with the same settings and the same reward
model (`DigitsRewardModel`); stock TRL's two ``gc.collect()`` calls per update are disabled (on a
tiny model they dominate its update). Runs alternate, the order within a pair swapped each time
(stock, ours, ours, stock, ...), so that the machine's load and warm-up affect both alike; each
run's first update is left out (warm-up). Reported: the median over the pairs of (ours / stock)
seconds per update. Needs TRL <= 1.12 (stock PPO).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path

import torch
from accelerate.state import AcceleratorState
from transformers import TrainerCallback

from benchmarks.outputs import write_tables
from trl_replay_ppo import ReplayPPOConfig
from trl_replay_ppo.cli.demo import DIGITS_SETTINGS
from trl_replay_ppo.integrations.compat import trl_ppo
from trl_replay_ppo.tasks.digits import DigitsRewardModel, make_digits_dataset
from trl_replay_ppo.tasks.tiny import build_tiny_models, load_tiny_models, tiny_trainer

RESULTS = Path(__file__).parent / "results"


class UpdateTimes(TrainerCallback):
    """Wall time of each update (between two ``on_step_end`` calls)."""

    def __init__(self):
        self.ends: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def seconds_per_update(self) -> float:
        durations = [b - a for a, b in zip(self.ends, self.ends[1:], strict=False)][1:]  # the first is warm-up
        return statistics.median(durations)


def one_run(kind: str, models_dir: Path, updates: int) -> float:
    """Median seconds per update of one short run of ``kind`` ("stock" or "ours")."""
    AcceleratorState._reset_state(reset_partial_state=True)
    models = load_tiny_models({k: models_dir / k for k in ("tokenizer", "policy", "reward")})
    tokenizer = models["tokenizer"]
    prompts = make_digits_dataset(2000, seed=0)
    tokenized = prompts.map(lambda row: tokenizer(row["prompt"]), remove_columns=prompts.column_names)
    settings = {
        **DIGITS_SETTINGS,
        "output_dir": f"/tmp/trl_replay_ppo_overhead/{kind}",
        "total_episodes": DIGITS_SETTINGS["per_device_train_batch_size"] * updates,
        "disable_tqdm": True,
        "bf16": False,
        "seed": 0,
    }
    times = UpdateTimes()
    if kind == "stock":
        config_cls, trainer_cls = trl_ppo()
        args = config_cls(**settings)
    else:
        args, trainer_cls = ReplayPPOConfig(**settings, use_replay_buffer=False), None
    trainer = tiny_trainer(
        models, args, tokenized, trainer_cls, reward_model=DigitsRewardModel(tokenizer), callbacks=[times]
    )
    trainer.train()
    return times.seconds_per_update()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=7, help="Interleaved (stock, ours) runs.")
    parser.add_argument("--updates", type=int, default=12, help="Updates per run.")
    parser.add_argument("--output_dir", default=str(RESULTS))
    options = parser.parse_args(argv)
    if trl_ppo() is None:
        raise SystemExit("Stock TRL PPO is not installed (it exists in TRL <= 1.12): run this under TRL 1.12.")
    torch.set_num_threads(1)
    models_dir = Path("/tmp/trl_replay_ppo_overhead/models")
    build_tiny_models(models_dir)
    collect = gc.collect
    gc.collect = lambda generation=2: 0  # stock TRL calls it twice per update; on a tiny model it dominates
    try:
        pairs = []
        for index in range(options.pairs):
            order = ("stock", "ours") if index % 2 == 0 else ("ours", "stock")  # neither always runs second
            seconds = {kind: one_run(kind, models_dir, options.updates) for kind in order}
            pairs.append((seconds["stock"], seconds["ours"]))
    finally:
        gc.collect = collect
    ratios = [ours / stock for stock, ours in pairs]
    result = {"pairs": pairs, "ratios": ratios, "median_ratio": statistics.median(ratios), "options": vars(options)}
    lines = [
        "# Time per update, replay off / stock TRL PPO (gc calls disabled)",
        "",
        f"Command: `python -m benchmarks.overhead --pairs {options.pairs} --updates {options.updates}`; one process, "
        "runs interleaved in swapped order, first update of each run left out.",
        "",
        "| pair | stock s/update | ours s/update | ratio |",
        "|---|---|---|---|",
        *[f"| {i} | {s:.4f} | {o:.4f} | {o / s:.3f} |" for i, (s, o) in enumerate(pairs, 1)],
        "",
        f"Median ratio: **{result['median_ratio']:.3f}**.",
    ]
    write_tables(options.output_dir, "overhead", result, lines)
    return result


if __name__ == "__main__":
    main()
