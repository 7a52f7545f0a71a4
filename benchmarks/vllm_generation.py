"""Generation through vLLM against Hugging Face ``generate``, on one model: the same learning, and the time per update.

    python -m benchmarks.vllm_generation     # results in benchmarks/results/vllm_generation.{json,md}

Both backends train the vLLM tiny model (`build_vllm_tiny_models`: the tiny model with 32-dim attention
heads, as vLLM's CPU attention needs) on the digits task with replay's defaults, on seeds 1-3, one run
at a time on both cores, in the vLLM environment (`make test-vllm` builds it; ``--python`` to choose
another). The target is the start score plus 0.8 of the way to the best final score of the ``generate``
runs; a backend matches when all 3 seeds reach it and the medians lie within one evaluation interval.
Wall time per update is the training time (evaluation excluded) over the updates, and the sampling share
is the time in `ModelRunner.sample` (generation; with vLLM also the weight push and the trainer's forward
over the samples). On CPU and a model this small vLLM's per-step engine overhead dominates: this checks
correctness, not the speed vLLM has on GPUs and real model sizes.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from benchmarks import fairness_report as report
from benchmarks.fairness import TASKS
from benchmarks.fairness_runner import ENVIRONMENTS, ROOT, run_all
from benchmarks.outputs import write_tables

RESULTS = Path(__file__).parent / "results"
SEEDS = (1, 2, 3)
SETTINGS = {**TASKS["digits"].settings, "use_replay_buffer": True}  # the fair benchmark's digits arm, replay on
BUDGET, EVAL_EVERY = 3200, 160
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_CI_ENV": "1"}


def spec(backend: str, seed: int, budget: int, eval_every: int) -> dict:
    settings = {**SETTINGS, "use_vllm": backend == "vllm"}
    return {
        "task": "digits",
        "kind": "ours",
        "settings": settings,
        "seed": seed,
        "budget": budget,
        "eval_every": eval_every,
        "threads": 2,
        "models": "vllm_tiny",
    }


def main(argv: list[str] | None = None) -> dict:
    import os

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--quick", action="store_true", help="One seed, a tiny budget.")
    parser.add_argument("--output_dir", default=str(RESULTS))
    options = parser.parse_args(argv)
    os.environ.update({k: os.environ.get(k, v) for k, v in ENGINE_ENV.items()})  # inherited by every run
    seeds, budget, eval_every = ((1,), 64, 32) if options.quick else (SEEDS, BUDGET, EVAL_EVERY)
    environments = {**ENVIRONMENTS, "ours": Path(options.python)}
    specs = [spec(backend, seed, budget, eval_every) for backend in ("generate", "vllm") for seed in seeds]
    records = run_all(specs, None, jobs=1, environments=environments)
    by_backend = {"generate": records[: len(seeds)], "vllm": records[len(seeds) :]}
    target = report.target_of(by_backend["generate"], 0.8)
    summary = {name: report.summarise(runs, target) for name, runs in by_backend.items()}
    per_update = {}
    for name, runs in by_backend.items():
        updates = [r["generated"] / SETTINGS["per_device_train_batch_size"] for r in runs]
        per_update[name] = {
            "seconds": report.median([r["train_seconds"] / u for r, u in zip(runs, updates, strict=True)]),
            "sampling_seconds": report.median(
                [r["generation_seconds"] / u for r, u in zip(runs, updates, strict=True)]
            ),
        }
    gap = abs(summary["vllm"]["episodes_to_target"] - summary["generate"]["episodes_to_target"])
    matched = all(s["reached"] == len(seeds) for s in summary.values()) and gap <= eval_every
    result = {
        "command": "python -m benchmarks.vllm_generation" + (" --quick" if options.quick else ""),
        "environment": records[-1].get("environment"),
        "target": target,
        "summary": summary,
        "per_update": per_update,
        "matched": matched,
        "stopped": [r["stopped"] for r in records if r["stopped"]],
    }
    lines = [
        "# vLLM generation against `generate`",
        "",
        f"Command: `{result['command']}`; the vLLM tiny model on digits, replay's defaults, seeds "
        f"{', '.join(map(str, seeds))}, budget {budget:,} episodes, evaluation every {eval_every}, one run at a "
        f"time on 2 threads; environment {result['environment']}. Target {target:.3f} (from the `generate` runs).",
        "",
        "| backend | episodes to target (median, per seed) | reached | final eval | s per update | sampling s per "
        "update |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        episodes = f"{report.format_episodes(s['episodes_to_target'])} ({report.format_per_seed(s)})"
        lines.append(
            f"| {name} | {episodes} | {s['reached']}/{s['runs']} | {s['final_eval']:.3f} | "
            f"{per_update[name]['seconds']:.3f} | {per_update[name]['sampling_seconds']:.3f} |"
        )
    ratio = per_update["vllm"]["seconds"] / per_update["generate"]["seconds"]
    lines += [
        "",
        f"Both backends reach the target on every seed, medians within one evaluation: {'yes' if matched else 'NO'}. "
        f"Time per update, vLLM / generate: {ratio:.2f}"
        + (" (NaN: a backend did not run)" if math.isnan(ratio) else "")
        + ".",
    ]
    write_tables(options.output_dir, "vllm_generation", result, lines)
    return result


if __name__ == "__main__":
    main()
