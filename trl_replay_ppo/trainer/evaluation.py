"""`Evaluation`: scoring the eval prompts (``evaluate``) and the sample-completion tables.

A mixin of `trl_replay_ppo.trainer.driver.ReplayPPOTrainer`; it uses the trainer's `ModelPasses`
(``generate_and_score``, ``response_logprobs``, ``ref_logprobs``), ``scorer``, ``accelerator``,
``log`` and callbacks.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pandas as pd
import torch
from accelerate.utils import gather_object
from datasets import Dataset
from transformers.utils import is_rich_available

from trl_replay_ppo.core.masking import last_token_index, response_padding_mask
from trl_replay_ppo.data.prompts import prepare_prompt_dataset
from trl_replay_ppo.integrations.compat import log_table_to_comet_experiment

EVAL_METRICS = ("reward", "reward_std", "kl", "response_length", "prompts")


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


class Evaluation:
    """``evaluate()`` (greedy by default) and ``generate_completions()`` (TRL's periodic samples)."""

    def eval_metric_names(self) -> list[str]:
        """Every metric ``evaluate()`` returns."""
        return [f"eval_{name}" for name in EVAL_METRICS] + [f"eval_rewards/{name}" for name in self.scorer.names]

    def eval_generation_kwargs(self) -> dict[str, Any]:
        """Generation settings for evaluation: greedy, or sampling at ``eval_temperature`` when > 0."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.args.response_length, **self.suppress_kwargs()}
        if self.args.eval_temperature > 0:
            return {**kwargs, "temperature": self.args.eval_temperature, "top_k": 0, "top_p": 1.0, "do_sample": True}
        return {**kwargs, "do_sample": False}

    @torch.no_grad()
    def evaluate(
        self,
        eval_dataset: Dataset | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Generate on the eval prompts (greedy unless ``eval_temperature > 0``) and report rewards.

        Every prompt is scored exactly once, whatever the dataset size and the number of processes
        (uneven shards are padded by accelerate and the padding dropped when gathered). Returns
        ``{prefix}_reward``, ``{prefix}_reward_std``, ``{prefix}_rewards/<name>`` per reward source,
        ``{prefix}_kl`` (per-sequence KL to the reference, nats), ``{prefix}_response_length``
        (tokens) and ``{prefix}_prompts`` (how many were scored); logs them and fires ``on_evaluate``.
        """
        if eval_dataset is None and self.eval_dataset is None:
            raise ValueError("`evaluate()` needs an `eval_dataset` (pass one to the trainer or to `evaluate`).")
        if eval_dataset is not None:
            dataloader = self.make_eval_dataloader(eval_dataset)
        else:
            if getattr(self, "_full_eval_dataloader", None) is None:
                self._full_eval_dataloader = self.make_eval_dataloader(self.eval_dataset, prepared=True)
            dataloader = self._full_eval_dataloader
        generation_kwargs = self.eval_generation_kwargs()
        gather = self.accelerator.gather_for_metrics
        scores, source_scores, kls, lengths = [], [], [], []
        for prompts in dataloader:
            queries, responses, batch_scores, batch_sources = self.generate_and_score(prompts, generation_kwargs)
            sequence_lengths = last_token_index(responses, self.processing_class.pad_token_id)
            kls.append(gather(self.sequence_kl(queries, responses, sequence_lengths)))
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
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def make_eval_dataloader(self, eval_dataset: Dataset, prepared: bool = False) -> torch.utils.data.DataLoader:
        """An accelerate-prepared, unshuffled dataloader over every prompt of ``eval_dataset``.

        ``prepared``: the dataset is already tokenized (the trainer's own ``eval_dataset``).
        """
        dataset = eval_dataset
        if not prepared:
            dataset = prepare_prompt_dataset(
                eval_dataset,
                self.processing_class,
                self.args.max_prompt_length,
                "eval_dataset",
                chat_template_kwargs=self.args.chat_template_kwargs,
            )
        dataloader = torch.utils.data.DataLoader(
            dataset, batch_size=self.args.per_device_eval_batch_size, collate_fn=self.data_collator
        )
        return self.accelerator.prepare(dataloader)

    @torch.no_grad()
    def sequence_kl(
        self, queries: torch.Tensor, responses: torch.Tensor, sequence_lengths: torch.Tensor
    ) -> torch.Tensor:
        """(B,) KL(policy || reference) of each response, summed over its tokens (k1 estimator, nats)."""
        query_responses = torch.cat((queries, responses), 1)
        context_length = queries.shape[1]
        with self.accelerator.autocast():
            policy = self.accelerator.unwrap_model(self.model).policy
            logprobs = self.response_logprobs(policy, query_responses, context_length)
            ref_logprobs = self.ref_logprobs(query_responses, context_length)
        padding_mask = response_padding_mask(sequence_lengths, responses.shape[1])
        return torch.masked_fill(logprobs - ref_logprobs, padding_mask, 0).sum(1)

    @torch.no_grad()
    def generate_completions(self, sampling: bool = False) -> None:
        """Complete eval prompts at temperature 0.01 (as TRL does), score them and log a sample table.

        With ``sampling=True`` only the first eval batch is used (the periodic debugging samples).
        """
        if self.eval_dataset is None:
            return
        generation_kwargs = {
            "max_new_tokens": self.args.response_length,
            "temperature": 0.01 + 1e-7,
            "top_k": 0.0,
            "top_p": 1.0,
            "do_sample": True,
            **self.suppress_kwargs(),
        }
        table = defaultdict(list)
        for prompts in self.eval_dataloader:
            queries, responses, scores, _ = self.generate_and_score(prompts, generation_kwargs)
            decode = self.processing_class.batch_decode
            table["query"].extend(gather_object(decode(queries, skip_special_tokens=True)))
            table["model response"].extend(gather_object(decode(responses)))
            table["score"].extend(self.accelerator.gather_for_metrics(scores).float().cpu().numpy())
            if sampling:
                break
        self.log_completions(pd.DataFrame(table))

    def log_completions(self, table: pd.DataFrame) -> None:
        """Show a few completions in the console and send the table to W&B / Comet when enabled."""
        if not self.accelerator.is_main_process:
            return
        if is_rich_available():
            print_rich_table(table.iloc[:5])
        if "wandb" in self.args.report_to:
            import wandb

            if wandb.run is not None:
                wandb.log({"completions": wandb.Table(dataframe=table)})
        if "comet_ml" in self.args.report_to:
            log_table_to_comet_experiment(name="completions.csv", table=table)
