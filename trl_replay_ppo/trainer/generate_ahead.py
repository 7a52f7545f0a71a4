"""`GenerateAhead` (``generate_ahead``): the next update's batch is sampled while this one trains.

At update k the trainer takes the batch the generator process sampled during update k-1, then pushes its
weights (those after update k-1) to the generator and hands it update k+1's prompts, and trains update k
while they are sampled. Every batch but the first is therefore sampled by the policy one update older than
the one that trains on it (``rollout/staleness`` 1): its behaviour log-probs are the generator's, and the
trainer's forward over the batch (already part of the rollout, which takes reference log-probs and values
anyway) gives the proximal log-probs that centre the clip, each token weighted by min(pi_trainer /
pi_generator, ``replay_importance_cap``), as replayed rows are (``ahead/*`` metrics).

A checkpoint written after update k holds update k+1's prompts and the batch sampled for them (waiting for
it when it is still being sampled), so a resumed run trains on exactly the batch the uninterrupted one does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch

from trl_replay_ppo.models.generator_process import GeneratorProcess


class GenerateAhead:
    """The prompt source and sampler (the `ModelRunner` sampler interface) of ``generate_ahead``.

    Args:
        generator: the process that samples.
        policy: the trainer's unwrapped policy (its weights are pushed before each batch).
        fetch_prompts: the next collated batch of prompts from the prompt stream (B rows).
        last_update: no batch is sampled past this update.
    """

    metric_prefix = "ahead"

    def __init__(
        self,
        generator: GeneratorProcess,
        policy: torch.nn.Module,
        fetch_prompts: Callable[[], dict[str, Any]],
        last_update: int,
    ):
        self.generator = generator
        self.policy = policy
        self.fetch_prompts = fetch_prompts
        self.last_update = last_update
        self.pending_prompts: dict[str, Any] | None = None  # the next update's, handed out by `prompts`
        self.pending_update: int | None = None
        self.ready: tuple[torch.Tensor, torch.Tensor] | None = None  # its batch, once collected
        self.last_metrics: dict[str, float] = {}

    def prompts(self) -> dict[str, Any]:
        """This update's prompts: those whose batch was sampled ahead, else the stream's next."""
        if self.pending_prompts is None:
            return self.fetch_prompts()
        prompts, self.pending_prompts = self.pending_prompts, None
        return prompts

    def sync(self) -> None:
        """Nothing: the weights go to the generator when a batch is submitted (`generate`)."""

    def generate(self, queries: torch.Tensor, max_new_tokens: int, update: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Update ``update``'s (B, Lq + R) ids and (B, R) behaviour log-probs; submits update + 1's batch.

        ``max_new_tokens`` is in the generator's sampling settings already.
        """
        staleness = 1.0
        if self.pending_update != update:  # the first update of a run: nothing was sampled ahead
            self.generator.push(self.policy)
            self.generator.submit(queries, update)
            staleness = 0.0
        query_responses, logprobs = self.collected()
        self.pending_update, self.ready = None, None
        if not torch.equal(query_responses[:, : queries.shape[1]].to(queries.device), queries):
            raise RuntimeError(f"update {update}'s batch was sampled for other prompts than the update's")
        if update < self.last_update:
            prompts = self.fetch_prompts()
            columns_json(prompts)  # a column a checkpoint cannot keep fails now, not at the first save
            self.generator.push(self.policy)
            self.generator.submit(prompts["input_ids"], update + 1)
            self.pending_prompts, self.pending_update = prompts, update + 1
        self.last_metrics = {"rollout/staleness": staleness}
        return query_responses.to(queries.device), logprobs.to(queries.device)

    def collected(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The pending batch, waiting for the generator if it is still sampling it."""
        if self.ready is None:
            self.ready = self.generator.collect()
        return self.ready

    def close(self) -> None:
        self.generator.close()

    # ------------------------------------------------------------------ checkpoint state

    def state_dict(self) -> dict[str, Any]:
        """The next update's prompts and sampled batch (``{"pending": None}`` before the first update)."""
        if self.pending_update is None or self.pending_prompts is None:
            return {"pending": None}
        query_responses, logprobs = self.collected()
        prompts = self.pending_prompts
        return {
            "pending": {
                "update": self.pending_update,
                "prompt_tensors": {k: v.cpu() for k, v in prompts.items() if isinstance(v, torch.Tensor)},
                "prompt_columns": columns_json(prompts),
                "query_responses": query_responses.cpu(),
                "logprobs": logprobs.cpu(),
            }
        }

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """A pending batch is the prompts' own: (B, Lq) prompt ids, (B, Lq + R) ids, (B, R) log-probs, B per column."""
        pending = state["pending"]
        if pending is None:
            return
        if set(pending) != {"update", "prompt_tensors", "prompt_columns", "query_responses", "logprobs"}:
            raise ValueError(f"the pending batch has the entries {sorted(pending)}")
        update, ids, logprobs = pending["update"], pending["query_responses"], pending["logprobs"]
        if not isinstance(update, int) or isinstance(update, bool) or update < 1:
            raise ValueError(f"the pending batch's update is {update!r}")
        queries = pending["prompt_tensors"].get("input_ids") if isinstance(pending["prompt_tensors"], dict) else None
        if not all(isinstance(t, torch.Tensor) and t.dim() == 2 for t in (queries, ids, logprobs)):
            raise ValueError("the pending batch's input_ids, query_responses and logprobs are not all 2-d tensors")
        rows, prompt_width = queries.shape
        if ids.dtype != queries.dtype or ids.shape[0] != rows or ids.shape[1] <= prompt_width:
            raise ValueError(f"sampled ids {tuple(ids.shape)} do not continue prompts {tuple(queries.shape)}")
        if not torch.equal(ids[:, :prompt_width], queries):
            raise ValueError("the sampled ids do not start with the pending prompts")
        if not logprobs.is_floating_point() or logprobs.shape != (rows, ids.shape[1] - prompt_width):
            raise ValueError(f"behaviour log-probs {tuple(logprobs.shape)} for sampled ids {tuple(ids.shape)}")
        columns = json.loads(pending["prompt_columns"]) if isinstance(pending["prompt_columns"], str) else None
        if not isinstance(columns, dict) or any(not isinstance(v, list) or len(v) != rows for v in columns.values()):
            raise ValueError(f"the prompt columns are not {rows} values per column")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pending = state["pending"]
        if pending is None:
            self.pending_prompts = self.pending_update = self.ready = None
            return
        self.pending_prompts = {**pending["prompt_tensors"], **json.loads(pending["prompt_columns"])}
        self.pending_update = pending["update"]
        self.ready = (pending["query_responses"], pending["logprobs"])


def columns_json(prompts: dict[str, Any]) -> str:
    """The non-tensor columns of a collated batch as JSON; a ValueError naming a column JSON cannot hold."""
    columns = {k: v for k, v in prompts.items() if not isinstance(v, torch.Tensor)}
    for name, values in columns.items():
        try:
            json.dumps(values)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"`generate_ahead` keeps the next batch's prompts in checkpoints, as JSON; dataset column {name!r} "
                f"holds values JSON cannot ({error}). Drop or convert the column, or set `generate_ahead=False`."
            ) from error
    return json.dumps(columns)
