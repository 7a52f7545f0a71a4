"""The metrics logged once per update: TRL's PPO metrics (same names and values), then this package's.

Every function takes ``gather``, a callable that concatenates a tensor over ranks, so values are
over all ranks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from trl_replay_ppo.core.episodes import EpisodeBatch
from trl_replay_ppo.core.masking import masked_var

logger = logging.getLogger(__name__)
Gather = Callable[[torch.Tensor], torch.Tensor]
EMPTY_RESPONSE_WARNING = 0.25  # warn when more than this fraction of an update's responses is empty


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
    """``replay/clipfrac`` and ``replay/is_weight_mean`` over the replayed tokens of the update (if any), and
    ``loss/self_imitation`` (mean over the micro-batches, as TRL's losses) when that term is on."""
    if "replay_tokens" not in stats:
        return {}
    tokens = gather(stats["replay_tokens"].sum().reshape(1)).sum()
    clipped = gather(stats["replay_clipped"].sum().reshape(1)).sum()
    weights = gather(stats["replay_weight_sum"].sum().reshape(1)).sum()
    metrics = {"replay/clipfrac": (clipped / tokens).item(), "replay/is_weight_mean": (weights / tokens).item()}
    if "sil_loss" in stats:
        metrics["loss/self_imitation"] = gather(stats["sil_loss"].mean().reshape(1)).mean().item()
    return metrics


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


class UpdateMetrics:
    """``log_update``: the metrics of one update, the KL controller's step, and the collapse warning.

    A mixin of `trl_replay_ppo.trainer.driver.ReplayPPOTrainer` (it reads its counters, scorer, replay and state).
    """

    @torch.no_grad()
    def log_update(self, batch: EpisodeBatch, stats: dict[str, torch.Tensor]) -> None:
        """Log TRL's metrics (on the fresh episodes) and this package's, then adapt the KL coefficient."""
        gather = self.accelerator.gather_for_metrics
        fresh = batch.fresh()
        metrics: dict[str, float] = {"eps": int(self.state.episode / (time.time() - self.start_time))}
        metrics.update(ppo_metrics(fresh, stats, gather))
        metrics["val/num_eos_tokens"] = (fresh.responses == self.processing_class.eos_token_id).sum().item()
        metrics["lr"] = self.lr_scheduler.get_last_lr()[0]
        metrics["episode"] = self.state.episode
        metrics.update(self.extra_metrics(batch, stats))
        self.kl_ctl.update(metrics["objective/kl"], self.args.batch_size)
        self.state.epoch = self.state.episode / self.train_dataset_len
        self.state.global_step += 1
        self.log(metrics)

    def extra_metrics(self, batch: EpisodeBatch, stats: dict[str, torch.Tensor]) -> dict[str, float]:
        """This package's metrics beyond TRL's: reward sources, efficiency, collapse, replay."""
        gather, counters, fresh = self.accelerator.gather_for_metrics, self.counters, batch.fresh()
        source_means = gather(fresh.source_scores).nanmean(0).tolist()  # NaN: a function gave None
        metrics = {f"rewards/{name}": value for name, value in zip(self.scorer.names, source_means, strict=True)}
        metrics["policy/grad_norm"] = float(np.mean(self._grad_norms or [math.nan]))
        metrics["objective/kl_coef"] = self.kl_ctl.value
        metrics["val/explained_variance"] = explained_variance(fresh)
        progress = self.update_progress
        metrics["train/ppo_epochs"] = progress.epochs
        if progress.early_stop_kl is not None:
            metrics["policy/early_stop_kl"] = progress.early_stop_kl
        metrics["train/skipped_steps"] = counters.skipped_steps
        metrics["train/whiten_fallbacks"] = counters.whiten_fallbacks
        tokens = torch.tensor([progress.trained_tokens], device=batch.padding_mask.device)
        counters.trained_episodes += int(
            self.accelerator.gather(torch.tensor([len(batch)], device=tokens.device)).sum()
        )
        counters.trained_tokens += int(self.accelerator.gather(tokens).sum())
        metrics["efficiency/generated_episodes"] = self.state.episode
        metrics["efficiency/trained_episodes"] = counters.trained_episodes
        metrics["efficiency/trained_tokens"] = counters.trained_tokens
        metrics["efficiency/sample_efficiency"] = counters.trained_episodes / max(1, self.state.episode)
        tokenizer = self.processing_class
        stop_ids = {tokenizer.pad_token_id, tokenizer.eos_token_id, self.stop_token_id} - {None}
        empty = gather(empty_responses(fresh, stop_ids).float()).mean().item()
        metrics["rollout/empty_fraction"] = empty
        self.warn_if_collapsing(empty)
        if self.replay is not None:
            metrics.update(self.replay.metrics(self.state.global_step + 1))
            metrics["buffer/size"] = (
                gather(torch.tensor([float(len(self.replay))], device=tokens.device)).mean().item()
            )
            metrics.update(replay_token_metrics(stats, gather))
        if self.args.reward_nonfinite_value is not None:
            metrics["rewards/nonfinite"] = self.scorer.nonfinite
        metrics.update(self.scorer.pop_logged())
        return metrics

    def warn_if_collapsing(self, empty_fraction: float) -> None:
        """Warn once when many responses are empty: the usual first sign of a collapsing policy."""
        if empty_fraction <= EMPTY_RESPONSE_WARNING or self.counters.warned_empty:
            return
        self.counters.warned_empty = True
        logger.warning(
            "%.0f%% of the responses of update %d are empty (the first token was the pad, eos or stop token). "
            "A policy drifting towards empty responses usually means `learning_rate` or `num_ppo_epochs` is too "
            "high, or the pad token can be sampled (keep `suppress_pad_token=True`, or use a pad token distinct "
            "from eos). Training stops if every response of an update is empty.",
            100 * empty_fraction,
            self.state.global_step + 1,
        )
