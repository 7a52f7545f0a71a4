"""`Scorer`: a run's reward sources (an optional reward model, then reward functions) and their weighted sum."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from transformers import PreTrainedTokenizerBase

from trl_replay_ppo.data.prompts import ROW_COLUMN, TOKEN_COLUMNS, is_conversational
from trl_replay_ppo.models.forwards import sequence_scores
from trl_replay_ppo.rewards.calls import (
    CallSettings,
    RewardFunc,
    RewardFunctionError,
    call_reward_func,
    reward_func_name,
)

logger = logging.getLogger(__name__)

NOT_REWARD_COLUMNS = (*TOKEN_COLUMNS, ROW_COLUMN, "prompt")
# Rewards are squared in the value loss (and summed over a batch's tokens): past this magnitude that overflows
# float32 (max 3.4e38) and every optimizer step is skipped as non-finite.
FLOAT32_SAFE_REWARD = 1e16


def reward_model_name(reward_model: torch.nn.Module) -> str:
    """Name of a reward model in logs: its checkpoint's last path component, or its class name."""
    name_or_path = getattr(getattr(reward_model, "config", None), "_name_or_path", "") or ""
    return name_or_path.rstrip("/").split("/")[-1] or type(reward_model).__name__


def source_names(reward_model: torch.nn.Module | None, reward_funcs: Sequence[RewardFunc]) -> list[str]:
    """``rewards/<name>`` of each source, in order: the reward model (if any), then each function.

    Names are unique: a name taken before (two lambdas) gets the first of ``_2``, ``_3``, ... that no
    source is called.
    """
    names = ([reward_model_name(reward_model)] if reward_model is not None else []) + [
        reward_func_name(f) for f in reward_funcs
    ]
    taken: Counter[str] = Counter()
    unique = []
    for name in names:
        taken[name] += 1
        candidate, n = name, taken[name]
        while n > 1 and (candidate == name or candidate in names or candidate in unique):
            candidate, n = f"{name}_{n}", n + 1
        unique.append(candidate)
    return unique


def describe_renamed(reward_model: torch.nn.Module | None, reward_funcs: Sequence[RewardFunc]) -> str | None:
    """Which function each ``rewards/<name>`` is, when names had to be made unique (`source_names`); else None."""
    names = source_names(reward_model, reward_funcs)[int(reward_model is not None) :]
    if names == [reward_func_name(f) for f in reward_funcs]:
        return None
    where = [
        f"rewards/{name} is reward_funcs[{i}] ({_definition(func)})"
        for i, (name, func) in enumerate(zip(names, reward_funcs, strict=True))
    ]
    return "Reward functions share a name, so their metrics are numbered: " + "; ".join(where) + "."


