"""`RolloutCollector`: one update's fresh episodes: generate, truncate, score, and the behaviour and reference
log-probs and values of every response.

Shapes: B prompts (``local_batch_size``), Lq prompt tokens, R response tokens, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, TrainerState

from trl_replay_ppo.core.episodes import INVALID_LOGPROB, EpisodeBatch
from trl_replay_ppo.core.masking import last_token_index
from trl_replay_ppo.models.runner import ModelRunner
from trl_replay_ppo.rewards.scorer import Scorer


class RolloutCollector:
    """Generates and scores a batch of prompts, as TRL's PPO rollout does, in chunks of the runner's forward batch.

    Args:
        runner: generation and forward passes.
        scorer: the reward sources.
        tokenizer: its pad and eos tokens.
        generation_kwargs: the sampling settings (`ModelRunner.generation_kwargs`).
        missing_eos_penalty: subtracted from the score of a response without eos; None for none.
        importance_cap: cap of the per-token weight pi_trainer / pi_sampler when the runner's sampler is not the
            trainer (vLLM, or a copy one update older): such rows are off-policy by that mismatch, weighted as
            replayed rows are.
    """

    def __init__(
        self,
        runner: ModelRunner,
        scorer: Scorer,
        tokenizer: PreTrainedTokenizerBase,
        *,
        generation_kwargs: dict[str, Any],
        missing_eos_penalty: float | None,
        importance_cap: float = 2.0,
    ):
        self.runner = runner
        self.scorer = scorer
        self.tokenizer = tokenizer
        self.accelerator = runner.accelerator
        self.generation_kwargs = generation_kwargs
        self.missing_eos_penalty = missing_eos_penalty
        self.importance_cap = importance_cap
        self.last_metrics: dict[str, float] = {}

    @torch.no_grad()
    def __call__(self, prompts: dict[str, Any], state: TrainerState) -> EpisodeBatch:
        """The fresh batch of B episodes for the collated ``prompts`` (``state`` reaches the reward functions)."""
        accelerator, runner = self.accelerator, self.runner
        pad_token_id = self.tokenizer.pad_token_id
        queries = prompts["input_ids"].to(accelerator.device)
        context_length = queries.shape[1]
        chunk = runner.forward_batch_size
        with accelerator.autocast():
            query_responses, logprobs, proximal = runner.sample(queries, self.generation_kwargs, state.global_step + 1)
            ref_logprobs, truncated, values, model_scores = [], [], [], []
            for i in range(0, queries.shape[0], chunk):
                query_response = query_responses[i : i + chunk]
                response = query_response[:, context_length:]
                ref_logprobs.append(runner.ref_logprobs(query_response, context_length))
                truncated.append(runner.truncate(response))
                values.append(runner.response_values(query_response, context_length))
                model_scores.extend(self.scorer.model_scores(queries[i : i + chunk], truncated[-1]))
        responses = torch.cat(truncated, 0)
        sequence_lengths = last_token_index(responses, pad_token_id)
        scores, source_scores = self.scorer.score(prompts, responses, sequence_lengths, model_scores, state)
        if self.missing_eos_penalty is not None:
            has_eos = torch.any(responses == self.tokenizer.eos_token_id, dim=-1)
            scores[~has_eos] -= self.missing_eos_penalty
        batch = EpisodeBatch(
            query_responses=query_responses,
            context_length=context_length,
            logprobs=logprobs,
            ref_logprobs=torch.cat(ref_logprobs, 0),
            values=torch.cat(values, 0),
            scores=scores,
            source_scores=source_scores,
            sequence_lengths=sequence_lengths,
            num_fresh=queries.shape[0],
        )
        batch.logprobs = torch.masked_fill(batch.logprobs, batch.padding_mask, INVALID_LOGPROB)
        batch.ref_logprobs = torch.masked_fill(batch.ref_logprobs, batch.padding_mask, INVALID_LOGPROB)
        batch.values = torch.masked_fill(batch.values, batch.padding_mask_p1, 0)
        if proximal is not None:
            self.weigh_sampler_mismatch(batch, proximal)
        return batch

    def weigh_sampler_mismatch(self, batch: EpisodeBatch, proximal: torch.Tensor) -> None:
        """Fresh rows sampled by another engine: the trainer's (B, R) ``proximal`` log-probs centre the clip, and
        each token weighs min(pi_trainer / pi_sampler, cap); logs ``<sampler's prefix>/*`` (means over the ranks'
        valid tokens) and what the sampler reports (``rollout/staleness``)."""
        valid = ~batch.padding_mask
        diff = proximal - batch.logprobs
        ratio = torch.exp(diff)
        batch.proximal_logprobs = torch.masked_fill(proximal, batch.padding_mask, INVALID_LOGPROB)
        batch.token_weights = torch.masked_fill(ratio.clamp(max=self.importance_cap), batch.padding_mask, 0.0)
        batch.row_weights = torch.ones(len(batch), device=proximal.device)
        sums = torch.stack(
            [diff.abs()[valid].sum(), batch.token_weights[valid].sum(), (ratio > self.importance_cap)[valid].sum()]
        )
        totals = self.accelerator.reduce(torch.cat([sums, valid.sum().reshape(1).to(sums.dtype)]), "sum")
        tokens = float(totals[3].clamp(min=1))
        sampler = self.runner.sampler
        prefix = sampler.metric_prefix if sampler is not None else "sampler"
        self.last_metrics = {
            f"{prefix}/logprob_diff_mean": float(totals[0]) / tokens,
            f"{prefix}/is_weight_mean": float(totals[1]) / tokens,
            f"{prefix}/truncated_fraction": float(totals[2]) / tokens,
            **(sampler.last_metrics if sampler is not None else {}),
        }
