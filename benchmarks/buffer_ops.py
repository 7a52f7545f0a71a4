"""Cost of one replay draw: sample 32 episodes and update their priorities, at growing buffer sizes.

    python -m benchmarks.buffer_ops            # results in benchmarks/results/buffer_ops.md

Median over repeats of (``ReplayBuffer.sample(32)`` + ``update_priorities`` of those 32) on a full
buffer of 1e3, 1e4 and 1e5 episodes, with the prioritized sampler (sum tree) and the uniform one.
Reported as ratios to the 1e3 case too, next to log2(N) / log2(1e3): a draw from the sum tree is
O(log N), but the unbiased importance weights read every stored priority once per draw (O(N)).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from trl_replay_ppo.core.episodes import Episode
from trl_replay_ppo.replay import EpisodeStorage, EvictionPolicy, PrioritizedSampler, ReplayBuffer, UniformSampler

RESULTS = Path(__file__).parent / "results"
SIZES = (1_000, 10_000, 100_000)
BATCH, REPEATS = 32, 2000


def full_buffer(size: int, prioritized: bool) -> ReplayBuffer:
    """A buffer holding ``size`` episodes (one small episode stored ``size`` times) with random priorities."""
    sampler = PrioritizedSampler(size, alpha=0.6, decay=0.99) if prioritized else UniformSampler()
    buffer = ReplayBuffer(EpisodeStorage(size), sampler, EvictionPolicy(10**9, 10**9), seed=0)
    tokens = torch.zeros(4, dtype=torch.long)
    episode = Episode(tokens, tokens, tokens.float(), tokens.float(), 0.0, torch.zeros(1))
    buffer.add([episode] * size, np.random.default_rng(0).random(size), version=0)
    return buffer


def time_draws(buffer: ReplayBuffer, repeats: int) -> float:
    """Median seconds of one sample(32) + update_priorities(32)."""
    rng = np.random.default_rng(1)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        slots, _, _ = buffer.sample(BATCH, beta=0.4)
        buffer.update_priorities(slots, rng.random(BATCH))
        timings.append(time.perf_counter() - start)
    return float(np.median(timings))


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--output_dir", default=str(RESULTS))
    options = parser.parse_args(argv)
    rows = []
    for size in options.sizes:
        prioritized = time_draws(full_buffer(size, prioritized=True), options.repeats)
        uniform = time_draws(full_buffer(size, prioritized=False), options.repeats)
        rows.append((size, prioritized, uniform))
    base, smallest = rows[0][1], options.sizes[0]
    lines = [
        "# Replay buffer operations",
        "",
        f"Command: `python -m benchmarks.buffer_ops`. Median over {options.repeats} draws of sample({BATCH}) + "
        f"update_priorities({BATCH}) on a full `ReplayBuffer`.",
        "",
        f"| buffer size | prioritized (ms) | vs {smallest:,} | log2 N / log2 {smallest:,} | uniform (ms) |",
        "|---|---|---|---|---|",
    ]
    for size, prioritized, uniform in rows:
        lines.append(
            f"| {size:,} | {prioritized * 1e3:.3f} | {prioritized / base:.2f} | "
            f"{math.log2(size) / math.log2(smallest):.2f} | {uniform * 1e3:.3f} |"
        )
    text = "\n".join(lines) + "\n"
    output = Path(options.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "buffer_ops.md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
