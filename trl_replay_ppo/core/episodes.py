"""`EpisodeBatch`: the tensors of one update's episodes, from rollout to PPO update, and its conversions.

Shapes: B episodes, Lq prompt tokens (left-padded), R response tokens (right-padded), so
``query_responses`` is (B, Lq + R) and every per-token tensor is (B, R).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

from trl_replay_ppo.core.masking import response_padding_mask

INVALID_LOGPROB = 1.0  # the log-prob placed on padding (TRL's value), masked out of every loss


@dataclass
class Episode:
    """One episode as the replay buffer stores it: tensors trimmed to their real length, on CPU.

    ``response`` holds the tokens up to and including the last one (``length`` tokens); the
    per-token log-probs have the same length.
    """

    query: torch.Tensor  # (Lq_i,) prompt tokens, left padding removed
    response: torch.Tensor  # (length,)
    logprobs: torch.Tensor  # (length,) behaviour policy log-probs
    ref_logprobs: torch.Tensor  # (length,) reference log-probs
    score: float
    source_scores: torch.Tensor  # (S,) per reward source


@dataclass
class EpisodeBatch:
    """Episodes of one update. Rows ``[:num_fresh]`` were generated this update, the rest are replayed."""

    query_responses: torch.Tensor  # (B, Lq + R) prompt + raw sampled response
    context_length: int  # Lq
    logprobs: torch.Tensor  # (B, R) behaviour policy log-probs, INVALID_LOGPROB on padding
    ref_logprobs: torch.Tensor  # (B, R) reference log-probs, INVALID_LOGPROB on padding
    values: torch.Tensor  # (B, R) critic values, 0 past the score position
    scores: torch.Tensor  # (B,) total reward of each completion
    source_scores: torch.Tensor  # (B, S) reward of each source (reward model, then reward functions)
    sequence_lengths: torch.Tensor  # (B,) index of the last response token (-1 if empty)
    num_fresh: int
    # (B,) where the score is added: the token after the last, or the last when the row filled its width.
    # Fixed when the row is created, so padding a batch wider never moves a row's score.
    score_index: torch.Tensor | None = None
    # Off-policy fields, set for replayed rows (None means "same as behaviour", i.e. fresh data).
    proximal_logprobs: torch.Tensor | None = None  # (B, R) current policy's log-probs before this update
    token_weights: torch.Tensor | None = None  # (B, R) truncated IS weight x row weight; 1 for fresh rows
    row_weights: torch.Tensor | None = None  # (B,) prioritized-replay weight (mean 1 over replayed); 1 if fresh
    replay_ids: list[int] = field(default_factory=list)  # storage slots of the replayed rows, in order
    # Set by the advantage phase.
    kl: torch.Tensor | None = None  # (B, R) per-token KL estimate against the reference
    non_score_reward: torch.Tensor | None = None  # (B, R) -kl_coef * kl
    advantages: torch.Tensor | None = None  # (B, R) whitened GAE advantages, 0 on padding
    returns: torch.Tensor | None = None  # (B, R) advantages + values (before whitening)
    raw_advantages: torch.Tensor | None = None  # (B, R) GAE advantages before whitening
    # Derived from `sequence_lengths` and `score_index`.
    padding_mask: torch.Tensor = field(init=False)  # (B, R) True past the last response token
    padding_mask_p1: torch.Tensor = field(init=False)  # (B, R) True past the score position

    def __post_init__(self) -> None:
        response_length = self.query_responses.shape[1] - self.context_length
        lengths_p1 = self.sequence_lengths + 1
        if self.score_index is None:
            self.score_index = torch.where(lengths_p1 < response_length, lengths_p1, self.sequence_lengths)
        self.padding_mask = response_padding_mask(self.sequence_lengths, response_length)
        positions = torch.arange(response_length, device=self.score_index.device)
        self.padding_mask_p1 = positions.unsqueeze(0) > self.score_index.unsqueeze(1)

    @property
    def responses(self) -> torch.Tensor:
        """(B, R) sampled response tokens."""
        return self.query_responses[:, self.context_length :]

    @property
    def queries(self) -> torch.Tensor:
        """(B, Lq) left-padded prompt tokens."""
        return self.query_responses[:, : self.context_length]

    @property
    def policy_logprobs(self) -> torch.Tensor:
        """(B, R) log-probs the clip is centred on: proximal for replayed rows, behaviour for fresh ones."""
        return self.logprobs if self.proximal_logprobs is None else self.proximal_logprobs

    def __len__(self) -> int:
        return self.query_responses.shape[0]

    def fresh(self) -> EpisodeBatch:
        """The rows generated this update (the whole batch when nothing is replayed)."""
        if self.num_fresh == len(self):
            return self
        return self.select(slice(0, self.num_fresh))

    def select(self, rows: slice | torch.Tensor) -> EpisodeBatch:
        """The given rows, with every per-episode tensor sliced alike."""
        sliced = {
            f.name: getattr(self, f.name)[rows]
            for f in fields(self)
            if f.init and isinstance(getattr(self, f.name), torch.Tensor)
        }
        num_rows = sliced["query_responses"].shape[0]
        return replace(self, **sliced, num_fresh=min(self.num_fresh, num_rows), replay_ids=[])


def pad_episodes(batch: EpisodeBatch, context_length: int, response_length: int, pad_token_id: int) -> EpisodeBatch:
    """Left-pad prompts to ``context_length`` and right-pad responses to ``response_length``.

    Lets episodes generated at different updates (different prompt and response lengths) be
    concatenated. Padding tokens are masked everywhere, and each row keeps its score position,
    so nothing a loss reads changes.
    """
    left = context_length - batch.context_length
    right = response_length - batch.responses.shape[1]
    if left == 0 and right == 0:
        return batch
    query_responses = torch.nn.functional.pad(batch.query_responses, (left, right), value=pad_token_id)

    def per_token(t: torch.Tensor, value: float) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, right), value=value)

    def optional(t: torch.Tensor | None, value: float) -> torch.Tensor | None:
        return None if t is None else per_token(t, value)

    return replace(
        batch,
        query_responses=query_responses,
        context_length=context_length,
        logprobs=per_token(batch.logprobs, INVALID_LOGPROB),
        ref_logprobs=per_token(batch.ref_logprobs, INVALID_LOGPROB),
        values=per_token(batch.values, 0.0),
        proximal_logprobs=optional(batch.proximal_logprobs, INVALID_LOGPROB),
        token_weights=optional(batch.token_weights, 0.0),
    )


def to_episodes(batch: EpisodeBatch, rows: range, pad_token_id: int) -> list[Episode]:
    """Episodes of ``rows``, trimmed to their real length, on CPU (what the replay buffer stores)."""
    queries, responses = batch.queries.cpu(), batch.responses.cpu()
    logprobs, ref_logprobs = batch.logprobs.cpu(), batch.ref_logprobs.cpu()
    lengths = (batch.sequence_lengths + 1).cpu().tolist()
    episodes = []
    for row in rows:
        query, length = queries[row], lengths[row]
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

    Responses get one padding column more than the longest needs, so every row's score sits on
    the token after its last one, where the critic gives a value (a row filling the width would
    lose its terminal value when padded wider later). Values are zero here: the caller recomputes
    them, and the proximal log-probs, with the current models.
    """
    context_length = max(len(e.query) for e in episodes)
    response_length = max(len(e.response) for e in episodes) + 1
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


