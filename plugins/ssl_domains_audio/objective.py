"""TERA's and SSAST's objectives, batched on the device.

TERA (Liu et al. 2021, §III-C; s3prl ``pretrain/mockingjay/pretrain_expert.py``): the L1 distance between the
reconstruction and the clean features, over the altered positions only (time-masked frames and frequency-masked
bins of real frames).

SSAST (Gong et al. 2022, §2.2, Eq. 1-3): for each clip, the prediction ``c_i`` of masked patch ``i`` (the
discriminative head) is scored against the raw values ``x_j`` of *every masked patch of the same clip*, and
InfoNCE picks the right one; the generative head regresses the raw patch (MSE); ``loss = nce + λ · mse`` with
λ = 10. Computed for the whole batch at once: masked patches are gathered into ``[B, N, ·]`` with ``N`` the
largest count a clip can have, and slots beyond a clip's count are excluded from the softmax and the means.

Choices, stated as the issue asks:
- *Softmax dimension*: Eq. 1 normalises over the clip's masked targets ``x_j`` for each prediction ``c_i``
  (``nce_softmax="paper"``, the default). The reference normalises ``x_i · c_j`` over the predictions for each
  target instead (its ``log_softmax(dim=-1)`` on ``encode_samples @ pred.T``; ssast#13); ``nce_softmax=
  "reference"`` reproduces that.
- *Forward passes*: the reference's joint pretraining runs the encoder twice with independent masks, one pass
  per loss. We run it once and apply both heads to the same masked patches (``forward_passes=1``, half the cost);
  ``forward_passes=2`` reproduces the reference.
- *Under DDP*: every mean over masked positions (TERA's L1, SSAST's InfoNCE and MSE) divides by the count of the
  global batch (:func:`ssl_domains.nn.global_mean`), not the rank's own, so a 2-GPU step equals the 1-GPU step
  on the same clips even when their lengths, and so their counts, differ between ranks. On one process this is
  the reference's mean.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from ssl_domains.nn import at_least_float32, global_mean

from .masking import patch_mask, tera_alter
from .model import SSASTModel, TERAModel


class TERAObjective:
    """``(model, batch) -> {"loss", "altered_share"}``.

    The alterations of §III-B: ``time_mask_ratio`` of the frames in blocks of ``time_mask_block``, one frequency
    block of at most ``freq_mask_max`` of the bins, and magnitude noise with probability ``noise_prob``.
    """

    def __init__(
        self, *, time_mask_ratio: float, time_mask_block: int, freq_mask_max: float, noise_prob: float
    ) -> None:
        self.time_mask_ratio, self.time_mask_block = time_mask_ratio, time_mask_block
        self.freq_mask_max, self.noise_prob = freq_mask_max, noise_prob

    def alter(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The altered features and the positions to predict."""
        return tera_alter(
            x, lengths, time_ratio=self.time_mask_ratio, block=self.time_mask_block, freq_max=self.freq_mask_max,
            noise_prob=self.noise_prob,
        )  # fmt: skip

    def __call__(self, model: TERAModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, lengths = batch["features"], batch["length"]
        altered, predict = self.alter(x, lengths)
        return self.loss(model, x, altered, predict, lengths)

    @staticmethod
    def loss(
        model: TERAModel, x: torch.Tensor, altered: torch.Tensor, predict: torch.Tensor, lengths: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The paper's L1 reconstruction loss (§III-C): the mean distance between the reconstruction of
        ``altered`` and the clean ``x`` over the positions ``predict`` marks (``[B, T, F]``); the alterations are
        drawn by the caller (``alter``, or the reference's own masking in ``benchmarks/equivalence.py``)."""
        reconstruction = model(altered, lengths)
        reconstruction = reconstruction if reconstruction.dtype == torch.float64 else reconstruction.float()
        weights = predict.to(reconstruction.dtype)
        # over the global batch's altered positions: a rank's own count would reweigh positions under DDP
        loss = global_mean(((reconstruction - x).abs() * weights).sum(), weights.sum())
        return {"loss": loss, "altered_share": weights.mean().detach()}


def gather_masked(mask: torch.Tensor, max_count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index [B, N], slot_valid [B, N])``: each clip's masked positions first, ``N = max_count``."""
    order = (~mask).to(torch.int8).argsort(dim=1, stable=True)[:, :max_count]
    slot_valid = torch.arange(max_count, device=mask.device) < mask.sum(1, keepdim=True)
    return order, slot_valid


class SSASTObjective:
    """``(model, batch) -> {"loss", "nce", "mse", "masked_acc"}``.

    ``cluster``: cluster masking (patch mode, §2.3) rather than random; ``mask_ratio`` of a clip's patches are
    masked; ``mse_weight`` is λ; ``nce_softmax`` and ``forward_passes`` are the choices in the module docstring.
    """

    def __init__(
        self,
        *,
        mask_ratio: float,
        cluster: bool,
        mse_weight: float,
        nce_softmax: Literal["paper", "reference"] = "paper",
        forward_passes: Literal[1, 2] = 1,
    ) -> None:
        self.mask_ratio, self.cluster, self.mse_weight = mask_ratio, cluster, mse_weight
        self.nce_softmax, self.forward_passes = nce_softmax, forward_passes

    def mask(self, model: SSASTModel, valid: torch.Tensor, frames: int) -> torch.Tensor:
        """A fresh patch mask for the batch."""
        return patch_mask(valid, model.grid(frames), self.mask_ratio, cluster=self.cluster)

    def heads(
        self, model: SSASTModel, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mask ``[B, P]``, raw targets, discriminative and generative outputs ``[B, N, patch]``, slot validity)."""
        x, lengths = batch["features"], batch["length"]
        patches = model.patchify(x)
        valid = model.patch_validity(lengths, x.shape[1])
        mask = self.mask(model, valid, x.shape[1])
        max_count = max(1, math.floor(valid.shape[1] * self.mask_ratio + 0.5))
        index, slot_valid = gather_masked(mask, max_count)
        layers, _ = model.encode(x, lengths, mask)
        states = layers[-1].gather(1, index[:, :, None].expand(-1, -1, layers[-1].shape[-1]))
        targets = patches.gather(1, index[:, :, None].expand(-1, -1, patches.shape[-1]))
        return mask, targets, model.discriminative_head(states), model.generative_head(states), slot_valid

    def nce(
        self, predictions: torch.Tensor, targets: torch.Tensor, slot_valid: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """InfoNCE over each clip's masked patches (Eq. 1), and the share of predictions matched correctly."""
        # [B, N, N]: prediction i, target j
        logits = at_least_float32(predictions) @ at_least_float32(targets).transpose(1, 2)
        if self.nce_softmax == "reference":
            logits = logits.transpose(1, 2)
        pair_valid = slot_valid[:, None, :] & slot_valid[:, :, None]
        logits = logits.masked_fill(~pair_valid, float("-inf"))
        log_prob = logits.diagonal(dim1=1, dim2=2) - torch.logsumexp(
            logits.masked_fill(~slot_valid[:, :, None], 0.0), dim=2
        )
        weights = slot_valid.to(logits.dtype)
        nce = global_mean(-(log_prob.masked_fill(~slot_valid, 0.0) * weights).sum(), weights.sum())
        correct = (logits.argmax(dim=2) == torch.arange(logits.shape[1], device=logits.device)).float()
        return nce, (correct * weights).sum() / weights.sum()

    def __call__(self, model: SSASTModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        _, targets, discriminative, generative, slot_valid = self.heads(model, batch)
        nce, accuracy = self.nce(discriminative, targets, slot_valid)
        if self.forward_passes == 2:  # the reference: a second pass with an independent mask for the MSE
            _, targets, _, generative, slot_valid = self.heads(model, batch)
        generative, targets = at_least_float32(generative), at_least_float32(targets)
        weights = slot_valid.to(targets.dtype)[:, :, None]
        mse = global_mean(((generative - targets).pow(2) * weights).sum(), weights.sum() * targets.shape[-1])
        loss = nce + self.mse_weight * mse
        return {"loss": loss, "nce": nce.detach(), "mse": mse.detach(), "masked_acc": accuracy.detach()}
