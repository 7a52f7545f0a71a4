"""PPO's per-token quantities by hand: the weighted clipped policy loss, GAE, the critic diagnostic."""

from __future__ import annotations

import math

import pytest
import torch

from trl_replay_ppo.core.advantages import compute_gae
from trl_replay_ppo.core.episodes import EpisodeBatch
from trl_replay_ppo.core.losses import policy_loss, self_imitation_loss
from trl_replay_ppo.trainer.metrics import explained_variance


def test_policy_loss_with_token_weights_by_hand():
    # Two tokens, proximal log-prob 0, advantages +1 and -1, new log-probs log(1.5) and log(0.5), clip 0.2:
    # token 1: max(-1 * 1.5, -1 * 1.2) = -1.2 (clipped); token 2: max(1 * 0.5, 1 * 0.8) = 0.8 (clipped).
    # Weighted by 2 and 0.5 and averaged over the 2 valid tokens: (2 * -1.2 + 0.5 * 0.8) / 2 = -1.0.
    new = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))
    proximal = torch.zeros(1, 3)
    advantages = torch.tensor([[1.0, -1.0, 5.0]])
    mask = torch.tensor([[False, False, True]])  # the third token is padding
    weights = torch.tensor([[2.0, 0.5, 9.0]])
    loss, clipped, ratio, diff = policy_loss(new, proximal, advantages, mask, 0.2, weights)
    assert loss.item() == pytest.approx(-1.0)
    assert clipped[0, :2].tolist() == [True, True]
    assert ratio[0, :2].tolist() == pytest.approx([1.5, 0.5]) and torch.equal(diff, new)
    unweighted, *_ = policy_loss(new, proximal, advantages, mask, 0.2)
    assert unweighted.item() == pytest.approx((-1.2 + 0.8) / 2)


def test_gae_by_hand():
    # gamma 0.5, lambda 0.5: deltas r_t + 0.5 V_{t+1} - V_t = [0 + 0.5 - 1, 1 + 0 - 1] = [-0.5, 0];
    # A_1 = 0, A_0 = -0.5 + 0.25 * 0; returns = A + V.
    rewards, values = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    advantages, returns = compute_gae(rewards, values, gamma=0.5, lam=0.5)
    assert advantages.tolist() == [[-0.5, 0.0]] and returns.tolist() == [[0.5, 1.0]]


def _batch(values: list[float], returns: list[float]) -> EpisodeBatch:
    batch = EpisodeBatch(
        query_responses=torch.ones(1, 1 + len(values), dtype=torch.long),
        context_length=1,
        logprobs=torch.zeros(1, len(values)),
        ref_logprobs=torch.zeros(1, len(values)),
        values=torch.tensor([values]),
        scores=torch.zeros(1),
        source_scores=torch.zeros(1, 1),
        sequence_lengths=torch.tensor([len(values) - 2]),  # the last column is the score position
        num_fresh=1,
    )
    batch.returns = torch.tensor([returns])
    return batch


def test_explained_variance_by_hand():
    assert explained_variance(_batch([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])) == pytest.approx(1.0)  # a perfect critic
    # returns [0, 2, 4] (variance 4), errors [0, 1, 2] (variance 1): 1 - 1/4
    assert explained_variance(_batch([0.0, 1.0, 2.0], [0.0, 2.0, 4.0])) == pytest.approx(0.75)
    assert math.isnan(explained_variance(_batch([1.0, 1.0], [2.0, 2.0])))  # returns without variance


def test_self_imitation_loss_by_hand():
    # Two rows of 2 response tokens (the second row's last token is padding). Row 0 is imitated with
    # weight 2, row 1 is fresh (weight 0). Row 0: tokens with log-probs -1 and -2, advantages 0.5 and -0.3
    # (the negative one adds nothing): -(-1 * 0.5 * 2) = 1. Mean over the 3 response tokens: 1 / 3.
    new_logprobs = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], requires_grad=True)
    advantages = torch.tensor([[0.5, -0.3], [4.0, 0.0]])
    mask = torch.tensor([[False, False], [False, True]])
    loss = self_imitation_loss(new_logprobs, advantages, mask, torch.tensor([2.0, 0.0]))
    assert loss.item() == pytest.approx(1 / 3)
    loss.backward()  # only the better-than-expected token of the imitated row is pushed up
    assert torch.allclose(new_logprobs.grad, torch.tensor([[-1 / 3, 0.0], [0.0, 0.0]]))
