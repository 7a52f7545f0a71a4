"""`ModelRunner`: every generation and forward pass of the policy, the reference and the critic.

The trainer's rollout, loss and evaluation, and replay (`trl_replay_ppo.replay.ReplayForwards`)
call it. Shapes: B rows, Lq prompt tokens, R response tokens, V vocabulary; ``query_responses`` is
(B, Lq + R) and ``context_length`` is Lq.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from transformers import GenerationConfig

from trl_replay_ppo.core.episodes import INVALID_LOGPROB, EpisodeBatch
from trl_replay_ppo.core.masking import suppress_token
from trl_replay_ppo.integrations.compat import unwrap_model_for_generation
from trl_replay_ppo.models.forwards import (
    forward,
    gather_logprobs,
    response_positions,
    sampled_logprobs,
    sequence_scores,
)
from trl_replay_ppo.models.generation import batch_generation, truncate_response


class Sampler(Protocol):
    """What samples rollouts instead of the trainer's own ``generate`` (`VLLMSampler`, `GenerateAhead`)."""

    metric_prefix: str  # of the trainer/sampler mismatch metrics
    last_metrics: dict[str, float]  # the sampler's own, of its last rollout

    def sync(self) -> None:
        """Bring the sampler's weights up to the trainer's before a rollout."""

    def generate(self, queries: torch.Tensor, max_new_tokens: int, update: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Lq + R) ids and (B, R) behaviour log-probs of update ``update``'s rollout of (B, Lq) ``queries``."""
        ...


def generation_kwargs(
    max_new_tokens: int, temperature: float | None, suppressed_token_id: int | None
) -> dict[str, Any]:
    """Settings for `generate`: sampling at ``temperature`` (plain, no top-k/top-p), or greedy for None.

    The pad token stays impossible when it is suppressed (`suppressed_token`).
    """
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    if suppressed_token_id is not None:
        kwargs["suppress_tokens"] = [suppressed_token_id]
    if temperature is None:
        return {**kwargs, "do_sample": False}
    return {**kwargs, "temperature": temperature + 1e-7, "top_k": 0, "top_p": 1.0, "do_sample": True}


def suppressed_token(
    suppress_pad_token: bool, pad_token_id: int | None, eos_token_id: int | None, vocab_rows: int
) -> int | None:
    """The pad token when it must never be sampled (``suppress_pad_token``, pad distinct from eos), else None.

    A sampled pad token is indistinguishable from padding: masked out of every loss, the policy
    would never learn not to emit it. When pad and eos are the same token, it stays a legal stop; a pad
    token past the policy's ``vocab_rows`` (one added without resizing) cannot be sampled at all.
    """
    if not suppress_pad_token or pad_token_id == eos_token_id or (pad_token_id or 0) >= vocab_rows:
        return None
    return pad_token_id


