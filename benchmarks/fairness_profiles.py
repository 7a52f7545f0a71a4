"""The fair benchmark's sections beside its headline (`benchmarks.fairness`): the generation-heavy profile
(``long``: wall time to target, each family tuned on the profile itself, also with ``generate_ahead``), the
collapse-prone settings (``robustness``), the learning-rate starts (``lr``) and their seed noise (``noise``)."""

from __future__ import annotations

import json

from benchmarks.fairness import (
    ADAPTIVE_LR_KL,
    DIGITS_SETTINGS,
    FAMILY_OF,
    LR_STARTS,
    MIN_REACHED,
    REPORT_SEEDS,
    SPARSE_SETTINGS,
    TASKS,
    TUNING_SEED,
    Context,
    Task,
    arm_spec,
    frozen_target,
    tune,
)

# Generation-heavy profile: digits with 64-token responses generated 4 sequences at a time, as memory-bound
# decoding on a GPU, so that generation is most of an on-policy update. TRL's GRPOTrainer cannot generate in
# such chunks, so the profile compares the PPO family; its grid is tuned on the profile itself.
LONG = Task(
    {**DIGITS_SETTINGS, "response_length": 64, "local_rollout_forward_batch_size": 4},
    budget=4800,
    eval_every=320,
    data="digits",
)
# The section measures wall time, so each family's best is the one reaching the target soonest in wall seconds on
# the tuning seed; replay's grid has its cheaper replayed rows (`replay_epochs`) as its knob beside the rate.
LONG_GRID = {
    "ppo": [
        {"learning_rate": DIGITS_SETTINGS["learning_rate"] * m, "num_ppo_epochs": e} for m in (1, 3) for e in (4, 16)
    ],
    "replay": [
        {"learning_rate": DIGITS_SETTINGS["learning_rate"] * m, **epochs}
        for m in (1, 3)
        for epochs in ({}, {"replay_epochs": 2})
    ],
}
LONG_THREADS = 2  # every run of the profile alone on both cores
# Settings that made on-policy PPO and replay collapse before pad suppression, on the sparse task.
ROBUSTNESS = {
    "ppo, 8 epochs": ("ppo", {"num_ppo_epochs": 8}),
    "ppo, 12 epochs": ("ppo", {"num_ppo_epochs": 12}),
    "ppo, lr x2": ("ppo", {"learning_rate": 2 * SPARSE_SETTINGS["learning_rate"]}),
    "ppo, lr x3": ("ppo", {"learning_rate": 3 * SPARSE_SETTINGS["learning_rate"]}),
    "replay, lr x1": ("replay", {}),
    "replay, lr x3": ("replay", {"learning_rate": 3 * SPARSE_SETTINGS["learning_rate"]}),
}
ROBUSTNESS_LENGTHS = (6, 48)
ROBUSTNESS_BUDGET = 6400
NOISE_SEEDS = (*REPORT_SEEDS, *range(4, 16))  # never the tuning seed
NOISE_DRAWS = (3, 9, 15)  # seeds per start in the identical-start spread
SPREAD_GOAL = 1.25  # worst / best learning-rate start that a step size which adapts should stay within


