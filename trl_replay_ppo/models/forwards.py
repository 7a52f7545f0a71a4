"""Forward passes on padded prompt + response ids: policy log-probs, critic values, reward-model scores.

Every function performs TRL 1.12's operations in TRL's order (so results are bitwise TRL's) and
works on any TRL version, since TRL 1.13 and later no longer ship them.
"""

from __future__ import annotations

import torch
from transformers.utils import ModelOutput

from trl_replay_ppo.core.masking import first_true_indices


def model_inputs(query_responses: torch.Tensor, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Inputs for (B, T) left-padded ids: pad positions masked out and skipped by the position ids."""
    attention_mask = query_responses != pad_token_id
    return {
        "input_ids": torch.masked_fill(query_responses, ~attention_mask, 0),
        "attention_mask": attention_mask,
        "position_ids": attention_mask.cumsum(1) - attention_mask.long(),
    }


def forward(model: torch.nn.Module, query_responses: torch.Tensor, pad_token_id: int) -> ModelOutput:
    """Run ``model`` on (B, T) left-padded ids, hidden states included."""
    return model(**model_inputs(query_responses, pad_token_id), return_dict=True, output_hidden_states=True)


def response_positions(per_position: torch.Tensor, context_length: int) -> torch.Tensor:
    """(B, Lq + R, ...) outputs of a forward pass -> (B, R, ...): the positions that predict the response tokens."""
    return per_position[:, context_length - 1 : -1]


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-softmax of ``logits`` (..., V) at ``tokens`` (...), without materialising the full log-softmax.

    In fp32/fp64 it is the token's logit minus a per-row logsumexp; in lower precision, where that is
    unstable, a per-row log-softmax.
    """
    index = tokens.unsqueeze(-1)
    if logits.dtype in (torch.float32, torch.float64):
        selected = torch.gather(logits, dim=-1, index=index)
        logsumexp = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])  # one row at a time: less memory
        return (selected - logsumexp.unsqueeze(-1)).squeeze(-1)
    rows = [torch.log_softmax(row, dim=-1).gather(dim=-1, index=i) for row, i in zip(logits, index, strict=True)]
    return torch.stack(rows).squeeze(-1)


def sampled_logprobs(logits: torch.Tensor, responses: torch.Tensor, chunk: int) -> torch.Tensor:
    """(B, R) fp32 log-probs of sampled ``responses`` (B, R) under generation's processed ``logits`` (B, R, V),
    ``chunk`` rows at a time."""
    parts = [
        gather_logprobs(logits[i : i + chunk].float(), responses[i : i + chunk])
        for i in range(0, len(responses), chunk)
    ]
    return torch.cat(parts, 0)


def sequence_scores(
    model: torch.nn.Module, query_responses: torch.Tensor, pad_token_id: int, context_length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A score head on ``model``'s backbone (a reward or value model): ``(per-token (B, T, 1), final (B,), lengths)``.

    The final score is read at the last response token (the one before the first pad after the
    prompt); ``lengths`` are those positions. ``model`` needs ``base_model_prefix`` naming a backbone
    that returns hidden states, and a ``score`` head (a transformers sequence classifier has both).
    """
    backbone = getattr(model, model.base_model_prefix)
    inputs = model_inputs(query_responses, pad_token_id)
    output = backbone(**inputs, return_dict=True, output_hidden_states=True, use_cache=False)
    logits = model.score(output.hidden_states[-1])
    lengths = first_true_indices(query_responses[:, context_length:] == pad_token_id) - 1 + context_length
    rows = torch.arange(logits.size(0), device=logits.device)
    return logits, logits[rows, lengths].squeeze(-1), lengths
