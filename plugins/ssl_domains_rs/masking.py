"""Random token masking for CROMA and the SSL4EO MAE variant: batched on the device, no host sync.

The per-row draw is MAE's (``ssl_domains.nn.random_keep``, He et al. 2022, §3). CROMA masks the radar and the
optical tokens of a location *independently* (Fuller et al. 2023, §3.1: "independent random masks"), so the
joint encoder cannot match a radar patch with the optical patch at the same place.
"""

from __future__ import annotations

import torch

from ssl_domains.nn import random_keep

__all__ = ["croma_masks", "random_keep"]


def croma_masks(
    batch_size: int, num_tokens: int, mask_ratio: float, device: torch.device | str
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``((keep, masked) radar, (keep, masked) optical)``: one independent :func:`random_keep` per modality,
    radar first (the order of the draws, and so the masks of a seed, are the original implementation's)."""
    return random_keep(batch_size, num_tokens, mask_ratio, device), random_keep(
        batch_size, num_tokens, mask_ratio, device
    )
