"""The `trl-replay-ppo` command line: `train`, `demo`, `plot`, `examples`, `smollm2`, `config-reference`, `--version`.

Each command's module is imported when the command runs, so ``--help`` and ``--version`` answer at once
(torch, transformers and TRL take seconds to import).
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module, resources
from pathlib import Path

COMMANDS = {  # command -> (module, function taking the command's arguments)
    "train": ("trl_replay_ppo.cli.train", "train"),
    "demo": ("trl_replay_ppo.cli.main", "demo"),
    "plot": ("trl_replay_ppo.cli.main", "plot"),
    "examples": ("trl_replay_ppo.cli.main", "examples"),
    "smollm2": ("trl_replay_ppo.cli.main", "smollm2"),
    "config-reference": ("trl_replay_ppo.cli.train", "show_config_reference"),
}


def demo(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="trl-replay-ppo demo", description="Offline demo on the digits task.")
    parser.add_argument("--output_dir", default="outputs/demo", help="Where models, logs and plots go.")
    parser.add_argument("--total_episodes", type=int, default=6400, help="Generated episodes to train on.")
    options = parser.parse_args(argv)

    from trl_replay_ppo.cli.demo import run_demo

    result = run_demo(options.output_dir, total_episodes=options.total_episodes)
    before, after = result["eval_reward_before"], result["eval_reward_after"]
    print(f"\neval reward before training: {before:.3f}")
    print(f"eval reward after training:  {after:.3f}  ({after - before:+.3f})")
    print(f"plot: {result['plot']}")
    print(f"outputs: {options.output_dir}")
    return 0


def plot(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="trl-replay-ppo plot", description="PNG plots from the metrics.jsonl of one or more runs."
    )
    parser.add_argument("run_dirs", nargs="+", help="Training output_dir(s); several are overlaid.")
    parser.add_argument("--output_dir", help="Where the PNGs go (default: <first run>/plots).")
    options = parser.parse_args(argv)

    from trl_replay_ppo.cli.plots import plot_runs

    for path in plot_runs(options.run_dirs, options.output_dir):
        print(path)
    return 0


def examples(argv: list[str]) -> int:
    """Copy the shipped example files (`trl_replay_ppo/cli/examples`) out of the installed package."""
    parser = argparse.ArgumentParser(
        prog="trl-replay-ppo examples",
        description="Write the example configs (configs/*.yaml: runs; accelerate/*.yaml: launch settings).",
    )
    parser.add_argument("output_dir", nargs="?", default="examples", help="Where they go (default: ./examples).")
    options = parser.parse_args(argv)

    shipped = resources.files("trl_replay_ppo.cli") / "examples"
    for folder in ("configs", "accelerate"):
        for source in sorted(shipped.joinpath(folder).iterdir(), key=lambda f: f.name):
            target = Path(options.output_dir) / folder / source.name
            if target.exists():  # a file the user may have edited is never replaced
                print(f"kept {target} (exists)")
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            print(target)
    return 0


def smollm2(argv: list[str]) -> int:
    """Write SmolLM2-135M-Instruct as a local model directory (`trl_replay_ppo.tasks.smollm2`)."""
    parser = argparse.ArgumentParser(
        prog="trl-replay-ppo smollm2",
        description="SmolLM2-135M-Instruct as a local Hugging Face model directory (needs `make install-smollm2`).",
    )
    parser.add_argument("output_dir", nargs="?", default="models/smollm2-135m-instruct", help="Where it goes.")
    options = parser.parse_args(argv)
    from trl_replay_ppo.tasks.smollm2 import save_smollm2

    print(save_smollm2(options.output_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--version":
        from trl_replay_ppo.integrations.version import package_version

        print(f"trl-replay-ppo {package_version()}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: trl-replay-ppo {{{','.join(COMMANDS)}}} [options]  (--help on each command; --version)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module, function = COMMANDS[argv[0]]
    command: int = getattr(import_module(module), function)(argv[1:])
    return command
