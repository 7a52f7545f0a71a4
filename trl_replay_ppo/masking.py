"""The one place masks and masked statistics live (TRL's convention: a response mask is True on padding).

The masked statistics perform TRL's floating-point operations in TRL's order, so results are
bitwise TRL's wherever TRL's are finite; where TRL's would be 0/0 (no valid token, or one token for
a variance), they fall back to something finite instead.
"""

from __future__ import annotations

import torch


def first_true_indices(bools: torch.Tensor) -> torch.Tensor:
    """(B, T) booleans -> (B,) index of the first True in each row, T when there is none."""
    row_len = bools.size(-1)
    zero_or_index = row_len * (~bools).type(torch.long) + torch.arange(row_len, device=bools.device)
    return torch.min(zero_or_index, dim=-1).values


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


def suppress_token(logits: torch.Tensor, token_id: int | None) -> torch.Tensor:
    """``logits`` (..., V) with ``token_id`` made impossible (the lowest finite logit), or unchanged for None.

    The lowest finite value rather than -inf keeps ``softmax * logits`` (entropy) finite.
    """
    if token_id is None:
        return logits
    logits = logits.clone()
    logits[..., token_id] = torch.finfo(logits.dtype).min
    return logits


def masked_mean(values: torch.Tensor, mask: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is True (over ``axis``, or all); 0 where nothing is valid."""
    if axis is not None:
        return (values * mask).sum(axis=axis) / mask.sum(axis=axis).clamp(min=1)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased (Bessel-corrected) variance of the valid ``values``; needs at least 2 of them."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    mask_sum = mask.sum()
    return variance * (mask_sum / (mask_sum - 1))


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> tuple[torch.Tensor, bool]:
    """Whitened ``values`` over the valid entries, and whether it was possible.

    Whitening needs at least 2 valid values (a variance); with fewer, ``values`` come back
    unchanged and the flag is False, so the caller can count the fallback.
    """
    if int(mask.sum()) < 2:
        return values, False
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened += mean
    return whitened, True
