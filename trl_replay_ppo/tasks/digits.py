"""The offline synthetic task: answer a few digits with digits drawn from them.

A prompt is ``"<d1><d2>...<dk>="`` (e.g. ``"4071="``); the completion is scored character by
character over its first ``target_length`` characters: 1 for a digit that appears in the prompt,
``other_digit_credit`` for any other digit, 0 for anything else (missing characters score 0).

The reward is dense and graded, so a randomly initialised tiny model learns it in a few minutes on
two CPU cores: first "answer with digits" (about 0.55), then "copy digits from the prompt" (1.0).
"""

from __future__ import annotations

import random

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

SEPARATOR = "="
TARGET_LENGTH = 8
OTHER_DIGIT_CREDIT = 0.25


def make_digits_dataset(num_prompts: int, seed: int = 0, num_digits: int = 4) -> Dataset:
    """Prompts as plain text, plus a ``digits`` column that reaches the reward function."""
    rng = random.Random(seed)
    digits = ["".join(rng.choice("0123456789") for _ in range(num_digits)) for _ in range(num_prompts)]
    return Dataset.from_dict({"prompt": [d + SEPARATOR for d in digits], "digits": digits})


def score_completion(completion: str, digits: str, target_length: int = TARGET_LENGTH) -> float:
    """Score in [0, 1] of one completion against the prompt's digits."""
    points = 0.0
    for char in completion[:target_length]:
        if char in digits:
            points += 1.0
        elif char.isdigit():
            points += OTHER_DIGIT_CREDIT
    return points / target_length


def digits_reward(prompts: list, completions: list, digits: list[str], **kwargs) -> list[float]:
    """Reward function in TRL's GRPO style: ``digits`` is the dataset's extra column."""
    return [score_completion(completion, target) for completion, target in zip(completions, digits, strict=True)]


class _IdentityBackbone(torch.nn.Module):
    """Returns the input ids as its only "hidden state", so the score head can read the text."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs):
        hidden = torch.where(attention_mask.bool(), input_ids, -1)
        return type("Output", (), {"hidden_states": (hidden,)})()


class DigitsRewardModel(torch.nn.Module):
    """The digits reward as a parameter-free "reward model" usable by stock TRL PPO.

    TRL's ``get_reward`` runs ``model.<base_model_prefix>`` then ``model.score`` on the last hidden
    state and reads the score at the last non-pad token. Here the backbone passes the token ids
    through and ``score`` decodes each prefix, splits it at the ``=`` separator and applies
    :func:`score_completion`, so stock TRL and this package train on exactly the same reward.
    """

    base_model_prefix = "backbone"

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        self.backbone = _IdentityBackbone()
        self.tokenizer = tokenizer

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden``: (B, T) token ids with -1 on padding. Returns (B, T, 1) rewards of each prefix."""
        out = torch.zeros((*hidden.shape, 1), dtype=torch.float32, device=hidden.device)
        for row, ids in enumerate(hidden.tolist()):
            text = ""
            for col, token in enumerate(ids):
                if token >= 0:
                    text += self.tokenizer.decode([token], skip_special_tokens=True)
                prompt, _, completion = text.partition(SEPARATOR)
                out[row, col, 0] = score_completion(completion, prompt)
        return out
