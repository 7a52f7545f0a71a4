"""Analysis and output of the fair benchmark: episodes to target, summaries, Markdown tables, PNG curves."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np

KNOBS = (
    "learning_rate",
    "num_ppo_epochs",
    "num_iterations",
    "use_priority_sampling",
    "replay_ratio",
    "replay_sample_size",
    "self_imitation_coef",
    "use_replay_buffer",
)
ON_POLICY = ("stock_trl", "replay_off", "compute_matched", "tuned_ppo", "tuned_grpo")
REPLAY = ("replay_default", "tuned_replay")


def smoothed(record: dict) -> list[float]:
    """Mean of each evaluation and the one before it (the first alone)."""
    scores = [p["eval"] for p in record["points"]]
    return [scores[0]] + [(a + b) / 2 for a, b in itertools.pairwise(scores)]


def reach(record: dict, target: float) -> tuple[float, float]:
    """(generated episodes, wall seconds) at the first evaluation whose smoothed score reaches ``target``."""
    for point, score in zip(record["points"], smoothed(record), strict=True):
        if score >= target:
            return point["episode"], point["time"]
    return math.inf, math.inf


def final_score(record: dict, key: str = "eval") -> float:
    """Mean of the last two evaluations (or training scores); NaN for a run with none."""
    values = [p[key] for p in record["points"][-2:] if not math.isnan(p[key])]
    return float(np.mean(values)) if values else math.nan


def target_of(records: list[dict], fraction: float) -> float:
    """Start score plus ``fraction`` of the way to the best final score of ``records``."""
    start = float(np.median([r["points"][0]["eval"] for r in records if r["points"]]))
    best = max(final_score(r) for r in records if r["points"])
    return round(start + fraction * (best - start), 4)


def best_of(records: list[dict], target: float) -> dict:
    """The record reaching ``target`` with the fewest episodes (ties: the higher final score)."""
    return min(records, key=lambda r: (reach(r, target)[0], -final_score(r)))


def median(values: list[float]) -> float:
    return float(np.median(values)) if values else math.nan


def summarise(records: list[dict], target: float) -> dict:
    """Per-arm figures over seeds (see the README of the benchmark for each one's meaning)."""
    reached = [reach(r, target) for r in records]
    finished = [r for r in records if r["points"]]
    return {
        "episodes_to_target": median([e for e, _ in reached]),
        "episodes_to_target_per_seed": [e for e, _ in reached],
        "seconds_to_target": median([s for _, s in reached]),
        "reached": sum(math.isfinite(e) for e, _ in reached),
        "runs": len(records),
        "final_eval": median([final_score(r) for r in finished]),
        "final_train": median([final_score(r, "train") for r in finished]),
        "steps_per_episode": median([r["optimizer_steps"] / r["generated"] for r in records if r.get("generated")]),
        "tokens_per_episode": median(
            [r["trained_tokens"] / r["generated"] for r in records if r.get("generated") and r.get("trained_tokens")]
        ),
        "peak_rss_gib": median([r["peak_rss_gib"] for r in records]),
        "stopped": [r["stopped"] for r in records if r["stopped"]],
        "settings": records[0]["spec"]["settings"] if records else {},
        "kind": records[0]["spec"]["kind"] if records else "",
    }


def headline(summary: dict[str, dict], budget: int) -> dict:
    """Best on-policy arm / best replay arm, in generated episodes to target (a lower bound when not reached)."""
    on_policy = {a: s for a, s in summary.items() if a in ON_POLICY}
    replay = {a: s for a, s in summary.items() if a in REPLAY}
    best_on = min(on_policy, key=lambda a: on_policy[a]["episodes_to_target"])
    best_replay = min(replay, key=lambda a: replay[a]["episodes_to_target"])
    ratio, lower_bound = episodes_ratio(
        on_policy[best_on]["episodes_to_target"], replay[best_replay]["episodes_to_target"], budget
    )
    return {"best_on_policy": best_on, "best_replay": best_replay, "ratio": ratio, "lower_bound": lower_bound}


def episodes_ratio(on_policy: float, replay: float, budget: int) -> tuple[float, bool]:
    """On-policy / replay episodes to target, and whether it is a lower bound (on-policy never reached it:
    the budget stands in); NaN when replay never reached it."""
    lower_bound = not math.isfinite(on_policy)
    numerator = budget if lower_bound else on_policy
    return (numerator / max(replay, 1) if math.isfinite(replay) else math.nan), lower_bound


def format_episodes(value: float) -> str:
    return f"{value:,.0f}" if math.isfinite(value) else "not reached"


def format_per_seed(summary: dict) -> str:
    """An arm's episodes to target on each seed, comma-separated."""
    return ", ".join(format_episodes(e) for e in summary["episodes_to_target_per_seed"])


def format_ratio(ratio: float, lower_bound: bool) -> str:
    if math.isnan(ratio):
        return "n/a (replay did not reach it)"
    return f"{'>=' if lower_bound else ''}{ratio:.2f}x"


def format_settings(settings: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items())


def markdown(result: dict) -> str:
    """The benchmark's tables, as quoted in the README."""
    lines = [
        "# Fair sample-efficiency benchmark",
        "",
        f"Command: `{result['command']}`. Tuning seed {result['tuning_seed']}, reporting seeds "
        f"{', '.join(map(str, result['report_seeds']))}; medians over the reporting seeds. TRL {result['trl']}.",
        "",
        "## Headline: generated episodes to target, best on-policy arm / best replay arm",
        "",
        "| task | target (eval score) | best on-policy arm | episodes | best replay arm | episodes | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, data in result["tasks"].items():
        head, summary = data["headline"], data["summary"]
        ratio = format_ratio(head["ratio"], head["lower_bound"])
        lines.append(
            f"| {task} | {data['target']:.3f} | {head['best_on_policy']} | "
            f"{format_episodes(summary[head['best_on_policy']]['episodes_to_target'])} | {head['best_replay']} | "
            f"{format_episodes(summary[head['best_replay']]['episodes_to_target'])} | {ratio} |"
        )
    for task, data in result["tasks"].items():
        lines += [
            "",
            f"## {task}: budget {data['budget']:,} generated episodes, target {data['target']:.3f}",
            "",
            "| arm | settings | episodes to target (median, per seed) | reached | wall s to target | final eval | "
            "final train | optimizer steps / episode | trained tokens / episode | peak RSS GiB | stopped |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for arm, s in data["summary"].items():
            knobs = format_settings({k: v for k, v in s["settings"].items() if k in KNOBS})
            episodes = f"{format_episodes(s['episodes_to_target'])} ({format_per_seed(s)})"
            tokens = f"{s['tokens_per_episode']:.1f}" if math.isfinite(s["tokens_per_episode"]) else "-"
            lines.append(
                f"| {arm} | {knobs} | {episodes} | "
                f"{s['reached']}/{s['runs']} | {s['seconds_to_target']:.1f} | {s['final_eval']:.3f} | "
                f"{s['final_train']:.3f} | {s['steps_per_episode']:.3f} | {tokens} | {s['peak_rss_gib']:.2f} | "
                f"{len(s['stopped'])} |"
            )
        if data.get("skipped"):
            lines.append("")
            lines += [f"- {arm} skipped: {why}" for arm, why in data["skipped"].items()]
    for title, section in (("Generation-heavy profile", "long"), ("Robustness", "robustness")):
        if result.get(section):
            lines += ["", f"## {title}", "", *result[section]["lines"]]
    return "\n".join(lines) + "\n"


def plot(result: dict, records: dict[str, dict[str, list[dict]]], path: Path) -> None:
    """One panel per task: median eval score (and range over seeds) against generated episodes, every arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(result["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for arm, arm_records in records[task].items():
            curves = [r["points"] for r in arm_records if r["points"]]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            episodes = [p["episode"] for p in curves[0][:length]]
            scores = np.array([[p["eval"] for p in c[:length]] for c in curves])
            style = "--" if arm in ON_POLICY else "-"
            (line,) = ax.plot(episodes, np.median(scores, axis=0), style, label=arm)
            ax.fill_between(episodes, scores.min(axis=0), scores.max(axis=0), color=line.get_color(), alpha=0.1)
        ax.axhline(result["tasks"][task]["target"], color="black", linewidth=0.8, linestyle=":", label="target")
        ax.set_title(task)
        ax.set_xlabel("generated episodes")
        ax.set_ylabel("held-out eval score")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
