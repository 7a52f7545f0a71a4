"""With every addition off, the phased loop is bitwise TRL's PPOTrainer.train()."""

from __future__ import annotations

import pytest
import torch
from accelerate.state import AcceleratorState, PartialState

from tests.helpers import LogRecorder, digit_prompts, seed_everything, tiny_config, tokenized_prompts
from trl_replay_ppo import ReplayPPOTrainer
from trl_replay_ppo.integrations.compat import trl_ppo
from trl_replay_ppo.tasks.tiny import load_tiny_models, tiny_trainer

pytestmark = [pytest.mark.trl112, pytest.mark.needs_trl_ppo]  # stock TRL PPO: the TRL 1.12 job

PARITY_ARGS = {
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 2,
    "num_mini_batches": 2,
    "num_ppo_epochs": 2,
    "total_episodes": 72,
    "response_length": 6,
    "learning_rate": 1e-3,
    "stop_token": "eos",
    "missing_eos_penalty": 1.0,
    "local_rollout_forward_batch_size": 3,
    "num_sample_generations": 3,
    "seed": 7,
    "suppress_pad_token": False,  # TRL samples the pad token; this package's fix is off for parity
}


MICRO_BATCH_AVERAGES = (
    "policy/approxkl_avg",
    "policy/clipfrac_avg",
    "loss/policy_avg",
    "loss/value_avg",
    "val/clipfrac_avg",
    "policy/entropy_avg",
    "val/ratio",
)


def _run(trainer_cls, args, tiny_dirs):
    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    models = load_tiny_models(tiny_dirs)
    dataset = tokenized_prompts(models["tokenizer"], digit_prompts(40))
    recorder = LogRecorder()
    seed_everything(args.seed)  # stock TRL never seeds numpy/python; both arms start from the same state
    trainer = tiny_trainer(
        models,
        args,
        dataset,
        trainer_cls,
        reward_model=models["reward_model"],
        eval_dataset=dataset,
        callbacks=[recorder],
    )
    trainer.train()
    return recorder.logs, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("kl_estimator", ["k1", "k3"])
def test_phased_loop_is_bitwise_trl(tmp_path, tiny_dirs, kl_estimator):
    PPOConfig, PPOTrainer = trl_ppo()
    common = {**PARITY_ARGS, "kl_estimator": kl_estimator}
    stock_args = PPOConfig(
        output_dir=str(tmp_path / "stock"),
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        **{k: v for k, v in common.items() if k != "suppress_pad_token"},
    )
    ours_args = tiny_config(tmp_path, **common)
    stock_logs, stock_weights = _run(PPOTrainer, stock_args, tiny_dirs)
    ours_logs, ours_weights = _run(ReplayPPOTrainer, ours_args, tiny_dirs)

    assert len(stock_logs) == len(ours_logs) == 9  # 72 episodes / 8 per update
    for update, (stock, ours) in enumerate(zip(stock_logs, ours_logs, strict=True)):
        for key, value in stock.items():
            if key in MICRO_BATCH_AVERAGES:
                # TRL averages over gradient_accumulation_steps slots per minibatch; each minibatch here trains
                # one micro-batch, so half of TRL's slots are empty zeros: its means are half the trained ones
                assert ours[key] == pytest.approx(2 * value, rel=1e-5), f"update {update}: {key}"
            elif key == "val/ratio_var":  # TRL's counts the empty slots' zeros beside ratios near 1
                assert ours[key] < 0.01 < value
            elif key != "eps":
                assert ours[key] == value, f"update {update}: {key} {ours[key]!r} != TRL's {value!r}"
    assert stock_weights.keys() == ours_weights.keys()
    for name, weight in stock_weights.items():
        assert torch.equal(weight, ours_weights[name]), f"{name} differs from TRL's"
    assert not torch.equal(
        stock_weights["policy.lm_head.weight"], load_tiny_models(tiny_dirs)["policy"].lm_head.weight
    )
