"""Analysis and output of the fair benchmark: episodes to target, summaries, Markdown tables, PNG curves."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np

KNOBS = (
    "learning_rate",
    "num_ppo_epochs",
    "num_mini_batches",
    "num_generations",
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
    """(generated episodes, wall seconds) at the first evaluation after training began whose smoothed score
    reaches ``target`` (a target the start score already meets is reached at the first trained evaluation)."""
    for point, score in zip(record["points"], smoothed(record), strict=True):
        if score >= target and point["episode"] > 0:
            return point["episode"], point["time"]
    return math.inf, math.inf


def reached(record: dict, target: float) -> bool:
    return math.isfinite(reach(record, target)[0])


def final_score(record: dict, key: str = "eval") -> float:
    """Mean of the last two evaluations (or training scores); NaN for a run with none."""
    values = [p[key] for p in record["points"][-2:] if not math.isnan(p[key])]
    return float(np.mean(values)) if values else math.nan


def target_of(records: list[dict], fraction: float) -> float:
    """Start score plus ``fraction`` of the way to the best final score of ``records``."""
    start = float(np.median([r["points"][0]["eval"] for r in records if r["points"]]))
    best = max(final_score(r) for r in records if r["points"])
    return round(start + fraction * (best - start), 4)


def best_of(records: list[dict], target: float, by: str = "episodes") -> dict:
    """The record reaching ``target`` with the fewest generated episodes (``by="seconds"``: the least wall time;
    ties: the higher final score)."""
    index = {"episodes": 0, "seconds": 1}[by]
    return min(records, key=lambda r: (reach(r, target)[index], -final_score(r)))


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


def headline(summary: dict[str, dict], eval_every: int, min_reached: int) -> dict:
    """Best on-policy arm / best replay arm in generated episodes to target, where both reach it on at least
    ``min_reached`` seeds (all of them when fewer); otherwise not measurable, with every arm's reach count."""
    reach_counts = {arm: f"{s['reached']}/{s['runs']}" for arm, s in summary.items()}
    need = min(min_reached, max(s["runs"] for s in summary.values()))
    on_policy = {a: s for a, s in summary.items() if a in ON_POLICY and s["reached"] >= need}
    replay = {a: s for a, s in summary.items() if a in REPLAY and s["reached"] >= need}
    best_on = min(on_policy, key=lambda a: on_policy[a]["episodes_to_target"]) if on_policy else None
    best_replay = min(replay, key=lambda a: replay[a]["episodes_to_target"]) if replay else None
    result = {"best_on_policy": best_on, "best_replay": best_replay, "reach": reach_counts, "measurable": False}
    if best_on is None or best_replay is None:
        return {**result, "ratio": None, "ratio_one_eval_later": None}
    on, rep = on_policy[best_on]["episodes_to_target"], replay[best_replay]["episodes_to_target"]
    return {**result, "measurable": True, "ratio": on / rep, "ratio_one_eval_later": on / (rep + eval_every)}


def spread(per_start: dict[float, dict], min_reached: int) -> dict:
    """Over learning-rate starts: the best and worst start, and worst / best episodes to target (inf when a
    start does not reach the target on ``min_reached`` seeds)."""
    need = min(min_reached, max(s["runs"] for s in per_start.values()))
    episodes = {m: s["episodes_to_target"] if s["reached"] >= need else math.inf for m, s in per_start.items()}
    best, worst = min(episodes, key=episodes.get), max(episodes, key=episodes.get)
    return {
        "best_start": best,
        "worst_start": worst,
        "ratio": episodes[worst] / episodes[best] if math.isfinite(episodes[best]) else math.nan,
        "starts_reached": sum(math.isfinite(e) for e in episodes.values()),
    }


def identical_start_spread(per_seed: list[float], starts: int, seeds: int, goal: float, draws: int = 10_000) -> dict:
    """The learning-rate spread that seed noise alone gives: ``starts`` starts that train alike, each the median of
    ``seeds`` episodes-to-target values drawn with replacement from one setting's ``per_seed`` (inf: not reached).
    What a step-size rule that made every start identical would score: the median spread over ``draws`` and the
    share of draws within ``goal``."""
    drawn = np.random.default_rng(0).choice(np.asarray(per_seed, dtype=float), size=(draws, starts, seeds))
    medians = np.median(drawn, axis=2)  # (draws, starts)
    best, worst = medians.min(axis=1), medians.max(axis=1)
    with np.errstate(invalid="ignore"):
        spreads = np.where(np.isfinite(best), worst / best, np.inf)  # (draws,)
    return {"seeds": seeds, "median_spread": float(np.median(spreads)), "within_goal": float(np.mean(spreads <= goal))}