class ModelRunner:
    """Sampling, truncation, log-probs (policy, reference) and critic values, for a prepared policy + critic.

    Args:
        model: the accelerate-prepared `PolicyAndValueWrapper` (``.policy``, ``.value_model``).
        accelerator: the trainer's.
        pad_token_id: the tokenizer's pad token (masked out of every model input).
        ref_model: the reference model, or None when the reference is the policy with its adapter disabled.
        null_ref_context: a context in which the policy acts as the reference (used when ``ref_model`` is None).
        temperature: the sampling temperature the log-probs are taken at.
        suppressed_token_id: a token made impossible in sampling and log-probs (`suppressed_token`), or None.
        stop_token_id: responses are truncated after it; None keeps them whole.
        forward_batch_size: rows per no-grad forward pass (``local_rollout_forward_batch_size``).
        gather_deepspeed3_params: gather ZeRO-3 weights for generation (``ds3_gather_for_generation``).
        sampler: a `Sampler` that generates rollouts instead of ``generate`` (``use_vllm``, ``generate_ahead``),
            or None.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        accelerator: Accelerator,
        pad_token_id: int,
        *,
        ref_model: torch.nn.Module | None,
        null_ref_context: Callable[[], AbstractContextManager],
        temperature: float,
        suppressed_token_id: int | None,
        stop_token_id: int | None,
        forward_batch_size: int,
        gather_deepspeed3_params: bool = True,
        sampler: Sampler | None = None,
    ):
        self.model = model
        self.accelerator = accelerator
        self.pad_token_id = pad_token_id
        self.ref_model = ref_model
        self.null_ref_context = null_ref_context
        self.temperature = temperature
        self.suppressed_token_id = suppressed_token_id
        self.stop_token_id = stop_token_id
        self.forward_batch_size = forward_batch_size
        self.gather_deepspeed3_params = gather_deepspeed3_params
        self.sampler = sampler

    @property
    def policy(self) -> torch.nn.Module:
        """The policy, unwrapped from DDP / DeepSpeed."""
        return self.accelerator.unwrap_model(self.model).policy

    def generation_kwargs(self, max_new_tokens: int, temperature: float | None) -> dict[str, Any]:
        """`generation_kwargs` with this runner's suppressed token."""
        return generation_kwargs(max_new_tokens, temperature, self.suppressed_token_id)

    def generate(
        self, queries: torch.Tensor, generation_kwargs: dict[str, Any], chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample responses ``chunk`` queries at a time: (B, Lq + R) ids and (B, R, V) processed logits."""
        with unwrap_model_for_generation(
            self.model,
            self.accelerator,
            gather_deepspeed3_params=self.gather_deepspeed3_params,
            generation_kwargs=generation_kwargs,
        ) as unwrapped_model:
            return batch_generation(
                unwrapped_model.policy, queries, chunk, self.pad_token_id, GenerationConfig(**generation_kwargs)
            )

    def sample(
        self, queries: torch.Tensor, generation_kwargs: dict[str, Any], update: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """A rollout's responses: (B, Lq + R) ids, (B, R) behaviour log-probs of the sampled tokens, and (B, R)
        proximal log-probs, the trainer's own forward, when the sampler is not the trainer (a `Sampler`), else None."""
        chunk, context_length = self.forward_batch_size, queries.shape[1]
        if self.sampler is None:
            query_responses, logits = self.generate(queries, generation_kwargs, chunk)
            return query_responses, sampled_logprobs(logits, query_responses[:, context_length:], chunk), None
        self.sampler.sync()  # the weights of the last update, or of the checkpoint just resumed
        query_responses, behaviour = self.sampler.generate(queries, generation_kwargs["max_new_tokens"], update)
        proximal = [
            self.response_logprobs(self.policy, query_responses[i : i + chunk], context_length)
            for i in range(0, len(queries), chunk)
        ]
        return query_responses, behaviour, torch.cat(proximal, 0)

    def truncate(self, responses: torch.Tensor) -> torch.Tensor:
        """(B, R) responses with everything after the first stop token replaced by padding."""
        if self.stop_token_id is None:
            return responses
        return truncate_response(self.stop_token_id, self.pad_token_id, responses)

    def response_logits(self, logits: torch.Tensor, context_length: int) -> torch.Tensor:
        """(b, R, V) fp32 logits of the response positions, temperature-scaled, the suppressed token impossible."""
        logits = response_positions(logits, context_length).float()
        logits /= self.temperature + 1e-7
        return suppress_token(logits, self.suppressed_token_id)

    def train_forward(self, query_responses: torch.Tensor, context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward of policy and critic with gradients: (b, R, V) response logits and (b, R) fp32 values."""
        output, values = forward(self.model, query_responses, self.pad_token_id)
        logits = self.response_logits(output.logits, context_length)
        return logits, response_positions(values, context_length).squeeze(-1).float()

    def response_logprobs(
        self, model: torch.nn.Module, query_responses: torch.Tensor, context_length: int
    ) -> torch.Tensor:
        """(b, R) log-probs of the responses under ``model``: the distribution they were sampled from."""
        output = forward(model, query_responses, self.pad_token_id)
        return gather_logprobs(
            self.response_logits(output.logits, context_length), query_responses[:, context_length:]
        )

    def response_values(self, query_responses: torch.Tensor, context_length: int) -> torch.Tensor:
        """(b, R) critic values at each response position (before its token is generated)."""
        value_model = self.accelerator.unwrap_model(self.model).value_model
        values, _, _ = sequence_scores(value_model, query_responses, self.pad_token_id, context_length)
        return response_positions(values, context_length).squeeze(-1).float()

    def ref_logprobs(self, query_responses: torch.Tensor, context_length: int) -> torch.Tensor:
        """(b, R) reference log-probs: the reference model, or the policy with its adapter disabled."""
        if self.ref_model is None:
            with self.null_ref_context():
                return self.response_logprobs(self.model.policy, query_responses, context_length)
        return self.response_logprobs(self.ref_model, query_responses, context_length)

    @torch.no_grad()
    def logprobs_and_values(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, R) log-probs of the current policy and values of the current critic, masked like a rollout's.

        What replay calls to recompute proximal log-probs and values of stored episodes.
        """
        context_length, chunk = batch.context_length, self.forward_batch_size
        model = self.accelerator.unwrap_model(self.model)
        logprobs, values = [], []
        with self.accelerator.autocast():
            for i in range(0, len(batch), chunk):
                query_response = batch.query_responses[i : i + chunk]
                output, value = forward(model, query_response, self.pad_token_id)  # one pass with a shared head
                responses = query_response[:, context_length:]
                logprobs.append(gather_logprobs(self.response_logits(output.logits, context_length), responses))
                values.append(response_positions(value, context_length).squeeze(-1).float())
        logprobs = torch.masked_fill(torch.cat(logprobs), batch.padding_mask, INVALID_LOGPROB)
        values = torch.masked_fill(torch.cat(values), batch.padding_mask_p1, 0)
        return logprobs, values

    @torch.no_grad()
    def sequence_kl(self, queries: torch.Tensor, responses: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """(B,) KL(policy || reference) of each response, summed over its valid tokens (k1 estimator, nats)."""
        query_responses = torch.cat((queries, responses), 1)
        context_length = queries.shape[1]
        with self.accelerator.autocast():
            logprobs = self.response_logprobs(self.policy, query_responses, context_length)
            ref_logprobs = self.ref_logprobs(query_responses, context_length)
        return torch.masked_fill(logprobs - ref_logprobs, padding_mask, 0).sum(1)

    def min_over_ranks(self, value: float) -> float:
        """The smallest ``value`` over all ranks (one all-gather; every rank must call it)."""
        gathered = self.accelerator.gather(torch.tensor([value], dtype=torch.float64, device=self.accelerator.device))
        return float(gathered.min())