def long_profile(ctx: Context) -> dict:
    """Wall time to target with 64-token responses: a small grid tuned on the profile itself (best: least wall time
    to target), then each family's best on the reporting seeds, also with ``generate_ahead`` (the same setting,
    sampling on one of the `LONG_THREADS` cores while training on the others); every run alone."""
    from benchmarks import fairness_report as report

    def specs_of(family: str, overrides: dict, seeds: tuple[int, ...]) -> list[dict]:
        threads = LONG_THREADS - 1 if overrides.get("generate_ahead") else LONG_THREADS
        return [{**arm_spec("digits", family, overrides, s, ctx.quick, LONG), "threads": threads} for s in seeds]

    grid_runs = [(family, o) for family, settings in LONG_GRID.items() for o in settings[: 1 if ctx.quick else None]]
    tuning = ctx.records("long", [spec for f, o in grid_runs for spec in specs_of(f, o, (TUNING_SEED,))], jobs=1)
    target = frozen_target("digits_long", tuning, f"{len(tuning)} tuning runs of the profile", ctx.targets_file)
    best = {}
    for family in LONG_GRID:
        runs = [(o, r) for (f, o), r in zip(grid_runs, tuning, strict=True) if f == family]
        record = report.best_of([r for _, r in runs], target, by="seconds")
        best[family] = next(o for o, r in runs if r is record)
    ahead = {"generate_ahead": True, "generate_ahead_threads": 1}
    arms = {**{f: (f, o) for f, o in best.items()}, **{f"{f}_ahead": (f, {**o, **ahead}) for f, o in best.items()}}
    records = {arm: ctx.records("long", specs_of(family, o, ctx.seeds), jobs=1) for arm, (family, o) in arms.items()}
    summary = {arm: report.summarise(runs, target) for arm, runs in records.items()}
    shares = [r["generation_seconds"] / r["train_seconds"] for r in records["ppo"] if r.get("generation_seconds")]
    reached = {arm: s["reached"] >= min(MIN_REACHED, len(ctx.seeds)) for arm, s in summary.items()}

    def fastest(family: str) -> str | None:
        candidates = [a for a in (family, f"{family}_ahead") if reached[a]]
        return min(candidates, key=lambda a: summary[a]["seconds_to_target"]) if candidates else None

    best_replay, best_on_policy = fastest("replay"), fastest("ppo")
    ratio = None
    if best_replay and best_on_policy:
        ratio = summary[best_replay]["seconds_to_target"] / summary[best_on_policy]["seconds_to_target"]
    return {
        "target": target,
        "chosen": {arm: overrides for arm, (_, overrides) in arms.items()},
        "generation_share": report.median(shares),
        "summary": summary,
        "best_replay": best_replay,
        "best_on_policy": best_on_policy,
        "time_ratio": ratio,
        "threads": LONG_THREADS,
        "budget": specs_of("ppo", {}, (0,))[0]["budget"],
    }


def robustness(ctx: Context) -> dict:
    """Collapse-prone settings on the sparse task: does every run reach its budget, and how empty do responses get?"""
    keys, specs = [], []
    for length in ROBUSTNESS_LENGTHS:
        task = Task(
            {**SPARSE_SETTINGS, "response_length": length}, budget=ROBUSTNESS_BUDGET, eval_every=ROBUSTNESS_BUDGET // 4
        )
        for name, (family, overrides) in ROBUSTNESS.items():
            for seed in ctx.seeds:
                keys.append((length, name, seed))
                specs.append(arm_spec("sparse", family, overrides, seed, ctx.quick, spec_task=task))
    records = dict(zip(keys, ctx.records("robustness", specs), strict=True))
    rows = {
        f"{name} @ {length}": [records[(length, name, s)] for s in ctx.seeds]
        for length in ROBUSTNESS_LENGTHS
        for name in ROBUSTNESS
    }
    return {
        "budget": specs[0]["budget"],
        "rows": {
            row: {
                "ran_to_budget": sum(not r["stopped"] for r in runs),
                "runs": len(runs),
                "finals": [r["points"][-1]["eval"] if r["points"] else None for r in runs],
                "max_empty_fraction": max(r.get("max_empty_fraction") or 0.0 for r in runs),
                "skipped_steps": sum(r.get("skipped_steps") or 0 for r in runs),
                "stopped": [r["stopped"] for r in runs if r["stopped"]],
            }
            for row, runs in rows.items()
        },
        "all_ran": all(not r["stopped"] for r in records.values()),
    }


