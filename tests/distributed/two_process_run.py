"""Run under `accelerate launch` with 2 CPU processes by tests/distributed/test_two_processes.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from tests.helpers import make_trainer, tiny_config
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
from trl_replay_ppo.tasks.tiny import load_tiny_models


def after_training_checks(trainer, eval_dataset) -> dict:
    """Evaluation over uneven shards, and a reward failure on one rank only (it must reach both)."""
    from accelerate.utils import gather_object

    def digit_value(prompts, completions, **kwargs):
        return [float(p[0]) for p in prompts]

    trainer.scorer.reward_funcs = [digit_value]
    metrics = trainer.evaluate()
    rank = trainer.accelerator.process_index

    def fails_on_rank_1(prompts, completions, **kwargs):
        if rank == 1:
            raise ConnectionError("judge down on rank 1")
        return [0.0] * len(completions)

    trainer.scorer.reward_funcs = [fails_on_rank_1]
    try:
        trainer.rollout(trainer.next_prompts())
        outcome = "no error"
    except Exception as error:
        outcome = f"{type(error).__name__}: {error}"
    return {
        "eval_prompts": metrics["eval_prompts"],
        "eval_reward": metrics["eval_reward"],
        "expected_eval_reward": sum(float(p[0]) for p in eval_dataset["prompt"]) / len(eval_dataset),
        "reward_failure": gather_object([outcome]),
    }


def main(models_dir: str, output_dir: str, resume: str) -> None:
    tiny = load_tiny_models({k: Path(models_dir) / k for k in ("tokenizer", "policy", "reward")})
    # Small buffers evicted by reuse: each rank's sampling decides what it evicts, so the ranks' buffer sizes
    # drift apart, and replay must still start and stop on every rank at once.
    args = tiny_config(
        Path(output_dir),
        output_dir=output_dir,
        total_episodes=96,  # 8 episodes per update across 2 ranks: 12 updates
        use_replay_buffer=True,
        use_priority_sampling=True,
        replay_buffer_size=16,
        min_replay_size=14,
        replay_ratio=1,  # 4 replayed per rank and update, from the per-rank batch
        per_device_eval_batch_size=8,
        max_replay_reuse=1,
        num_ppo_epochs=2,
        target_kl=0.01,  # stopping the epochs early must be agreed by both ranks too
        replay_min_ess=0.05,  # the ESS gate agrees over ranks too (an all-reduce each replay)
        self_imitation_coef=0.5,
        save_strategy="steps",
        save_steps=4,
    )
    eval_dataset = make_digits_dataset(10, seed=9)  # fewer than one batch per process (8), and uneven shards
    trainer = make_trainer(
        tiny, args, make_digits_dataset(32), reward_model=None, reward_funcs=digits_reward, eval_dataset=eval_dataset
    )
    accelerator = trainer.accelerator
    assert accelerator.num_processes == 2, f"world size {accelerator.num_processes}"
    sizes, epochs = [], []
    record = trainer.after_ppo_update

    def recording(batch):
        record(batch)
        sizes.append(len(trainer.replay))
        epochs.append(trainer.update_progress.epochs)  # this rank's own count, never gathered

    trainer.after_ppo_update = recording
    trainer.train(resume_from_checkpoint=True if resume == "resume" else None)
    checks = after_training_checks(trainer, eval_dataset) if resume == "fresh" else {}
    flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    gathered = accelerator.gather(flat.unsqueeze(0))
    all_sizes = accelerator.gather(torch.tensor([sizes]))
    all_epochs = accelerator.gather(torch.tensor([epochs]))
    ess_skips = accelerator.gather(torch.tensor([trainer.replay.low_ess_skips]))
    if accelerator.is_main_process:
        summary = {
            "world_size": accelerator.num_processes,
            "ranks_equal": bool(torch.equal(gathered[0], gathered[1])),
            "buffer_sizes": all_sizes.tolist(),
            "ppo_epochs": all_epochs.tolist(),
            "low_ess_skips": ess_skips.tolist(),
            "global_step": trainer.state.global_step,
            "episode": trainer.state.episode,
            "weights_sum": float(flat.double().sum()),
            "replayed": sum(log.get("replay/episodes", 0) for log in trainer.state.log_history),
            **checks,
        }
        (Path(output_dir) / f"summary-{resume}.json").write_text(json.dumps(summary))
    # Shut the gloo group down before exit: left to the interpreter's teardown, its threads can abort the process.
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
