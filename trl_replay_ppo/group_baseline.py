"""Group-relative advantages: Monte Carlo returns against a leave-one-out baseline of the prompt's group.

With several completions per prompt (``num_generations > 1``), the other completions of the same
prompt estimate its expected return without a critic (RLOO, Ahmadian et al. 2024; GRPO's group
mean without its division by the standard deviation, which the batch whitening replaces). Rows are
grouped by their prompt tokens, so a replayed episode joins the group of fresh episodes of its
prompt when there is one. A row alone in its group falls back on the critic's value of the prompt.

Shapes: B episodes, Lq prompt tokens, R response tokens.
"""

from __future__ import annotations

import torch


def prompt_groups(queries: torch.Tensor) -> torch.Tensor:
    """(B,) group index of each row of ``queries`` (B, Lq): rows with identical prompt tokens share one."""
    return torch.unique(queries, dim=0, return_inverse=True)[1]


def returns_to_go(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B, R) discounted sum of the per-token ``rewards`` (B, R) from each position to the end."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns


def leave_one_out_baselines(
    returns: torch.Tensor, groups: torch.Tensor, fallback: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) mean of ``returns`` (B,) over the other rows of each row's group, and (B,) whether it had any.

    Rows alone in their group get ``fallback`` (B,) instead.
    """
    num_groups = int(groups.max()) + 1
    totals = torch.zeros(num_groups, dtype=returns.dtype, device=returns.device).index_add_(0, groups, returns)
    counts = torch.zeros(num_groups, dtype=returns.dtype, device=returns.device).index_add_(
        0, groups, torch.ones_like(returns)
    )
    others = counts[groups] - 1
    grouped = others > 0
    baselines = torch.where(grouped, (totals[groups] - returns) / others.clamp(min=1), fallback)
    return baselines, grouped


def group_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    queries: torch.Tensor,
    padding_mask_p1: torch.Tensor,
    gamma: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RLOO advantages (B, R): the return-to-go of each token minus its row's group baseline, 0 past the score.

    ``rewards`` (B, R) are the KL-shaped per-token rewards; ``values`` (B, R) the critic's, whose first
    position (the value of the prompt) is the baseline of rows alone in their group. Returns
    ``(advantages, grouped)``, ``grouped`` (B,) True where the baseline came from the group.
    """
    returns = returns_to_go(rewards, gamma)
    baselines, grouped = leave_one_out_baselines(returns[:, 0], prompt_groups(queries), values[:, 0])
    advantages = torch.masked_fill(returns - baselines[:, None], padding_mask_p1, 0)
    return advantages, grouped
