"""Objectives: contrastive3d (Swin UNETR SSL losses on MONAI-recipe views) and Alice.

Each is ``(model, batch) -> {"loss", **logs}``; masks, rotations and losses run batched on the batch's device with
no host sync.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ssl_domains.nn import at_least_float32, nt_xent

from .masking import column_mask, rotate90

if TYPE_CHECKING:
    from .model import AliceModel, Contrastive3DModel
    from .plugin import AliceConfig


class Contrastive3DObjective:
    """``L = w_r * L1(recon, crop) + w_c * NT-Xent(z1, z2) + w_rot * CE(rotation)`` (Tang et al., CVPR 2022, Eq. 1-4).

    The two views are independently corrupted copies of one crop (the MONAI ViT recipe's in/out-painting and
    local shuffling, done by the data module), or, with ``positives: corresponding``, corrupted crops at
    corresponding points of two volumes (``image`` and ``image2``, each view's own reconstruction target).
    With ``rotation`` each view is also turned by its own random multiple of 90 degrees and the network predicts
    it; the reconstruction target is the clean crop turned the same way (Tang's target). Both views go through
    the network in one batch.

    Choices against the references, on purpose:

    - Tang's SSLHead reads the rotation and the contrastive vectors off two single tokens (token 0 and token 1
      of the last stage); here both heads read the *mean* of the encoder tokens, which is what ``embed`` returns.
    - The MONAI ViT recipe multiplies its contrastive term by the L1 term (``L1 + C * L1``), contrasts the
      flattened reconstructions and reconstructs the first view only; we follow Tang's weighted sum on
      projections (weights 1, temperature 0.5). ``loss_form="tutorial"`` computes the recipe's
      ``w_r * L1(recon_1, crop) + w_c * NT-Xent(flat recon_1, flat recon_2) * L1(recon_1, crop)`` (its
      ``ssl_train.ipynb`` training cell) for the model built with ``projector=False``; rotation must be off.
    """

    def __init__(
        self,
        temperature: float = 0.5,
        rotation: bool = True,
        recon_weight: float = 1.0,
        contrast_weight: float = 1.0,
        rotation_weight: float = 1.0,
        loss_form: str = "tang",
    ) -> None:
        if loss_form not in ("tang", "tutorial") or (loss_form == "tutorial" and rotation):
            raise ValueError(f"loss_form must be 'tang', or 'tutorial' without rotation, got {loss_form!r}")
        self.temperature, self.rotation, self.loss_form = temperature, rotation, loss_form
        self.recon_weight, self.contrast_weight, self.rotation_weight = recon_weight, contrast_weight, rotation_weight

    def __call__(self, model: Contrastive3DModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        crop, b = batch["image"], batch["image"].shape[0]
        views, target = torch.cat([batch["view1"], batch["view2"]]), torch.cat([crop, batch.get("image2", crop)])
        if self.rotation:
            turns = torch.randint(0, 4, (2 * b,), device=crop.device)
            views, target = rotate90(views, turns), rotate90(target, turns)
        out = model(views)
        output = at_least_float32(out["output"])
        if self.loss_form == "tutorial":
            recon = F.l1_loss(output[:b], at_least_float32(target[:b]))
            contrast = nt_xent(output[:b].flatten(1), output[b:].flatten(1), self.temperature)
            loss = self.recon_weight * recon + self.contrast_weight * contrast * recon
            return {"loss": loss, "recon_l1": recon.detach(), "nt_xent": contrast.detach()}
        recon = F.l1_loss(output, at_least_float32(target))
        contrast = nt_xent(out["z"][:b], out["z"][b:], self.temperature)
        loss = self.recon_weight * recon + self.contrast_weight * contrast
        logs = {"recon_l1": recon.detach(), "nt_xent": contrast.detach()}
        if self.rotation:
            rotation = F.cross_entropy(out["rotation"].float(), turns)
            loss = loss + self.rotation_weight * rotation
            logs["rotation_ce"] = rotation.detach()
            logs["rotation_acc"] = (out["rotation"].argmax(-1) == turns).float().mean()
        return {"loss": loss, **logs}


def dino_cross_entropy(
    teacher: torch.Tensor, student: torch.Tensor, center: torch.Tensor, teacher_temp: torch.Tensor, student_temp: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """DINO's loss ``-sum softmax((t - c) / tau_t) * log softmax(s / tau_s)`` (Caron et al. 2021, Eq. 1 with the
    centring of §3.1), averaged over all leading dimensions, and the teacher distribution's mean entropy (a
    collapse watch: it falls to 0 when one prototype wins everything, and stays at ``log K`` when uniform)."""
    return soft_cross_entropy(dino_targets(teacher, center, teacher_temp), student, student_temp)


def dino_targets(teacher: torch.Tensor, center: torch.Tensor, teacher_temp: torch.Tensor) -> torch.Tensor:
    """DINO's centred, sharpened teacher distribution ``softmax((t - c) / tau_t)`` (Caron et al. 2021, §3.1)."""
    return F.softmax((at_least_float32(teacher) - center) / teacher_temp, dim=-1)


