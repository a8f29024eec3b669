"""Random token masking for CROMA and the SSL4EO MAE variant: batched on the device, no host sync."""

from __future__ import annotations

import torch


def random_keep(
    batch_size: int, num_tokens: int, mask_ratio: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAE-style masking (He et al. 2022, §3): each row keeps ``round(N (1 - ratio))`` tokens chosen uniformly.

    Returns ``(keep, masked)``: kept indices ``[B, n_keep]`` in ascending (raster) order, and a bool ``[B, N]``
    that is True on masked tokens. CROMA draws one such mask per modality, independently (Fuller et al. 2023,
    §3.1: "independent random masks"). The count depends only on shapes, so nothing is read back from the device.
    """
    n_keep = max(1, min(num_tokens, round(num_tokens * (1.0 - mask_ratio))))
    noise = torch.rand(batch_size, num_tokens, device=device)
    keep = noise.argsort(dim=1)[:, :n_keep].sort(dim=1).values
    masked = torch.ones(batch_size, num_tokens, dtype=torch.bool, device=device)
    masked.scatter_(1, keep, False)
    return keep, masked
