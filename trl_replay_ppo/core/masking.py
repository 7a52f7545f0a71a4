"""The one place masks and masked statistics live. One convention everywhere: a mask is a ``padding_mask``,
True on padding (TRL's convention), and the masked statistics average over the entries where it is False.

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


def response_padding_mask(sequence_lengths: torch.Tensor, response_length: int) -> torch.Tensor:
    """(B, R) mask that is True past each row's last response token (where log-probs and advantages stop)."""
    positions = torch.arange(response_length, device=sequence_lengths.device).repeat(sequence_lengths.shape[0], 1)
    return positions > sequence_lengths.unsqueeze(1)


def suppress_token(logits: torch.Tensor, token_id: int | None) -> torch.Tensor:
    """``logits`` (..., V) with ``token_id`` made impossible (the lowest finite logit), or unchanged for None.

    The lowest finite value rather than -inf keeps ``softmax * logits`` (entropy) finite.
    """
    if token_id is None:
        return logits
    logits = logits.clone()
    logits[..., token_id] = torch.finfo(logits.dtype).min
    return logits


def masked_mean(values: torch.Tensor, padding_mask: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``padding_mask`` is False (over ``axis``, or all); 0 where nothing is valid."""
    valid = ~padding_mask
    if axis is not None:
        return (values * valid).sum(dim=axis) / valid.sum(dim=axis).clamp(min=1)
    return (values * valid).sum() / valid.sum().clamp(min=1)


def masked_var(values: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """Unbiased (Bessel-corrected) variance of the valid ``values``; needs at least 2 of them."""
    mean = masked_mean(values, padding_mask)
    variance = masked_mean((values - mean) ** 2, padding_mask)
    valid_count = (~padding_mask).sum()
    return variance * (valid_count / (valid_count - 1))


def masked_whiten(
    values: torch.Tensor, padding_mask: torch.Tensor, shift_mean: bool = True, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, bool]:
    """Whitened ``values`` over the valid entries, and whether it was possible.

    With ``weights`` (same shape), the mean and (Bessel-corrected) variance are weighted: e.g. by
    importance weights, so that rows sampled more often than their share count for their share.
    Whitening needs at least 2 valid values (a variance); with fewer, ``values`` come back
    unchanged and the flag is False, so the caller can count the fallback.
    """
    count = int((~padding_mask).sum())
    if count < 2:
        return values, False
    if weights is None:
        mean, var = masked_mean(values, padding_mask), masked_var(values, padding_mask)
    else:
        weights = weights * ~padding_mask
        mean = (values * weights).sum() / weights.sum()
        var = ((values - mean) ** 2 * weights).sum() / weights.sum() * (count / (count - 1))
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened += mean
    return whitened, True
