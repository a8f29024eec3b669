"""Denoising loss: reconstruct the clean input from its corrupted version."""

from __future__ import annotations

import torch
from torch import nn

from .masking import masking_noise


class DenoisingObjective:
    """Weighted squared error, ``alpha`` on corrupted and ``beta`` on clean components (Vincent et al. 2010, §4.5)."""

    def __init__(self, mask_rate: float, corrupted_weight: float, clean_weight: float) -> None:
        self.mask_rate, self.alpha, self.beta = mask_rate, corrupted_weight, clean_weight

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"]
        corrupted, mask = masking_noise(x, self.mask_rate)
        err = (model(corrupted).float() - x.float()).pow(2)
        weights = torch.where(mask, self.alpha, self.beta)
        loss = (weights * err).sum() / weights.sum().clamp_min(1e-12)
        mse_corrupted = (err * mask).sum() / (mask.sum() * 1.0).clamp_min(1.0)
        return {"loss": loss, "mse_corrupted": mse_corrupted}
