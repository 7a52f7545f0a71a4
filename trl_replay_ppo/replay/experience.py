"""`ExperienceReplay`: the replay component a trainer holds (``trainer.replay``), built from the config.

Per update (per rank)::

    fresh    = rollout()                                        # B episodes generated now
    batch    = replay.augment(fresh, forwards, version, ...)    # + replay_ratio x the batch replayed rows
               replayed rows: proximal log-probs and values recomputed by `forwards` (the current
               policy and critic); token weight = min(pi_prox / pi_behaviour, cap) * row weight,
               row weight = prioritized-replay weight (N P(i))^-beta (mean 1), or 1 when uniform;
               all of them dropped when the ESS of the capped weights falls below `min_ess` on
               any rank
    ... advantages, PPO update ...
    replay.record(batch, version)   # priorities (mean |advantage|), one more use, fresh rows stored,
                                    # episodes too old or too reused evicted

Fresh rows carry weight exactly 1, so before the buffer fills, an update is the on-policy one.
Whether to replay is decided from the smallest buffer over all ranks, so every rank runs the same
number of micro-batches (collectives would otherwise wait forever).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol

import numpy as np
import torch

from trl_replay_ppo.core.episodes import EpisodeBatch, append_replayed, from_episodes, to_episodes
from trl_replay_ppo.replay.buffer import ReplayBuffer
from trl_replay_ppo.replay.eviction import EvictionPolicy
from trl_replay_ppo.replay.sampler import PrioritizedSampler, UniformSampler
from trl_replay_ppo.replay.schedules import LinearSchedule
from trl_replay_ppo.replay.storage import EpisodeStorage

logger = logging.getLogger(__name__)

IDLE_WARNING_UPDATES = 10  # warn when replay has not run for this many updates past its warm-up


class ReplayForwards(Protocol):
    """What replay needs from the trainer: the current models' view of stored episodes."""

    def logprobs_and_values(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, R) log-probs under the current policy and values under the current critic, masked like a rollout's."""

    def min_over_ranks(self, value: float) -> float:
        """The smallest ``value`` over all ranks (a collective: every rank calls it at the same point)."""


def episode_priorities(batch: EpisodeBatch) -> np.ndarray:
    """(B,) mean |advantage| (before whitening) over each episode's response tokens.

    An episode's priority is how far its return was from the critic's expectation at its last use:
    large for surprising successes and failures, near 0 for what the critic already predicts.
    """
    if batch.raw_advantages is None:
        raise ValueError("Priorities need the batch's advantages: compute them before recording the batch.")
    valid = (~batch.padding_mask).float()
    per_row = (batch.raw_advantages.abs() * valid).sum(1) / valid.sum(1).clamp(min=1)
    priorities: np.ndarray = per_row.float().cpu().numpy()
    return priorities


def effective_sample_size(weights: np.ndarray | torch.Tensor) -> float:
    """Normalised effective sample size ``(sum w)^2 / (n sum w^2)`` of n importance weights, in [0, 1].

    1 when all weights are equal; 1/n when one weight carries everything; 0 when all are 0.
    """
    weights = torch.as_tensor(weights, dtype=torch.float64).flatten()
    squares = (weights**2).sum()
    return float(weights.sum() ** 2 / (len(weights) * squares)) if squares > 0 else 0.0


