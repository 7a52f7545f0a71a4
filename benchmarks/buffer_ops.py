"""Cost of one replay draw: sample 32 episodes and update their priorities, at growing buffer sizes.

    python benchmarks/buffer_ops.py            # results in benchmarks/results/buffer_ops.md

Median over repeats of (prioritized sample of 32 + update_priorities of those 32), on a full
buffer of 1e3, 1e4 and 1e5 episodes; the uniform sampler alongside. Reported as ratios to the 1e3
case too, next to log2(N) / log2(1e3).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from trl_replay_ppo.replay import PrioritizedSampler, UniformSampler

RESULTS = Path(__file__).parent / "results"
SIZES = (1_000, 10_000, 100_000)
BATCH, REPEATS = 32, 2000


def time_draws(sampler, size: int) -> float:
    """Median seconds of one sample(32) + update_priorities(32) on a full sampler of ``size``."""
    rng = np.random.default_rng(0)
    sampler.add(np.arange(size), rng.random(size), version=0)
    timings = []
    for step in range(REPEATS):
        start = time.perf_counter()
        slots, _ = sampler.sample(BATCH, rng, version=step)
        sampler.update_priorities(slots, rng.random(BATCH), version=step)
        timings.append(time.perf_counter() - start)
    return float(np.median(timings))


def main() -> None:
    rows = []
    for size in SIZES:
        prioritized = time_draws(PrioritizedSampler(size, alpha=0.6, beta=0.4, decay=0.99), size)
        uniform = time_draws(UniformSampler(size), size)
        rows.append((size, prioritized, uniform))
    base = rows[0][1]
    lines = [
        "# Replay buffer operations",
        "",
        f"Command: `python benchmarks/buffer_ops.py`. Median over {REPEATS} draws of sample({BATCH}) + "
        f"update_priorities({BATCH}).",
        "",
        "| buffer size | prioritized (ms) | vs 1e3 | log2 N / log2 1e3 | uniform (ms) |",
        "|---|---|---|---|---|",
    ]
    for size, prioritized, uniform in rows:
        lines.append(
            f"| {size:,} | {prioritized * 1e3:.3f} | {prioritized / base:.2f} | "
            f"{math.log2(size) / math.log2(SIZES[0]):.2f} | {uniform * 1e3:.3f} |"
        )
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "buffer_ops.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
