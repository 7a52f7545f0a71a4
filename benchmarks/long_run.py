"""Process memory over a long run with replay: it must stay flat once the buffer is full.

python -m benchmarks.long_run --updates 1500     # results in benchmarks/results/long_run.{md,png}
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=1500)
    parser.add_argument("--buffer", type=int, default=256, help="replay_buffer_size")
    parser.add_argument("--sample_every", type=int, default=25, help="Updates between memory samples.")
    parser.add_argument("--output_dir", default=str(RESULTS))
    parser.add_argument("--workdir", default="/tmp/long-run", help="Where the tiny models and the run go.")
    options = parser.parse_args(argv)
    output, workdir = Path(options.output_dir), Path(options.workdir)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from transformers import TrainerCallback

    from trl_replay_ppo import ReplayPPOConfig
    from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
    from trl_replay_ppo.tasks.tiny import build_tiny_models, load_tiny_models, tiny_trainer

    torch.set_num_threads(2)
    models = load_tiny_models(build_tiny_models(workdir / "models"))
    args = ReplayPPOConfig(
        output_dir=str(workdir / "out"),
        per_device_train_batch_size=16,
        num_ppo_epochs=1,
        total_episodes=16 * options.updates,
        response_length=8,
        learning_rate=1e-4,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        num_sample_generations=0,
        replay_buffer_size=options.buffer,
        min_replay_size=32,
        replay_sample_size=16,
        staleness_threshold=10**6,  # only capacity bounds the buffer here
        max_replay_reuse=10**6,
    )
    samples = []

    class Sampler(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % options.sample_every == 0 or state.global_step == 1:
                size = len(trainer.replay)
                samples.append({"update": state.global_step, "rss_mib": rss_bytes() / 2**20, "buffer_size": size})

    trainer = tiny_trainer(models, args, make_digits_dataset(4000), reward_funcs=digits_reward, callbacks=[Sampler()])
    started = time.time()
    trainer.train()
    full = [s for s in samples if s["buffer_size"] >= options.buffer]
    first, last = full[0], full[-1]
    output.mkdir(parents=True, exist_ok=True)
    result = {"options": vars(options), "samples": samples}
    (output / "long_run.json").write_text(json.dumps(result, indent=1))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([s["update"] for s in samples], [s["rss_mib"] for s in samples], label="process RSS")
    ax.axvline(first["update"], color="gray", linestyle=":", label="buffer full")
    ax.set_xlabel("update")
    ax.set_ylabel("MiB")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output / "long_run.png", dpi=110)
    text = (
        "# Long run: memory stays bounded\n\n"
        f"Command: `python -m benchmarks.long_run --updates {options.updates} --buffer {options.buffer}` "
        f"({time.time() - started:.0f} s).\n\n"
        f"- buffer full (size {options.buffer}) from update {first['update']}; max size seen "
        f"{max(s['buffer_size'] for s in samples)}\n"
        f"- RSS when the buffer filled: {first['rss_mib']:.0f} MiB; at update {last['update']}: {last['rss_mib']:.0f} "
        f"MiB ({last['rss_mib'] - first['rss_mib']:+.0f} MiB over {last['update'] - first['update']} updates)\n"
    )
    (output / "long_run.md").write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
