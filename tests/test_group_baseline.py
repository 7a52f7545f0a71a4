"""Group-relative advantages: the leave-one-out baseline by hand, and inside the trainer."""

from __future__ import annotations

import pytest
import torch
from helpers import make_trainer, tiny_config

from trl_replay_ppo import ReplayPPOConfig
from trl_replay_ppo.group_baseline import group_advantages, leave_one_out_baselines, prompt_groups, returns_to_go
from trl_replay_ppo.objectives import compute_gae, kl_estimate, shaped_rewards
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset


def test_prompt_groups_by_hand():
    queries = torch.tensor([[0, 5, 6], [7, 7, 7], [0, 5, 6], [0, 0, 6]])
    groups = prompt_groups(queries)
    assert groups[0] == groups[2] and len({int(groups[0]), int(groups[1]), int(groups[3])}) == 3


def test_returns_to_go_by_hand():
    rewards = torch.tensor([[0.0, -0.5, 2.0]])
    # gamma 0.5: t=2: 2; t=1: -0.5 + 0.5 * 2 = 0.5; t=0: 0 + 0.5 * 0.5 = 0.25
    torch.testing.assert_close(returns_to_go(rewards, 0.5), torch.tensor([[0.25, 0.5, 2.0]]))


def test_leave_one_out_baselines_by_hand():
    returns = torch.tensor([1.0, 0.0, 0.0, 5.0])
    groups = torch.tensor([0, 0, 0, 1])
    fallback = torch.tensor([9.0, 9.0, 9.0, 2.0])
    baselines, grouped = leave_one_out_baselines(returns, groups, fallback)
    # row 0: mean(0, 0) = 0; rows 1, 2: mean(1, 0) = 0.5; row 3 is alone: the critic's 2
    torch.testing.assert_close(baselines, torch.tensor([0.0, 0.5, 0.5, 2.0]))
    assert grouped.tolist() == [True, True, True, False]


def test_group_advantages_on_a_three_step_trajectory_by_hand():
    # Two completions of prompt A (one solved it: score 1 at its third position), one of prompt B.
    queries = torch.tensor([[1, 2], [1, 2], [3, 4]])
    rewards = torch.tensor([[-0.1, 0.0, 1.0], [0.0, -0.2, 0.0], [0.0, 0.0, 0.5]])
    values = torch.tensor([[0.3, 0.0, 0.0], [0.3, 0.0, 0.0], [0.4, 0.0, 0.0]])
    padding_mask_p1 = torch.tensor([[False, False, False], [False, False, True], [False, False, False]])
    advantages, grouped = group_advantages(rewards, values, queries, padding_mask_p1, gamma=1.0)
    # Returns to go: row 0 (0.9, 1.0, 1.0), row 1 (-0.2, -0.2, 0), row 2 (0.5, 0.5, 0.5).
    # Baselines: row 0 the other's -0.2, row 1 the other's 0.9, row 2 alone: its value 0.4.
    expected = torch.tensor([[1.1, 1.2, 1.2], [-1.1, -1.1, 0.0], [0.1, 0.1, 0.1]])
    torch.testing.assert_close(advantages, expected)
    assert grouped.tolist() == [True, True, False]


@pytest.mark.parametrize("weight", [0.5, 1.0])
def test_trainer_mixes_group_and_critic_advantages(tmp_path, tiny, weight):
    replay = {"use_replay_buffer": True, "replay_buffer_size": 64, "min_replay_size": 8, "replay_sample_size": 4}
    args = tiny_config(tmp_path, **replay, total_episodes=40, num_generations=2, group_advantage_weight=weight)
    trainer = make_trainer(tiny, args, make_digits_dataset(40), reward_model=None, reward_funcs=digits_reward)
    compute_advantages, checked = trainer.compute_advantages, []

    def checking(batch):
        batch = compute_advantages(batch)
        kl = kl_estimate(batch.policy_logprobs, batch.ref_logprobs, "k1")
        rewards, _ = shaped_rewards(kl, batch.scores, batch.score_index, trainer.kl_ctl.value)
        gae, returns = compute_gae(rewards, batch.values, args.gamma, args.lam)
        grouped, has_group = group_advantages(rewards, batch.values, batch.queries, batch.padding_mask_p1, args.gamma)
        torch.testing.assert_close(batch.raw_advantages, (1 - weight) * gae + weight * grouped)
        torch.testing.assert_close(batch.returns, returns)  # the critic still regresses on GAE's returns
        # Fresh completions come in pairs of the same prompt: at the first position, each one's group part is
        # its return minus its sibling's.
        first = returns_to_go(rewards, args.gamma)[: batch.num_fresh, 0].view(-1, 2)
        torch.testing.assert_close(grouped[: batch.num_fresh, 0].view(-1, 2), first - first.flip(1))
        assert has_group[: batch.num_fresh].all()
        checked.append((batch.num_fresh < len(batch), has_group.float().mean().item()))
        return batch

    trainer.compute_advantages = checking
    trainer.train()
    assert any(replayed for replayed, _ in checked), "replay never started"
    fractions = [log["advantage/grouped_fraction"] for log in trainer.state.log_history]
    assert fractions == pytest.approx([fraction for _, fraction in checked])


def test_group_weight_out_of_range_is_named(tmp_path):
    with pytest.raises(ValueError, match="`group_advantage_weight`"):
        ReplayPPOConfig(output_dir=str(tmp_path), group_advantage_weight=1.5, use_cpu=True)


def test_group_weight_without_groups_warns(tmp_path):
    with pytest.warns(UserWarning, match="num_generations"):
        ReplayPPOConfig(output_dir=str(tmp_path), group_advantage_weight=1.0, use_cpu=True)
