"""`adaptive_lr_kl`: the rule on hand-made KL sequences, the rate it gives the optimizer, exact resume, refusals."""

from __future__ import annotations

import pytest
import torch

from tests.checkpointing.test_resume import _trainer
from tests.helpers import LogRecorder, make_trainer, stop_after, tiny_config
from trl_replay_ppo import ReplayPPOConfig
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
from trl_replay_ppo.trainer.step_size import AdaptiveStepSize

pytestmark = pytest.mark.trl112


def step_size(scheduler=None, **overrides) -> AdaptiveStepSize:
    if scheduler is None:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    settings = {"target_kl": 0.01, "factor": 2.0, "max_scale": 4.0, **overrides}
    return AdaptiveStepSize(scheduler, **settings, all_reduce_sum=lambda t: t)


@pytest.mark.parametrize(
    ("kls", "scales"),
    [
        ([0.001, 0.001, 0.001, 0.001], [2.0, 4.0, 4.0, 4.0]),  # below half the target: up, to the bound
        ([0.05, 0.05, 0.05], [0.5, 0.25, 0.25]),  # above twice the target: down, to the bound
        ([0.01, 0.006, 0.019, 0.02], [1.0, 1.0, 1.0, 1.0]),  # within [target / 2, 2 target]: unchanged
        ([0.001, 0.03, 0.004, 0.0], [2.0, 1.0, 2.0, 4.0]),  # a zero KL (nothing moved) is below
    ],
)
def test_the_rule_on_hand_made_kl_sequences(kls, scales):
    control, seen = step_size(), []
    for kl in kls:
        tokens = torch.tensor([[10.0, 30.0]])
        control.update(kl * tokens, tokens)  # per-micro-batch sums: the token-weighted mean is `kl`
        seen.append(control.scale)
    assert seen == pytest.approx(scales) and control.last_kl == pytest.approx(kls[-1])


def test_the_scale_multiplies_the_schedule_and_survives_its_steps():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / 10)
    control = step_size(scheduler)
    control.update(torch.tensor(0.0), torch.tensor(5.0))  # scale 2
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.9 * 2)
    assert scheduler.state_dict()["lr_lambdas"] == [None]  # the wrapper is a function: nothing of it saved


def test_the_rate_follows_the_policy_kl_in_training(tmp_path, tiny):
    def run(target: float) -> list[dict]:
        args = tiny_config(
            tmp_path / str(target),
            total_episodes=16,
            num_ppo_epochs=2,
            adaptive_lr_kl=target,
            lr_scheduler_type="linear",
        )
        trainer = make_trainer(tiny, args, make_digits_dataset(16), reward_model=None, reward_funcs=digits_reward)
        trainer.train()
        return [log for log in trainer.state.log_history if "update/lr_scale" in log]

    tight, loose = run(1e-9), run(1e3)
    base = 1e-3  # tiny_config's learning rate, linear decay over 4 updates
    assert [log["update/lr_scale"] for log in tight] == pytest.approx([1 / 1.5, 1 / 1.5**2, 1 / 1.5**3, 1 / 1.5**4])
    assert [log["update/lr_scale"] for log in loose] == pytest.approx([1.5, 1.5**2, 1.5**3, 1.5**4])
    assert all(log["update/policy_kl"] > 2e-9 for log in tight)
    for i, log in enumerate(loose[:3]):  # the rate logged with update i+2 is the one it trained at
        assert loose[i + 1]["lr"] == pytest.approx(base * (1 - (i + 1) / 4) * log["update/lr_scale"])


def test_resume_restores_the_scale_exactly(tmp_path, tiny_dirs):
    overrides = {"adaptive_lr_kl": 1e-3, "lr_scheduler_type": "linear"}
    straight = _trainer(tiny_dirs, tmp_path, tmp_path / "straight", **overrides)
    straight.train()
    first = _trainer(tiny_dirs, tmp_path, tmp_path / "resumed", **overrides)
    stop_after(first, 4)
    first.train()
    logs = LogRecorder()
    resumed = _trainer(tiny_dirs, tmp_path, tmp_path / "resumed", logs, **overrides)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-4"))
    assert resumed.step_size.scale == straight.step_size.scale != 1.0
    expected = [log for log in straight.state.log_history if log["step"] > 4 and "lr" in log]
    assert [log["lr"] for log in logs.logs if "lr" in log] == [log["lr"] for log in expected]
    straight_weights = straight.accelerator.unwrap_model(straight.model).state_dict()
    for name, weight in resumed.accelerator.unwrap_model(resumed.model).state_dict().items():
        assert torch.equal(weight, straight_weights[name]), name


def test_a_scheduler_it_cannot_scale_is_refused(tmp_path, tiny):
    args = tiny_config(tmp_path, adaptive_lr_kl=0.01, num_ppo_epochs=2)
    optimizer = torch.optim.AdamW(tiny["policy"].parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    with pytest.raises(TypeError, match=r"`adaptive_lr_kl` .* is a StepLR\. Pass a `LambdaLR`, or set"):
        make_trainer(tiny, args, make_digits_dataset(8), optimizers=(optimizer, scheduler))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"adaptive_lr_kl": 0.0}, "adaptive_lr_kl"),
        ({"adaptive_lr_kl": 0.01, "adaptive_lr_factor": 1.0}, "adaptive_lr_factor"),
        ({"adaptive_lr_kl": 0.01, "adaptive_lr_max_scale": 0.5}, "adaptive_lr_max_scale"),
        (
            {"adaptive_lr_kl": 0.01, "num_ppo_epochs": 1, "num_mini_batches": 1},
            r"`adaptive_lr_kl` needs more than one optimizer step per update: .* num_ppo_epochs=1, num_mini_batches=1",
        ),
    ],
)
def test_bad_settings_are_named(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        ReplayPPOConfig(output_dir=str(tmp_path), **overrides)
