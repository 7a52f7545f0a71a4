"""The fair sample-efficiency benchmark (protocol 2): replay against the best on-policy PPO and GRPO a user could tune.

    python -m benchmarks.fairness                         # every section; results in benchmarks/results/fairness.*
    python -m benchmarks.fairness --sections tasks --tasks digits   # one section, one task: finishes on its own
    python -m benchmarks.fairness --quick                 # a smoke check of every arm on a tiny budget

Tasks (`TASKS`): ``digits`` (dense reward), ``sparse`` (the GSM8K-shaped arithmetic task, one
completion per prompt), ``sparse_g4`` (four per prompt) and ``held_out`` (three-digit additions:
other numbers and longer answers than ``sparse``, its base model as rarely right; run with the
settings chosen on ``sparse``, never used for tuning, and chosen with on-policy runs only).

Arms, every one at the same budget of generated episodes and scored by the same evaluator: stock
TRL PPO (TRL 1.12, the last with it), this package with replay off, the compute-matched on-policy
arm (replay off with ``num_ppo_epochs`` scaled to replay's optimizer steps per generated episode),
tuned PPO, TRL's GRPOTrainer tuned as its users tune it (on the newest TRL), replay with its
defaults at the learning rate of the best tuned on-policy arm (what a user switching replay on
keeps), and tuned replay. Each family runs in its own virtual environment
(`benchmarks.fairness_runner`); the records say which.

Protocol, fixed before any arm runs:
- Grids (`grid`), learning rate x1/x3/x10 (constant schedule, for every arm) times each family's
  knobs: PPO epochs 4/8/16 x minibatches 1/2 (18), GRPO ``num_generations`` 4/8/16 at the same
  completions per step x ``num_iterations`` 1/4 (18), replay its defaults / the previous defaults /
  prioritized sampling (9: half the others', which can only favour the baselines).
- Tuning on `TUNING_SEED`, reporting on `REPORT_SEEDS`. The best setting of a family reaches the
  target with the fewest generated episodes on the tuning seed (ties: higher final score).
- Targets are frozen (`TARGETS`): computed once per protocol version (start score + `TARGET_FRACTION`
  of the way to the best tuning final; the held-out task's from its on-policy runs alone) and stored
  in the repository, so a later arm never moves them. A run reaches the target at the first
  evaluation whose mean with the previous one is at least the target.
- Headline per task: episodes to target of the best on-policy arm / the best replay arm, medians over
  the reporting seeds, counted only where both reach the target on at least 2 of 3 seeds; otherwise
  "not measurable" with the reach counts. The ratio's resolution (one evaluation later) is stated.

Sections (``--sections``): ``tasks`` (tuning and reporting, the headline), ``lr`` (each family's best
setting, replay's defaults, and replay's defaults with ``adaptive_lr_kl``, started at the base rate x1/3, x1,
x3, x10: the spread worst/best), ``noise`` (replay's defaults on 15 seeds: the spread seed noise alone gives
identical starts), ``long`` (the
generation-heavy profile: an on-policy grid re-tuned on it, runs one at a time on both cores, wall
time side by side) and ``robustness`` (collapse-prone settings). Records are committed under
``results/fairness_runs/``; a re-run only trains what changed, and the run-time table says what each
section cost.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.fairness_runner import ENVIRONMENTS, RECORDS, missing_environment, parse_environments, run_all
from trl_replay_ppo.trainer.config import ReplayPPOConfig

RESULTS = Path(__file__).parent / "results"
PROTOCOL = 2
TARGETS = Path(__file__).parent / "fairness_targets.json"
TUNING_SEED = 0
REPORT_SEEDS = (1, 2, 3)
MIN_REACHED = 2  # of the 3 reporting seeds, for a ratio to count
MIN_GAIN = 0.05  # a held-out target must lie this far above the start score (eval score units)
TARGET_FRACTION = 0.8  # at 0.5, digits arms stuck on a one-answer policy (eval 0.51) counted as reached
LR_MULTIPLIERS = (1, 3, 10)
LR_STARTS = (1 / 3, 1, 3, 10)  # the learning-rate section: each family's best setting at these x the base
# The adaptive step size's KL (nats per token) in the learning-rate section: the geometric mean of the median
# per-update KL of replay's defaults at x1 (0.026) and x3 (0.097) the base rate, the two best rates on the sparse
# task's tuning seed (first 3,200 episodes), rounded; fixed before any learning-rate run. (0.2 before replayed
# tokens' KL was importance-weighted: the unweighted medians were 0.066 and 0.47.)
ADAPTIVE_LR_KL = 0.05
REPLAY_RATIO = ReplayPPOConfig.replay_ratio  # replayed episodes per fresh one in replay's defaults
FAMILY_OF = {"tuned_ppo": "ppo", "tuned_grpo": "grpo", "tuned_replay": "replay"}  # tuned arm -> its family

DIGITS_SETTINGS = {
    "per_device_train_batch_size": 32,
    "num_ppo_epochs": 4,
    "response_length": 8,
    "learning_rate": 3e-4,
    "kl_coef": 0.01,
    "temperature": 1.0,
}
SPARSE_SETTINGS = {**DIGITS_SETTINGS, "response_length": 6, "stop_token": "eos"}


@dataclass(frozen=True)
class Task:
    settings: dict
    budget: int  # generated episodes per run
    eval_every: int  # generated episodes between evaluations
    tuned_on: str | None = None  # run with the settings chosen on this task instead of tuning
    data: str = ""  # the task whose prompts and reward it uses (default: its own name)
    families: tuple[str, ...] = field(default=("ppo", "grpo", "replay"))


TASKS = {
    "digits": Task(DIGITS_SETTINGS, budget=4800, eval_every=160),
    "sparse": Task(SPARSE_SETTINGS, budget=6400, eval_every=320),
    "sparse_g4": Task({**SPARSE_SETTINGS, "num_generations": 4}, budget=6400, eval_every=320, data="sparse"),
    "held_out": Task(SPARSE_SETTINGS, budget=6400, eval_every=320, tuned_on="sparse"),
}
QUICK = {"budget": 64, "eval_every": 32}


def grid(family: str, settings: dict) -> list[dict]:
    """The settings a family is tuned over: `LR_MULTIPLIERS` x the family's own knobs (see the module docstring).

    The top of every family's knob trains as many optimizer steps per generated episode as replay's
    defaults or more: PPO (1 + ratio) x 4 = 16 epochs, GRPO 4 iterations at up to 16 completions per prompt.
    """
    epochs = settings["num_ppo_epochs"]
    knobs = {
        "ppo": [
            {"num_ppo_epochs": e, "num_mini_batches": m}
            for e in (epochs, 2 * epochs, (1 + REPLAY_RATIO) * epochs)
            for m in (1, 2)
        ],
        "grpo": [{"num_generations": g, "num_iterations": i} for g in (4, 8, 16) for i in (1, 4)],
        "replay": [{}, {"replay_ratio": 1, "self_imitation_coef": 0.0}, {"use_priority_sampling": True}],
    }[family]
    return [{"learning_rate": settings["learning_rate"] * m, **knob} for m in LR_MULTIPLIERS for knob in knobs]


def arm_spec(task: str, family: str, overrides: dict, seed: int, quick: bool, spec_task: Task | None = None) -> dict:
    """A run spec (see `benchmarks.runs`) for one arm of ``task`` (or of ``spec_task`` when given)."""
    spec_task = spec_task or TASKS[task]
    settings = {**spec_task.settings, **overrides}
    if family == "grpo":
        kind = "grpo"
        settings = {
            "per_device_train_batch_size": settings["per_device_train_batch_size"],  # completions per step
            "num_generations": settings.get("num_generations", 4),
            "response_length": settings["response_length"],
            "temperature": settings["temperature"],
            "learning_rate": settings["learning_rate"],
            "num_iterations": settings.get("num_iterations", 1),
        }
    elif family == "stock":
        kind = "stock"
        settings.pop("num_generations", None)
    else:
        kind = "ours"
        settings.setdefault("use_replay_buffer", family == "replay")
    budget = QUICK if quick else {"budget": spec_task.budget, "eval_every": spec_task.eval_every}
    return {"task": spec_task.data or task, "kind": kind, "settings": settings, "seed": seed, **budget}


def fixed_arms(task: str) -> dict[str, tuple[str, dict]]:
    """The arms that are not tuned: ``{name: (family, overrides)}``."""
    epochs = TASKS[task].settings["num_ppo_epochs"]
    return {
        "stock_trl": ("stock", {}),
        "replay_off": ("ppo", {}),
        "compute_matched": ("ppo", {"num_ppo_epochs": (1 + REPLAY_RATIO) * epochs}),
    }


def default_replay_arm(chosen: dict[str, tuple[str, dict]], tuned: dict[str, dict], target: float) -> tuple:
    """Replay with every replay field at its default and the learning rate of the best tuned on-policy arm
    (tuned PPO or tuned GRPO, whose tuning-seed records are in ``tuned``): what a user switching replay on keeps."""
    from benchmarks import fairness_report as report

    on_policy = [a for a in ("tuned_ppo", "tuned_grpo") if a in tuned]
    best = report.best_of([tuned[a] for a in on_policy], target)
    arm = next(a for a in on_policy if tuned[a] is best)
    return ("replay", {"learning_rate": chosen[arm][1]["learning_rate"]})


def frozen_target(task: str, records: list[dict], source: str, targets_file: Path) -> float:
    """The task's target under this protocol: read from ``targets_file``, or computed from ``records`` once and
    stored there (``source`` says which runs it came from)."""
    from benchmarks import fairness_report as report

    stored = json.loads(targets_file.read_text()) if targets_file.is_file() else {"protocol": PROTOCOL, "targets": {}}
    if stored["protocol"] != PROTOCOL:
        raise SystemExit(
            f"{targets_file} holds the targets of protocol {stored['protocol']}, this is protocol {PROTOCOL}: a new "
            "protocol is a deliberate change; move the old file aside to freeze new targets."
        )
    if task not in stored["targets"]:
        start = report.median([r["points"][0]["eval"] for r in records if r["points"]])
        stored["targets"][task] = {
            "target": report.target_of(records, TARGET_FRACTION),
            "start_score": round(start, 4),
            "from": source,
            "frozen": time.strftime("%Y-%m-%d"),
        }
        targets_file.write_text(json.dumps(stored, indent=1) + "\n")
    return stored["targets"][task]["target"]


@dataclass
class Context:
    """What every section needs: how to run specs, the mode, the seeds, where targets are frozen."""

    run: Callable[[list[dict], int | None], list[dict]]  # (specs, jobs or None for the default) -> records
    quick: bool
    seeds: tuple[int, ...]
    targets_file: Path
    families: tuple[str, ...]  # the families whose environment is available
    used: dict[str, list[dict]] = field(default_factory=dict)  # section -> the records it used (for its cost)

    def records(self, section: str, specs: list[dict], jobs: int | None = None) -> list[dict]:
        records = self.run(specs, jobs)
        self.used.setdefault(section, []).extend(records)
        return records


def tune(task: str, ctx: Context) -> tuple[float, dict[str, tuple[str, dict]]]:
    """Every family's grid on the tuning seed: the task's (frozen) target and each family's best setting."""
    from benchmarks import fairness_report as report

    families = [f for f in TASKS[task].families if f in ctx.families]
    specs = {
        (family, json.dumps(overrides)): arm_spec(task, family, overrides, TUNING_SEED, ctx.quick)
        for family in families
        for overrides in grid(family, TASKS[task].settings)[: 1 if ctx.quick else None]
    }
    tuning = dict(zip(specs, ctx.records("tasks", list(specs.values())), strict=True))
    target = frozen_target(
        task, list(tuning.values()), f"{len(tuning)} tuning runs, seed {TUNING_SEED}", ctx.targets_file
    )
    chosen, tuned = {}, {}
    for arm, family in FAMILY_OF.items():
        runs = {overrides: record for (f, overrides), record in tuning.items() if f == family}
        if runs:
            tuned[arm] = report.best_of(list(runs.values()), target)
            chosen[arm] = (family, json.loads(next(o for o, r in runs.items() if r is tuned[arm])))
    chosen["replay_default"] = default_replay_arm(chosen, tuned, target)
    return target, chosen


