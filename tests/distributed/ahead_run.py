"""Run under `accelerate launch` with 2 CPU processes by tests/distributed/test_generate_ahead_two_processes.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.helpers import make_trainer, tiny_config
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
from trl_replay_ppo.tasks.tiny import load_tiny_models


def main(models_dir: str, output_dir: str, resume: str) -> None:
    tiny = load_tiny_models({k: Path(models_dir) / k for k in ("tokenizer", "policy", "reward")})
    args = tiny_config(
        Path(output_dir),
        output_dir=output_dir,
        total_episodes=48,  # 6 updates of 4 episodes per rank
        num_ppo_epochs=2,
        use_replay_buffer=True,
        min_replay_size=8,
        generate_ahead=True,
        save_strategy="steps",
        save_steps=3,
    )
    trainer = make_trainer(tiny, args, make_digits_dataset(32), reward_model=None, reward_funcs=digits_reward)
    trainer.train(resume_from_checkpoint=str(Path(output_dir) / "checkpoint-3") if resume == "resume" else None)
    from accelerate.utils import gather_object

    weights = sum(float(p.double().sum()) for p in trainer.model.parameters())
    staleness = [log["rollout/staleness"] for log in trainer.state.log_history if "rollout/staleness" in log]
    summary = {
        "world_size": trainer.accelerator.num_processes,
        "global_step": trainer.state.global_step,
        "weights_sums": gather_object([weights]),
        "staleness": staleness,
        "generators_stopped": gather_object([trainer.ahead.generator.process is None]),
    }
    if trainer.accelerator.is_main_process:
        (Path(output_dir) / f"summary-{resume}.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main(*sys.argv[1:4])
