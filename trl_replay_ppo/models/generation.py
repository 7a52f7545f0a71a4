"""Sampling responses: generation in chunks with the processed logits, and truncation at the stop token.

Same operations as TRL 1.12's PPO helpers, on any TRL version.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from trl_replay_ppo.core.masking import first_true_indices


def generate(
    model: torch.nn.Module, queries: torch.Tensor, pad_token_id: int, config: GenerationConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample responses to (b, Lq) left-padded ``queries``: ``(b, Lq + R) ids, (b, R, V) processed logits)``.

    The logits are the generation's own scores after its logits processors (temperature,
    suppressed tokens), i.e. the distribution each token was sampled from.
    """
    context_length = queries.shape[1]
    attention_mask = queries != pad_token_id
    input_ids = torch.masked_fill(queries, ~attention_mask, 0)
    output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    logits = torch.stack(output.scores, 1)
    return torch.cat((queries, output.sequences[:, context_length:]), dim=1), logits


def _stack_padded(tensors: list[torch.Tensor], value: float) -> torch.Tensor:
    """Stack tensors of different shapes, padding each at the end of every dimension with ``value``."""
    shape = [max(t.shape[d] for t in tensors) for d in range(tensors[0].dim())]
    out = torch.full((len(tensors), *shape), value, dtype=tensors[0].dtype, device=tensors[0].device)
    for i, t in enumerate(tensors):
        out[(i, *(slice(0, s) for s in t.shape))] = t
    return out


@torch.no_grad()
def batch_generation(
    model: torch.nn.Module, queries: torch.Tensor, chunk_size: int, pad_token_id: int, config: GenerationConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """`generate` over ``chunk_size`` queries at a time; responses right-padded (pad id, logits 0) to one width."""
    config = GenerationConfig(**{**config.to_dict(), "return_dict_in_generate": True, "output_scores": True})
    responses, logits = [], []
    for start in range(0, queries.shape[0], chunk_size):
        query_response, chunk_logits = generate(model, queries[start : start + chunk_size], pad_token_id, config)
        responses.append(query_response)
        logits.append(chunk_logits)
    padded = _stack_padded(responses, pad_token_id)
    padded_logits = _stack_padded(logits, 0)
    batch = queries.shape[0]
    return padded.view(-1, padded.shape[-1])[:batch], padded_logits.view(-1, *padded_logits.shape[2:])[:batch]


def truncate_response(stop_token_id: int, pad_token_id: int, responses: torch.Tensor) -> torch.Tensor:
    """(B, R) responses with every token after the first stop token replaced by padding (the stop token stays)."""
    stop_at = first_true_indices(responses == stop_token_id).unsqueeze(-1)
    positions = torch.arange(responses.shape[1], device=responses.device).view(1, -1)
    return torch.masked_fill(responses, positions > stop_at, pad_token_id)
