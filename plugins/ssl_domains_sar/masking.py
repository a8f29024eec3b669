"""MERLIN's views: one SLC component is the input, the other the target (Dalsasso et al. 2021, §III).

Under Goodman's model the real and imaginary parts ``a``, ``b`` of a single-look complex pixel are independent
draws from ``N(0, R/2)`` sharing one reflectivity ``R``. Hiding one component from the network and scoring its
prediction on the other is this method's "masking": the target carries no noise the input could copy.
"""

from __future__ import annotations

import torch


def component_views(real: torch.Tensor, imag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` with both directions in one batch: ``[a; b] -> [b; a]`` (``[2B, 1, H, W]`` each).

    The reference alternates a->b and b->a between batches; stacking both keeps every batch symmetric and
    gives the same expected gradient with half the steps' variance.
    """
    if real.shape != imag.shape:
        raise ValueError(f"real and imaginary parts differ in shape: {tuple(real.shape)} vs {tuple(imag.shape)}")
    return torch.cat((real, imag), dim=0), torch.cat((imag, real), dim=0)
