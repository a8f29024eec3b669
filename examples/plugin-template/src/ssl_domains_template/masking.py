"""Masking noise (Vincent et al. 2008, §2.3): a fixed share of each row's components set to zero."""

from __future__ import annotations

import torch

from ssl_domains.nn import per_sample_mask


def masking_noise(x: torch.Tensor, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(corrupted, mask)``: ``round(rate * D)`` random components per row zeroed, on x's device."""
    num = round(rate * x.shape[1])
    mask = per_sample_mask(x.shape[0], x.shape[1], num, x.device)
    return x.masked_fill(mask, 0.0), mask
