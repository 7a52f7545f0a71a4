"""`RuleRewardModel`: a rule-based reward dressed as a reward model, so stock TRL PPO can train on it too.

A reward model is read as a sequence classifier: a backbone named by ``base_model_prefix`` whose
last hidden state a ``score`` head turns into a score per position, read at the last response
token. Here the backbone passes the token ids through and ``score`` decodes each prefix and applies
the rule, so stock TRL and this package train on exactly the same reward.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase


class _IdentityBackbone(torch.nn.Module):
    """Returns the input ids as its only "hidden state" (-1 on padding), so the score head can read the text."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs):
        hidden = torch.where(attention_mask.bool(), input_ids, -1)
        return type("Output", (), {"hidden_states": (hidden,)})()


class RuleRewardModel(torch.nn.Module):
    """Subclasses define `score_text`: the reward of a decoded prompt + completion."""

    base_model_prefix = "backbone"

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        self.backbone = _IdentityBackbone()
        self.tokenizer = tokenizer

    def score_text(self, text: str) -> float:
        raise NotImplementedError

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden``: (B, T) token ids with -1 on padding. Returns (B, T, 1): the reward of each prefix."""
        out = torch.zeros((*hidden.shape, 1), dtype=torch.float32, device=hidden.device)
        for row, ids in enumerate(hidden.tolist()):
            text = ""
            for col, token in enumerate(ids):
                if token >= 0:
                    text += self.tokenizer.decode([token], skip_special_tokens=True)
                out[row, col, 0] = self.score_text(text)
        return out
