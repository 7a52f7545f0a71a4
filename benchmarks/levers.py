"""Replay levers, one at a time against replay's defaults and on-policy PPO, on the tuning seeds.

    python -m benchmarks.levers            # results in benchmarks/results/levers.{json,md}

Each row changes one replay field from `_BASE` (or, for the last rows, two) at the base
learning rate, on the sparse and digits tasks of `benchmarks.fairness` with one completion per
prompt and (``*_g4``) four, at that benchmark's frozen target of the source task where it has one
(`lever_target`), else at its target rule applied to the runs shown (start + `TARGET_FRACTION` of the way to
their best final score, which moves when arms or seeds are added). It runs on `LEVER_SEEDS`, seeds that are not
reporting seeds: this is where defaults are chosen (the row "96 replayed + self-imitation" became
them); whether replay wins is the fair benchmark's question. Runs share the fair benchmark's records.
Run time (2 cores, ``--jobs 2``): 64 runs, about 28 minutes; ``--report replayed_row_cost`` (five seeds,
the medians its lever decisions read): 70 runs, about 25 minutes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks import fairness_report as report
from benchmarks.fairness import RESULTS, TARGET_FRACTION, TARGETS, TASKS, Task, arm_spec
from benchmarks.fairness_runner import RECORDS, run_all
from benchmarks.outputs import write_tables

LEVER_SEEDS = (0, 4)
SEEDS_OF_REPORT = {"levers": LEVER_SEEDS, "replayed_row_cost": (*LEVER_SEEDS, 5, 6, 7)}
# The replay settings the rows were measured against ("defaults" in their names): replay's defaults before
# these rows chose the current ones (`replay_ratio=3`, `self_imitation_coef=1`).
_BASE = {"replay_ratio": 1, "self_imitation_coef": 0.0}
_ON_POLICY = {
    "ppo, 4 epochs": ("ppo", {}),
    "ppo, 8 epochs (same optimizer steps as replay)": ("ppo", {"num_ppo_epochs": 8}),
}
ONE_SAMPLE_ARMS = {
    **_ON_POLICY,
    "ppo, 16 epochs (same as 96 replayed)": ("ppo", {"num_ppo_epochs": 16}),
    "replay, defaults": ("replay", dict(_BASE)),
    "prioritized sampling": ("replay", {**_BASE, "use_priority_sampling": True}),
    "self-imitation, coef 1": ("replay", {**_BASE, "self_imitation_coef": 1.0}),
    "ESS gate 0.5": ("replay", {**_BASE, "replay_min_ess": 0.5}),
    "96 replayed per 32 fresh": ("replay", {**_BASE, "replay_sample_size": 96}),
    "96 replayed + self-imitation": ("replay", {**_BASE, "replay_sample_size": 96, "self_imitation_coef": 1.0}),
    "96 replayed + prioritized": ("replay", {**_BASE, "replay_sample_size": 96, "use_priority_sampling": True}),
}
# Four completions per prompt: whether the levers behave as with one.
FOUR_SAMPLE_ARMS = {
    **_ON_POLICY,
    "replay, defaults": ("replay", dict(_BASE)),
    "prioritized sampling": ("replay", {**_BASE, "use_priority_sampling": True}),
    "96 replayed + self-imitation": ("replay", {**_BASE, "replay_sample_size": 96, "self_imitation_coef": 1.0}),
}
# Cheaper replayed rows, against replay's current defaults (`replay_ratio=3`, self-imitation on).
COST_ARMS = {
    "ppo, 4 epochs": ("ppo", {}),
    "replay, current defaults": ("replay", {}),
    "replay_epochs=2": ("replay", {"replay_epochs": 2}),
    "replay_epochs=1": ("replay", {"replay_epochs": 1}),
}
# task: (the `TASKS` entry whose settings, prompts and reward it uses, generated episodes, evaluation interval, arms)
LEVER_TASKS = {
    "sparse": ("sparse", 6400, 320, ONE_SAMPLE_ARMS),
    "digits": ("digits", 3200, 160, ONE_SAMPLE_ARMS),
    "sparse_g4": ("sparse", 6400, 320, FOUR_SAMPLE_ARMS),
    "digits_g4": ("digits", 3200, 160, FOUR_SAMPLE_ARMS),
    "sparse_cost": ("sparse", 6400, 320, COST_ARMS),
    "digits_cost": ("digits", 3200, 160, COST_ARMS),
}
REPORTS = {
    "levers": ["sparse", "digits", "sparse_g4", "digits_g4"],
    "replayed_row_cost": ["sparse_cost", "digits_cost"],
}


def lever_task(name: str) -> Task:
    """The `Task` a lever row runs: its source task, with four completions per prompt for ``*_g4``."""
    source, budget, every, _ = LEVER_TASKS[name]
    settings = {**TASKS[source].settings, **({"num_generations": 4} if name.endswith("_g4") else {})}
    return Task(settings, budget=budget, eval_every=every, data=source)


def lever_target(task: str, records: list[dict], targets_file: Path | None = TARGETS) -> tuple[float, str]:
    """``(target, where it comes from)`` of a lever task: the fair benchmark's frozen target of its source task
    (``targets_file``; None in the quick mode), else the target rule over ``records``."""
    source = LEVER_TASKS[task][0]
    frozen = json.loads(targets_file.read_text())["targets"] if targets_file is not None else {}
    if source in frozen:
        return frozen[source]["target"], f"frozen for {source} in {targets_file.name}"
    return report.target_of(records, TARGET_FRACTION), "from the runs shown"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="Runs in parallel (one thread each).")
    parser.add_argument("--output_dir", default=str(RESULTS))
    parser.add_argument("--report", default="levers", choices=list(REPORTS), help="Which tables (and files) to write.")
    parser.add_argument("--tasks", nargs="+", choices=list(LEVER_TASKS), help="A subset of the report's tasks.")
    parser.add_argument("--quick", action="store_true", help="Every arm on a tiny budget, one seed, no cache.")
    options = parser.parse_args(argv)
    options.tasks = options.tasks or REPORTS[options.report]
    seeds = SEEDS_OF_REPORT[options.report][:1] if options.quick else SEEDS_OF_REPORT[options.report]
    keys, specs = [], []
    for task in options.tasks:
        spec_task = lever_task(task)
        for arm, (family, overrides) in LEVER_TASKS[task][3].items():
            for seed in seeds:
                keys.append((task, arm, seed))
                specs.append(arm_spec(task, family, overrides, seed, options.quick, spec_task=spec_task))
    records = dict(zip(keys, run_all(specs, None if options.quick else RECORDS, options.jobs), strict=True))
    command = "python -m benchmarks.levers" + (f" --report {options.report}" if options.report != "levers" else "")
    result: dict = {"command": command, "seeds": list(seeds), "tasks": {}}
    lines = [
        "# Replay levers (tuning seeds)" if options.report == "levers" else "# Cheaper replayed rows (tuning seeds)",
        "",
        f"Command: `{command}`; seeds {', '.join(map(str, seeds))} (not reporting seeds); "
        f"learning rate {TASKS['sparse'].settings['learning_rate']:g}, 32 fresh episodes per update.",
    ]
    for task in options.tasks:
        budget = LEVER_TASKS[task][1]
        runs = {arm: [records[(task, arm, s)] for s in seeds] for arm in LEVER_TASKS[task][3]}
        records_shown = [r for rs in runs.values() for r in rs]
        target, origin = lever_target(task, records_shown, None if options.quick else TARGETS)
        summary = {arm: report.summarise(rs, target) for arm, rs in runs.items()}
        result["tasks"][task] = {"target": target, "target_from": origin, "budget": budget, "summary": summary}
        lines += [
            "",
            f"## {task}: budget {budget:,} generated episodes, target {target:.3f} ({origin})",
            "",
            "| arm | episodes to target, median (per seed) | final eval (median) | optimizer steps / episode "
            "| stopped |",
            "|---|---|---|---|---|",
        ]
        for arm, s in summary.items():
            episodes = f"{report.format_episodes(s['episodes_to_target'])} ({report.format_per_seed(s)})"
            lines.append(
                f"| {arm} | {episodes} | {s['final_eval']:.3f} | {s['steps_per_episode']:.3f} | {len(s['stopped'])} |"
            )
    write_tables(options.output_dir, options.report, result, lines)
    return result


if __name__ == "__main__":
    main()
