"""Objectives: CROMA (contrastive + MAE), SSL4EO MoCo v3 with temporal positives, and SSL4EO MAE.

Each is ``(model, batch) -> {"loss", **logs}``; masking and augmentation run batched on the batch's device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssl_domains.nn import at_least_float32, info_nce

from .masking import croma_masks, random_keep
from .model import patchify


def masked_patch_mse(pred: torch.Tensor, target: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked patches only (MAE Eq. in §3), ``pred``/``target`` ``[B, N, D]``."""
    per_patch = (at_least_float32(pred) - at_least_float32(target)).pow(2).mean(-1)
    weight = masked.to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum().clamp_min(1.0)


def normalise_patches(target: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Per-patch standardisation of the targets (MAE's ``norm_pix_loss``); ``unbiased`` divides the variance by
    ``n - 1`` as ``torch.var``'s default does in MAE's and CROMA's code (``pretrain_croma.py:481``)."""
    mean = target.mean(-1, keepdim=True)
    var = target.var(-1, keepdim=True, unbiased=unbiased)
    return (target - mean) / (var + 1e-6).sqrt()


def dihedral(*images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same random flip/transpose (one of the 8 symmetries of the square) per sample, applied to every
    tensor ``[B, C, H, W]`` given (co-registered modalities stay aligned). Batched with ``torch.where``."""
    b, device = images[0].shape[0], images[0].device
    draws = torch.rand(b, 3, device=device) < 0.5
    out = []
    for x in images:
        x = torch.where(draws[:, 0, None, None, None], x.flip(-1), x)
        x = torch.where(draws[:, 1, None, None, None], x.flip(-2), x)
        if x.shape[-1] == x.shape[-2]:
            x = torch.where(draws[:, 2, None, None, None], x.transpose(-1, -2), x)
        out.append(x)
    return tuple(out)


class CROMAObjective:
    """CROMA's loss (Fuller et al. 2023, §3): ``L = L_contrastive + w * L_MAE``.

    - Radar and optical chips get independent random masks (``mask_ratio``, paper: 75%); only visible tokens are
      encoded.
    - ``L_contrastive``: symmetric InfoNCE between the radar and optical embeddings of the same chip (CLIP's loss,
      learnable temperature initialised at 0.07, its logit scale capped at 100 as in CLIP), negatives from the whole
      (global) batch.
    - ``L_MAE``: the joint tokens (at radar-visible positions) go through the decoder, which predicts all 14 channels
      of every patch; targets are normalised per patch over all channels; the optical part is scored on the
      optical-masked patches and the radar part on the radar-masked patches. The reference sums the two losses
      unweighted; ``mae_weight`` (default 1) keeps that.
    - ``flips``: the same random flip/transpose of both modalities per chip (:func:`dihedral`), an augmentation
      the reference code leaves to the user's data loader.
    - Reference-code choices, off by default (``docs/plugins/croma.md``, "Equivalence"): ``unbiased_patch_var``
      (``torch.var``'s n - 1 in the target normalisation) and ``detach_keys`` (each InfoNCE direction trains its
      query side only: the reference's ``dist.all_gather`` of the keys carries no gradient).
    """

    def __init__(
        self, mask_ratio: float = 0.75, mae_weight: float = 1.0, flips: bool = True,
        unbiased_patch_var: bool = False, detach_keys: bool = False,
    ) -> None:  # fmt: skip
        self.mask_ratio, self.mae_weight, self.flips = mask_ratio, mae_weight, flips
        self.unbiased_patch_var, self.detach_keys = unbiased_patch_var, detach_keys

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        radar, optical = batch["radar"], batch["optical"]
        if self.flips:
            radar, optical = dihedral(radar, optical)
        b, _, h, w = optical.shape
        n = (h // model.patch) * (w // model.patch)
        return self.loss(model, radar, optical, *croma_masks(b, n, self.mask_ratio, optical.device))

    def loss(
        self,
        model,
        radar: torch.Tensor,
        optical: torch.Tensor,
        radar_mask: tuple[torch.Tensor, torch.Tensor],
        optical_mask: tuple[torch.Tensor, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """The loss of (already augmented) chips under given masks, each ``(keep [B, n], masked [B, N])``."""
        (keep_r, masked_r), (keep_o, masked_o) = radar_mask, optical_mask
        p = model.patch
        grid = (optical.shape[-2] // p, optical.shape[-1] // p)
        out = model(radar, optical, keep_r, keep_o)
        temperature = model.logit_scale.clamp(max=math.log(100.0)).exp().reciprocal()
        z_r, z_o = out["z_radar"], out["z_optical"]
        key_r, key_o = (z_r.detach(), z_o.detach()) if self.detach_keys else (z_r, z_o)
        contrast = (info_nce(z_r, key_o, temperature) + info_nce(z_o, key_r, temperature)) / 2
        pred = model.decoder(out["joint"], keep_r, grid)
        pixels = at_least_float32(patchify(torch.cat([optical, radar], dim=1), p))
        target = normalise_patches(pixels, self.unbiased_patch_var)
        split = model.optical_channels * p * p
        mae_optical = masked_patch_mse(pred[..., :split], target[..., :split], masked_o)
        mae_radar = masked_patch_mse(pred[..., split:], target[..., split:], masked_r)
        mae = mae_optical + mae_radar
        return {
            "loss": contrast + self.mae_weight * mae,
            "contrastive": contrast.detach(),
            "mae_optical": mae_optical.detach(),
            "mae_radar": mae_radar.detach(),
            "temperature": temperature.detach(),
        }


def _crop_flip_grid(x: torch.Tensor, min_scale: float) -> torch.Tensor:
    """A per-sample random resized crop (area ``min_scale``..1) with random flips, as one ``affine_grid``."""
    b, device = x.shape[0], x.device
    side = torch.empty(b, device=device).uniform_(min_scale, 1.0).sqrt()
    shift = (torch.rand(b, 2, device=device) * 2 - 1) * (1 - side)[:, None]
    flip = torch.where(torch.rand(b, 2, device=device) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0] = side * flip[:, 0]
    theta[:, 1, 1] = side * flip[:, 1]
    theta[:, :, 2] = shift
    return F.affine_grid(theta, list(x.shape), align_corners=False)


def augment(
    x: torch.Tensor, min_scale: float = 0.5, jitter: float = 0.2, grid: torch.Tensor | None = None
) -> torch.Tensor:
    """Batched per-sample augmentation on the device, SSL4EO-S12's view transform without the RGB-only parts:
    random resized crop (area ``min_scale``..1) with horizontal and vertical flips (one ``affine_grid``; pass
    ``grid`` to reuse another view's geometry), and brightness/contrast jitter of ``±jitter`` on all bands (the
    chips are normalised to [0, 1])."""
    b, device = x.shape[0], x.device
    if grid is None:
        grid = _crop_flip_grid(x, min_scale)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    brightness = torch.empty(b, 1, 1, 1, device=device).uniform_(-jitter, jitter)
    contrast = torch.empty(b, 1, 1, 1, device=device).uniform_(1 - jitter, 1 + jitter)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + brightness).to(x.dtype)


class MoCoObjective:
    """MoCo v3 (Chen, Xie, He 2021, Alg. 1) on SSL4EO-S12's temporal positives (Wang et al. 2022, §4.1).

    ``view1`` and ``view2`` are the same location at two dates; each is augmented independently. The query
    encoder (backbone, projector, predictor) is trained with ``ctr(q1, k2) + ctr(q2, k1)``, where
    ``ctr(q, k) = 2 tau * InfoNCE(q, k; tau)`` and the keys come from the momentum (EMA) encoder; negatives are the
    other chips of the global batch. With ``shared_geometry`` both dates get the same crop and flips (only the
    photometric jitter differs), so the positive pair stays pixel-aligned and the season is the main difference
    between the views; the reference draws the two crops independently.
    """

    def __init__(
        self, temperature: float = 0.2, min_scale: float = 0.5, jitter: float = 0.2, shared_geometry: bool = False
    ) -> None:
        self.temperature, self.min_scale, self.jitter = temperature, min_scale, jitter
        self.shared_geometry = shared_geometry

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        grid = _crop_flip_grid(batch["view1"], self.min_scale) if self.shared_geometry else None
        x1 = augment(batch["view1"], self.min_scale, self.jitter, grid)
        x2 = augment(batch["view2"], self.min_scale, self.jitter, grid)
        return self.loss(model, x1, x2)

    def loss(self, model, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, torch.Tensor]:
        """The symmetrised loss of two augmented views (``benchmarks/_equiv_ssl4eo.py`` injects the reference's);
        MoCo v3's ``forward`` (``moco/builder.py`` L72-93) with ``contrastive_loss``'s ``2 tau`` factor."""
        head_input = model.head_input  # the ViT's class token, or the ResNet's pooled features
        q1 = model.predictor(model.projector(head_input(model.backbone, x1)))
        q2 = model.predictor(model.projector(head_input(model.backbone, x2)))
        with torch.no_grad():
            key_backbone, key_projector = model.key_encoder.module
            k1 = key_projector(head_input(key_backbone, x1))
            k2 = key_projector(head_input(key_backbone, x2))
        t = self.temperature
        loss = 2 * t * (info_nce(q1, k2, t) + info_nce(q2, k1, t))
        return {"loss": loss}


class MAEObjective:
    """MAE on S2 chips (He et al. 2022; SSL4EO-S12's MAE ViT-S/16 baseline): random masking, the encoder sees the
    visible patches, the decoder predicts the per-patch-normalised pixels, loss on the masked patches."""

    def __init__(self, mask_ratio: float = 0.75, decoder_cls: bool = False, unbiased_patch_var: bool = False) -> None:
        self.mask_ratio, self.decoder_cls, self.unbiased_patch_var = mask_ratio, decoder_cls, unbiased_patch_var

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["view1"]
        b, _, h, w = x.shape
        keep, masked = random_keep(b, (h // model.patch) * (w // model.patch), self.mask_ratio, x.device)
        return self.loss(model, x, keep, masked)

    def loss(self, model, x: torch.Tensor, keep: torch.Tensor, masked: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss for the kept token ids ``keep`` ``[B, n]`` and the mask ``masked`` ``[B, N]`` (True = hidden;
        ``benchmarks/_equiv_ssl4eo.py`` injects MAE's ``random_masking``)."""
        p = model.patch
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        tokens = model.backbone(x, keep)
        pred = model.decoder(tokens[:, 1:], keep, grid, tokens[:, :1] if self.decoder_cls else None)
        target = normalise_patches(patchify(at_least_float32(x), p), self.unbiased_patch_var)
        return {"loss": masked_patch_mse(pred, target, masked)}
