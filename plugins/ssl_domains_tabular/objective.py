"""T-JEPA's objective: predict the target encoder's tokens of masked features from a context subset.

Loss (Thimonier et al. 2024, eq. 2; reference ``src/train.py``): the mean squared error between the predictor's
outputs and the target encoder's tokens at the target features, averaged over the ``num_targets`` target sets.
The target encoder sees every feature, without gradients; its tokens are not normalised beyond the encoder's
final LayerNorm, as in the reference.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .masking import context_and_targets, sample_set_sizes
from .model import TJEPAModel


class TJEPAObjective:
    """``(model, batch) -> {"loss", "target_std"}``, batched on the device."""

    def __init__(self, cfg: Any) -> None:
        self.context_share = tuple(cfg.context_share)
        self.target_share = tuple(cfg.target_share)
        self.num_targets = cfg.num_targets

    def predict(self, model: TJEPAModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """(predictions ``[B, T, k, H]``, targets ``[B, T, k, H]``, target feature indices ``[B, T, k]``)."""
        numeric, categorical = batch["numeric"], batch["categorical"]
        batch_size, reg = numeric.shape[0], model.num_reg_tokens
        k_context, k_target = sample_set_sizes(model.num_features, self.context_share, self.target_share)
        context, targets = context_and_targets(
            batch_size, model.num_features, k_context, k_target, self.num_targets, numeric.device
        )
        with torch.no_grad():
            full = model.target_encoder(numeric, categorical)  # [B, R + D, H]
            index = (targets + reg).flatten(1).unsqueeze(-1).expand(-1, -1, full.shape[-1])
            target_tokens = full.gather(1, index).view(*targets.shape, -1)
        context_tokens = model.context_encoder(numeric, categorical, context)
        reg_positions = torch.arange(reg, device=numeric.device).expand(batch_size, -1)
        context_positions = torch.cat([reg_positions, context + reg], dim=1)
        predictions = model.predictor(context_tokens, context_positions, targets + reg)
        return predictions, target_tokens, targets

    def __call__(self, model: TJEPAModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        predictions, target_tokens, _ = self.predict(model, batch)
        loss = F.mse_loss(predictions.float(), target_tokens.float())
        return {
            "loss": loss,
            "target_std": target_tokens.float().std(dim=0).mean().detach(),  # collapse watch: → 0 if collapsed
        }