def cost(records: list[dict]) -> dict:
    """Runs a section used and their summed run time (one core each, whether run now or read from records)."""
    unique = {json.dumps(r["spec"], sort_keys=True): r for r in records}.values()
    return {"runs": len(unique), "run_hours": round(sum(r.get("wall_time", 0.0) for r in unique) / 3600, 2)}


def format_episodes(value: float) -> str:
    return f"{value:,.0f}" if math.isfinite(value) else "not reached"


def format_per_seed(summary: dict) -> str:
    """An arm's episodes to target on each seed, comma-separated."""
    return ", ".join(format_episodes(e) for e in summary["episodes_to_target_per_seed"])


def format_ratio(ratio: float | None) -> str:
    return "not measurable" if ratio is None else f"{ratio:.2f}x"


def format_settings(settings: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items())


def markdown(result: dict) -> str:
    """The benchmark's tables, as quoted in the README."""
    lines = [
        f"# Fair sample-efficiency benchmark (protocol {result['protocol']})",
        "",
        f"Command: `{result['command']}`. Tuning seed {result['tuning_seed']}, reporting seeds "
        f"{', '.join(map(str, result['report_seeds']))}; medians over the reporting seeds. Targets are frozen per "
        "protocol (`benchmarks/fairness_targets.json`). Environments: "
        + "; ".join(
            f"{kind}: {env if isinstance(env, str) else 'TRL ' + env['trl']}"
            for kind, env in result["environments"].items()
        )
        + "".join(f"; {kind} skipped: {why}" for kind, why in result.get("skipped", {}).items())
        + ".",
    ]
    if result["tasks"]:
        lines += [
            "",
            "## Headline: generated episodes to target, best on-policy arm / best replay arm",
            "",
            "A ratio counts only where both arms reach the target on at least 2 of 3 reporting seeds. Resolution: "
            "the ratio if replay had reached the target one evaluation later.",
            "",
            "| task | target | eval every | best on-policy arm | episodes | best replay arm | episodes | ratio | "
            "one evaluation later | reached (on-policy; replay) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    for task, data in result["tasks"].items():
        head, summary = data["headline"], data["summary"]

        def episodes(arm, summary=summary):
            return format_episodes(summary[arm]["episodes_to_target"]) if arm else "-"

        later = head["ratio_one_eval_later"]
        reach_on = ", ".join(f"{a} {c}" for a, c in head["reach"].items() if a in ON_POLICY)
        reach_replay = ", ".join(f"{a} {c}" for a, c in head["reach"].items() if a in REPLAY)
        lines.append(
            f"| {task} | {data['target']:.3f} | {data['eval_every']:,} | {head['best_on_policy'] or '-'} | "
            f"{episodes(head['best_on_policy'])} | {head['best_replay'] or '-'} | {episodes(head['best_replay'])} | "
            f"{format_ratio(head['ratio'])} | {format_ratio(later)} | {reach_on}; {reach_replay} |"
        )
    for task, data in result["tasks"].items():
        lines += [
            "",
            f"## {task}: budget {data['budget']:,} generated episodes, target {data['target']:.3f}",
            "",
        ]
        if data.get("selection"):
            sel = data["selection"]
            reached_by = ", ".join(
                f"{a} {n}/{len(result['report_seeds'])}" for a, n in sel["on_policy_reached"].items()
            )
            lines += [
                f"Held out: start accuracy {sel['start_accuracy']:.3f} (score {sel['start_score']:.3f}); target fixed "
                f"from its on-policy runs before any replay run; on-policy arms reaching it: {reached_by}.",
                "",
            ]
        lines += [
            "| arm | settings | episodes to target (median, per seed) | reached | wall s to target | final eval | "
            "final train | optimizer steps / episode | trained tokens / episode | peak RSS GiB | stopped |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for arm, s in data["summary"].items():
            knobs = format_settings({k: v for k, v in s["settings"].items() if k in KNOBS})
            per_seed = f"{format_episodes(s['episodes_to_target'])} ({format_per_seed(s)})"
            tokens = f"{s['tokens_per_episode']:.1f}" if math.isfinite(s["tokens_per_episode"]) else "-"
            lines.append(
                f"| {arm} | {knobs} | {per_seed} | {s['reached']}/{s['runs']} | {s['seconds_to_target']:.1f} | "
                f"{s['final_eval']:.3f} | {s['final_train']:.3f} | {s['steps_per_episode']:.3f} | {tokens} | "
                f"{s['peak_rss_gib']:.2f} | {len(s['stopped'])} |"
            )
        lines += [f"- {arm} skipped: {why}" for arm, why in data.get("skipped", {}).items()]
    if result.get("lr"):
        lines += [
            "",
            "## Learning-rate starts: each family's best setting at x1/3, x1, x3, x10 its task's base rate",
            "",
            "replay_default: every replay field at its default; replay_adaptive: the same with "
            f"`adaptive_lr_kl={next(iter(result['lr'].values())).get('adaptive_lr_kl')}`. A start that reaches the "
            f"target on fewer than {result.get('min_reached', 2)} seeds counts as not reached in worst / best.",
            "",
            "| task | arm | episodes to target per start (reached) | worst / best start |",
            "|---|---|---|---|",
        ]
        for task, data in result["lr"].items():
            for arm, row in data["rows"].items():
                starts = ", ".join(
                    f"x{float(m):.3g}: {format_episodes(s['episodes_to_target'])} ({s['reached']}/{s['runs']})"
                    for m, s in row["per_start"].items()
                )
                spread_ = row["spread"]
                ratio = "-" if math.isnan(spread_["ratio"]) else f"{spread_['ratio']:.2f}"
                lines.append(f"| {task} | {arm} | {starts} | {ratio} |")
    if result.get("noise"):
        first = next(iter(result["noise"].values()))
        goal, starts = first["goal"], len(first["adaptive"]["per_start"])
        lines += [
            "",
            f"## Seed noise: replay on {len(first['seeds'])} seeds (each run stops once it reaches the target)",
            "",
            f"Identical starts: the spread (worst / best of {starts} starts) if every start trained alike, each the "
            f"median of n seeds drawn from replay's defaults at x1; within {goal}: the share of such draws at most "
            f"{goal}. Adaptive: replay's defaults with the adaptive step at every start on all of the seeds; a start "
            "counts where its median reaches the target.",
            "",
            "| task | defaults at x1, episodes to target per seed | median | identical starts (n seeds: median "
            "spread, within goal) | adaptive, median per start (reached) | adaptive worst / best start |",
            "|---|---|---|---|---|---|",
        ]
        for task, data in result["noise"].items():
            per_seed = ", ".join(format_episodes(e) for e in data["per_seed"])
            noise = "; ".join(
                f"n={d['seeds']}: {d['median_spread']:.2f}, {100 * d['within_goal']:.0f}%" for d in data["spread"]
            )
            adaptive = data["adaptive"]
            per_start = ", ".join(
                f"x{float(m):.3g}: {format_episodes(s['episodes_to_target'])} ({s['reached']}/{s['runs']})"
                for m, s in adaptive["per_start"].items()
            )
            ratio = "-" if math.isnan(adaptive["spread"]["ratio"]) else f"{adaptive['spread']['ratio']:.2f}"
            lines.append(
                f"| {task} | {per_seed} | {format_episodes(median(data['per_seed']))} | {noise} | {per_start} "
                f"| {ratio} |"
            )
    if result.get("long"):
        long = result["long"]
        lines += [
            "",
            "## Generation-heavy profile (64-token responses; grid tuned on the profile; every run alone on "
            f"{long['threads']} threads)",
            "",
            f"Target {long['target']:.3f}; generation: {100 * long['generation_share']:.0f}% of an on-policy update.",
            "",
            "| arm | chosen | episodes to target | wall s to target (median) | reached | final eval |",
            "|---|---|---|---|---|---|",
        ]
        for arm, s in long["summary"].items():
            lines.append(
                f"| {arm} | {format_settings(long['chosen'][arm])} | "
                f"{format_episodes(s['episodes_to_target'])} | {s['seconds_to_target']:.1f} | "
                f"{s['reached']}/{s['runs']} | {s['final_eval']:.3f} |"
            )
        pair = f"{long.get('best_replay') or '-'} / {long.get('best_on_policy') or '-'}"
        lines += [
            "",
            f"Wall time to target, fastest replay arm / fastest on-policy arm ({pair}): "
            f"{format_ratio(long['time_ratio'])}.",
        ]
    if result.get("robustness"):
        lines += [
            "",
            "## Robustness (collapse-prone settings on the sparse task)",
            "",
            "| setting @ response length | ran to budget | final eval (per seed) | max empty fraction | skipped steps "
            "|",
            "|---|---|---|---|---|",
        ]
        for row, r in result["robustness"]["rows"].items():
            finals = ", ".join("-" if f is None else f"{f:.3f}" for f in r["finals"])
            lines.append(
                f"| {row} | {r['ran_to_budget']}/{r['runs']} | {finals} | {r['max_empty_fraction']:.3f} | "
                f"{r['skipped_steps']} |"
            )
    if result.get("costs"):
        lines += ["", "## Cost per section (summed run time, one core per run)", "", "| section | runs | run hours |"]
        lines.append("|---|---|---|")
        lines += [f"| {name} | {c['runs']} | {c['run_hours']:.2f} |" for name, c in result["costs"].items()]
    return "\n".join(lines) + "\n"


def plot(result: dict, records: dict[str, dict[str, list[dict]]], path: Path) -> None:
    """One panel per task: median eval score (and range over seeds) against generated episodes, every arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(records)
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
