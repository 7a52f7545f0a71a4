"""What users of TRL's trainers expect of the constructor and of `Trainer`'s API, where PPO differs.

- `load_named_models`: models given as Hub ids or local paths (as TRL's GRPOTrainer accepts them) are
  loaded with ``from_pretrained``, and the tokenizer from the policy's id when none is given.
- `UnsupportedTrainerMethods`: `transformers.Trainer` methods that have no meaning for PPO refuse with
  what to call instead, rather than failing inside transformers on a private attribute.
- `mean_training_loss`: the ``training_loss`` `train()` returns.
- `differences_from_trl`: what this run does that TRL's PPOTrainer would not, said once at start.
"""

from __future__ import annotations

from typing import Any, NoReturn

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

# field: (its value for TRL's PPO behaviour, what a run does otherwise); said at start when a run differs.
TRL_BEHAVIOUR = {
    "use_replay_buffer": (False, "stored episodes are replayed in every update"),
    "max_grad_norm": (0.0, "gradients are clipped to this norm (TRL's PPO ignores the field)"),
    "suppress_pad_token": (False, "the pad token cannot be sampled"),
}
CAUSAL = ("model", "ref_model")  # loaded as causal LMs; the critic and the reward model as 1-label classifiers


def load_named_models(models: dict[str, Any], processing_class: Any) -> tuple[dict[str, torch.nn.Module | None], Any]:
    """``models`` (``{argument: model, Hub id or local path, or None}``) with every id loaded, and the tokenizer
    (loaded from the policy's id, left-padded, when ``processing_class`` is None)."""
    loaded = {}
    for name, model in models.items():
        if isinstance(model, str):
            if name in CAUSAL:
                model = AutoModelForCausalLM.from_pretrained(model)
            else:
                model = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1)
        loaded[name] = model
    if processing_class is None:
        if not isinstance(models["model"], str):
            raise ValueError(
                "`processing_class` is required (the policy's tokenizer) when `model` is a model object; pass "
                "`processing_class=AutoTokenizer.from_pretrained(...)`, or `model` as a Hub id or path."
            )
        processing_class = AutoTokenizer.from_pretrained(models["model"], padding_side="left")
    return loaded, processing_class


def differences_from_trl(args: Any) -> str | None:
    """One message saying what this run does that TRL's PPOTrainer does not, and how to get TRL's behaviour."""
    differences = [
        f"{field}={getattr(args, field)!r} ({what}; {field}={trl!r} for TRL's behaviour)"
        for field, (trl, what) in TRL_BEHAVIOUR.items()
        if (getattr(args, field) or type(trl)()) != trl
    ]
    if not differences:
        return None
    return "Differences from TRL's PPOTrainer in this run: " + "; ".join(differences) + "."


def mean_training_loss(log_history: list[dict[str, Any]], vf_coef: float) -> float:
    """Mean over the logged updates of policy loss + ``vf_coef`` x value loss (what the optimizer minimised but the
    entropy and self-imitation terms); NaN before any update."""
    losses = [
        entry["loss/policy_avg"] + vf_coef * entry["loss/value_avg"]
        for entry in log_history
        if "loss/policy_avg" in entry and "loss/value_avg" in entry
    ]
    return sum(losses) / len(losses) if losses else float("nan")


def _unsupported(name: str, instead: str) -> NoReturn:
    raise NotImplementedError(
        f"`{name}()` has no meaning for PPO training (there are no labels to predict): {instead}"
    )


class UnsupportedTrainerMethods:
    """`transformers.Trainer` methods that PPO cannot serve, refused with what to use instead."""

    def predict(self, *args: Any, **kwargs: Any) -> NoReturn:
        _unsupported("predict", "score prompts with `evaluate()`, or generate with the policy's `generate()`.")

    def prediction_step(self, *args: Any, **kwargs: Any) -> NoReturn:
        _unsupported("prediction_step", "`evaluate()` generates and scores the eval prompts.")

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> NoReturn:
        _unsupported("evaluation_loop", "`evaluate()` generates and scores the eval prompts.")

    def hyperparameter_search(self, *args: Any, **kwargs: Any) -> NoReturn:
        _unsupported("hyperparameter_search", "run one `ReplayPPOTrainer` per setting (see `benchmarks.fairness`).")
