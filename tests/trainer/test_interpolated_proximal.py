"""Proximal log-probs of replayed rows without the policy's forward (`replay_proximal="interpolate"`): the math,
exactness before an update's first step, the pass it saves, and the configs it refuses."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import make_trainer, tiny_config
from trl_replay_ppo import ReplayPPOConfig
from trl_replay_ppo.core.losses import interpolated_proximal
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset

pytestmark = pytest.mark.trl112

REPLAY = {"use_replay_buffer": True, "replay_buffer_size": 64, "min_replay_size": 8, "replay_sample_size": 8}


def test_interpolation_lies_between_behaviour_and_current_by_age_and_progress():
    behaviour = torch.tensor([[-2.0, -1.0], [-3.0, -1.0]])
    current = torch.tensor([[-1.0, -0.5], [-1.0, -0.2]], requires_grad=True)
    ages = torch.tensor([1.0, 3.0])
    assert torch.equal(interpolated_proximal(behaviour, current, ages, progress=0.0), current.detach())
    halfway = interpolated_proximal(behaviour, current, ages, progress=1.0)  # alpha 1/2 and 3/4
    assert torch.allclose(halfway, torch.tensor([[-1.5, -0.75], [-1.5, -0.4]]))
    assert not halfway.requires_grad  # a constant of the loss


def test_interpolated_rows_skip_the_policy_pass_and_are_exact_before_the_first_step(tmp_path, tiny):
    args = tiny_config(
        tmp_path, **REPLAY, total_episodes=40, num_ppo_epochs=2, num_mini_batches=2, replay_proximal="interpolate"
    )
    trainer = make_trainer(tiny, args, make_digits_dataset(40), reward_model=None, reward_funcs=digits_reward)
    runner, loss, update, interpolated = trainer.runner, trainer.loss, trainer.ppo_update, trainer.loss.interpolated
    expected: dict[str, torch.Tensor] = {}
    updates: list[list[dict]] = []  # per update, what each micro-batch's interpolation gave

    def no_policy_pass(batch):
        raise AssertionError("the replayed rows' policy pass ran")

    def recording_update(batch):
        updates.append([])
        if batch.replay_ages is not None:  # the proximal policy is the policy as the update starts
            replayed = batch.select(slice(batch.num_fresh, len(batch)))
            proximal, values = type(runner).logprobs_and_values(runner, replayed)
            importance = torch.exp(proximal - replayed.logprobs).clamp(max=args.replay_importance_cap)
            expected.update(proximal=proximal, weights=importance * replayed.row_weights[:, None])
            assert torch.allclose(replayed.values, values, atol=1e-6)  # the critic's pass alone gives the same
            assert (replayed.replay_ages >= 1).all() and (batch.replay_ages[: batch.num_fresh] == 0).all()
        return update(batch)

    def recording_interpolated(batch, rows, new_logprobs, token_weights, progress):
        proximal, weights = interpolated(batch, rows, new_logprobs, token_weights, progress)
        valid = ~batch.padding_mask[rows] & torch.as_tensor(rows >= batch.num_fresh)[:, None]
        updates[-1].append(
            {"rows": rows - batch.num_fresh, "progress": progress, "valid": valid, "proximal": proximal}
            | {"weights": weights, "current": new_logprobs.detach()}
        )
        return proximal, weights

    runner.logprobs_and_values, trainer.ppo_update = no_policy_pass, recording_update
    loss.interpolated = recording_interpolated
    trainer.train()
    assert trainer.state.log_history[-1]["replay/episodes"] == 8 and expected
    last = updates[-1]
    assert [m["progress"] for m in last] == [k / len(last) for k in range(len(last))]  # one step per micro-batch
    first = last[0]
    valid, rows = first["valid"], first["rows"].clip(min=0)
    assert valid.any()
    assert torch.allclose(first["proximal"][valid], expected["proximal"][rows][valid], atol=1e-5)
    assert torch.allclose(first["weights"][valid], expected["weights"][rows][valid], atol=1e-5)
    for later in last[1:]:  # after a step the estimate trails the current log-probs
        if later["valid"].any():
            assert not torch.allclose(later["proximal"][later["valid"]], later["current"][later["valid"]])


def test_interpolation_refuses_what_it_cannot_serve(tmp_path):
    with pytest.raises(ValueError, match=r"`replay_proximal` must be 'recompute' or 'interpolate'; got"):
        ReplayPPOConfig(output_dir=str(tmp_path), replay_proximal="approximate")
    with pytest.raises(ValueError, match=r"`replay_min_ess`.*replay_proximal='recompute'"):
        ReplayPPOConfig(output_dir=str(tmp_path), replay_proximal="interpolate", replay_min_ess=0.5)
