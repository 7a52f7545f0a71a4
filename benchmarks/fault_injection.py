"""Fault injection: SIGKILL a training run at random moments, resume it each time, compare the result.

    python -m benchmarks.fault_injection --kills 20      # results in benchmarks/results/fault_injection.md

A reference run trains uninterrupted. The faulted run is started, killed with SIGKILL at a random
moment after training begins (some kills land inside checkpoint writes), and restarted with
``resume_from_checkpoint=True`` until it finishes. Every restart must resume from the newest
complete checkpoint, and the final weights must be bitwise equal to the reference run's.
Checkpoints are written after every update, each write slowed by 0.2 s as on a slow disk, so
kills land in updates and in writes alike.
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


def child(output_dir: str, models_dir: str, updates: int) -> None:
    """One training process: resume from the newest checkpoint if there is one, train to the end."""
    import torch

    from trl_replay_ppo import ReplayPPOConfig
    from trl_replay_ppo.checkpointing import writer as checkpoint
    from trl_replay_ppo.checkpointing.directories import latest_checkpoint
    from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
    from trl_replay_ppo.tasks.tiny import load_tiny_models, tiny_trainer

    torch.set_num_threads(1)
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


def start(output_dir: Path, models_dir: Path, updates: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "benchmarks.fault_injection", "--child", str(output_dir), str(models_dir)]
    command.append(str(updates))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    root = Path(__file__).parent.parent
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=root)


def wait_for(process: subprocess.Popen, prefix: str) -> str:
    for line in process.stdout:
        if line.startswith(prefix):
            return line.strip()
    raise RuntimeError(f"the training process exited ({process.wait()}) before printing {prefix!r}")


def run_with_kills(workdir: Path, kills: int, updates: int, seed: int = 0, max_delay: float = 2.5) -> dict:
    """Reference run, then a run killed ``kills`` times; returns what happened and whether weights match."""
    from safetensors.torch import load_file

    from trl_replay_ppo.checkpointing.directories import latest_checkpoint
    from trl_replay_ppo.tasks.tiny import build_tiny_models

    rng = random.Random(seed)
    models_dir = workdir / "models"
    build_tiny_models(models_dir)
    reference = start(workdir / "reference", models_dir, updates)
    wait_for(reference, "FINISHED")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--updates", type=int, default=80, help="Updates of the run (it must outlast the kills).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/fault-injection")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        child(options.child[0], options.child[1], int(options.child[2]))
        return
    import shutil

    workdir = Path(options.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    started = time.time()
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
