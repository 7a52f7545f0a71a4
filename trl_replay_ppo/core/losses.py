"""PPO's losses per micro-batch: the clipped policy and value losses, self-imitation, entropy.

Shapes: b rows, R response tokens, V vocabulary. Every function performs the same floating-point
operations, in the same order, as TRL's PPO loop, so with replay off the results are bitwise TRL's.
``padding_mask`` is True on padding everywhere.
"""

from __future__ import annotations

import torch

from trl_replay_ppo.core.masking import masked_mean


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the categorical distribution at each position: (B, R, V) -> (B, R)."""
    prob_dist = torch.nn.functional.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - torch.sum(prob_dist * logits, dim=-1)


def value_loss(
    vpred: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    padding_mask: torch.Tensor,
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
    vf_loss = 0.5 * masked_mean(vf_losses, padding_mask)
    vf_clipfrac = masked_mean((vf_losses2 > vf_losses1).float(), padding_mask)
    return vf_loss, vf_clipfrac


def policy_loss(
    new_logprobs: torch.Tensor,
    proximal_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    padding_mask: torch.Tensor,
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
    pg_loss = masked_mean(pg_loss_max, padding_mask)
    return pg_loss, (pg_losses2 > pg_losses).detach(), ratio, logprobs_diff


def self_imitation_loss(
    new_logprobs: torch.Tensor, raw_advantages: torch.Tensor, padding_mask: torch.Tensor, row_weights: torch.Tensor
) -> torch.Tensor:
    """Self-imitation loss (Oh et al., 2018): mean over response tokens of ``-log pi * max(A, 0) * w``.

    ``raw_advantages`` (b, R) are unwhitened, so a token is imitated in proportion to how much better
    than the critic's expectation it turned out; ``row_weights`` (b,) choose and weigh the imitated
    rows (0 for rows that are not). The mean runs over every response token of the micro-batch, so
    the term's scale does not depend on how many rows are imitated.
    """
    gain = torch.clamp(raw_advantages, min=0) * row_weights[:, None]
    return masked_mean(-new_logprobs * gain, padding_mask)
