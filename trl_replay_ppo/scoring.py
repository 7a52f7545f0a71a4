"""`Scorer`: a run's reward sources (an optional reward model, then reward functions) and their weighted sum."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from trl_replay_ppo.data import TOKEN_COLUMNS, is_conversational
from trl_replay_ppo.forwards import sequence_scores
from trl_replay_ppo.rewards import RewardFunc, call_reward_func, reward_func_name


def reward_model_name(reward_model: torch.nn.Module) -> str:
    """Name of a reward model in logs: its checkpoint's last path component, or its class name."""
    name_or_path = getattr(getattr(reward_model, "config", None), "_name_or_path", "") or ""
    return name_or_path.rstrip("/").split("/")[-1] or type(reward_model).__name__


class Scorer:
    """Scores responses with every reward source; ``rewards/<name>`` metrics come from ``names``.

    ``reward_model`` (already on its device) reads prompt + response ids; reward functions follow
    TRL's GRPO contract ``f(prompts, completions, **columns) -> list[float]``, called on the decoded
    completions (assistant messages for chat prompts) and the dataset's extra columns.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        reward_model: torch.nn.Module | None,
        reward_funcs: Sequence[RewardFunc],
        weights: Sequence[float] | None,
        nonfinite_value: float | None,
        device: torch.device,
    ):
        self.tokenizer = tokenizer
        self.reward_model = reward_model
        self.reward_funcs = list(reward_funcs)
        self.names = ([reward_model_name(reward_model)] if reward_model is not None else []) + [
            reward_func_name(f) for f in self.reward_funcs
        ]
        self.weights = torch.tensor(weights or [1.0] * len(self.names), dtype=torch.float32, device=device)
        self.nonfinite_value = nonfinite_value
        self.nonfinite = 0  # reward-function values replaced by `nonfinite_value`

    def model_scores(self, queries: torch.Tensor, responses: torch.Tensor) -> list[torch.Tensor]:
        """``[scores]`` (b,) of the reward model on queries (b, Lq) and truncated responses (b, R); ``[]`` if none."""
        if self.reward_model is None:
            return []
        query_responses = torch.cat((queries, responses), 1)
        _, scores, _ = sequence_scores(
            self.reward_model, query_responses, self.tokenizer.pad_token_id, queries.shape[1]
        )
        return [scores.float()]

    def score(
        self,
        prompts: dict[str, Any],
        responses: torch.Tensor,
        sequence_lengths: torch.Tensor,
        model_scores: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted sum (B,) of the sources, and each source's rewards (B, S).

        ``model_scores`` are `model_scores` of the same rows (computed chunk by chunk during the
        rollout); ``responses`` (B, R) are truncated, ``sequence_lengths`` (B,) index their last token.
        """
        sources = [torch.cat(model_scores, 0)] if model_scores else []
        if sources and not torch.isfinite(sources[0]).all():
            raise ValueError(
                "The reward model returned a non-finite score; check its weights and inputs. No update was made."
            )
        if self.reward_funcs:
            prompt_values, completions, columns = self.reward_inputs(prompts, responses, sequence_lengths)
            for func in self.reward_funcs:
                values, replaced = call_reward_func(func, prompt_values, completions, columns, self.nonfinite_value)
                self.nonfinite += replaced
                sources.append(torch.tensor(values, dtype=torch.float32, device=responses.device))
        source_scores = torch.stack(sources, dim=1)
        return (source_scores * self.weights).sum(1), source_scores

    def reward_inputs(
        self, prompts: dict[str, Any], responses: torch.Tensor, sequence_lengths: torch.Tensor
    ) -> tuple[list, list, dict[str, list]]:
        """What reward functions receive: ``(prompts, completions, extra columns)``."""
        completions = [
            self.tokenizer.decode(r[: n + 1], skip_special_tokens=True)
            for r, n in zip(responses.tolist(), sequence_lengths.tolist(), strict=True)
        ]
        if "prompt" in prompts:
            prompt_values = prompts["prompt"]
        else:
            prompt_values = self.tokenizer.batch_decode(prompts["input_ids"], skip_special_tokens=True)
        if is_conversational(prompt_values[0]):
            completions = [[{"role": "assistant", "content": c}] for c in completions]
        columns = {k: v for k, v in prompts.items() if k not in TOKEN_COLUMNS and k != "prompt"}
        return prompt_values, completions, columns
