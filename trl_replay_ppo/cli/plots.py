"""PNG plots from ``metrics.jsonl``: one run, or several overlaid."""

from __future__ import annotations

import json
from pathlib import Path

from trl_replay_ppo.integrations.callbacks import METRICS_FILE

FIGURES = {
    "reward.png": ("Reward", ["objective/scores", "eval_reward"]),
    "kl.png": ("KL to the reference (nats per sequence)", ["objective/kl", "eval_kl", "objective/kl_coef"]),
    "entropy.png": ("Entropy", ["objective/entropy", "policy/entropy_avg"]),
    "losses.png": ("Losses and gradient norm", ["loss/policy_avg", "loss/value_avg", "policy/grad_norm"]),
    "buffer.png": (
        "Replay buffer",
        ["buffer/size", "buffer/mean_age", "buffer/mean_reuse", "replay/is_weight_mean", "replay/clipfrac"],
    ),
    "efficiency.png": ("Sample efficiency", ["efficiency/sample_efficiency"]),
}

LABELS = {  # metric -> (panel title, y-axis label with its unit)
    "objective/scores": ("training reward", "mean score per episode"),
    "eval_reward": ("eval reward", "mean score per eval prompt"),
    "objective/kl": ("KL to the reference, training", "nats per sequence"),
    "eval_kl": ("KL to the reference, eval", "nats per sequence"),
    "objective/kl_coef": ("KL coefficient", "reward per nat"),
    "objective/entropy": ("entropy of the responses", "nats per sequence"),
    "policy/entropy_avg": ("entropy per token", "nats per token"),
    "loss/policy_avg": ("policy loss", "loss (mean per token)"),
    "loss/value_avg": ("value loss", "loss (mean per token)"),
    "policy/grad_norm": ("gradient norm before clipping", "L2 norm"),
    "buffer/size": ("episodes in the replay buffer", "episodes"),
    "buffer/mean_age": ("mean age of stored episodes", "updates"),
    "buffer/mean_reuse": ("mean reuse of stored episodes", "times replayed"),
    "replay/is_weight_mean": ("mean importance weight of replayed rows", "weight"),
    "replay/clipfrac": ("clipped fraction of replayed tokens", "fraction"),
    "efficiency/sample_efficiency": ("trained per generated episode", "episodes / episode"),
}


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl`` (or of the file itself when given a file)."""
    path = Path(run_dir)
    path = path / METRICS_FILE if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"No {METRICS_FILE} in {run_dir}: is it a training output_dir?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(records: list[dict], key: str, x: str) -> tuple[list[float], list[float]]:
    points = [(r[x], r[key]) for r in records if r.get(key) is not None and r.get(x) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_runs(run_dirs: list[str | Path], output_dir: str | Path | None = None) -> list[Path]:
    """Write the figures for ``run_dirs`` (overlaid when several) and return their paths.

    ``reward.png`` shows reward against generated episodes and against training time; the others
    against generated episodes. Figures whose metrics no run logged are skipped.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {Path(d).name or str(d): read_metrics(d) for d in run_dirs}
    output = Path(output_dir if output_dir is not None else (Path(run_dirs[0]) / "plots"))
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, (title, keys) in FIGURES.items():
        present = [k for k in keys if any(r.get(k) is not None for records in runs.values() for r in records)]
        if not present:
            continue
        x_axes = ["episode", "elapsed"] if filename == "reward.png" else ["episode"]
        fig, axes = plt.subplots(
            len(present), len(x_axes), figsize=(6 * len(x_axes), 2.6 * len(present)), squeeze=False
        )
        for row, key in enumerate(present):
            for col, x in enumerate(x_axes):
                ax = axes[row][col]
                for name, records in runs.items():
                    xs, ys = _series(records, key, x)
                    if xs:
                        marker = "o" if key.startswith("eval_") else None
                        ax.plot(xs, ys, marker=marker, markersize=3, label=name if len(runs) > 1 else key)
                title, unit = LABELS[key]
                ax.set_title(f"{title} ({key})", fontsize=9)
                ax.set_ylabel(unit, fontsize=8)
                ax.set_xlabel("generated episodes" if x == "episode" else "training time (s)")
                ax.grid(alpha=0.3)
                if len(runs) > 1 and row == 0 and col == 0:
                    ax.legend(fontsize=8)
        fig.suptitle(title)
        fig.tight_layout()
        path = output / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
