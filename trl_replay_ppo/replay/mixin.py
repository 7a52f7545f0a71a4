"""`ReplayMixin`: plugs a `ReplayBuffer` into `PhasedPPOTrainer`'s phases.

Per update (per rank)::

    fresh    = rollout()                                       # B episodes generated now
    replayed = buffer.sample(replay_sample_size)               # once the buffer holds min_replay_size
    replayed : recompute proximal log-probs and values under the current policy and critic;
               token weight = min(pi_prox / pi_behaviour, cap) * PER importance weight
    batch    = fresh + replayed  -> KL-shaped rewards and GAE for all rows -> PPO update
    buffer   : replayed rows get new priorities (mean |advantage|) and one more use;
               fresh rows are stored with theirs; too old / too reused episodes are evicted

Fresh rows carry no token weights (weight exactly 1), so with replay off, or before the buffer
fills, the update is the phased loop's, and so TRL's.
"""

from __future__ import annotations

import numpy as np
import torch
from trl.experimental.ppo.ppo_trainer import INVALID_LOGPROB

from trl_replay_ppo.config import ReplayPPOConfig
from trl_replay_ppo.episodes import EpisodeBatch, pad_episodes
from trl_replay_ppo.replay.buffer import ReplayBuffer
from trl_replay_ppo.replay.eviction import EvictionPolicy
from trl_replay_ppo.replay.sampler import PrioritizedSampler, UniformSampler
from trl_replay_ppo.replay.storage import Episode, EpisodeStorage


def build_replay_buffer(args: ReplayPPOConfig, seed: int) -> ReplayBuffer:
    """The buffer described by ``args``: ring storage, uniform or prioritized sampler, eviction policy."""
    capacity = args.replay_buffer_size
    if args.use_priority_sampling:
        sampler = PrioritizedSampler(capacity, args.priority_alpha, args.priority_beta, args.priority_staleness_decay)
    else:
        sampler = UniformSampler(capacity)
    eviction = EvictionPolicy(args.staleness_threshold, args.max_replay_reuse)
    return ReplayBuffer(EpisodeStorage(capacity), sampler, eviction, seed=seed)


def episode_priorities(batch: EpisodeBatch) -> np.ndarray:
    """(B,) mean |advantage| (before whitening) over each episode's response tokens."""
    mask = (~batch.padding_mask).float()
    per_row = (batch.raw_advantages.abs() * mask).sum(1) / mask.sum(1).clamp(min=1)
    return per_row.float().cpu().numpy()


def to_episodes(batch: EpisodeBatch, rows: range, pad_token_id: int) -> list[Episode]:
    """Episodes of ``rows`` trimmed to their real length, on CPU."""
    episodes = []
    queries, responses = batch.queries.cpu(), batch.responses.cpu()
    logprobs, ref_logprobs = batch.logprobs.cpu(), batch.ref_logprobs.cpu()
    lengths = (batch.sequence_lengths + 1).cpu().tolist()
    for row in rows:
        query = queries[row]
        length = lengths[row]
        episodes.append(
            Episode(
                query=query[query != pad_token_id].clone(),
                response=responses[row, :length].clone(),
                logprobs=logprobs[row, :length].clone(),
                ref_logprobs=ref_logprobs[row, :length].clone(),
                score=float(batch.scores[row]),
                source_scores=batch.source_scores[row].cpu().clone(),
            )
        )
    return episodes


def from_episodes(episodes: list[Episode], pad_token_id: int, device: torch.device) -> EpisodeBatch:
    """An `EpisodeBatch` of stored episodes: prompts left-padded, responses right-padded.

    Values are zero here; the caller recomputes them (and proximal log-probs) with the current models.
    """
    context_length = max(len(e.query) for e in episodes)
    response_length = max(1, max(len(e.response) for e in episodes))
    rows = len(episodes)
    query_responses = torch.full((rows, context_length + response_length), pad_token_id, dtype=torch.long)
    logprobs = torch.full((rows, response_length), INVALID_LOGPROB)
    ref_logprobs = torch.full((rows, response_length), INVALID_LOGPROB)
    for i, e in enumerate(episodes):
        query_responses[i, context_length - len(e.query) : context_length] = e.query
        query_responses[i, context_length : context_length + len(e.response)] = e.response
        logprobs[i, : len(e.logprobs)] = e.logprobs
        ref_logprobs[i, : len(e.ref_logprobs)] = e.ref_logprobs
    return EpisodeBatch(
        query_responses=query_responses.to(device),
        context_length=context_length,
        logprobs=logprobs.to(device),
        ref_logprobs=ref_logprobs.to(device),
        values=torch.zeros(rows, response_length, device=device),
        scores=torch.tensor([e.score for e in episodes], device=device),
        source_scores=torch.stack([e.source_scores for e in episodes]).to(device),
        sequence_lengths=torch.tensor([len(e.response) - 1 for e in episodes], device=device),
        num_fresh=0,
    )


