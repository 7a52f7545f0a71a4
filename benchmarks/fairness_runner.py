"""Running the fair benchmark's runs: each family in its own virtual environment, results kept as small records.

A run (`benchmarks.runs`) is a child process of the interpreter of its family (`ENVIRONMENTS`: TRL 1.12 for
stock PPO, which only exists there; the newest TRL for TRL's GRPOTrainer and this package, what their users
run). Its record is written to ``results/fairness_runs/<key>.json``, keyed by the run's spec, the code it
runs (its syntax tree less docstrings: editing a comment or a docstring keeps the records) and the versions of
its environment, and committed: a section can finish on its own, and a later run
of the benchmark only trains what changed.
"""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

ROOT = Path(__file__).parent.parent
RECORDS = Path(__file__).parent / "results" / "fairness_runs"
ENVIRONMENTS = {  # the interpreter each kind of run uses; `--env kind=path` overrides
    "stock": ROOT / ".venv-trl1.12" / "bin" / "python",
    "grpo": ROOT / ".venv" / "bin" / "python",
    "ours": ROOT / ".venv" / "bin" / "python",
}


@cache
def versions(python: str) -> dict[str, str]:
    """``{"trl": ..., "transformers": ...}`` of an interpreter (one child process, once)."""
    code = (
        "import json, trl, transformers; "
        "print(json.dumps({'trl': trl.__version__, 'transformers': transformers.__version__}))"
    )
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)


def missing_environment(kind: str, environments: dict[str, Path], in_process: bool = False) -> str | None:
    """Why runs of ``kind`` cannot run (no such interpreter, or stock PPO on a TRL without it), or None.

    ``in_process``: the runs would run in this interpreter (`run_all` with ``jobs=0``).
    """
    if in_process:
        from trl_replay_ppo.integrations.compat import trl_ppo

        return "this interpreter's TRL has no PPOTrainer" if kind == "stock" and trl_ppo() is None else None
    python = environments[kind]
    if not Path(python).exists():
        return f"no interpreter at {python} (`make install-bench` creates the environments)"
    if kind == "stock" and int(versions(str(python))["trl"].split(".")[1]) > 12:
        return f"TRL {versions(str(python))['trl']} at {python} has no PPOTrainer (removed in TRL 1.13)"
    return None


def code_of(path: Path) -> bytes:
    """A Python file's code as its syntax tree less docstrings: what comments, docstrings and layout leave as is."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        documented = isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        if documented and ast.get_docstring(node, clean=False) is not None:
            node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree).encode()


def code_hash(kind: str, python: str) -> str:
    """Hash of the code a run of ``kind`` depends on (the whole package for this package's trainer; `code_of`),
    and of the library versions of the interpreter that runs it."""
    package = ROOT / "trl_replay_ppo"
    files = sorted(package.rglob("*.py")) if kind == "ours" else sorted((package / "tasks").rglob("*.py"))
    digest = hashlib.sha256()
    for path in [*files, Path(__file__).parent / "runs.py"]:
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(code_of(path))
    digest.update(json.dumps(versions(python), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def run_key(spec: dict, environments: dict[str, Path]) -> str:
    """Record key of a run: its spec, the code it runs and its environment's versions."""
    code = code_hash(spec["kind"], str(environments[spec["kind"]]))
    return hashlib.sha256((json.dumps(spec, sort_keys=True) + code).encode()).hexdigest()[:24]


def run_all(specs: list[dict], records: Path | None, jobs: int, environments: dict[str, Path] | None = None) -> list:
    """Run ``specs`` (``jobs`` child processes at a time), reusing the records already in ``records``.

    ``jobs=0`` runs them one after another in this process, whatever their environment (the smoke
    test's mode: no start-up cost per run); ``records=None`` keeps nothing.
    """
    from benchmarks import fairness_report as report
    from benchmarks.runs import model_dirs, run

    environments = environments or ENVIRONMENTS
    model_dirs("tiny"), model_dirs("arithmetic")
    keys = [run_key(spec, environments) if jobs else json.dumps(spec, sort_keys=True) for spec in specs]
    results: dict[str, dict] = {}
    todo = {}
    for key, spec in zip(keys, specs, strict=True):  # identical specs run once
        path = records / f"{key}.json" if records is not None and jobs else None
        if path is not None and path.is_file():
            results[key] = json.loads(path.read_text())
        else:
            todo[key] = (spec, path)
    started = time.time()

    def one(item: tuple[str, tuple[dict, Path | None]]) -> tuple[str, dict]:
        key, (spec, path) = item
        record = _in_child(spec, environments[spec["kind"]]) if jobs else run(spec)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record))
        return key, record

    with ThreadPoolExecutor(max(jobs, 1)) as pool:
        for done, (key, record) in enumerate(pool.map(one, todo.items()), 1):
            results[key] = record
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


def _in_child(spec: dict, python: Path) -> dict:
    """Run one spec in a child process of ``python``; its record (a failed child is a stopped run)."""
    with tempfile.TemporaryDirectory() as folder:
        spec_file, record_file = Path(folder) / "spec.json", Path(folder) / "record.json"
        spec_file.write_text(json.dumps(spec))
        done = subprocess.run(
            [str(python), "-m", "benchmarks.runs", str(spec_file), str(record_file)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if done.returncode == 0 and record_file.is_file():
            return json.loads(record_file.read_text())
    stopped = f"the run's process failed ({done.returncode}): {done.stderr[-300:]}"
    return {"spec": spec, "points": [], "stopped": stopped, "wall_time": 0.0, "peak_rss_gib": 0.0}


def parse_environments(pairs: list[str]) -> dict[str, Path]:
    """`ENVIRONMENTS` with ``kind=python`` overrides."""
    environments = dict(ENVIRONMENTS)
    for pair in pairs:
        kind, _, python = pair.partition("=")
        if kind not in environments:
            raise ValueError(f"--env {pair}: the kinds are {sorted(environments)}")
        environments[kind] = Path(python)
    return environments