def lr_section(task: str, ctx: Context, stored_choice: dict[str, dict] | None = None) -> dict:
    """Each family's best setting, replay's defaults and replay's defaults with the adaptive step size, started at
    `LR_STARTS` x the base rate: episodes to target per start, and the spread (worst start / best start) a user
    who starts at the wrong rate pays. ``stored_choice``: the tuned arms' settings the tasks section chose
    (``{arm: overrides}``), else they are tuned here."""
    from benchmarks import fairness_report as report

    source = TASKS[task].tuned_on or task
    if stored_choice:  # the tasks section's choice, kept in the results: the section needs no tuning run
        target = None
        chosen = {arm: (FAMILY_OF[arm], overrides) for arm, overrides in stored_choice.items() if arm in FAMILY_OF}
    else:
        target, chosen = tune(source, ctx)
    target = json.loads(ctx.targets_file.read_text())["targets"].get(task, {}).get("target", target)
    base = TASKS[task].settings["learning_rate"]
    arms = {arm: chosen[arm] for arm in FAMILY_OF if arm in chosen}
    arms["replay_default"] = ("replay", {})
    arms["replay_adaptive"] = ("replay", {"adaptive_lr_kl": ADAPTIVE_LR_KL})
    keys = [(arm, m, seed) for arm in arms for m in LR_STARTS for seed in ctx.seeds]
    specs = [
        arm_spec(task, arms[arm][0], {**arms[arm][1], "learning_rate": base * m}, seed, ctx.quick)
        for arm, m, seed in keys
    ]
    runs = dict(zip(keys, ctx.records("lr", specs), strict=True))  # one batch: identical specs run once
    rows = {}
    for arm in arms:
        per_start = {m: report.summarise([runs[(arm, m, s)] for s in ctx.seeds], target) for m in LR_STARTS}
        rows[arm] = {"per_start": per_start, "spread": report.spread(per_start, MIN_REACHED)}
    return {"target": target, "base_learning_rate": base, "adaptive_lr_kl": ADAPTIVE_LR_KL, "rows": rows}


def seed_noise(task: str, ctx: Context) -> dict:
    """Replay's defaults at the task's base rate (the learning-rate section's x1 start) on `NOISE_SEEDS`: how far
    seeds alone move a median, and so the spread identical starts would show at 3, 9 and 15 seeds a start; and
    replay with the adaptive step at every start on the same seeds, the spread at the seed count that can tell the
    goal from noise. Each run stops once it reaches the target (only its episodes to target are reported)."""
    from benchmarks import fairness_report as report

    stored = json.loads(ctx.targets_file.read_text())["targets"] if ctx.targets_file.is_file() else {}
    if task not in stored:
        raise SystemExit(f"noise: {ctx.targets_file} holds no target for {task}; run its tasks section first.")
    target = stored[task]["target"]
    seeds = NOISE_SEEDS[:3] if ctx.quick else NOISE_SEEDS
    base = TASKS[task].settings["learning_rate"]

    def spec(overrides: dict, seed: int) -> dict:
        return {**arm_spec(task, "replay", overrides, seed, ctx.quick), "stop_at": target}

    keys = [(m, seed) for m in LR_STARTS for seed in seeds]
    defaults = [spec({}, seed) for seed in seeds]
    adaptive = [spec({"adaptive_lr_kl": ADAPTIVE_LR_KL, "learning_rate": base * m}, seed) for m, seed in keys]
    records = ctx.records("noise", defaults + adaptive)  # one batch: both arms' runs share the jobs
    per_seed = [report.reach(r, target)[0] for r in records[: len(seeds)]]
    runs = dict(zip(keys, records[len(seeds) :], strict=True))
    per_start = {m: report.summarise([runs[(m, s)] for s in seeds], target) for m in LR_STARTS}
    figures = ("episodes_to_target", "reached", "runs")  # the rest of a summary needs whole curves
    return {
        "target": target,
        "seeds": list(seeds),
        "per_seed": per_seed,
        "goal": SPREAD_GOAL,
        "spread": [report.identical_start_spread(per_seed, len(LR_STARTS), n, SPREAD_GOAL) for n in NOISE_DRAWS],
        "adaptive": {
            "adaptive_lr_kl": ADAPTIVE_LR_KL,
            "per_start": {m: {k: s[k] for k in figures} for m, s in per_start.items()},
            "spread": report.spread(per_start, len(seeds) // 2 + 1),  # a start counts where its median is reached
        },
    }
