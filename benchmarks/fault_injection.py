"""Fault injection: SIGKILL a training run at random moments, resume it each time, compare the result.

    python -m benchmarks.fault_injection --kills 20      # results in benchmarks/results/fault_injection.md
    python -m benchmarks.fault_injection --write-steps   # one kill at each write step: ..._write_steps.md

A reference run trains uninterrupted. The faulted run is started, killed with SIGKILL at a random
moment after training begins (some kills land inside checkpoint writes), and restarted with
``resume_from_checkpoint=True`` until it finishes. Every restart must resume from the newest
complete checkpoint, and the final weights must be bitwise equal to the reference run's.
Checkpoints are written after every update, each write slowed by 0.2 s as on a slow disk, so
kills land in updates and in writes alike.

With ``--write-steps`` the kills are not random: one run per step of `WRITE_STEPS` is killed right
after that write (a hook the child process monkeypatches in; nothing in the package knows of it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

WRITE_STEPS = (  # every step of a checkpoint save and of a run's start that writes, in the order they run
    "rank file",  # rank_<i>.safetensors, into tmp-checkpoint-N
    "parameters",  # trainable_params.safetensors
    "policy",  # policy/ (save_pretrained)
    "optimizer",  # optimizer.safetensors
    "scheduler",  # scheduler.safetensors
    "ppo_state",  # ppo_state.json
    "trainer_state",  # trainer_state.json
    "swap into place",  # tmp-checkpoint-N -> checkpoint-N
    "rotation",  # deleting a checkpoint past save_total_limit
    "metrics rewrite",  # a resumed run's metrics.jsonl.tmp written, not yet in place
    "metrics swap",  # ... and renamed over metrics.jsonl
    "archive rename",  # a fresh run's metrics.jsonl renamed to metrics.<time>.jsonl
)
AFTER_SWAP = ("swap into place", "rotation")  # killed there, the checkpoint being written is already complete


def park_kill(step: str, occurrence: int) -> None:
    """Monkeypatch the write of ``step`` so the process SIGKILLs itself right after its ``occurrence``-th call."""
    import pathlib

    from transformers import TrainerState

    from trl_replay_ppo import ReplayPPOTrainer
    from trl_replay_ppo.checkpointing import lineage, writer

    calls = 0

    def after(owner, name, matches):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            nonlocal calls
            result = original(*args, **kwargs)
            if matches(*args, **kwargs):
                calls += 1
                if calls == occurrence:
                    os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(owner, name, wrapper)

    def named(prefix):
        return lambda *args, **kwargs: any(Path(str(a)).name.startswith(prefix) for a in args)

    hooks = {
        "rank file": (writer, "save_state", named("rank_")),
        "parameters": (writer, "save_file", named("trainable_params")),
        "policy": (ReplayPPOTrainer, "save_model", named("policy")),
        "optimizer": (writer, "save_state", named("optimizer")),
        "scheduler": (writer, "save_state", named("scheduler")),
        "ppo_state": (pathlib.Path, "write_text", named("ppo_state.json")),
        "trainer_state": (TrainerState, "save_to_json", named("trainer_state.json")),
        "swap into place": (writer, "replace_directory", named("checkpoint-")),
        "rotation": (lineage.shutil, "rmtree", named("checkpoint-")),
        "metrics rewrite": (pathlib.Path, "write_text", named("metrics.jsonl.tmp")),
        "metrics swap": (os, "replace", named("metrics.jsonl")),
        "archive rename": (os, "rename", named("metrics.")),
    }
    after(*hooks[step])


def child(output_dir: str, models_dir: str, updates: int, kill_at: str | None = None, occurrence: int = 1) -> None:
    """One training process: resume from the newest checkpoint if there is one, train to the end.

    ``kill_at`` (one of `WRITE_STEPS`) parks a SIGKILL right after that write's ``occurrence``-th call;
    without it, every checkpoint write is slowed by 0.2 s, as on a slow disk, so random kills land in it.
    """
    import torch

    from trl_replay_ppo import ReplayPPOConfig
    from trl_replay_ppo.checkpointing import writer as checkpoint
    from trl_replay_ppo.checkpointing.directories import latest_checkpoint
    from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
    from trl_replay_ppo.tasks.tiny import load_tiny_models, tiny_trainer

    torch.set_num_threads(1)
    if kill_at is not None:
        park_kill(kill_at, occurrence)
    else:
        save_file = checkpoint.save_file

        def slow_disk(tensors, path):  # widen the write window, as a slow disk would, so kills land inside it
            save_file(tensors, path)
            time.sleep(0.2)

        checkpoint.save_file = slow_disk
    models = load_tiny_models({k: Path(models_dir) / k for k in ("tokenizer", "policy", "reward")})
    args = ReplayPPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        num_ppo_epochs=2,
        total_episodes=8 * updates,
        response_length=6,
        learning_rate=1e-3,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        num_sample_generations=0,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=2,
        use_replay_buffer=True,
        use_priority_sampling=True,
        replay_buffer_size=32,
        min_replay_size=8,
        replay_sample_size=8,
        seed=0,
    )
    trainer = tiny_trainer(models, args, make_digits_dataset(24, seed=7), reward_funcs=digits_reward)
    resume = latest_checkpoint(output_dir)
    print(f"RESUMING {resume}", flush=True)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    print("FINISHED", flush=True)


def start(
    output_dir: Path,
    models_dir: Path,
    updates: int,
    kill_at: str | None = None,
    occurrence: int = 1,
    capture_errors: bool = False,
) -> subprocess.Popen:
    """A `child` process (stdout a pipe; stderr one too with ``capture_errors``, else discarded)."""
    command = [sys.executable, "-m", "benchmarks.fault_injection", "--child", str(output_dir), str(models_dir)]
    command += [str(updates), *([kill_at, str(occurrence)] if kill_at else [])]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    root = Path(__file__).parent.parent
    errors = subprocess.PIPE if capture_errors else subprocess.DEVNULL
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, env=env, cwd=root)


def wait_for(process: subprocess.Popen, prefix: str) -> str:
    for line in process.stdout:
        if line.startswith(prefix):
            return line.strip()
    raise RuntimeError(f"the training process exited ({process.wait()}) before printing {prefix!r}")


def run_with_kills(workdir: Path, kills: int, updates: int, seed: int = 0) -> dict:
    """Reference run, then a run killed ``kills`` times; returns what happened and whether weights match.

    Each kill comes a random time after the restart, at most the reference run's training time over
    ``kills + 2``: the killed runs together train less than one whole run, on a fast machine or a slow one."""
    from safetensors.torch import load_file

    from trl_replay_ppo.checkpointing.directories import latest_checkpoint
    from trl_replay_ppo.tasks.tiny import build_tiny_models

    rng = random.Random(seed)
    models_dir = workdir / "models"
    build_tiny_models(models_dir)
    reference = start(workdir / "reference", models_dir, updates)
    wait_for(reference, "RESUMING")
    began = time.monotonic()
    wait_for(reference, "FINISHED")
    max_delay = (time.monotonic() - began) / (kills + 2)
    reference.wait()

    faulted, events = workdir / "faulted", []
    while True:
        expected = latest_checkpoint(faulted)
        process = start(faulted, models_dir, updates)
        resumed = wait_for(process, "RESUMING").split(" ", 1)[1]
        assert resumed == str(expected), f"resumed from {resumed}, newest complete checkpoint is {expected}"
        if len(events) == kills:
            wait_for(process, "FINISHED")
            process.wait()
            break
        time.sleep(rng.uniform(0.0, max_delay))
        if process.poll() is not None:
            raise RuntimeError("the run finished before it could be killed; raise `updates`")
        process.send_signal(signal.SIGKILL)
        process.wait()
        partial = sorted(p.name for p in faulted.glob("tmp-checkpoint-*"))
        events.append(
            {"resumed_from": resumed, "newest_after_kill": str(latest_checkpoint(faulted)), "partial": partial}
        )
    final = f"checkpoint-{updates}/trainable_params.safetensors"
    expected_weights = load_file(workdir / "reference" / final)
    got_weights = load_file(faulted / final)
    equal = expected_weights.keys() == got_weights.keys() and all(
        expected_weights[k].equal(got_weights[k]) for k in expected_weights
    )
    return {
        "kills": len(events),
        "kills_during_checkpoint_write": sum(bool(e["partial"]) for e in events),
        "bitwise_equal": equal,
        "events": events,
    }


def _weights_equal(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    first, second = load_file(a), load_file(b)
    return first.keys() == second.keys() and all(first[k].equal(second[k]) for k in first)


def _train_steps(output_dir: Path) -> list[int]:
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if r["kind"] == "train"]


def _killed(output_dir: Path, models_dir: Path, updates: int, step: str, occurrence: int) -> None:
    process = start(output_dir, models_dir, updates, step, occurrence)
    process.communicate()
    if process.returncode != -signal.SIGKILL:
        raise RuntimeError(
            f"the run parked at {step!r} #{occurrence} was not killed there (exit {process.returncode})"
        )


def kill_at_write_step(workdir: Path, step: str, updates: int, reference: Path) -> dict:
    """Kill a run once at ``step`` (`WRITE_STEPS`), restart it, and check what a user would: no file lost, the
    restart resumed from the newest complete checkpoint, the final weights and metrics those of ``reference``."""
    from trl_replay_ppo.checkpointing.directories import latest_checkpoint

    models_dir, output = workdir / "models", workdir / step.replace(" ", "_")
    archived = None
    if step == "archive rename":  # a run that saved nothing left its metrics here
        output.mkdir(parents=True)
        archived = '{"step": 3, "kind": "train", "elapsed": 1.0}\n'
        (output / "metrics.jsonl").write_text(archived)
        _killed(output, models_dir, updates, step, occurrence=1)
    elif step.startswith("metrics"):  # killed in the resume after a kill that left checkpoint-2
        _killed(output, models_dir, updates, "swap into place", occurrence=2)
        _killed(output, models_dir, updates, step, occurrence=1)
    else:  # killed while writing checkpoint-2 (rotation: while deleting checkpoint-1, after writing checkpoint-3)
        _killed(output, models_dir, updates, step, occurrence=1 if step == "rotation" else 2)
    newest = latest_checkpoint(output)
    if step == "archive rename":
        predicted = None  # killed before its first save
    elif step == "rotation":
        predicted = "checkpoint-3"
    else:
        predicted = "checkpoint-2" if step in AFTER_SWAP or step.startswith("metrics") else "checkpoint-1"
    process = start(output, models_dir, updates)
    resumed = wait_for(process, "RESUMING").split(" ", 1)[1]
    wait_for(process, "FINISHED")
    process.wait()
    final = f"checkpoint-{updates}/trainable_params.safetensors"
    archives = [p.read_text() for p in output.glob("metrics.[0-9]*.jsonl")]
    return {
        "step": step,
        "newest after the kill": newest.name if newest else None,
        "as predicted": (newest.name if newest else None) == predicted,
        "resumed from it": resumed == str(newest),
        "weights equal": _weights_equal(reference / final, output / final),
        "metrics equal": _train_steps(output) == _train_steps(reference) == list(range(1, updates + 1)),
        "archive intact": archived is None or archives == [archived],
    }


def run_write_steps(workdir: Path, updates: int = 4, steps: tuple[str, ...] = WRITE_STEPS, workers: int = 2) -> list:
    """`kill_at_write_step` for each of ``steps`` (``workers`` at a time), after one uninterrupted reference run."""
    from concurrent.futures import ThreadPoolExecutor

    from trl_replay_ppo.tasks.tiny import build_tiny_models

    build_tiny_models(workdir / "models")
    reference = start(workdir / "reference", workdir / "models", updates)
    wait_for(reference, "FINISHED")
    reference.wait()
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda step: kill_at_write_step(workdir, step, updates, workdir / "reference"), steps))


def write_steps_report(rows: list[dict], seconds: float) -> str:
    """``results/fault_injection_write_steps.md``: one row per write step, every check a yes or a NO."""
    checks = [key for key in rows[0] if key not in ("step", "newest after the kill")]
    lines = [
        "# Fault injection at every write step\n",
        "Command: `python -m benchmarks.fault_injection --write-steps` (4 updates, a checkpoint after each,",
        "`save_total_limit=2`). Each run is SIGKILLed once, right after the write named, then restarted with",
        "`resume_from_checkpoint=True`; the final weights and metrics are compared with an uninterrupted run's.\n",
        "| write step | newest after the kill | " + " | ".join(checks) + " |",
        "|---|---|" + "---|" * len(checks),
    ]
    for row in rows:
        cells = ["yes" if row[key] else "NO" for key in checks]
        lines.append(f"| {row['step']} | {row['newest after the kill']} | " + " | ".join(cells) + " |")
    lines.append(f"\nWall time: {seconds:.0f} s.\n")
    text = "\n".join(lines)
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "fault_injection_write_steps.md").write_text(text)
    print(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--updates", type=int, default=80, help="Updates of the run (it must outlast the kills).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/fault-injection")
    parser.add_argument("--write-steps", action="store_true", help="Kill once at each of WRITE_STEPS instead.")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        output_dir, models_dir, updates, *kill = options.child
        child(output_dir, models_dir, int(updates), *(kill[:1]), *(int(k) for k in kill[1:]))
        return
    import shutil

    workdir = Path(options.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    started = time.time()
    if options.write_steps:
        write_steps_report(run_write_steps(workdir), time.time() - started)
        return
    result = run_with_kills(workdir, options.kills, options.updates, options.seed)
    result["seconds"] = round(time.time() - started, 1)
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "fault_injection.json").write_text(json.dumps(result, indent=1))
    summary = (
        "# Fault injection\n\n"
        f"Command: `python -m benchmarks.fault_injection --kills {options.kills} --updates {options.updates} "
        f"--seed {options.seed}`.\n\n"
        f"- SIGKILLs: {result['kills']}, of which {result['kills_during_checkpoint_write']} during a checkpoint "
        "write (a `tmp-checkpoint-N` was left behind)\n"
        "- every restart resumed from the newest complete checkpoint: yes\n"
        f"- final weights bitwise equal to the uninterrupted run: {'yes' if result['bitwise_equal'] else 'NO'}\n"
        f"- wall time: {result['seconds']} s\n"
    )
    (results / "fault_injection.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
