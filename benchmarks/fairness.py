"""The fair sample-efficiency benchmark: replay against the best on-policy PPO and GRPO a user could tune.

    python -m benchmarks.fairness            # full mode, results in benchmarks/results/fairness.*
    python -m benchmarks.fairness --quick    # a smoke check of every arm on a tiny budget

Tasks (`TASKS`): ``digits`` (dense reward), ``sparse`` (the GSM8K-shaped arithmetic task, one
completion per prompt), ``sparse_g4`` (four per prompt) and ``held_out`` (the arithmetic task's
subtraction variant, run with the settings chosen on ``sparse`` and never used for tuning).

Arms, every one at the same budget of generated episodes and scored by the same evaluator:
stock TRL PPO (only where TRL <= 1.12 provides it), this package with replay off, the
compute-matched on-policy arm (replay off with ``num_ppo_epochs`` scaled so optimizer steps and
trained episodes per generated episode equal replay's defaults), tuned PPO (best of a grid over
learning rate x epochs), TRL's GRPOTrainer tuned over learning rate x ``num_iterations``
(4 completions per prompt), replay with its defaults at the learning rate of the best tuned
on-policy arm (what a user switching replay on keeps), and tuned replay (learning rate x its
defaults or the previous ones). Every family's grid has `len(LR_MULTIPLIERS) x 2` settings, and the
top of every family's knob trains as many optimizer steps per generated episode as replay's defaults.

Protocol, fixed before any arm runs: the grids are tuned on `TUNING_SEED`, results are reported on
`REPORT_SEEDS`. A task's target is its start score plus `TARGET_FRACTION` of the way to the best
final score any tuning run reaches; a run reaches it at the first evaluation where the mean of that
evaluation and the previous one is at least the target. The best setting of a family is the one
reaching the target with the fewest generated episodes on the tuning seed (ties: higher final
score). Headline per task: generated episodes to target of the best on-policy arm (PPO or GRPO) /
the best replay arm, medians over the reporting seeds; when the on-policy arm's median is not
reached within the budget, the ratio is a lower bound and marked ">=".

Run time (2 cores, full mode, ``--jobs 2``): 54 tuning and about 80 reporting runs (tasks, about
60 minutes with the GRPO and stock TRL runs cached, which do not depend on this package's code), 12
generation-heavy runs (about 26) and 36 robustness runs (about 25). Runs are cached under
``benchmarks/results/fairness_cache/`` (keyed by spec and by the code they ran), so a re-run only
trains what changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from trl_replay_ppo.trainer.config import ReplayPPOConfig

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).parent.parent
TUNING_SEED = 0
REPORT_SEEDS = (1, 2, 3)
TARGET_FRACTION = 0.8  # at 0.5, digits arms stuck on a one-answer policy (eval 0.51) counted as reached
LR_MULTIPLIERS = (1, 3, 10)
REPLAY_RATIO = ReplayPPOConfig.replay_ratio  # replayed episodes per fresh one in replay's defaults

_DIGITS = {
    "per_device_train_batch_size": 32,
    "num_ppo_epochs": 4,
    "response_length": 8,
    "learning_rate": 3e-4,
    "kl_coef": 0.01,
    "temperature": 1.0,
}
_SPARSE = {**_DIGITS, "response_length": 6, "stop_token": "eos"}


@dataclass(frozen=True)
class Task:
    settings: dict
    budget: int  # generated episodes per run
    eval_every: int  # generated episodes between evaluations
    tuned_on: str | None = None  # run with the settings chosen on this task instead of tuning
    data: str = ""  # the task whose prompts and reward it uses (default: its own name)
    families: tuple[str, ...] = field(default=("ppo", "grpo", "replay"))


TASKS = {
    "digits": Task(_DIGITS, budget=4800, eval_every=160),
    "sparse": Task(_SPARSE, budget=6400, eval_every=320),
    "sparse_g4": Task({**_SPARSE, "num_generations": 4}, budget=6400, eval_every=320, data="sparse"),
    "held_out": Task(_SPARSE, budget=6400, eval_every=320, tuned_on="sparse"),
}
QUICK = {"budget": 64, "eval_every": 32}
# Generation-heavy profile: the digits task with 64-token responses generated 4 sequences at a time, as
# memory-bound decoding on a GPU, so that generation is most of an on-policy update. TRL's GRPOTrainer
# cannot generate in such chunks, so the profile compares the PPO-family arms.
LONG = Task(
    {**_DIGITS, "response_length": 64, "local_rollout_forward_batch_size": 4},
    budget=4800,
    eval_every=320,
    data="digits",
)
# Settings that made on-policy PPO and replay collapse before pad suppression, on the sparse task.
ROBUSTNESS = {
    "ppo, 8 epochs": ("ppo", {"num_ppo_epochs": 8}),
    "ppo, 12 epochs": ("ppo", {"num_ppo_epochs": 12}),
    "ppo, lr x2": ("ppo", {"learning_rate": 2 * _SPARSE["learning_rate"]}),
    "ppo, lr x3": ("ppo", {"learning_rate": 3 * _SPARSE["learning_rate"]}),
    "replay, lr x1": ("replay", {}),
    "replay, lr x3": ("replay", {"learning_rate": 3 * _SPARSE["learning_rate"]}),
}
ROBUSTNESS_LENGTHS = (6, 48)
ROBUSTNESS_BUDGET = 6400


def grid(family: str, settings: dict) -> list[dict]:
    """The settings a family is tuned over: `LR_MULTIPLIERS` x two values of its own knob.

    The top of every family's knob trains as many optimizer steps per generated episode as replay's
    defaults (the fresh batch plus `REPLAY_RATIO` times as many replayed episodes): PPO 8 or
    (1 + ratio) x 4 = 16 epochs, GRPO 4 or 16 iterations; replay its defaults or the previous ones
    (as many replayed episodes as fresh ones, no self-imitation).
    """
    epochs = settings["num_ppo_epochs"]
    knobs = {
        "ppo": ({"num_ppo_epochs": 2 * epochs}, {"num_ppo_epochs": (1 + REPLAY_RATIO) * epochs}),
        "grpo": ({"num_iterations": 4}, {"num_iterations": (1 + REPLAY_RATIO) * epochs}),
        "replay": ({}, {"replay_ratio": 1, "self_imitation_coef": 0.0}),
    }[family]
    return [{"learning_rate": settings["learning_rate"] * m, **knob} for m in LR_MULTIPLIERS for knob in knobs]


def arm_spec(task: str, family: str, overrides: dict, seed: int, quick: bool, spec_task: Task | None = None) -> dict:
    """A run spec (see `benchmarks.runs`) for one arm of ``task`` (or of ``spec_task`` when given)."""
    spec_task = spec_task or TASKS[task]
    settings = {**spec_task.settings, **overrides}
    if family == "grpo":
        kind = "grpo"
        settings = {
            "per_device_train_batch_size": settings["per_device_train_batch_size"],
            "num_generations": 4,
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


def code_hash(kind: str) -> str:
    """Hash of the code a run of ``kind`` depends on (the whole package for this package's trainer)."""
    package = ROOT / "trl_replay_ppo"
    files = sorted(package.rglob("*.py")) if kind == "ours" else sorted((package / "tasks").rglob("*.py"))
    digest = hashlib.sha256()
    for path in [*files, Path(__file__).parent / "runs.py"]:
        digest.update(path.read_bytes())
    import trl

    digest.update(trl.__version__.encode())
    return digest.hexdigest()[:16]


def run_key(spec: dict) -> str:
    """Cache key of a run: its spec and the code it runs."""
    return hashlib.sha256((json.dumps(spec, sort_keys=True) + code_hash(spec["kind"])).encode()).hexdigest()[:24]


def run_all(specs: list[dict], cache: Path | None, jobs: int) -> list[dict]:
    """Run ``specs`` (in parallel processes, one per run), reusing cached results."""
    from benchmarks import fairness_report as report
    from benchmarks.runs import model_dirs

    model_dirs("tiny"), model_dirs("arithmetic")
    keys = [run_key(spec) for spec in specs]
    results: dict[str, dict] = {}
    todo = []
    for key, spec in dict(zip(keys, specs, strict=True)).items():  # identical specs run once
        path = cache / f"{key}.json" if cache is not None else None
        if path is not None and path.is_file():
            results[key] = json.loads(path.read_text())
        else:
            todo.append((key, spec, path))
    started = time.time()
    context = multiprocessing.get_context("spawn")
    with context.Pool(max(jobs, 1), maxtasksperchild=1) as pool:
        if jobs > 0:
            pending = {key: (pool.apply_async(_run_one, (spec,)), path) for key, spec, path in todo}
        else:  # in this process, one after another (what the smoke test does: no start-up cost per run)
            pending = {key: (_Done(_run_one(spec)), path) for key, spec, path in todo}
        for done, (key, (handle, path)) in enumerate(pending.items(), 1):
            record = handle.get()
            results[key] = record
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record))
            spec = record["spec"]
            final = record["points"][-1]["eval"] if record["points"] else float("nan")
            knobs = {k: v for k, v in spec["settings"].items() if k in report.KNOBS}
            stopped = f"  STOPPED: {record['stopped']}" if record["stopped"] else ""
            print(
                f"[{time.time() - started:6.0f}s {done}/{len(todo)}] {spec['task']} {spec['kind']} seed "
                f"{spec['seed']} {json.dumps(knobs)}: final eval {final:.3f}{stopped}",
                flush=True,
            )
    return [results[key] for key in keys]


