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
from trl_replay_ppo.models.forwards import gather_logprobs
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
    """

    def __init__(
        self,
        runner: ModelRunner,
        scorer: Scorer,
        tokenizer: PreTrainedTokenizerBase,
        *,
        generation_kwargs: dict[str, Any],
        missing_eos_penalty: float | None,
    ):
        self.runner = runner
        self.scorer = scorer
        self.tokenizer = tokenizer
        self.accelerator = runner.accelerator
        self.generation_kwargs = generation_kwargs
        self.missing_eos_penalty = missing_eos_penalty

    @torch.no_grad()
    def __call__(self, prompts: dict[str, Any], state: TrainerState) -> EpisodeBatch:
        """The fresh batch of B episodes for the collated ``prompts`` (``state`` reaches the reward functions)."""
        accelerator, runner = self.accelerator, self.runner
        pad_token_id = self.tokenizer.pad_token_id
        queries = prompts["input_ids"].to(accelerator.device)
        context_length = queries.shape[1]
        chunk = runner.forward_batch_size
        with accelerator.autocast():
            query_responses, sampled_logits = runner.generate(queries, self.generation_kwargs, chunk)
            logprobs, ref_logprobs, truncated, values, model_scores = [], [], [], [], []
            for i in range(0, queries.shape[0], chunk):
                query_response = query_responses[i : i + chunk]
                response = query_response[:, context_length:]
                logprobs.append(gather_logprobs(sampled_logits[i : i + chunk].float(), response))
                ref_logprobs.append(runner.ref_logprobs(query_response, context_length))
                truncated.append(runner.truncate(response))
                values.append(runner.response_values(query_response, context_length))
                model_scores.extend(self.scorer.model_scores(queries[i : i + chunk], truncated[-1]))
        del sampled_logits
        responses = torch.cat(truncated, 0)
        sequence_lengths = last_token_index(responses, pad_token_id)
        scores, source_scores = self.scorer.score(prompts, responses, sequence_lengths, model_scores, state)
        if self.missing_eos_penalty is not None:
            has_eos = torch.any(responses == self.tokenizer.eos_token_id, dim=-1)
            scores[~has_eos] -= self.missing_eos_penalty
        batch = EpisodeBatch(
            query_responses=query_responses,
            context_length=context_length,
            logprobs=torch.cat(logprobs, 0),
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
        return batch
