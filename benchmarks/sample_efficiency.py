"""Sample efficiency of experience replay, side by side with stock TRL PPO, on the offline digits task.

    python benchmarks/sample_efficiency.py            # 5 arms x 3 seeds, results in benchmarks/results/

Arms, identical but for replay: stock `trl.experimental.ppo.PPOTrainer`; the same with its two
`gc.collect()` calls per update disabled (a timing reference only: on a tiny model they dominate
the update); `ReplayPPOTrainer` with replay off; with uniform replay; with prioritized replay.
Every arm scores completions with the same `DigitsRewardModel` (the digits reward exposed as a TRL
reward model), trains from the same tiny model, on the same prompts and seeds. Each (arm, seed)
runs in its own process, so its peak RSS is its own.

Reported per arm (median over seeds): generated episodes and wall time until the moving average
of the fresh-episode score first reaches the target (90% of the lowest peak that stock TRL reaches
within the budget, so stock reaches it in every seed), the final score at the full generation
budget, peak RSS, and the time per update.
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

import numpy as np

from trl_replay_ppo.demo import DIGITS_SETTINGS

RESULTS = Path(__file__).parent / "results"
WINDOW = 5  # updates in the score's moving average
LEVELS = (0.3, 0.4, 0.5, 0.6, 0.7)

COMMON = {**DIGITS_SETTINGS, "bf16": False, "disable_tqdm": True}
ARMS = {
    "stock_trl": {},
    "stock_trl_no_gc": {},
    "replay_off": {"use_replay_buffer": False, "max_grad_norm": 0},
    "uniform_replay": {"use_replay_buffer": True, "max_grad_norm": 0},
    "prioritized_replay": {"use_replay_buffer": True, "use_priority_sampling": True, "max_grad_norm": 0},
}


def run_arm(arm: str, seed: int, total_episodes: int, models_dir: str, replay: dict) -> dict:
    """Train one arm for ``total_episodes`` generated episodes; returns its per-update log."""
    import torch
    from transformers import TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from trl_replay_ppo import ReplayPPOConfig, ReplayPPOTrainer
    from trl_replay_ppo.tasks.digits import DigitsRewardModel, make_digits_dataset
    from trl_replay_ppo.tasks.tiny import load_tiny_models

    torch.set_num_threads(2)
    torch.manual_seed(seed)
    np.random.seed(seed)
    models = load_tiny_models({k: Path(models_dir) / k for k in ("tokenizer", "policy", "reward")})
    tokenizer = models["tokenizer"]
    prompts = make_digits_dataset(2000, seed=seed)
    dataset = prompts.map(lambda row: tokenizer(row["prompt"]), remove_columns=prompts.column_names)
    settings = {**COMMON, "output_dir": f"/tmp/sample-efficiency/{arm}-{seed}", "seed": seed}
    settings["total_episodes"] = total_episodes
    if arm.startswith("stock_trl"):
        args, trainer_cls = PPOConfig(**settings), PPOTrainer
        if arm == "stock_trl_no_gc":  # timing reference: TRL's two gc.collect() calls per update, disabled
            import gc

            gc.collect = lambda generation=2: 0
    else:
        overrides = {**ARMS[arm], **(replay if arm != "replay_off" else {})}
        args, trainer_cls = ReplayPPOConfig(**settings, **overrides), ReplayPPOTrainer
    rows = []

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            rows.append(
                {
                    "episode": logs["episode"],
                    "score": logs["objective/scores"],
                    "kl": logs["objective/kl"],
                    "time": time.perf_counter() - start,
                    "trained": logs.get("efficiency/trained_episodes", logs["episode"]),
                    "buffer_size": logs.get("buffer/size", 0),
                }
            )

    trainer = trainer_cls(
        args=args,
        processing_class=tokenizer,
        model=models["policy"],
        ref_model=models["ref_policy"],
        reward_model=DigitsRewardModel(tokenizer),
        value_model=models["value_model"],
        train_dataset=dataset,
        callbacks=[Recorder()],
    )
    start = time.perf_counter()
    trainer.train()
    buffer = getattr(trainer, "replay_buffer", None)
    buffer_bytes = 0
    if buffer is not None:
        for episode in buffer.storage.episodes:
            if episode is not None:
                buffer_bytes += sum(t.numel() * t.element_size() for t in vars(episode).values() if torch.is_tensor(t))
    return {
        "arm": arm,
        "seed": seed,
        "log": rows,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "buffer_bytes": buffer_bytes,
    }


def moving_average(values: list[float]) -> np.ndarray:
    return np.convolve(values, np.ones(WINDOW) / WINDOW, mode="valid")


def first_reach(run: dict, target: float) -> tuple[float, float]:
    """(generated episodes, wall seconds) when the score's moving average first reaches ``target``."""
    average = moving_average([r["score"] for r in run["log"]])
    hits = np.flatnonzero(average >= target)
    if not len(hits):
        return np.inf, np.inf
    row = run["log"][hits[0] + WINDOW - 1]
    return row["episode"], row["time"]


