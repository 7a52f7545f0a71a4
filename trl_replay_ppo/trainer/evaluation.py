"""`Evaluator`: scoring the eval prompts (what the trainer's ``evaluate`` reports) and the sample-completion tables."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from datasets import Dataset
from transformers import PreTrainedTokenizerBase, TrainerState
from transformers.utils import is_rich_available

from trl_replay_ppo.core.masking import last_token_index, response_padding_mask
from trl_replay_ppo.data.prompts import prepare_prompt_dataset
from trl_replay_ppo.integrations.compat import log_table_to_comet_experiment
from trl_replay_ppo.models.runner import ModelRunner
from trl_replay_ppo.rewards.scorer import Scorer

COMPLETIONS_TEMPERATURE = 0.01  # TRL's periodic sample completions: near-greedy sampling


def eval_metric_names(source_names: list[str], prefix: str = "eval") -> list[str]:
    """Every metric `Evaluator.evaluate` returns, for reward sources named ``source_names``."""
    names = ("reward", "reward_std", "kl", "response_length", "prompts")
    return [f"{prefix}_{name}" for name in names] + [f"{prefix}_rewards/{name}" for name in source_names]


def print_rich_table(table: pd.DataFrame) -> None:
    """Print ``table`` to the console with rich (one row per completion)."""
    from rich.console import Console
    from rich.table import Table

    rich_table = Table(show_lines=True)
    for column in table.columns:
        rich_table.add_column(column)
    for _, row in table.iterrows():
        rich_table.add_row(*row.astype(str).tolist())
    Console().print(rich_table)


class Evaluator:
    """Greedy (or ``eval_temperature``) evaluation of prompts, and TRL's sample completions.

    Args:
        runner: generates and computes the KL to the reference.
        scorer: scores the completions.
        accelerator: the trainer's (metrics are gathered over ranks).
        tokenizer: decodes the sample tables and tokenizes datasets passed to `evaluate`.
        data_collator: batches prompts.
        eval_dataloader: the trainer's prepared eval dataloader (``drop_last``: TRL's sample tables), or None.
        eval_dataset: the trainer's tokenized eval dataset, or None.
        response_length, eval_temperature, per_device_eval_batch_size, max_prompt_length,
        chat_template_kwargs, report_to: the config fields of those names.
    """

    def __init__(
        self,
        runner: ModelRunner,
        scorer: Scorer,
        accelerator: Accelerator,
        tokenizer: PreTrainedTokenizerBase,
        data_collator: Any,
        *,
        eval_dataloader: torch.utils.data.DataLoader | None,
        eval_dataset: Dataset | None,
        response_length: int,
        eval_temperature: float,
        per_device_eval_batch_size: int,
        max_prompt_length: int | None,
        chat_template_kwargs: dict[str, Any] | None,
        report_to: list[str],
    ):
        self.runner = runner
        self.scorer = scorer
        self.accelerator = accelerator
        self.tokenizer = tokenizer
        self.data_collator = data_collator
        self.eval_dataloader = eval_dataloader
        self.eval_dataset = eval_dataset
        self.response_length = response_length
        self.eval_temperature = eval_temperature
        self.per_device_eval_batch_size = per_device_eval_batch_size
        self.max_prompt_length = max_prompt_length
        self.chat_template_kwargs = chat_template_kwargs
        self.report_to = report_to
        self.full_dataloader: torch.utils.data.DataLoader | None = None  # every eval prompt, made at first use

    def generation_kwargs(self) -> dict[str, Any]:
        """Generation settings for evaluation: greedy, or sampling at ``eval_temperature`` when > 0."""
        temperature = self.eval_temperature if self.eval_temperature > 0 else None
        return self.runner.generation_kwargs(self.response_length, temperature)

    @torch.no_grad()
    def generate_and_score(
        self, prompts: dict[str, Any], generation_kwargs: dict[str, Any], state: TrainerState
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Generate for one batch of prompts and score it.

        Returns ``(queries (B, Lq), truncated responses (B, R), scores (B,), source scores (B, S))``.
        """
        queries = prompts["input_ids"].to(self.accelerator.device)
        with self.accelerator.autocast():
            query_responses, _ = self.runner.generate(queries, generation_kwargs, queries.shape[0])
            responses = self.runner.truncate(query_responses[:, queries.shape[1] :])
            model_scores = self.scorer.model_scores(queries, responses)
        sequence_lengths = last_token_index(responses, self.tokenizer.pad_token_id)
        scores, source_scores = self.scorer.score(prompts, responses, sequence_lengths, model_scores, state)
        return queries, responses, scores, source_scores

    @torch.no_grad()
    def evaluate(
        self, state: TrainerState, eval_dataset: Dataset | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Generate on the eval prompts (greedy unless ``eval_temperature > 0``) and report rewards.

        Every prompt is scored exactly once, whatever the dataset size and the number of processes
        (uneven shards are padded by accelerate and the padding dropped when gathered). Returns
        ``{prefix}_reward``, ``{prefix}_reward_std``, ``{prefix}_rewards/<name>`` per reward source,
        ``{prefix}_kl`` (per-sequence KL to the reference, nats), ``{prefix}_response_length``
        (tokens) and ``{prefix}_prompts`` (how many were scored).
        """
        if eval_dataset is None and self.eval_dataset is None:
            raise ValueError("`evaluate()` needs an `eval_dataset` (pass one to the trainer or to `evaluate`).")
        if eval_dataset is not None:
            dataloader = self.make_dataloader(eval_dataset)
        else:
            if self.full_dataloader is None:
                self.full_dataloader = self.make_dataloader(self.eval_dataset, prepared=True)
            dataloader = self.full_dataloader
        generation_kwargs = self.generation_kwargs()
        gather = self.accelerator.gather_for_metrics
        scores, source_scores, kls, lengths = [], [], [], []
        for prompts in dataloader:
            queries, responses, batch_scores, batch_sources = self.generate_and_score(
                prompts, generation_kwargs, state
            )
            sequence_lengths = last_token_index(responses, self.tokenizer.pad_token_id)
            padding_mask = response_padding_mask(sequence_lengths, responses.shape[1])
            kls.append(gather(self.runner.sequence_kl(queries, responses, padding_mask)))
            scores.append(gather(batch_scores))
            source_scores.append(gather(batch_sources))
            lengths.append(gather((sequence_lengths + 1).float()))
        scores_t, sources_t = torch.cat(scores), torch.cat(source_scores)
        prefix = metric_key_prefix
        metrics = {f"{prefix}_reward": scores_t.mean().item(), f"{prefix}_reward_std": scores_t.std().item()}
        for name, value in zip(self.scorer.names, sources_t.nanmean(0).tolist(), strict=True):
            metrics[f"{prefix}_rewards/{name}"] = value
        metrics[f"{prefix}_kl"] = torch.cat(kls).mean().item()
        metrics[f"{prefix}_response_length"] = torch.cat(lengths).mean().item()
        metrics[f"{prefix}_prompts"] = len(scores_t)
        return metrics

    def make_dataloader(self, eval_dataset: Dataset, prepared: bool = False) -> torch.utils.data.DataLoader:
        """An accelerate-prepared, unshuffled dataloader over every prompt of ``eval_dataset``.

        ``prepared``: the dataset is already tokenized (the trainer's own ``eval_dataset``).
        """
        dataset = eval_dataset
        if not prepared:
            dataset = prepare_prompt_dataset(
                eval_dataset,
                self.tokenizer,
                self.max_prompt_length,
                "eval_dataset",
                chat_template_kwargs=self.chat_template_kwargs,
            )
        dataloader = torch.utils.data.DataLoader(
            dataset, batch_size=self.per_device_eval_batch_size, collate_fn=self.data_collator
        )
        return self.accelerator.prepare(dataloader)

    @torch.no_grad()
    def completions(self, state: TrainerState, sampling: bool = False) -> pd.DataFrame | None:
        """Eval prompts completed at temperature 0.01 (as TRL does) and scored; None without an eval dataset.

        With ``sampling=True`` only the first eval batch is used (the periodic debugging samples).
        """
        if self.eval_dataloader is None:
            return None
        generation_kwargs = self.runner.generation_kwargs(self.response_length, COMPLETIONS_TEMPERATURE)
        table = defaultdict(list)
        for prompts in self.eval_dataloader:
            queries, responses, scores, _ = self.generate_and_score(prompts, generation_kwargs, state)
            decode = self.tokenizer.batch_decode
            table["query"].extend(gather_object(decode(queries, skip_special_tokens=True)))
            table["model response"].extend(gather_object(decode(responses)))
            table["score"].extend(self.accelerator.gather_for_metrics(scores).float().cpu().numpy())
            if sampling:
                break
        return pd.DataFrame(table)

    def log_completions(self, table: pd.DataFrame) -> None:
        """Show a few completions in the console and send the table to W&B / Comet when enabled."""
        if not self.accelerator.is_main_process:
            return
        if is_rich_available():
            print_rich_table(table.iloc[:5])
        if "wandb" in self.report_to:
            import wandb

            if wandb.run is not None:
                wandb.log({"completions": wandb.Table(dataframe=table)})
        if "comet_ml" in self.report_to:
            log_table_to_comet_experiment(name="completions.csv", table=table)
