"""`ModelPasses`: the trainer's generation and forward passes, shared by rollout, replay and evaluation.

A mixin of `trl_replay_ppo.trainer.driver.ReplayPPOTrainer`. It reads the trainer's ``model`` (policy + critic),
``ref_model``, ``accelerator``, ``args``, ``processing_class``, ``stop_token_id`` and ``scorer``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import GenerationConfig

from trl_replay_ppo.core.episodes import INVALID_LOGPROB, EpisodeBatch
from trl_replay_ppo.core.masking import last_token_index, suppress_token
from trl_replay_ppo.integrations.compat import unwrap_model_for_generation
from trl_replay_ppo.models.forwards import forward, gather_logprobs, sequence_scores
from trl_replay_ppo.models.generation import batch_generation, truncate_response


class ModelPasses:
    """Sampling, truncation, log-probs (policy, reference), critic values, and generate-then-score."""

    @property
    def suppressed_token_id(self) -> int | None:
        """The pad token when it must never be sampled (``suppress_pad_token``, pad distinct from eos), else None.

        A sampled pad token is indistinguishable from padding: masked out of every loss, the policy
        would never learn not to emit it. When pad and eos are the same token, it stays a legal stop.
        """
        tokenizer = self.processing_class
        if not self.args.suppress_pad_token or tokenizer.pad_token_id == tokenizer.eos_token_id:
            return None
        return tokenizer.pad_token_id

    def suppress_kwargs(self) -> dict[str, Any]:
        """Generation settings that keep the suppressed token from being sampled."""
        token = self.suppressed_token_id
        return {} if token is None else {"suppress_tokens": [token]}

    def generate(
        self, queries: torch.Tensor, generation_kwargs: dict[str, Any], chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample responses ``chunk`` queries at a time: (B, Lq + R) ids and (B, R, V) processed logits."""
        with unwrap_model_for_generation(
            self.model,
            self.accelerator,
            gather_deepspeed3_params=self.args.ds3_gather_for_generation,
            generation_kwargs=generation_kwargs,
        ) as unwrapped_model:
            return batch_generation(
                unwrapped_model.policy,
                queries,
                chunk,
                self.processing_class.pad_token_id,
                GenerationConfig(**generation_kwargs),
            )

    def truncate(self, responses: torch.Tensor) -> torch.Tensor:
        """(B, R) responses with everything after the first stop token replaced by padding."""
        if self.stop_token_id is None:
            return responses
        return truncate_response(self.stop_token_id, self.processing_class.pad_token_id, responses)

    def response_logits(self, logits: torch.Tensor, context_length: int) -> torch.Tensor:
        """(b, R, V) fp32 logits of the response positions, temperature-scaled, the suppressed token impossible."""
        logits = logits[:, context_length - 1 : -1].float()
        logits /= self.args.temperature + 1e-7
        return suppress_token(logits, self.suppressed_token_id)

    def response_logprobs(
        self, model: torch.nn.Module, query_responses: torch.Tensor, context_length: int
    ) -> torch.Tensor:
        """(b, R) log-probs of the responses under ``model``: the distribution they were sampled from."""
        output = forward(model, query_responses, self.processing_class.pad_token_id)
        return gather_logprobs(
            self.response_logits(output.logits, context_length), query_responses[:, context_length:]
        )

    def response_values(self, query_responses: torch.Tensor, context_length: int) -> torch.Tensor:
        """(b, R) critic values at each response position (before its token is generated)."""
        value_model = self.accelerator.unwrap_model(self.model).value_model
        values, _, _ = sequence_scores(
            value_model, query_responses, self.processing_class.pad_token_id, context_length
        )
        return values[:, context_length - 1 : -1].squeeze(-1).float()

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

    @torch.no_grad()
    def generate_and_score(
        self, prompts: dict[str, Any], generation_kwargs: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Generate for one batch of prompts and score it (evaluation and sample tables).

        Returns ``(queries (B, Lq), truncated responses (B, R), scores (B,), source scores (B, S))``.
        """
        queries = prompts["input_ids"].to(self.accelerator.device)
        with self.accelerator.autocast():
            query_responses, _ = self.generate(queries, generation_kwargs, queries.shape[0])
            responses = self.truncate(query_responses[:, queries.shape[1] :])
            model_scores = self.scorer.model_scores(queries, responses)
        sequence_lengths = last_token_index(responses, self.processing_class.pad_token_id)
        scores, source_scores = self.scorer.score(prompts, responses, sequence_lengths, model_scores, self.state)
        return queries, responses, scores, source_scores

    def min_over_ranks(self, value: float) -> float:
        """The smallest ``value`` over all ranks (one all-gather; every rank must call it)."""
        gathered = self.accelerator.gather(torch.tensor([value], dtype=torch.float64, device=self.accelerator.device))
        return float(gathered.min())
