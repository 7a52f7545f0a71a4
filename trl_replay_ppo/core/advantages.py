"""Advantages of an update: KL-shaped per-token rewards, GAE, and the whitening of rewards and advantages.

Shapes: B episodes, R response tokens. Every function performs the same floating-point operations,
in the same order, as TRL's PPO loop, so with replay off the results are bitwise TRL's.
``padding_mask`` is True on padding everywhere.
"""

from __future__ import annotations

import torch

from trl_replay_ppo.core.masking import masked_whiten


def shaped_rewards(
    kl: torch.Tensor, scores: torch.Tensor, score_index: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards (B, R): ``-kl_coef * kl`` everywhere, plus each score (B,) at its ``score_index`` (B,).

    Returns ``(rewards, non_score_reward)``.
    """
    non_score_reward = -kl_coef * kl
    rewards = non_score_reward.clone()
    rows = torch.arange(rewards.size(0), device=rewards.device)
    rewards[rows, score_index] += scores
    return rewards, non_score_reward


def whiten_rewards(rewards: torch.Tensor, padding_mask_p1: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Per-token rewards (B, R) scaled to unit variance (mean kept), 0 past the reward positions.

    Returns ``(rewards, whitened)``; with fewer than 2 reward positions the rewards are kept as they
    are and ``whitened`` is False.
    """
    whitened, ok = masked_whiten(rewards, padding_mask_p1, shift_mean=False)
    return torch.masked_fill(whitened, padding_mask_p1, 0), ok


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response axis; returns ``(advantages, returns)``, (B, R)."""
    lastgaelam: torch.Tensor | float = 0
    advantages_reversed: list[torch.Tensor] = []
    length = rewards.shape[1]
    for t in reversed(range(length)):
        nextvalues = values[:, t + 1] if t < length - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        step = delta + gamma * lam * lastgaelam
        advantages_reversed.append(step)
        lastgaelam = step
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    return advantages, advantages + values


def whiten_advantages(
    advantages: torch.Tensor, padding_mask: torch.Tensor, token_weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, bool]:
    """Zero-mean unit-variance advantages over response tokens, 0 on padding, and whether whitening happened.

    ``token_weights`` (B, R), when replayed rows are present, weight each token's share of the mean
    and variance (fresh tokens 1), so prioritised replayed rows do not shift the statistics applied
    to fresh rows. With fewer than 2 response tokens there is no variance: the advantages are kept
    as they are (``False`` is returned so the caller counts it) instead of becoming NaN.
    """
    whitened, ok = masked_whiten(advantages, padding_mask, weights=token_weights)
    return torch.masked_fill(whitened, padding_mask, 0), ok