def concat(fresh: EpisodeBatch, replayed: EpisodeBatch, pad_token_id: int) -> EpisodeBatch:
    """Fresh rows first, then replayed rows, padded to a common prompt and response length."""
    context_length = max(fresh.context_length, replayed.context_length)
    response_length = max(fresh.responses.shape[1], replayed.responses.shape[1])
    fresh = pad_episodes(fresh, context_length, response_length, pad_token_id)
    replayed = pad_episodes(replayed, context_length, response_length, pad_token_id)

    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(fresh, name), getattr(replayed, name)])

    ones = torch.ones_like(fresh.logprobs)
    return EpisodeBatch(
        query_responses=cat("query_responses"),
        context_length=context_length,
        logprobs=cat("logprobs"),
        ref_logprobs=cat("ref_logprobs"),
        values=cat("values"),
        scores=cat("scores"),
        source_scores=cat("source_scores"),
        sequence_lengths=cat("sequence_lengths"),
        num_fresh=len(fresh),
        proximal_logprobs=torch.cat([fresh.logprobs, replayed.proximal_logprobs]),
        token_weights=torch.cat([ones, replayed.token_weights]),
        replay_ids=list(replayed.replay_ids),
    )


REPLAY_STATS = ("replay_tokens", "replay_clipped", "replay_weight_sum")


class ReplayMixin:
    """Experience replay for a `PhasedPPOTrainer` subclass (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.replay_buffer = build_replay_buffer(self.args, self.local_seed) if self.args.use_replay_buffer else None

    def extend_batch(self, batch: EpisodeBatch) -> EpisodeBatch:
        """Append ``replay_sample_size`` replayed episodes once the buffer holds ``min_replay_size``."""
        batch = super().extend_batch(batch)
        args, buffer = self.args, self.replay_buffer
        if buffer is None or len(buffer) < max(args.min_replay_size, args.replay_sample_size):
            return batch
        version = self.state.global_step
        if isinstance(buffer.sampler, PrioritizedSampler):
            progress = version / max(1, args.num_total_batches)
            buffer.sampler.beta = args.priority_beta + (1.0 - args.priority_beta) * progress
        slots, episodes, sample_weights = buffer.sample(args.replay_sample_size, version)
        pad_token_id = self.processing_class.pad_token_id
        replayed = from_episodes(episodes, pad_token_id, self.accelerator.device)
        replayed.proximal_logprobs, replayed.values = self.current_logprobs_and_values(replayed)
        behaviour_ratio = torch.exp(replayed.proximal_logprobs - replayed.logprobs)
        weights = torch.clamp(behaviour_ratio, max=args.replay_importance_cap)
        weights = weights * torch.as_tensor(sample_weights, dtype=weights.dtype, device=weights.device)[:, None]
        replayed.token_weights = torch.masked_fill(weights, replayed.padding_mask, 0.0)
        replayed.replay_ids = slots.tolist()
        return concat(batch, replayed, pad_token_id)

    @torch.no_grad()
    def current_logprobs_and_values(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, R) log-probs of the current policy and values of the current critic, masked like a rollout's."""
        context_length, chunk = batch.context_length, self.args.local_rollout_forward_batch_size
        policy = self.accelerator.unwrap_model(self.model).policy
        logprobs, values = [], []
        with self.accelerator.autocast():
            for i in range(0, len(batch), chunk):
                query_response = batch.query_responses[i : i + chunk]
                logprobs.append(self.response_logprobs(policy, query_response, context_length))
                values.append(self.response_values(query_response, context_length))
        logprobs = torch.masked_fill(torch.cat(logprobs), batch.padding_mask, INVALID_LOGPROB)
        values = torch.masked_fill(torch.cat(values), batch.padding_mask_p1, 0)
        return logprobs, values

    def after_ppo_update(self, batch: EpisodeBatch) -> None:
        """Re-prioritise replayed rows, store the fresh ones, evict what is too old or too reused."""
        super().after_ppo_update(batch)
        buffer = self.replay_buffer
        if buffer is None:
            return
        version = self.state.global_step
        priorities = episode_priorities(batch)
        if batch.replay_ids:
            slots = np.asarray(batch.replay_ids)
            buffer.mark_replayed(slots)
            buffer.update_priorities(slots, priorities[batch.num_fresh :], version)
        fresh = to_episodes(batch, range(batch.num_fresh), self.processing_class.pad_token_id)
        buffer.add(fresh, priorities[: batch.num_fresh], version)
        buffer.evict(version + 1)

    def rank_state(self) -> dict:
        buffer = self.replay_buffer
        return {**super().rank_state(), "replay_buffer": None if buffer is None else buffer.state_dict()}

    def load_rank_state(self, state: dict) -> None:
        super().load_rank_state(state)
        if (state.get("replay_buffer") is None) != (self.replay_buffer is None):
            raise ValueError(
                "The checkpoint and this run disagree on `use_replay_buffer`; resume with the value it was saved with."
            )
        if self.replay_buffer is not None:
            self.replay_buffer.load_state_dict(state["replay_buffer"])

    def extra_metrics(self, batch: EpisodeBatch, stats: dict[str, torch.Tensor]) -> dict[str, float]:
        metrics = super().extra_metrics(batch, stats)
        gather = self.accelerator.gather_for_metrics
        if self.replay_buffer is None:
            return metrics
        sizes = gather(torch.tensor([float(len(self.replay_buffer))], device=self.accelerator.device))
        metrics.update(self.replay_buffer.stats(self.state.global_step + 1))
        metrics["buffer/size"] = sizes.mean().item()
        if "replay_tokens" in stats:
            tokens = gather(stats["replay_tokens"].sum().reshape(1)).sum()
            metrics["replay/clipfrac"] = (gather(stats["replay_clipped"].sum().reshape(1)).sum() / tokens).item()
            metrics["replay/is_weight_mean"] = (
                gather(stats["replay_weight_sum"].sum().reshape(1)).sum() / tokens
            ).item()
        metrics["replay/episodes"] = len(batch) - batch.num_fresh
        return metrics