def summarise(runs: list[dict], target: float | None) -> tuple[dict, float]:
    if target is None:
        stock = [run for run in runs if run["arm"] == "stock_trl"]
        target = round(0.9 * min(moving_average([r["score"] for r in run["log"]]).max() for run in stock), 3)
    summary = {}
    for arm in ARMS:
        arm_runs = [run for run in runs if run["arm"] == arm]
        if not arm_runs:
            continue
        reach = [first_reach(run, target) for run in arm_runs]
        update_times = [np.median(np.diff([0.0] + [r["time"] for r in run["log"]])) for run in arm_runs]
        summary[arm] = {
            "episodes_to_target": float(np.median([e for e, _ in reach])),
            "seconds_to_target": float(np.median([s for _, s in reach])),
            "episodes_to_target_per_seed": [e for e, _ in reach],
            "final_score": float(np.median([np.mean([r["score"] for r in run["log"][-WINDOW:]]) for run in arm_runs])),
            "peak_rss_gib": float(np.median([run["peak_rss_bytes"] for run in arm_runs])) / 1024**3,
            "buffer_mib": float(np.median([run["buffer_bytes"] for run in arm_runs])) / 1024**2,
            "seconds_per_update": float(np.median(update_times)),
            "episodes_to_level": {
                str(level): float(np.median([first_reach(run, level)[0] for run in arm_runs])) for level in LEVELS
            },
            "sample_efficiency": float(
                np.median([run["log"][-1]["trained"] / run["log"][-1]["episode"] for run in arm_runs])
            ),
        }
    return summary, target