def soft_cross_entropy(
    target: torch.Tensor, student: torch.Tensor, student_temp: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``-sum target * log softmax(s / tau_s)`` averaged over all leading dimensions, and the targets' mean
    entropy."""
    loss = -(target * F.log_softmax(at_least_float32(student) / student_temp, dim=-1)).sum(-1).mean()
    entropy = -(target * target.clamp_min(1e-12).log()).sum(-1).mean()
    return loss, entropy


def sinkhorn_knopp(teacher: torch.Tensor, teacher_temp: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Teacher targets by Sinkhorn-Knopp centring (SwAV, Caron et al. 2020, §3.1 and Alg. 1; the centring of
    DINOv2, Oquab et al. 2023, §4; iBOT's patch targets): ``exp(t / tau_t)`` over every output in the batch (all
    leading dimensions, all ranks) is rescaled in turn so that each prototype holds an equal share of the batch
    and each output a distribution. Unlike the EMA centre it acts within the batch, so even a batch of four
    crops cannot put all its targets on one prototype. Returns ``[..., K]`` probabilities."""
    shape = teacher.shape
    logits = teacher.float().reshape(-1, shape[-1]) / teacher_temp
    # one factor per row or column leaves the result unchanged, so the row maximum can go first (no overflow at
    # tau_t = 0.01); a prototype no output reaches stays at 0 instead of dividing by 0
    q = torch.exp(logits - logits.amax(-1, keepdim=True))
    for _ in range(iterations):
        q = q / _sum_over_ranks(q.sum(0, keepdim=True)).clamp_min(1e-30)
        q = q / q.sum(1, keepdim=True)
    return q.reshape(shape)


def _sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
    return x


def _mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    distributed = dist.is_available() and dist.is_initialized()
    return _sum_over_ranks(x) / dist.get_world_size() if distributed else x


class AliceObjective:
    """Alice's loss (Jiang et al., ICCV 2023, Eq. 6): ``lambda_1 L_cls + lambda_2 L_patch + lambda_3 L_mim``.

    A batch holds B pairs (query crop from volume A, anchor crop at the corresponding point of volume B). Both
    crops of a pair go through the student with a column mask (``mask_ratio`` of the (y, z) cells hidden, as
    zeros in the input and the mask token on their patch embeddings) and through the EMA teacher unmasked. With
    ``intensity_aug`` the student sees intensity-jittered copies (``query_view``/``anchor_view``), the teacher and
    the reconstruction target the clean crops: the reference builds such copies (``utils.data_aug``) but, by a
    slip, feeds the clean crops to both networks.

    - ``L_cls``: the teacher's [CLS] distribution of one crop is the student's target for the *other* crop of
      the pair, both ways (anatomical invariance across volumes); [CLS] = mean encoder token.
    - ``L_patch``: the student's projected encoder tokens query, by cross-attention (:class:`.model.CrossAlignment`),
      the student's own projected decoder tokens (1/8 grid) and, separately, the teacher's; the outputs are the
      patch logits, and the teacher-side ones are the target for the student-side ones, token by token, on the
      same crop. With ``patch_head: dino`` the projected tokens (queries and both contexts) are first scored by
      the DINO head's MLP and the patch prototypes (the reference, ``models/head.py:179-196``), each side by its
      own network's head.
    - ``L_mim``: MSE between the student's reconstruction and the whole unmasked crop. As in the reference the
      mask is not applied in the loss (the paper's text scores masked voxels only).

    Teacher targets are centred as in DINO (``centering: ema``, the reference: an EMA of the batch means is
    subtracted) or by :func:`sinkhorn_knopp` (``centering: sinkhorn``, DINOv2/iBOT), which keeps the targets of a
    small batch spread over the prototypes. Teacher temperature rises linearly from ``teacher_temp_start`` to
    ``teacher_temp`` over the first ``teacher_temp_warmup`` of training (read from the model's ``progress``
    buffer, a device tensor).
    """

    def __init__(self, cfg: AliceConfig) -> None:
        self.cfg = cfg

    def teacher_temperature(self, progress: torch.Tensor) -> torch.Tensor:
        """Linear in ``progress`` over ``teacher_temp_warmup``; with ``teacher_temp_epochs`` N > 0, the reference's
        table instead (``loss.py:46-50``): constant within an epoch, ``np.linspace(start, end, W)[epoch]`` for the
        first ``W = round(teacher_temp_warmup * N)`` epochs (so ``end`` is reached at epoch ``W - 1``)."""
        c = self.cfg
        if c.teacher_temp_epochs > 0:
            warm = max(round(c.teacher_temp_warmup * c.teacher_temp_epochs), 1)
            epoch = torch.floor(progress * c.teacher_temp_epochs + 1e-6)
            ramp = (epoch / max(warm - 1, 1)).clamp(0.0, 1.0)
        else:
            ramp = (progress / max(c.teacher_temp_warmup, 1e-8)).clamp(0.0, 1.0)
        return c.teacher_temp_start + (c.teacher_temp - c.teacher_temp_start) * ramp

    def __call__(self, model: AliceModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.cfg
        crops = torch.cat([batch["query"], batch["anchor"]])
        views = torch.cat([batch["query_view"], batch["anchor_view"]])
        b = batch["query"].shape[0]
        axis = 0 if c.mask_axis == "x" else 2
        hidden = column_mask(2 * b, crops.shape[-1], c.mask_patch, c.mask_ratio, crops.device, axis)
        student = model.net(views.masked_fill(hidden[:, None], 0.0), hidden)
        teacher_net, teacher_cls, teacher_context, *teacher_prototypes = model.teacher.module
        queries = model.query_proj(student["tokens"])
        context_s = model.context_proj(_tokens(student["pyramid"][1]))
        if c.patch_head == "dino":  # the reference's: tokens through the shared DINO MLP and patch prototypes
            queries = model.patch_prototypes(model.cls_head.embed(queries))
            context_s = model.patch_prototypes(model.cls_head.embed(context_s))
        with torch.no_grad():
            teacher_tokens, teacher_map = teacher_net.context(crops)
            cls_t = teacher_cls(teacher_tokens.mean(1))
            context_t = teacher_context(_tokens(teacher_map))
            if c.patch_head == "dino":
                context_t = teacher_prototypes[0](teacher_cls.embed(context_t))
            patch_t = model.align(queries, context_t)
        cls_s = model.cls_head(student["tokens"].mean(1))
        patch_s = model.align(queries, context_s)
        temp = self.teacher_temperature(model.progress)
        if c.centering == "sinkhorn":
            target_cls = sinkhorn_knopp(cls_t, temp, c.sinkhorn_iterations)
            target_patch = sinkhorn_knopp(patch_t, temp, c.sinkhorn_iterations)
        else:
            target_cls = dino_targets(cls_t, model.center_cls, temp)
            target_patch = dino_targets(patch_t, model.center_patch, temp)
        swapped = torch.cat([target_cls[b:], target_cls[:b]])  # query's target is the anchor's teacher output and back
        loss_cls, entropy_cls = soft_cross_entropy(swapped, cls_s, c.student_temp)
        loss_patch, entropy_patch = soft_cross_entropy(target_patch, patch_s, c.student_temp)
        loss_mim = F.mse_loss(at_least_float32(student["output"]), at_least_float32(crops))
        with torch.no_grad():
            model.pending_cls.copy_(_mean_over_ranks(at_least_float32(cls_t).mean(0)))
            model.pending_patch.copy_(_mean_over_ranks(at_least_float32(patch_t).mean((0, 1))))
        loss = c.cls_weight * loss_cls + c.patch_weight * loss_patch + c.recon_weight * loss_mim
        return {
            "loss": loss,
            "loss_cls": loss_cls.detach(),
            "loss_patch": loss_patch.detach(),
            "loss_mim": loss_mim.detach(),
            "teacher_entropy_cls": entropy_cls.detach(),
            "teacher_entropy_patch": entropy_patch.detach(),
        }


def _tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """``[B, C, d, h, w]`` -> ``[B, d h w, C]``."""
    return feature_map.flatten(2).transpose(1, 2)
