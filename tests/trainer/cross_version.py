"""Same training on both bases: run a fixed-seed training here and record it, or compare two records.

    python -m tests.trainer.cross_version run OUT.json          # in each environment (TRL 1.12, newest TRL)
    python -m tests.trainer.cross_version compare A.json B.json # exit 1 unless metrics and weights are identical

`make test-trl1.12` runs it under both environments and compares them: TRL's PPO base on TRL 1.12,
this package's own base on the newest TRL, must train bit for bit alike.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path


def run(out: str) -> None:
    import torch
    import trl

    from tests.helpers import LogRecorder, make_trainer, tiny_config
    from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
    from trl_replay_ppo.tasks.tiny import build_tiny_models, load_tiny_models
    from trl_replay_ppo.trainer.base import BASE

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tiny = load_tiny_models(build_tiny_models(Path(tmp) / "models"))
        args = tiny_config(
            Path(tmp),
            total_episodes=64,
            gradient_accumulation_steps=2,
            num_mini_batches=2,
            num_ppo_epochs=2,
            use_replay_buffer=True,
            use_priority_sampling=True,
            replay_buffer_size=32,
            min_replay_size=8,
            replay_sample_size=8,
            max_grad_norm=1.0,
            kl_controller="adaptive",
            eval_strategy="steps",
            eval_steps=4,
            per_device_eval_batch_size=4,
        )
        recorder = LogRecorder()
        trainer = make_trainer(
            tiny,
            args,
            make_digits_dataset(24, seed=3),
            reward_model=None,
            reward_funcs=digits_reward,
            eval_dataset=make_digits_dataset(8, seed=4),
            callbacks=[recorder],
        )
        trainer.train()
        weights = {
            name: hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
            for name, t in trainer.model.state_dict().items()
        }
    logs = [{k: v for k, v in log.items() if k != "eps"} for log in recorder.logs]
    Path(out).write_text(json.dumps({"trl": trl.__version__, "base": BASE, "logs": logs, "weights": weights}))


def compare(a: str, b: str) -> int:
    first, second = json.loads(Path(a).read_text()), json.loads(Path(b).read_text())
    label = f"TRL {first['trl']} ({first['base']} base) vs TRL {second['trl']} ({second['base']} base)"
    problems = []
    if len(first["logs"]) != len(second["logs"]):
        problems.append(f"{len(first['logs'])} logs vs {len(second['logs'])}")
    for i, (x, y) in enumerate(zip(first["logs"], second["logs"], strict=False)):
        for key in sorted(set(x) | set(y)):
            if x.get(key) != y.get(key) and not (x.get(key) != x.get(key) and y.get(key) != y.get(key)):  # NaN == NaN
                problems.append(f"log {i} {key}: {x.get(key)!r} vs {y.get(key)!r}")
    different = sorted(k for k in first["weights"] if first["weights"][k] != second["weights"].get(k))
    if different or first["weights"].keys() != second["weights"].keys():
        problems.append(
            f"weights differ: {different[:5]} (keys equal: {first['weights'].keys() == second['weights'].keys()})"
        )
    if problems:
        print(f"{label}: training differs\n" + "\n".join(problems[:20]))
        return 1
    print(f"{label}: {len(first['logs'])} logs and {len(first['weights'])} weight tensors identical")
    return 0


if __name__ == "__main__":
    command, *paths = sys.argv[1:]
    if command == "run":
        run(*paths)
    else:
        sys.exit(compare(*paths))