class _Done:
    """A finished result with the interface of a pool's pending one."""

    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value


def _run_one(spec: dict) -> dict:
    sys.path.insert(0, str(ROOT))
    from benchmarks.runs import run

    return run(spec)


def stock_available() -> str | None:
    """None when stock TRL PPO can run here, else why not."""
    try:
        import trl.experimental.ppo
    except ImportError:
        import trl

        return f"TRL {trl.__version__} has no PPOTrainer (removed in TRL 1.13)"
    return None


def fixed_arms(task: str) -> dict[str, tuple[str, dict]]:
    """The arms that are not tuned: ``{name: (family, overrides)}``."""
    epochs = TASKS[task].settings["num_ppo_epochs"]
    return {
        "stock_trl": ("stock", {}),
        "replay_off": ("ppo", {}),
        "compute_matched": ("ppo", {"num_ppo_epochs": (1 + REPLAY_RATIO) * epochs}),
    }


def default_replay_arm(chosen: dict[str, tuple[str, dict]], tuned: dict[str, dict], target: float) -> tuple:
    """Replay with every replay field at its default and the learning rate of the best tuned on-policy arm.

    What a user who turns replay on keeps from their on-policy run; the best on-policy arm (tuned PPO or
    tuned GRPO, whose tuning-seed records are in ``tuned``) is the one reaching the target with the
    fewest episodes on the tuning seed.
    """
    from benchmarks import fairness_report as report

    best = report.best_of([tuned["tuned_ppo"], tuned["tuned_grpo"]], target)
    arm = "tuned_ppo" if best is tuned["tuned_ppo"] else "tuned_grpo"
    return ("replay", {"learning_rate": chosen[arm][1]["learning_rate"]})


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Every arm on a tiny budget, one seed, grids of one.")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--output_dir", default=str(RESULTS), help="Where fairness.{json,md,png} go.")
    parser.add_argument("--jobs", type=int, default=2, help="Runs in parallel (one thread each); 0 runs them here.")
    parser.add_argument("--no_cache", action="store_true", help="Train every run again.")
    parser.add_argument("--tune_only", action="store_true", help="Stop after the tuning runs; print their table.")
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["tasks", "long", "robustness"],
        choices=["tasks", "long", "robustness"],
        help="tasks: the headline; long: the generation-heavy profile; robustness: collapse-prone settings.",
    )
    options = parser.parse_args(argv)
    from benchmarks import fairness_report as report

    output = Path(options.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    cache = None if options.no_cache or options.quick else RESULTS / "fairness_cache"
    seeds = (TUNING_SEED,) if options.quick else REPORT_SEEDS
    skip_stock = stock_available()
    tasks = [t for t in options.tasks if TASKS[t].tuned_on is None or TASKS[t].tuned_on in options.tasks]

    # 1. Tuning: every family's grid on the tuning seed (tasks that borrow settings run their arms there instead).
    tuning_specs = {}
    for task in tasks:
        if TASKS[task].tuned_on is None:
            for family in TASKS[task].families:
                settings = grid(family, TASKS[task].settings)[: 1 if options.quick else None]
                for overrides in settings:
                    tuning_specs[(task, family, json.dumps(overrides))] = arm_spec(
                        task, family, overrides, TUNING_SEED, options.quick
                    )
    tuning = dict(zip(tuning_specs, run_all(list(tuning_specs.values()), cache, options.jobs), strict=True))
    if options.tune_only:
        for (task, family, overrides), record in tuning.items():
            print(
                f"{task} {family} {overrides}: final eval {report.final_score(record):.3f}, "
                f"stopped {record['stopped']}"
            )
        return {"tuning": {str(k): r for k, r in tuning.items()}}
    chosen: dict[str, dict[str, tuple[str, dict]]] = {}
    targets: dict[str, float] = {}
    for task in tasks:
        if TASKS[task].tuned_on is not None:
            continue
        records = [r for (t, _, _), r in tuning.items() if t == task]
        targets[task] = report.target_of(records, TARGET_FRACTION)
        chosen[task], tuned = {}, {}
        for family, arm in (("ppo", "tuned_ppo"), ("grpo", "tuned_grpo"), ("replay", "tuned_replay")):
            family_records = {k: r for k, r in tuning.items() if k[0] == task and k[1] == family}
            tuned[arm] = report.best_of(list(family_records.values()), targets[task])
            overrides = json.loads(next(k[2] for k, r in family_records.items() if r is tuned[arm]))
            chosen[task][arm] = (family, overrides)
        chosen[task]["replay_default"] = default_replay_arm(chosen[task], tuned, targets[task])

    # 2. Reporting: every arm on the reporting seeds (borrowing tasks also on the tuning seed, for their target).
    arms_of = {}
    for task in tasks:
        source = TASKS[task].tuned_on or task
        arms_of[task] = {**fixed_arms(task), **chosen[source]}
        if skip_stock:
            arms_of[task].pop("stock_trl")
    report_keys, report_specs = [], []
    for task in tasks:
        task_seeds = seeds if TASKS[task].tuned_on is None else (TUNING_SEED, *seeds)
        for arm, (family, overrides) in arms_of[task].items():
            for seed in dict.fromkeys(task_seeds):
                report_keys.append((task, arm, seed))
                report_specs.append(arm_spec(task, family, overrides, seed, options.quick))
    reported = dict(zip(report_keys, run_all(report_specs, cache, options.jobs), strict=True))
    result = {
        "command": "python -m benchmarks.fairness" + (" --quick" if options.quick else ""),
        "tuning_seed": TUNING_SEED,
        "report_seeds": list(seeds),
        "target_fraction": TARGET_FRACTION,
        "lr_multipliers": list(LR_MULTIPLIERS),
        "trl": __import__("trl").__version__,
        "tasks": {},
    }
    curves: dict[str, dict[str, list[dict]]] = {}
    for task in tasks:
        if TASKS[task].tuned_on is not None:
            targets[task] = report.target_of(
                [r for (t, _, s), r in reported.items() if t == task and s == TUNING_SEED], TARGET_FRACTION
            )
        curves[task] = {arm: [reported[(task, arm, s)] for s in seeds] for arm in arms_of[task]}
        summary = {arm: report.summarise(records, targets[task]) for arm, records in curves[task].items()}
        result["tasks"][task] = {
            "target": targets[task],
            "budget": QUICK["budget"] if options.quick else TASKS[task].budget,
            "summary": summary,
            "headline": report.headline(summary, TASKS[task].budget),
            "grids": {f: grid(f, TASKS[task].settings) for f in TASKS[task].families},
            "chosen": {arm: overrides for arm, (_, overrides) in chosen[TASKS[task].tuned_on or task].items()},
            "skipped": {"stock_trl": skip_stock} if skip_stock else {},
        }
    if "long" in options.sections and "digits" in tasks:
        result["long"] = long_profile(result["tasks"]["digits"], arms_of["digits"], seeds, options, cache)
    if "robustness" in options.sections:
        result["robustness"] = robustness(seeds, options, cache)
    (output / "fairness.json").write_text(json.dumps(result, indent=1, default=str))
    (output / "fairness.md").write_text(report.markdown(result))
    report.plot(result, curves, output / "fairness.png")
    print(report.markdown(result))
    return result


def long_profile(digits: dict, arms: dict, seeds: tuple[int, ...], options, cache: Path | None) -> dict:
    """Wall time to target with 64-token responses: replay off (generation share), best on-policy, best replay."""
    from benchmarks import fairness_report as report

    head = digits["headline"]
    ppo_family = {a: s for a, s in digits["summary"].items() if a in report.ON_POLICY and s["kind"] != "grpo"}
    best_on_policy = min(ppo_family, key=lambda a: ppo_family[a]["episodes_to_target"])
    names = list(dict.fromkeys(["replay_off", best_on_policy, head["best_replay"]]))
    keys, specs = [], []
    for arm in names:
        for seed in dict.fromkeys((TUNING_SEED, *seeds)):
            keys.append((arm, seed))
            specs.append(arm_spec("digits_long", *arms[arm], seed, options.quick, spec_task=LONG))
    records = dict(zip(keys, run_all(specs, cache, options.jobs), strict=True))
    target = report.target_of([r for (_, s), r in records.items() if s == TUNING_SEED], TARGET_FRACTION)
    summary = {arm: report.summarise([records[(arm, s)] for s in seeds], target) for arm in names}
    shares = [r["generation_seconds"] / r["train_seconds"] for (arm, _), r in records.items() if arm == "replay_off"]
    share = float(sorted(shares)[len(shares) // 2])
    # The arms chosen on short responses need not stay best here: compare with whichever on-policy arm was faster.
    fastest_on_policy = min(
        (a for a in names if a != head["best_replay"]), key=lambda a: summary[a]["seconds_to_target"]
    )
    ratio = summary[head["best_replay"]]["seconds_to_target"] / summary[fastest_on_policy]["seconds_to_target"]
    lines = [
        f"Digits with {LONG.settings['response_length']}-token responses, budget {specs[0]['budget']:,} generated "
        f"episodes, target {target:.3f}; generation takes {100 * share:.0f}% of an on-policy update (replay off, "
        "median).",
        "",
        "| arm | episodes to target | wall s to target (median, per seed) | final eval |",
        "|---|---|---|---|",
    ]
    for arm, s in summary.items():
        per_seed = ", ".join(f"{t:.1f}" for t in [report.reach(records[(arm, x)], target)[1] for x in seeds])
        episodes = report.format_episodes(s["episodes_to_target"])
        lines.append(f"| {arm} | {episodes} | {s['seconds_to_target']:.1f} ({per_seed}) | {s['final_eval']:.3f} |")
    lines += [
        "",
        f"Wall time to target, {head['best_replay']} / {fastest_on_policy} (the faster on-policy arm): {ratio:.2f}.",
    ]
    return {
        "target": target,
        "generation_share": share,
        "summary": summary,
        "time_ratio": ratio,
        "fastest_on_policy": fastest_on_policy,
        "lines": lines,
    }


def robustness(seeds: tuple[int, ...], options, cache: Path | None) -> dict:
    """Collapse-prone settings on the sparse task: does every run reach its budget, and how empty do responses get?"""
    from benchmarks import fairness_report as report

    keys, specs = [], []
    for length in ROBUSTNESS_LENGTHS:
        task = Task(
            {**_SPARSE, "response_length": length}, budget=ROBUSTNESS_BUDGET, eval_every=ROBUSTNESS_BUDGET // 4
        )
        for name, (family, overrides) in ROBUSTNESS.items():
            for seed in seeds:
                keys.append((length, name, seed))
                specs.append(arm_spec("sparse", family, overrides, seed, options.quick, spec_task=task))
    records = dict(zip(keys, run_all(specs, cache, options.jobs), strict=True))
    lines = [
        f"Sparse task, budget {specs[0]['budget']:,} generated episodes, seeds {', '.join(map(str, seeds))}; "
        "the stop guards are unchanged (all-empty error, `max_skipped_steps`).",
        "",
        "| setting | response length | ran to budget | final eval (per seed) | max `rollout/empty_fraction` | "
        "skipped steps | stopped |",
        "|---|---|---|---|---|---|---|",
    ]
    for length in ROBUSTNESS_LENGTHS:
        for name in ROBUSTNESS:
            runs = [records[(length, name, s)] for s in seeds]
            finals = ", ".join(f"{report.final_score(r):.3f}" for r in runs)
            stopped = "; ".join(r["stopped"] for r in runs if r["stopped"]) or "-"
            lines.append(
                f"| {name} | {length} | {sum(not r['stopped'] for r in runs)}/{len(runs)} | {finals} | "
                f"{max(r.get('max_empty_fraction') or 0.0 for r in runs):.3f} | "
                f"{sum(r.get('skipped_steps') or 0 for r in runs)} | {stopped} |"
            )
    return {"lines": lines, "all_ran": all(not r["stopped"] for r in records.values())}


if __name__ == "__main__":
    main()
