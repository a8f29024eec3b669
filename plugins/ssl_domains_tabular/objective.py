"""T-JEPA's objective: predict the target encoder's tokens of masked features from a context subset.

Loss (Thimonier et al. 2024, eq. 2; reference ``src/train.py``): the mean squared error between the predictor's
outputs and the target encoder's tokens at the target features, averaged over the ``num_targets`` target sets.
The target encoder sees every feature, without gradients; its tokens are not normalised beyond the encoder's
final LayerNorm, as in the reference.

``mask_indexing: reference`` reproduces the reference's index sets (``src/mask.py``, ``src/train.py:352-373``): the
drawn indices ``0..D-1`` select tokens of ``[REG] * R + features``, so the context holds a [REG] token only when
one is drawn, index ``r < R`` makes a [REG] token a target, and the last ``R`` features are never used; the
predictor's positions are those indices. The loss is then the reference's ``MSELoss`` over the same elements.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .masking import context_and_targets, reference_set_sizes, sample_set_sizes
from .model import TJEPAModel


class TJEPAObjective:
    """``(model, batch) -> {"loss", "target_std"}``, batched on the device.

    Each sample draws a context of ``context_share`` (a range) of its features and ``num_targets`` target sets of
    ``target_share`` each; ``mask_indexing`` is ``"paper"`` or the reference's token indexing (module docstring).
    """

    def __init__(
        self,
        *,
        context_share: tuple[float, float],
        target_share: tuple[float, float],
        num_targets: int,
        mask_indexing: Literal["paper", "reference"] = "paper",
    ) -> None:
        self.context_share, self.target_share = tuple(context_share), tuple(target_share)
        self.num_targets, self.mask_indexing = num_targets, mask_indexing

    def predict(
        self,
        model: TJEPAModel,
        batch: dict[str, torch.Tensor],
        sets: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """(predictions ``[B, T, k, H]``, targets ``[B, T, k, H]``, target feature indices ``[B, T, k]``).

        ``sets``: given (context ``[B, k_ctx]``, targets ``[B, T, k]``) index sets instead of drawn ones (the
        equivalence check injects the reference's). With ``mask_indexing: reference`` the indices are token indices
        and the returned feature indices are ``index - R`` (negative: a [REG] token was the target).
        """
        numeric, categorical = batch["numeric"], batch["categorical"]
        batch_size, reg = numeric.shape[0], model.num_reg_tokens
        if sets is not None:
            context, targets = sets
        else:
            sizes = reference_set_sizes if self.mask_indexing == "reference" else sample_set_sizes
            k_context, k_target = sizes(model.num_features, self.context_share, self.target_share)
            context, targets = context_and_targets(
                batch_size, model.num_features, k_context, k_target, self.num_targets, numeric.device
            )
        if self.mask_indexing == "reference":
            with torch.no_grad():
                full = model.target_encoder(numeric, categorical)  # [B, R + D, H]
                index = targets.flatten(1).unsqueeze(-1).expand(-1, -1, full.shape[-1])
                target_tokens = full.gather(1, index).view(*targets.shape, -1)
            context_tokens = model.context_encoder(numeric, categorical, tokens=context)
            predictions = model.predictor(context_tokens, context, targets)
            return predictions, target_tokens, targets - reg
        with torch.no_grad():
            full = model.target_encoder(numeric, categorical)  # [B, R + D, H]
            index = (targets + reg).flatten(1).unsqueeze(-1).expand(-1, -1, full.shape[-1])
            target_tokens = full.gather(1, index).view(*targets.shape, -1)
        context_tokens = model.context_encoder(numeric, categorical, context)
        reg_positions = torch.arange(reg, device=numeric.device).expand(batch_size, -1)
        context_positions = torch.cat([reg_positions, context + reg], dim=1)
        predictions = model.predictor(context_tokens, context_positions, targets + reg)
        return predictions, target_tokens, targets

    def __call__(
        self,
        model: TJEPAModel,
        batch: dict[str, torch.Tensor],
        sets: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        predictions, target_tokens, _ = self.predict(model, batch, sets)
        dtype = torch.promote_types(predictions.dtype, torch.float32)  # float32 under AMP, float64 stays float64
        loss = F.mse_loss(predictions.to(dtype), target_tokens.to(dtype))
        return {
            "loss": loss,
            "target_std": target_tokens.to(dtype).std(dim=0).mean().detach(),  # collapse watch: → 0 if collapsed
        }
