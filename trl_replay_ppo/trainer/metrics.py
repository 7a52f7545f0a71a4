"""The metrics logged once per update: TRL's PPO metrics (same names and values), then this package's.

Every function takes ``gather``, a callable that concatenates a tensor over ranks, so values are
over all ranks. `UpdateMetrics` assembles them; the trainer adds what its other parts report
(optimizer steps, advantages, replay, the scorer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator

from trl_replay_ppo.core.episodes import EpisodeBatch
from trl_replay_ppo.core.masking import masked_var
from trl_replay_ppo.trainer.epochs import UpdateProgress

logger = logging.getLogger(__name__)
Gather = Callable[[torch.Tensor], torch.Tensor]
EMPTY_RESPONSE_WARNING = 0.25  # warn when more than this fraction of an update's responses is empty


def mean_sequence_kl(fresh: EpisodeBatch, gather: Gather) -> float:
    """Mean over all ranks' fresh episodes of their KL to the reference, summed over tokens: ``objective/kl``."""
    return gather(fresh.kl.sum(1).mean()).mean().item()


def ppo_metrics(fresh: EpisodeBatch, stats: dict[str, torch.Tensor], gather: Gather) -> dict[str, float]:
    """TRL's PPO metrics: objective/* over the fresh episodes, policy/loss/val over the micro-batches the update
    trained (the slots ``stats["written"]`` marks: an update with replayed rows, or one ``target_kl`` ended,
    leaves some empty, which would otherwise pull every average towards 0)."""
    mean_entropy = ((-fresh.logprobs) * (~fresh.padding_mask).float()).sum(1).mean()
    mean_non_score_reward = fresh.non_score_reward.sum(1).mean()
    rlhf_reward = mean_non_score_reward + fresh.scores.mean()
    written = gather(stats["written"]) > 0

    def trained(name: str) -> torch.Tensor:
        return gather(stats[name])[written]

    ratio = trained("ratio")  # one gather for both ratio statistics
    return {
        "objective/kl": mean_sequence_kl(fresh, gather),
        "objective/entropy": gather(mean_entropy).mean().item(),
        "objective/non_score_reward": gather(mean_non_score_reward).mean().item(),
        "objective/rlhf_reward": gather(rlhf_reward).mean().item(),
        "objective/scores": gather(fresh.scores.mean()).mean().item(),
        "policy/approxkl_avg": trained("approxkl").mean().item(),
        "policy/clipfrac_avg": trained("pg_clipfrac").mean().item(),
        "loss/policy_avg": trained("pg_loss").mean().item(),
        "loss/value_avg": trained("vf_loss").mean().item(),
        "val/clipfrac_avg": trained("vf_clipfrac").mean().item(),
        "policy/entropy_avg": trained("entropy").mean().item(),
        "val/ratio": ratio.mean().item(),
        "val/ratio_var": ratio.var().item(),
    }


def explained_variance(batch: EpisodeBatch) -> float:
    """1 - Var(returns - values) / Var(returns) over the value positions: 1 is a perfect critic, <= 0 a useless one."""
    padding = batch.padding_mask_p1
    if int((~padding).sum()) < 2:
        return float("nan")
    variance = masked_var(batch.returns, padding)
    return (1 - masked_var(batch.returns - batch.values, padding) / variance).item() if variance > 0 else float("nan")


def empty_responses(batch: EpisodeBatch, stop_ids: set[int]) -> torch.Tensor:
    """(B,) True for a response with no content: empty, or starting with one of ``stop_ids`` (pad, eos, stop)."""
    first = batch.responses[:, 0]
    stops = torch.tensor(sorted(stop_ids), device=first.device)
    return (batch.sequence_lengths < 0) | torch.isin(first, stops)


def replay_token_metrics(stats: dict[str, torch.Tensor], gather: Gather) -> dict[str, float]:
    """``replay/clipfrac`` and ``replay/is_weight_mean`` over the replayed tokens of the update (if any), and
    ``loss/self_imitation`` (mean over the trained micro-batches, as TRL's losses) when that term is on."""
    if "replay_tokens" not in stats:
        return {}
    tokens = gather(stats["replay_tokens"].sum().reshape(1)).sum()
    clipped = gather(stats["replay_clipped"].sum().reshape(1)).sum()
    weights = gather(stats["replay_weight_sum"].sum().reshape(1)).sum()
    metrics = {"replay/clipfrac": (clipped / tokens).item(), "replay/is_weight_mean": (weights / tokens).item()}
    if "sil_loss" in stats:
        written = stats["written"] > 0
        metrics["loss/self_imitation"] = gather(stats["sil_loss"][written].mean().reshape(1)).mean().item()
    return metrics