def _or_ones(weights: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(like, dtype=torch.float32) if weights is None else weights


def append_replayed(fresh: EpisodeBatch, replayed: EpisodeBatch, pad_token_id: int) -> EpisodeBatch:
    """Fresh rows first, then replayed rows (with their off-policy fields), padded to a common width."""
    context_length = max(fresh.context_length, replayed.context_length)
    response_length = max(fresh.responses.shape[1], replayed.responses.shape[1])
    fresh = pad_episodes(fresh, context_length, response_length, pad_token_id)
    replayed = pad_episodes(replayed, context_length, response_length, pad_token_id)

    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(fresh, name), getattr(replayed, name)])

    proximal, token_weights, row_weights = replayed.proximal_logprobs, replayed.token_weights, replayed.row_weights
    if proximal is None or token_weights is None or row_weights is None:
        raise ValueError("Replayed rows need their proximal log-probs, token weights and row weights.")
    return EpisodeBatch(
        query_responses=cat("query_responses"),
        context_length=context_length,
        logprobs=cat("logprobs"),
        ref_logprobs=cat("ref_logprobs"),
        values=cat("values"),
        scores=cat("scores"),
        source_scores=cat("source_scores"),
        sequence_lengths=cat("sequence_lengths"),
        score_index=cat("score_index"),
        num_fresh=len(fresh),
        proximal_logprobs=torch.cat([fresh.policy_logprobs, proximal]),
        token_weights=torch.cat([_or_ones(fresh.token_weights, fresh.logprobs), token_weights]),
        row_weights=torch.cat([_or_ones(fresh.row_weights, fresh.scores), row_weights]),
        replay_ids=list(replayed.replay_ids),
    )