def task_section(task: str, ctx: Context, skipped: dict[str, str]) -> dict:
    """Tuning (or the settings of the task it borrows them from), then every arm on the reporting seeds."""
    from benchmarks import fairness_report as report

    spec = TASKS[task]
    source = spec.tuned_on or task
    target, chosen = tune(source, ctx) if spec.tuned_on is None else (None, tune(source, ctx)[1])
    arms = {**fixed_arms(task), **chosen}
    if "stock" not in ctx.families:
        arms.pop("stock_trl")
    on_policy = [a for a in arms if a in report.ON_POLICY]
    seeds = ctx.seeds if spec.tuned_on is None else tuple(dict.fromkeys((TUNING_SEED, *ctx.seeds)))

    def run_arms(names: list[str]) -> dict[tuple[str, int], dict]:
        keys = [(arm, seed) for arm in names for seed in seeds]
        specs = [arm_spec(task, *arms[arm], seed, ctx.quick) for arm, seed in keys]
        return dict(zip(keys, ctx.records("tasks", specs), strict=True))

    records = run_arms(on_policy)  # a borrowing task: its on-policy runs fix its target before any replay run
    selection = None
    if target is None:
        tuning_seed = [r for (_, s), r in records.items() if s == TUNING_SEED]
        target = frozen_target(task, tuning_seed, "its on-policy arms, seed 0", ctx.targets_file)
        selection = {
            "start_accuracy": report.median([r["points"][0].get("accuracy", float("nan")) for r in tuning_seed]),
            "start_score": report.median([r["points"][0]["eval"] for r in tuning_seed]),
            "on_policy_reached": {
                arm: sum(report.reached(records[(arm, s)], target) for s in ctx.seeds) for arm in on_policy
            },
        }
        if not ctx.quick and target < selection["start_score"] + MIN_GAIN:
            raise SystemExit(
                f"{task}: its on-policy arms end where they start ({selection}); a target of {target} measures "
                f"nothing. Choose another variant before any replay run on it (and move its target out of "
                f"{ctx.targets_file})."
            )
        if not ctx.quick and max(selection["on_policy_reached"].values()) < MIN_REACHED:
            raise SystemExit(
                f"{task}: no on-policy arm reaches its target {target} on {MIN_REACHED} of {len(ctx.seeds)} seeds "
                f"({selection}); the variant measures nothing. Choose another before any replay run on it (and move "
                f"its target out of {ctx.targets_file})."
            )
    records.update(run_arms([a for a in arms if a not in on_policy]))
    curves = {arm: [records[(arm, s)] for s in ctx.seeds] for arm in arms}
    summary = {arm: report.summarise(runs, target) for arm, runs in curves.items()}
    budget = QUICK if ctx.quick else {"budget": spec.budget, "eval_every": spec.eval_every}
    return {
        "target": target,
        **budget,
        "summary": summary,
        "headline": report.headline(summary, budget["eval_every"], MIN_REACHED),
        "grids": {f: grid(f, TASKS[source].settings) for f in TASKS[source].families},
        "chosen": {arm: overrides for arm, (_, overrides) in chosen.items()},
        "skipped": {
            arm: skipped[kind] for arm, kind in (("stock_trl", "stock"), ("tuned_grpo", "grpo")) if kind in skipped
        },
        "selection": selection,
        "curves": curves,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Every arm on a tiny budget, one seed, grids of one.")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--output_dir", default=str(RESULTS), help="Where fairness.{json,md,png} go.")
    parser.add_argument("--jobs", type=int, default=2, help="Runs in parallel (one process each); 0 runs them here.")
    parser.add_argument("--no_cache", action="store_true", help="Train every run again.")
    parser.add_argument("--env", nargs="*", default=[], help="kind=python: the interpreter of a kind of run.")
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["tasks", "lr", "noise", "long", "robustness"],
        choices=["tasks", "lr", "noise", "long", "robustness"],
        help="tasks: the headline; lr: learning-rate starts; noise: their seed noise; long: the generation-heavy "
        "profile; robustness.",
    )
    options = parser.parse_args(argv)
    from benchmarks import fairness_profiles as profiles
    from benchmarks import fairness_report as report
    from benchmarks.fairness_runner import versions

    output = Path(options.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    environments = parse_environments(options.env)
    records = None if options.no_cache or options.quick else RECORDS
    skipped = {k: why for k in ENVIRONMENTS if (why := missing_environment(k, environments, options.jobs == 0))}
    if "ours" in skipped:
        raise SystemExit(f"this package's runs cannot start: {skipped['ours']}")
    ctx = Context(
        run=lambda specs, jobs: run_all(
            specs, records, options.jobs if jobs is None or not options.jobs else jobs, environments
        ),
        quick=options.quick,
        seeds=(TUNING_SEED,) if options.quick else REPORT_SEEDS,
        targets_file=output / "fairness_targets.json" if options.quick else TARGETS,
        families=tuple(
            f
            for f, kind in (("stock", "stock"), ("ppo", "ours"), ("grpo", "grpo"), ("replay", "ours"))
            if kind not in skipped
        ),
    )
    previous = output / "fairness.json"
    result = json.loads(previous.read_text()) if previous.is_file() and not options.quick else {}
    if result.get("protocol") != PROTOCOL:
        result = {}
    result.update(
        {
            "command": "python -m benchmarks.fairness" + (" --quick" if options.quick else ""),
            "protocol": PROTOCOL,
            "tuning_seed": TUNING_SEED,
            "report_seeds": list(ctx.seeds),
            "target_fraction": TARGET_FRACTION,
            "min_reached": MIN_REACHED,
            "lr_multipliers": list(LR_MULTIPLIERS),
            "environments": {
                kind: (
                    "in this process"
                    if options.jobs == 0
                    else {"python": str(environments[kind]), **versions(str(environments[kind]))}
                )
                for kind in ENVIRONMENTS
                if kind not in skipped
            },
            "skipped": skipped,
        }
    )
    for section in ("tasks", "lr", "noise", "costs"):
        result.setdefault(section, {})
    curves = {}
    tasks = [t for t in options.tasks if TASKS[t].tuned_on is None or TASKS[t].tuned_on in TASKS]
    if "tasks" in options.sections:
        for task in tasks:
            section = task_section(task, ctx, skipped)
            curves[task] = section.pop("curves")
            result["tasks"][task] = section
    if "lr" in options.sections:
        for task in tasks:
            choice = result["tasks"].get(TASKS[task].tuned_on or task, {}).get("chosen")
            result["lr"][task] = profiles.lr_section(task, ctx, choice)
    if "noise" in options.sections:
        for task in tasks:
            result["noise"][task] = profiles.seed_noise(task, ctx)
    if "long" in options.sections:
        result["long"] = profiles.long_profile(ctx)
    if "robustness" in options.sections:
        result["robustness"] = profiles.robustness(ctx)
    for section, used in ctx.used.items():  # a section run for some tasks keeps the others' costs beside
        result["costs"][section if section in ("long", "robustness") else f"{section} ({', '.join(tasks)})"] = (
            report.cost(used)
        )
    (output / "fairness.json").write_text(json.dumps(result, indent=1, default=str))
    (output / "fairness.md").write_text(report.markdown(result))
    if curves:
        report.plot(result, curves, output / "fairness.png")
    print(report.markdown(result))
    return result


if __name__ == "__main__":
    main()