def plot(runs: list[dict], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"stock_trl": "black", "replay_off": "tab:gray", "uniform_replay": "tab:blue"}
    for arm, color in {**colors, "prioritized_replay": "tab:red"}.items():
        arm_runs = [run for run in runs if run["arm"] == arm]
        if not arm_runs:
            continue
        length = min(len(run["log"]) for run in arm_runs) - WINDOW + 1
        episodes = [r["episode"] for r in arm_runs[0]["log"][WINDOW - 1 :]][:length]
        scores = np.array([moving_average([r["score"] for r in run["log"]])[:length] for run in arm_runs])
        times = np.median([[r["time"] for r in run["log"][WINDOW - 1 :]][:length] for run in arm_runs], axis=0)
        style = {"color": color, "linestyle": "--" if arm == "replay_off" else "-"}
        for ax, x in ((axes[0], episodes), (axes[1], times)):
            ax.plot(x, np.median(scores, axis=0), label=arm, **style)
            ax.fill_between(x, scores.min(axis=0), scores.max(axis=0), color=color, alpha=0.12)
    for ax, label in ((axes[0], "generated episodes"), (axes[1], "wall time (s)")):
        ax.axhline(target, color="tab:green", linewidth=0.8, linestyle=":", label=f"target {target}")
        ax.set_xlabel(label)
        ax.set_ylabel(f"fresh score ({WINDOW}-update moving average)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    fig.suptitle("Digits task, tiny Qwen3-shaped policy: median and range over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_table(summary: dict, target: float, options, path: Path) -> str:
    stock = summary.get("stock_trl") or next(iter(summary.values()))
    lines = [
        "# Sample efficiency: replay vs stock TRL PPO (digits task)",
        "",
        f"Command: `python benchmarks/sample_efficiency.py --seeds {' '.join(map(str, options.seeds))} "
        f"--total_episodes {options.total_episodes}`. Medians over {len(options.seeds)} seeds; target = "
        f"moving-average fresh score {target} (90% of the lowest peak stock TRL reaches).",
        "",
        "| arm | episodes to target | vs stock | wall time to target | vs stock | final score | s/update | "
        "trained/generated | peak RSS | buffer |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, s in summary.items():
        lines.append(
            f"| {arm} | {s['episodes_to_target']:.0f} | {stock['episodes_to_target'] / s['episodes_to_target']:.2f}x "
            f"fewer | {s['seconds_to_target']:.1f} s | {s['seconds_to_target'] / stock['seconds_to_target']:.2f}x | "
            f"{s['final_score']:.3f} | {s['seconds_per_update']:.3f} | {s['sample_efficiency']:.2f} | "
            f"{s['peak_rss_gib']:.2f} GiB | {s['buffer_mib']:.2f} MiB |"
        )
    lines += [
        "",
        "Generated episodes to reach other moving-average scores (median over seeds; inf: not reached):",
        "",
        "| arm | " + " | ".join(f"score {level}" for level in LEVELS) + " |",
        "|---|" + "---|" * len(LEVELS),
    ]
    for arm, s in summary.items():
        cells = []
        for level in LEVELS:
            episodes = s["episodes_to_level"][str(level)]
            ratio = stock["episodes_to_level"][str(level)] / episodes
            cells.append(f"{episodes:.0f}" + (f" ({ratio:.2f}x fewer)" if np.isfinite(ratio) else ""))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    off = summary.get("replay_off")
    if off:
        lines.append("")
        for name in ("stock_trl", "stock_trl_no_gc"):
            if name in summary:
                ratio = off["seconds_per_update"] / summary[name]["seconds_per_update"]
                lines.append(f"Time per update, replay off / {name}: {ratio:.3f}.")
    replay_arms = [a for a in ("uniform_replay", "prioritized_replay") if a in summary]
    if off and replay_arms:
        ratios = ", ".join(f"{a} {summary[a]['peak_rss_gib'] / off['peak_rss_gib']:.3f}" for a in replay_arms)
        lines.append(f"Peak RSS, replay on / off: {ratios}.")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--total_episodes", type=int, default=6400, help="Generation budget per run.")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--replay", type=json.loads, default={}, help="JSON overrides of the replay fields.")
    parser.add_argument("--name", default="sample_efficiency", help="Stem of the result files.")
    parser.add_argument("--target", type=float, help="Fixed target score (default: from the stock TRL arm).")
    parser.add_argument("--run", nargs=2, metavar=("ARM", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--models_dir", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.run:
        arm, seed = options.run[0], int(options.run[1])
        print("RESULT " + json.dumps(run_arm(arm, seed, options.total_episodes, options.models_dir, options.replay)))
        return

    from trl_replay_ppo.tasks.tiny import build_tiny_models

    RESULTS.mkdir(parents=True, exist_ok=True)
    models_dir = Path("/tmp/sample-efficiency/models")
    build_tiny_models(models_dir)
    runs = []
    started = time.time()
    for seed in options.seeds:
        for arm in options.arms:  # arms interleaved per seed: machine load affects them alike
            command = [sys.executable, __file__, "--run", arm, str(seed), "--models_dir", str(models_dir)]
            command += ["--total_episodes", str(options.total_episodes), "--replay", json.dumps(options.replay)]
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
            output = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
            line = next((x for x in output.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise RuntimeError(f"{arm} seed {seed} failed:\n{output.stderr[-3000:]}")
            runs.append(json.loads(line[len("RESULT ") :]))
            print(f"[{time.time() - started:6.0f}s] {arm} seed {seed}: final score {runs[-1]['log'][-1]['score']:.3f}")
    summary, target = summarise(runs, options.target)
    (RESULTS / f"{options.name}.json").write_text(
        json.dumps({"target": target, "summary": summary, "options": vars(options), "runs": runs}, indent=1)
    )
    plot(runs, target, RESULTS / f"{options.name}.png")
    print(write_table(summary, target, options, RESULTS / f"{options.name}.md"))


if __name__ == "__main__":
    main()