class ExperienceReplay:
    """A `ReplayBuffer` plus what the trainer needs of it: augmenting a batch, recording it, metrics, state."""

    def __init__(
        self,
        buffer: ReplayBuffer,
        sample_size: int,
        min_size: int,
        importance_cap: float,
        beta: LinearSchedule,
        pad_token_id: int,
        fresh_per_update: int,
        vocab_size: int,
        min_ess: float = 0.0,
    ):
        self.buffer = buffer
        self.sample_size = sample_size
        self.min_size = min_size
        self.importance_cap = importance_cap
        self.min_ess = min_ess
        self.beta = beta
        self.pad_token_id = pad_token_id
        self.vocab_size = vocab_size  # stored token ids lie below it (a checkpoint's are checked against it)
        self.warmup_updates = math.ceil(max(min_size, sample_size) / fresh_per_update)
        self.idle_updates = 0
        self.low_ess_skips = 0
        self.warned_idle = False
        self._last: dict[str, float] = {}

    @classmethod
    def from_config(cls, args: Any, seed: int, pad_token_id: int, vocab_size: int) -> ExperienceReplay:
        """The replay described by a `ReplayPPOConfig`; errors name the config field and the fix."""
        capacity = args.replay_buffer_size
        try:
            storage = EpisodeStorage(capacity)
            sampler = (
                PrioritizedSampler(capacity, args.priority_alpha, args.priority_staleness_decay)
                if args.use_priority_sampling
                else UniformSampler()
            )
        except ValueError as error:
            raise ValueError(f"`replay_buffer_size`={capacity}: {error} Use a positive size.") from error
        eviction = EvictionPolicy(args.staleness_threshold, args.max_replay_reuse)
        beta = LinearSchedule(args.priority_beta, 1.0, args.num_total_batches)
        return cls(
            ReplayBuffer(storage, sampler, eviction, seed=seed),
            sample_size=args.replayed_per_update,
            min_size=args.min_replay_size,
            importance_cap=args.replay_importance_cap,
            beta=beta,
            min_ess=args.replay_min_ess,
            pad_token_id=pad_token_id,
            fresh_per_update=args.local_batch_size,
            vocab_size=vocab_size,
        )

    def __len__(self) -> int:
        return len(self.buffer)

    def augment(
        self, batch: EpisodeBatch, forwards: ReplayForwards, version: int, fewest_over_ranks: int
    ) -> EpisodeBatch:
        """``batch`` plus ``sample_size`` replayed rows, once every rank's buffer holds enough episodes.

        ``fewest_over_ranks`` is the smallest buffer size over all ranks (one all-reduce), so all
        ranks decide alike.
        """
        self._last = {"replay/episodes": 0}
        if fewest_over_ranks < max(self.min_size, self.sample_size):
            self._note_idle(fewest_over_ranks)
            return batch
        self.idle_updates = 0
        slots, episodes, row_weights = self.buffer.sample(self.sample_size, beta=self.beta(version))
        replayed = from_episodes(episodes, self.pad_token_id, batch.query_responses.device)
        replayed.proximal_logprobs, replayed.values = forwards.logprobs_and_values(replayed)
        behaviour_ratio = torch.exp(replayed.proximal_logprobs - replayed.logprobs)
        capped = behaviour_ratio.clamp(max=self.importance_cap)  # truncated importance sampling
        ess = effective_sample_size(capped[~replayed.padding_mask])
        self._last.update({"replay/ess_behaviour": ess, "replay/ess_priority": effective_sample_size(row_weights)})
        if self.min_ess > 0 and forwards.min_over_ranks(ess) < self.min_ess:
            self.low_ess_skips += 1
            return batch
        replayed.row_weights = torch.as_tensor(row_weights, dtype=torch.float32, device=behaviour_ratio.device)
        replayed.token_weights = torch.masked_fill(capped * replayed.row_weights[:, None], replayed.padding_mask, 0.0)
        replayed.replay_ids = slots.tolist()
        self._last["replay/episodes"] = len(slots)
        return append_replayed(batch, replayed, self.pad_token_id)

    def _note_idle(self, fewest_over_ranks: int) -> None:
        self.idle_updates += 1
        if self.warned_idle or self.idle_updates <= self.warmup_updates + IDLE_WARNING_UPDATES:
            return
        self.warned_idle = True
        logger.warning(
            "Replay has not run for %d updates: the smallest buffer over the ranks holds %d episodes, fewer than "
            "max(`min_replay_size`, replayed per update) = %d. Episodes leave the buffer after "
            "`staleness_threshold` updates or `max_replay_reuse` replays; raise those or lower `min_replay_size`.",
            self.idle_updates,
            fewest_over_ranks,
            max(self.min_size, self.sample_size),
        )

    def record(self, batch: EpisodeBatch, version: int) -> None:
        """After the update: re-prioritise replayed rows, store the fresh ones, evict what is too old or too reused."""
        priorities = episode_priorities(batch)
        if batch.replay_ids:
            slots = np.asarray(batch.replay_ids)
            self.buffer.mark_replayed(slots)
            self.buffer.update_priorities(slots, priorities[batch.num_fresh :])
        fresh = to_episodes(batch, range(batch.num_fresh), self.pad_token_id)
        self.buffer.add(fresh, priorities[: batch.num_fresh], version)
        self.buffer.evict(version + 1)

    def metrics(self, version: int) -> dict[str, float]:
        """``buffer/*`` and ``replay/*`` metrics of this rank (the trainer averages ``buffer/size`` over ranks)."""
        low_ess = {"replay/low_ess_skips": self.low_ess_skips} if self.min_ess > 0 else {}
        return {**self.buffer.stats(version), **self._last, **low_ess}

    def state_dict(self) -> dict[str, Any]:
        return {
            "buffer": self.buffer.state_dict(),
            "idle_updates": self.idle_updates,
            "low_ess_skips": self.low_ess_skips,
            "warned_idle": self.warned_idle,
        }

    def check_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.check_state_dict(state["buffer"], self.vocab_size)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.idle_updates = int(state["idle_updates"])
        self.low_ess_skips = int(state["low_ess_skips"])
        self.warned_idle = bool(state["warned_idle"])