def _definition(func: RewardFunc) -> str:
    code = getattr(func, "__code__", None) or getattr(type(func).__call__, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code is not None else type(func).__qualname__


def prompts_as_passed(prompts: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> list:
    """The ``prompts`` reward functions receive: the ``prompt`` column, or the decoded ``input_ids``."""
    if "prompt" in prompts:
        return list(prompts["prompt"])
    return tokenizer.batch_decode(prompts["input_ids"], skip_special_tokens=True)


class Scorer:
    """Scores responses with every reward source; ``rewards/<name>`` metrics come from ``names``.

    ``reward_model`` (already on its device) reads prompt + response ids; reward functions follow
    TRL's GRPO contract (`trl_replay_ppo.rewards.calls`). A function may return ``None`` for a sample
    it does not score: that source is left out of the sample's weighted sum. A failure on any rank
    is raised on every rank (no rank is left waiting in a collective).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        reward_model: torch.nn.Module | None,
        reward_funcs: Sequence[RewardFunc],
        weights: Sequence[float] | None,
        accelerator: Accelerator,
        settings: CallSettings | None = None,
    ):
        self.tokenizer = tokenizer
        self.reward_model = reward_model
        self.reward_funcs = list(reward_funcs)
        self.names = source_names(reward_model, self.reward_funcs)
        self.accelerator = accelerator
        self.weights = torch.tensor(weights or [1.0] * len(self.names), dtype=torch.float32, device=accelerator.device)
        self.settings = settings or CallSettings()
        self.nonfinite = 0  # reward-function values replaced by `nonfinite_value`
        self.oversized: set[str] = set()  # sources already warned about for rewards past `FLOAT32_SAFE_REWARD`
        if (renamed := describe_renamed(reward_model, self.reward_funcs)) and accelerator.is_main_process:
            logger.warning(renamed)
        self.logged: dict[str, list[float]] = defaultdict(list)  # what reward functions passed to `log_metric`

    @classmethod
    def from_args(
        cls,
        args: Any,
        tokenizer: PreTrainedTokenizerBase,
        reward_model: torch.nn.Module | None,
        reward_funcs: Sequence[RewardFunc],
        accelerator: Accelerator,
    ) -> Scorer:
        """The scorer a `ReplayPPOConfig` describes (weights, non-finite replacement, timeout, watchdog)."""
        settings = CallSettings.from_args(args, accelerator.process_index)
        return cls(tokenizer, reward_model, reward_funcs, args.reward_weights, accelerator, settings)

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
        trainer_state: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted sum (B,) of the sources, and each source's rewards (B, S) (NaN where a function gave None).

        ``model_scores`` are `model_scores` of the same rows (computed chunk by chunk during the
        rollout); ``responses`` (B, R) are truncated, ``sequence_lengths`` (B,) index their last token.
        """
        error = None
        try:
            source_scores = self._source_scores(prompts, responses, sequence_lengths, model_scores, trainer_state)
        except (RewardFunctionError, TypeError, ValueError) as raised:
            error = raised
        self._raise_on_every_rank(error)
        self._warn_oversized(source_scores, prompts.get(ROW_COLUMN))
        scored = ~torch.isnan(source_scores)
        unscored = (~scored.any(1)).nonzero().flatten().tolist()
        if unscored:
            rows = [prompts.get(ROW_COLUMN, range(len(responses)))[i] for i in unscored]
            raise ValueError(
                f"No reward source scored dataset rows {rows[:8]}: every reward function returned None for them. "
                "Each sample needs at least one reward."
            )
        return (torch.nan_to_num(source_scores) * self.weights).sum(1), source_scores

    def _source_scores(
        self,
        prompts: dict[str, Any],
        responses: torch.Tensor,
        sequence_lengths: torch.Tensor,
        model_scores: list[torch.Tensor],
        trainer_state: Any,
    ) -> torch.Tensor:
        sources = [torch.cat(model_scores, 0)] if model_scores else []
        if sources and not torch.isfinite(sources[0]).all():
            raise ValueError(
                "The reward model returned a non-finite score; check its weights and inputs. No update was made."
            )
        if self.reward_funcs:
            completion_ids = [r[: n + 1] for r, n in zip(responses.tolist(), sequence_lengths.tolist(), strict=True)]
            completions = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
            prompt_values = prompts_as_passed(prompts, self.tokenizer)
            if is_conversational(prompt_values[0]):
                completions = [[{"role": "assistant", "content": c}] for c in completions]
            kwargs = {k: v for k, v in prompts.items() if k not in NOT_REWARD_COLUMNS}
            kwargs.update(completion_ids=completion_ids, trainer_state=trainer_state, log_metric=self.log_metric)
            rows = prompts.get(ROW_COLUMN)
            names = self.names[len(sources) :]
            for func, name in zip(self.reward_funcs, names, strict=True):
                values, replaced = call_reward_func(
                    func, prompt_values, completions, kwargs, self.settings, rows, name
                )
                self.nonfinite += replaced
                values = [float("nan") if v is None else v for v in values]
                sources.append(torch.tensor(values, dtype=torch.float32, device=responses.device))
        return torch.stack(sources, dim=1)

    def _warn_oversized(self, source_scores: torch.Tensor, rows: Any) -> None:
        """Warn once per source whose rewards (B, S) pass `FLOAT32_SAFE_REWARD`: the likely cause of skipped steps."""
        for i, name in enumerate(self.names):
            column = source_scores[:, i].nan_to_num(0.0).abs()
            if name in self.oversized or not column.max() > FLOAT32_SAFE_REWARD:
                continue
            self.oversized.add(name)
            j = int(column.argmax())
            logger.warning(
                "Reward source `%s` gave %g for dataset row %s: rewards past %g overflow float32 in the value loss, "
                "so optimizer steps will be skipped as non-finite. Rescale the rewards (e.g. divide them, or clip "
                "them) before they reach the trainer.",
                name,
                float(source_scores[j, i]),
                rows[j] if rows is not None else j,
                FLOAT32_SAFE_REWARD,
            )

    def log_metric(self, name: str, value: float) -> None:
        """What reward functions call to log a number; logged as ``rewards/logged/<name>`` (mean per update)."""
        self.logged[name].append(float(value))

    def metrics(self) -> dict[str, float]:
        """``rewards/nonfinite`` (when non-finite values are replaced) and the means of what reward functions
        logged since the last call (``rewards/logged/<name>``)."""
        metrics = {"rewards/nonfinite": self.nonfinite} if self.settings.nonfinite_value is not None else {}
        metrics.update({f"rewards/logged/{name}": sum(v) / len(v) for name, v in self.logged.items() if v})
        self.logged.clear()
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"nonfinite": self.nonfinite}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nonfinite = int(state["nonfinite"])

    def _raise_on_every_rank(self, error: Exception | None) -> None:
        """Raise ``error`` here, and a `RewardFunctionError` on the other ranks, so none waits forever."""
        failed = self.accelerator.gather(torch.tensor([float(error is not None)], device=self.accelerator.device))
        if not failed.any():
            return
        messages = [m for m in gather_object([None if error is None else str(error)]) if m]  # every rank takes part
        if error is not None:
            raise error
        raise RewardFunctionError(f"Reward scoring failed on another rank: {'; '.join(messages)}")