class UpdateMetrics:
    """The metrics of one update that no other part owns, and the run-wide counts behind ``efficiency/*``.

    Args:
        accelerator: the trainer's (metrics are gathered over ranks).
        eos_token_id: counted in ``val/num_eos_tokens``.
        stop_ids: tokens that make a response empty when they come first (pad, eos, stop).
        source_names: the scorer's reward sources, for ``rewards/<name>``.
    """

    def __init__(
        self, accelerator: Accelerator, *, eos_token_id: int | None, stop_ids: set[int], source_names: list[str]
    ):
        self.accelerator = accelerator
        self.eos_token_id = eos_token_id
        self.stop_ids = stop_ids
        self.source_names = source_names
        self.trained_episodes = 0  # rows trained on (fresh + replayed), all ranks
        self.trained_tokens = 0  # response tokens of the micro-batches whose gradients were kept, all ranks
        self.warned_empty = False  # the collapse warning was given

    @torch.no_grad()
    def __call__(
        self,
        batch: EpisodeBatch,
        stats: dict[str, torch.Tensor],
        progress: UpdateProgress,
        *,
        episode: int,
        elapsed: float,
        lr: float,
        update: int,
    ) -> dict[str, float]:
        """TRL's metrics (on the fresh episodes), then rewards per source, critic, epochs, efficiency, collapse.

        ``episode``: generated episodes so far; ``elapsed``: seconds since training started; ``update``: this
        update's number.
        """
        gather, fresh = self.accelerator.gather_for_metrics, batch.fresh()
        metrics: dict[str, float] = {"eps": int(episode / elapsed)}
        metrics.update(ppo_metrics(fresh, stats, gather))
        metrics["val/num_eos_tokens"] = (fresh.responses == self.eos_token_id).sum().item()
        metrics["lr"] = lr
        metrics["episode"] = episode
        source_means = gather(fresh.source_scores).nanmean(0).tolist()  # NaN: a function gave None
        metrics.update({f"rewards/{name}": value for name, value in zip(self.source_names, source_means, strict=True)})
        metrics["val/explained_variance"] = explained_variance(fresh)
        metrics["update/ppo_epochs"] = progress.epochs
        if progress.early_stop_kl is not None:
            metrics["policy/early_stop_kl"] = progress.early_stop_kl
        device = batch.padding_mask.device
        self.trained_episodes += int(self.accelerator.gather(torch.tensor([len(batch)], device=device)).sum())
        self.trained_tokens += int(
            self.accelerator.gather(torch.tensor([progress.trained_tokens], device=device)).sum()
        )
        metrics["efficiency/generated_episodes"] = episode
        metrics["efficiency/trained_episodes"] = self.trained_episodes
        metrics["efficiency/trained_tokens"] = self.trained_tokens
        metrics["efficiency/sample_efficiency"] = self.trained_episodes / max(1, episode)
        empty = gather(empty_responses(fresh, self.stop_ids).float()).mean().item()
        metrics["rollout/empty_fraction"] = empty
        self.warn_if_collapsing(empty, update)
        metrics.update(replay_token_metrics(stats, gather))
        return metrics

    def warn_if_collapsing(self, empty_fraction: float, update: int) -> None:
        """Warn once when many responses are empty: the usual first sign of a collapsing policy."""
        if empty_fraction <= EMPTY_RESPONSE_WARNING or self.warned_empty:
            return
        self.warned_empty = True
        logger.warning(
            "%.0f%% of the responses of update %d are empty (the first token was the pad, eos or stop token). "
            "A policy drifting towards empty responses usually means `learning_rate` or `num_ppo_epochs` is too "
            "high, or the pad token can be sampled (keep `suppress_pad_token=True`, or use a pad token distinct "
            "from eos). Training stops if every response of an update is empty.",
            100 * empty_fraction,
            update,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "trained_episodes": self.trained_episodes,
            "trained_tokens": self.trained_tokens,
            "warned_empty": self.warned_empty,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trained_episodes = int(state["trained_episodes"])
        self.trained_tokens = int(state["trained_tokens"])
        self.warned_empty = bool(state["warned_empty"])
