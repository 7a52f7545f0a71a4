"""PPO's per-token quantities: KL-shaped rewards, GAE, and the clipped policy/value losses.

Shapes: B episodes, R response tokens. Every function here performs the same floating-point
operations, in the same order, as TRL's PPO loop, so with replay off the results are bitwise
TRL's. Masks are True on padding (TRL's convention).
"""

from __future__ import annotations

import torch

from trl_replay_ppo.masking import masked_mean, masked_whiten


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(pi || ref), (B, R), with Schulman's k1 (``log pi - log ref``) or k3 estimator."""
    logr = ref_logprobs - logprobs
    return -logr if estimator == "k1" else (logr.exp() - 1) - logr


def k3_kl_sum(
    new_logprobs: torch.Tensor, old_logprobs: torch.Tensor, padding_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(old || new) summed over the valid tokens, and their count: two 0-d tensors.

    Per token Schulman's k3 estimate ``(exp(r) - 1) - r``, ``r = new - old`` (b, R), which is >= 0
    and unbiased for tokens sampled from the old policy; ``padding_mask`` (b, R) is True on padding.
    Dividing the sums of several micro-batches gives their token-weighted mean.
    """
    valid = ~padding_mask
    per_token = kl_estimate(old_logprobs, new_logprobs, "k3")  # its ``ref - logprobs`` is r
    return torch.where(valid, per_token, 0).sum(), valid.sum()


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
    whitened, ok = masked_whiten(rewards, mask=~padding_mask_p1, shift_mean=False)
    return torch.masked_fill(whitened, padding_mask_p1, 0), ok


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response axis; returns ``(advantages, returns)``, (B, R)."""
    lastgaelam = 0
    advantages_reversed = []
    length = rewards.shape[1]
    for t in reversed(range(length)):
        nextvalues = values[:, t + 1] if t < length - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], axis=1)
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
    whitened, ok = masked_whiten(advantages, ~padding_mask, weights=token_weights)
    return torch.masked_fill(whitened, padding_mask, 0), ok


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the categorical distribution at each position: (B, R, V) -> (B, R)."""
    prob_dist = torch.nn.functional.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - torch.sum(prob_dist * logits, dim=-1)


def value_loss(
    vpred: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
    row_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss ``0.5 * max((v - R)^2, (clip(v) - R)^2)``; returns ``(loss, clipfrac)``.

    ``row_weights`` (b,) are the prioritized-replay weights of the rows (1 for fresh rows), so the
    critic regresses on the distribution the data came from, not the priority-skewed one; None
    means 1 everywhere (TRL's loss exactly).
    """
    vpredclipped = torch.clamp(vpred, old_values - cliprange_value, old_values + cliprange_value)
    vf_losses1 = torch.square(vpred - returns)
    vf_losses2 = torch.square(vpredclipped - returns)
    vf_losses = torch.max(vf_losses1, vf_losses2)
    if row_weights is not None:
        vf_losses = vf_losses * row_weights[:, None]
    vf_loss = 0.5 * masked_mean(vf_losses, ~mask)
    vf_clipfrac = masked_mean((vf_losses2 > vf_losses1).float(), ~mask)
    return vf_loss, vf_clipfrac


def policy_loss(
    new_logprobs: torch.Tensor,
    proximal_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate loss with the clip centred on the proximal policy.

    ``token_weights`` (b, R) are the off-policy corrections of replayed episodes (truncated
    importance weight times the prioritized-replay weight); None means 1 everywhere (fresh data),
    which is TRL's objective exactly. Returns ``(loss, clipped, ratio, logprobs_diff)``, where
    ``clipped`` (b, R) marks the tokens whose clipped term was the active one.
    """
    logprobs_diff = new_logprobs - proximal_logprobs
    ratio = torch.exp(logprobs_diff)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss_max = torch.max(pg_losses, pg_losses2)
    if token_weights is not None:
        pg_loss_max = pg_loss_max * token_weights
    pg_loss = masked_mean(pg_loss_max, ~mask)
    return pg_loss, (pg_losses2 > pg_losses).detach(), ratio, logprobs_diff


def self_imitation_loss(
    new_logprobs: torch.Tensor, raw_advantages: torch.Tensor, mask: torch.Tensor, row_weights: torch.Tensor
) -> torch.Tensor:
    """Self-imitation loss (Oh et al., 2018): mean over response tokens of ``-log pi * max(A, 0) * w``.

    ``raw_advantages`` (b, R) are unwhitened, so a token is imitated in proportion to how much better
    than the critic's expectation it turned out; ``row_weights`` (b,) choose and weigh the imitated
    rows (0 for rows that are not). The mean runs over every response token of the micro-batch, so
    the term's scale does not depend on how many rows are imitated.
    """
    gain = torch.clamp(raw_advantages, min=0) * row_weights[:, None]
    return masked_mean(-new_logprobs * gain, ~mask)
