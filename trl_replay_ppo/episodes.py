"""`EpisodeBatch`: the tensors of one update's episodes, from rollout to PPO update.

Shapes: B episodes, Lq prompt tokens (left-padded), R response tokens (right-padded), so
``query_responses`` is (B, Lq + R) and every per-token tensor is (B, R).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from trl.experimental.ppo.ppo_trainer import INVALID_LOGPROB

from trl_replay_ppo.masking import response_padding_masks


@dataclass
class EpisodeBatch:
    """Episodes of one update. Rows ``[:num_fresh]`` were generated this update, the rest are replayed."""

    query_responses: torch.Tensor  # (B, Lq + R) prompt + raw sampled response
    context_length: int  # Lq
    logprobs: torch.Tensor  # (B, R) behaviour policy log-probs, INVALID_LOGPROB on padding
    ref_logprobs: torch.Tensor  # (B, R) reference log-probs, INVALID_LOGPROB on padding
    values: torch.Tensor  # (B, R) critic values, 0 past the token after the last
    scores: torch.Tensor  # (B,) total reward of each completion
    source_scores: torch.Tensor  # (B, S) reward of each source (reward model, then reward functions)
    sequence_lengths: torch.Tensor  # (B,) index of the last response token (-1 if empty)
    num_fresh: int
    # Off-policy fields, set for replayed rows (None means "same as behaviour", i.e. fresh data).
    proximal_logprobs: torch.Tensor | None = None  # (B, R) current policy's log-probs before this update
    token_weights: torch.Tensor | None = None  # (B, R) truncated IS weight x PER weight; 1 for fresh rows
    replay_ids: list[int] = field(default_factory=list)  # storage slots of the replayed rows, in order
    # Set by the advantage phase.
    kl: torch.Tensor | None = None  # (B, R) per-token KL estimate against the reference
    non_score_reward: torch.Tensor | None = None  # (B, R) -kl_coef * kl
    advantages: torch.Tensor | None = None  # (B, R) whitened GAE advantages, 0 on padding
    returns: torch.Tensor | None = None  # (B, R) advantages + values (before whitening)
    raw_advantages: torch.Tensor | None = None  # (B, R) GAE advantages before whitening
    # Derived from `sequence_lengths`.
    padding_mask: torch.Tensor = field(init=False)  # (B, R) True past the last response token
    padding_mask_p1: torch.Tensor = field(init=False)  # (B, R) True past the token after the last

    def __post_init__(self) -> None:
        response_length = self.query_responses.shape[1] - self.context_length
        self.padding_mask, self.padding_mask_p1 = response_padding_masks(self.sequence_lengths, response_length)

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
    concatenated. Padding tokens are masked everywhere, so nothing a loss reads changes.
    """
    left = context_length - batch.context_length
    right = response_length - batch.responses.shape[1]
    if left == 0 and right == 0:
        return batch
    query_responses = torch.nn.functional.pad(batch.query_responses, (left, right), value=pad_token_id)

    def per_token(t: torch.Tensor | None, value: float) -> torch.Tensor | None:
        return None if t is None else torch.nn.functional.pad(t, (0, right), value=value)

    return replace(
        batch,
        query_responses=query_responses,
        context_length=context_length,
        logprobs=per_token(batch.logprobs, INVALID_LOGPROB),
        ref_logprobs=per_token(batch.ref_logprobs, INVALID_LOGPROB),
        values=per_token(batch.values, 0.0),
        proximal_logprobs=per_token(batch.proximal_logprobs, INVALID_LOGPROB),
        token_weights=per_token(batch.token_weights, 0.0),
    )
