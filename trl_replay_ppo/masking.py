"""The one place response masks are derived (TRL's convention: True marks padding)."""

from __future__ import annotations

import torch
from trl.experimental.utils import first_true_indices


def last_token_index(responses: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """(B, R) responses -> (B,) index of the last token before the first pad (-1 when empty)."""
    return first_true_indices(responses == pad_token_id) - 1


def response_padding_masks(sequence_lengths: torch.Tensor, response_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks (B, R) that are True past the last token, and past the token after it.

    Log-probs and advantages live on ``~padding_mask``; values and rewards also on the
    token after the last one, hence ``padding_mask_p1``.
    """
    positions = torch.arange(response_length, device=sequence_lengths.device).repeat(sequence_lengths.shape[0], 1)
    padding_mask = positions > sequence_lengths.unsqueeze(1)
    padding_mask_p1 = positions > (sequence_lengths + 1).unsqueeze(1)
    return padding_mask, padding_mask_p1
