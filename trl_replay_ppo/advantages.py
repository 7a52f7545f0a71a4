"""`estimate_advantages`: an update's KL-shaped rewards, advantages and value targets, in one place.

GAE as TRL's PPO computes it; for replayed episodes optionally with Retrace's truncated traces
(``replay_trace_cap``); optionally mixed with group-relative advantages (``group_advantage_weight``,
`trl_replay_ppo.group_baseline`); then whitened with replayed tokens weighted.
"""

from __future__ import annotations

from typing import Any

import torch

from trl_replay_ppo.episodes import EpisodeBatch
from trl_replay_ppo.group_baseline import group_advantages
from trl_replay_ppo.objectives import (
    compute_gae,
    kl_estimate,
    shaped_rewards,
    trace_coefficients,
    whiten_advantages,
    whiten_rewards,
)


def estimate_advantages(batch: EpisodeBatch, args: Any, kl_coef: float) -> tuple[dict[str, torch.Tensor], int]:
    """Set ``batch.kl``, ``non_score_reward``, ``raw_advantages``, ``returns`` and ``advantages`` (each (B, R)).

    ``args`` is the run's `ReplayPPOConfig`. Returns ``(stats, whiten_fallbacks)``: this rank's
    ``replay/trace_mean`` and ``advantage/grouped_fraction`` when those levers are on (0-dim
    tensors), and how many whitenings were left out for lack of 2 valid tokens.
    """
    stats: dict[str, torch.Tensor] = {}
    fallbacks = 0
    batch.kl = kl_estimate(batch.policy_logprobs, batch.ref_logprobs, args.kl_estimator)
    rewards, batch.non_score_reward = shaped_rewards(batch.kl, batch.scores, batch.score_index, kl_coef)
    if args.whiten_rewards:
        rewards, whitened = whiten_rewards(rewards, batch.padding_mask_p1)
        fallbacks += not whitened
    traces = None
    if args.replay_trace_cap > 0 and batch.proximal_logprobs is not None:
        traces = trace_coefficients(batch.proximal_logprobs, batch.logprobs, batch.num_fresh, args.replay_trace_cap)
        replayed_tokens = ~batch.padding_mask[batch.num_fresh :]
        trace_sum = (traces[batch.num_fresh :] * replayed_tokens).sum()
        stats["replay/trace_mean"] = trace_sum / replayed_tokens.sum().clamp(min=1)
    batch.raw_advantages, batch.returns = compute_gae(rewards, batch.values, args.gamma, args.lam, traces)
    if args.group_advantage_weight > 0:
        grouped_advantages, grouped = group_advantages(
            rewards, batch.values, batch.queries, batch.padding_mask_p1, args.gamma
        )
        batch.raw_advantages = torch.lerp(batch.raw_advantages, grouped_advantages, args.group_advantage_weight)
        stats["advantage/grouped_fraction"] = grouped.float().mean()
    batch.advantages, whitened = whiten_advantages(batch.raw_advantages, batch.padding_mask, batch.token_weights)
    fallbacks += not whitened
    return stats, fallbacks
