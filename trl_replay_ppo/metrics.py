"""The metrics logged once per update: TRL's PPO metrics (same names and values), then this package's.

Every function takes ``gather``, a callable that concatenates a tensor over ranks, so values are
over all ranks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from trl_replay_ppo.episodes import EpisodeBatch
from trl_replay_ppo.masking import masked_var

Gather = Callable[[torch.Tensor], torch.Tensor]


def ppo_metrics(fresh: EpisodeBatch, stats: dict[str, torch.Tensor], gather: Gather) -> dict[str, float]:
    """TRL's PPO metrics: objective/* over the fresh episodes, policy/loss/val over the update's statistics."""
    mean_kl = fresh.kl.sum(1).mean()
    mean_entropy = ((-fresh.logprobs) * (~fresh.padding_mask).float()).sum(1).mean()
    mean_non_score_reward = fresh.non_score_reward.sum(1).mean()
    rlhf_reward = mean_non_score_reward + fresh.scores.mean()
    return {
        "objective/kl": gather(mean_kl).mean().item(),
        "objective/entropy": gather(mean_entropy).mean().item(),
        "objective/non_score_reward": gather(mean_non_score_reward).mean().item(),
        "objective/rlhf_reward": gather(rlhf_reward).mean().item(),
        "objective/scores": gather(fresh.scores.mean()).mean().item(),
        "policy/approxkl_avg": gather(stats["approxkl"]).mean().item(),
        "policy/clipfrac_avg": gather(stats["pg_clipfrac"]).mean().item(),
        "loss/policy_avg": gather(stats["pg_loss"]).mean().item(),
        "loss/value_avg": gather(stats["vf_loss"]).mean().item(),
        "val/clipfrac_avg": gather(stats["vf_clipfrac"]).mean().item(),
        "policy/entropy_avg": gather(stats["entropy"]).mean().item(),
        "val/ratio": gather(stats["ratio"]).mean().item(),
        "val/ratio_var": gather(stats["ratio"]).var().item(),
    }


def explained_variance(batch: EpisodeBatch) -> float:
    """1 - Var(returns - values) / Var(returns) over the value positions: 1 is a perfect critic, <= 0 a useless one."""
    valid = ~batch.padding_mask_p1
    if int(valid.sum()) < 2:
        return float("nan")
    variance = masked_var(batch.returns, valid)
    return (1 - masked_var(batch.returns - batch.values, valid) / variance).item() if variance > 0 else float("nan")


def empty_responses(batch: EpisodeBatch, stop_ids: set[int]) -> torch.Tensor:
    """(B,) True for a response with no content: empty, or starting with one of ``stop_ids`` (pad, eos, stop)."""
    first = batch.responses[:, 0]
    stops = torch.tensor(sorted(stop_ids), device=first.device)
    return (batch.sequence_lengths < 0) | torch.isin(first, stops)


def replay_token_metrics(stats: dict[str, torch.Tensor], gather: Gather) -> dict[str, float]:
    """``replay/clipfrac`` and ``replay/is_weight_mean`` over the replayed tokens of the update (if any)."""
    if "replay_tokens" not in stats:
        return {}
    tokens = gather(stats["replay_tokens"].sum().reshape(1)).sum()
    clipped = gather(stats["replay_clipped"].sum().reshape(1)).sum()
    weights = gather(stats["replay_weight_sum"].sum().reshape(1)).sum()
    return {"replay/clipfrac": (clipped / tokens).item(), "replay/is_weight_mean": (weights / tokens).item()}


def replay_token_statistics(
    clipped: torch.Tensor, token_weights: torch.Tensor, padding_mask: torch.Tensor, replayed_rows: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Sums over a micro-batch's replayed tokens (rows where ``replayed_rows`` (b,) is True), for the metrics above."""
    replay_tokens = ~padding_mask & replayed_rows[:, None]
    return {
        "replay_tokens": replay_tokens.sum(),
        "replay_clipped": (clipped & replay_tokens).sum(),
        "replay_weight_sum": (token_weights * replay_tokens).sum(),
    }
