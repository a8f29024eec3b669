"""Networks: a MONAI UNETR / SwinUNETR with access to its tokens and decoder features, and the two methods' heads.

:class:`VolumeNet` holds a stock ``monai.networks.nets.UNETR`` (ViT encoder, Hatamizadeh et al., WACV 2022) or
``SwinUNETR`` (Hatamizadeh et al. 2022; the backbone of Tang et al., CVPR 2022) as ``net``, so
``VolumeNet.net.state_dict()`` loads into MONAI's own class for fine-tuning (``strict=False`` drops only the
1-channel reconstruction head ``out``). Its forward re-runs MONAI's forward from the same submodules, adding two
things pretraining needs: a learnable mask token on the patch embeddings of masked patches (Alice), and the
intermediate maps (encoder tokens at 1/16, decoder features at 1/8 .. 1/2). The ViT blocks are switched to
``scaled_dot_product_attention`` (MONAI's ``use_flash_attention`` path). With ``decoder="autoenc"`` (ViT only)
``net`` is instead MONAI's ``ViTAutoEnc``, the network of the MONAI ViT self-supervised tutorial: the same ViT
and two transposed convolutions from the final tokens to the voxels, with no skip connections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from torch import nn

from ssl_domains.nn import EMATeacher

if TYPE_CHECKING:  # annotations only
    from .plugin import MedicalConfig


class VolumeNet(nn.Module):
    """UNETR (``backbone="vit"``) or SwinUNETR (``"swin"``) on ``roi``^3 single-channel crops.

    ``forward(x, mask=None)`` returns a dict:

    - ``output`` ``[B, out_channels, r, r, r]``: the decoder's output (reconstruction, or segmentation logits);
    - ``tokens`` ``[B, (r/16)^3, token_dim]``: encoder tokens on the 1/16 grid (ViT: final normed tokens; Swin:
      the 1/16 stage, ``layers3``'s output), raster order over (x, y, z);
    - ``pyramid``: decoder feature maps at 1/16, 1/8, 1/4 and 1/2 resolution (``pyramid[1]`` is the 1/8 map
      Alice aligns with).

    ``mask`` ``[B, r, r, r]`` (bool, True = hidden) replaces the patch embedding of every fully hidden patch
    by the mask token; zeroing the hidden voxels is the caller's job (Alice does both, as its reference does).
    """

    def __init__(
        self,
        backbone: str = "vit",
        roi: int = 64,
        feature_size: int = 8,
        hidden_size: int = 384,
        num_heads: int = 6,
        out_channels: int = 1,
        decoder: str = "unetr",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        from monai.networks.nets import UNETR, SwinUNETR, ViTAutoEnc

        if decoder == "auto":  # the references' pretraining decoders: no skip connections
            decoder = "autoenc" if backbone == "vit" else "bottleneck"
        allowed = {"vit": ("unetr", "autoenc"), "swin": ("unetr", "bottleneck")}.get(backbone, ())
        if decoder not in allowed:
            raise ValueError(f"decoder {decoder!r} with backbone {backbone!r}: vit takes unetr or autoenc, swin "
                             "unetr or bottleneck")  # fmt: skip
        if drop_path and backbone != "swin":
            # MONAI 1.6's ViT TransformerBlock has no stochastic depth (its dropout_rate is plain dropout)
            raise ValueError(f"drop_path {drop_path}: only backbone 'swin' has stochastic depth in MONAI")
        self.backbone, self.roi, self.decoder = backbone, roi, decoder
        if backbone == "vit" and decoder == "autoenc":
            # the tutorial's network (ssl_train.ipynb: ViTAutoEnc(in_channels=1, patch_size=16, proj_type="conv"))
            self.net = ViTAutoEnc(1, roi, 16, out_channels=out_channels, hidden_size=hidden_size,
                                  mlp_dim=4 * hidden_size, num_heads=num_heads, proj_type="conv")  # fmt: skip
            self._vit_blocks()
            self.patch, self.token_dim, embedding_dim = 16, hidden_size, hidden_size
            deconv = self.net.conv3d_transpose.out_channels
            self.pyramid_dims = (hidden_size, deconv)  # the 1/16 token grid, the 1/4 map
        elif backbone == "vit":
            self.net = UNETR(1, out_channels, roi, feature_size=feature_size, hidden_size=hidden_size,
                             mlp_dim=4 * hidden_size, num_heads=num_heads, proj_type="conv", norm_name="instance",
                             res_block=True)  # fmt: skip
            self._vit_blocks()
            self.patch, self.token_dim, embedding_dim = 16, hidden_size, hidden_size
            self.pyramid_dims = (hidden_size, 8 * feature_size, 4 * feature_size, 2 * feature_size)
        elif backbone == "swin":
            self.net = SwinUNETR(in_channels=1, out_channels=out_channels, feature_size=feature_size, spatial_dims=3,
                                 dropout_path_rate=drop_path)  # fmt: skip
            self.patch, self.token_dim, embedding_dim = 2, 8 * feature_size, feature_size
            self.pyramid_dims = (8 * feature_size, 4 * feature_size, 2 * feature_size, feature_size)
            if decoder == "bottleneck":  # Tang et al.'s decoder replaces SwinUNETR's (no skips): drop the unused
                from .bottleneck import BottleneckDecoder

                for name in ("encoder1", "encoder2", "encoder3", "encoder4", "encoder10", "decoder5", "decoder4",
                             "decoder3", "decoder2", "decoder1", "out"):  # fmt: skip
                    delattr(self.net, name)
                self.bottleneck = BottleneckDecoder(16 * feature_size, out_channels)
                self.pyramid_dims = self.bottleneck.pyramid_dims
        else:
            raise ValueError(f"backbone must be 'vit' or 'swin', got {backbone!r}")
        self.mask_token = nn.Parameter(torch.randn(embedding_dim) * 0.02)
        self.embed_dim = self.token_dim
        self.decoder_dim = self.pyramid_dims[1]

    def _vit_blocks(self) -> None:
        for block in (self.net.vit if self.decoder == "unetr" else self.net).blocks:
            block.attn.use_flash_attention = True
            # MONAI builds a cross-attention norm in every block even without cross-attention; it never
            # takes part in the loss, so it is frozen (kept for MONAI's state dict; DDP needs every
            # trainable parameter to get a gradient)
            block.norm_cross_attn.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg: MedicalConfig, out_channels: int = 1, drop_path: float = 0.0) -> VolumeNet:
        """From a plugin config's backbone fields; ``drop_path``: SwinUNETR's ``dropout_path_rate`` (stochastic
        depth, rising linearly over the Swin blocks to this rate; ``swin`` only)."""
        decoder = getattr(cfg, "decoder", "unetr")
        return cls(cfg.backbone, cfg.roi, cfg.feature_size, cfg.hidden_size, cfg.num_heads, out_channels, decoder,
                   drop_path)  # fmt: skip

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, Any]:
        tokens, states = self.encode(x, mask)
        if self.decoder == "autoenc":
            return self._decode_autoenc(tokens)
        if self.decoder == "bottleneck":
            output, maps = self.bottleneck(states[4])
            return {"output": output, "tokens": tokens, "pyramid": maps}
        return self._decode_vit(x, tokens, states) if self.backbone == "vit" else self._decode_swin(x, states)

    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The encoder alone: ``(tokens [B, (r/16)^3, token_dim], hidden states)`` (see the class docstring)."""
        if self.backbone == "vit":
            vit = self.net.vit if self.decoder == "unetr" else self.net
            embed = vit.patch_embedding
            tokens = embed.patch_embeddings(x).flatten(2).transpose(1, 2)
            if mask is not None:
                hidden = mask[:, :: self.patch, :: self.patch, :: self.patch].flatten(1)[..., None]
                tokens = torch.where(hidden, self.mask_token.to(tokens.dtype), tokens)
            tokens = embed.dropout(tokens + embed.position_embeddings)
            states = []
            for block in vit.blocks:
                tokens = block(tokens)
                states.append(tokens)
            return vit.norm(tokens), states
        swin = self.net.swinViT
        h = swin.patch_embed(x)
        if mask is not None:
            hidden = mask[:, None, :: self.patch, :: self.patch, :: self.patch]
            h = torch.where(hidden, self.mask_token.to(h.dtype)[None, :, None, None, None], h)
        h = swin.pos_drop(h)
        states = [swin.proj_out(h, self.net.normalize)]
        for stage in range(1, 5):
            if swin.use_v2:
                h = getattr(swin, f"layers{stage}c")[0](h.contiguous())
            h = getattr(swin, f"layers{stage}")[0](h.contiguous())
            states.append(swin.proj_out(h, self.net.normalize))
        return states[3].flatten(2).transpose(1, 2), states

    def _decode_vit(self, x: torch.Tensor, tokens: torch.Tensor, states: list[torch.Tensor]) -> dict[str, Any]:
        net = self.net
        enc1 = net.encoder1(x)
        enc2 = net.encoder2(net.proj_feat(states[3]))
        enc3 = net.encoder3(net.proj_feat(states[6]))
        enc4 = net.encoder4(net.proj_feat(states[9]))
        dec4 = net.proj_feat(tokens)
        dec3 = net.decoder5(dec4, enc4)
        dec2 = net.decoder4(dec3, enc3)
        dec1 = net.decoder3(dec2, enc2)
        output = net.out(net.decoder2(dec1, enc1))
        return {"output": output, "tokens": tokens, "pyramid": [dec4, dec3, dec2, dec1]}

    def _grid(self, tokens: torch.Tensor) -> torch.Tensor:
        side = self.roi // self.patch
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side, side)

    def _decode_autoenc(self, tokens: torch.Tensor) -> dict[str, Any]:
        """``ViTAutoEnc.forward`` after its final norm: the tokens as a grid, two transposed convolutions."""
        grid = self._grid(tokens)
        up = self.net.conv3d_transpose(grid)
        return {"output": self.net.conv3d_transpose_1(up), "tokens": tokens, "pyramid": [grid, up]}

    def _decode_swin(self, x: torch.Tensor, states: list[torch.Tensor]) -> dict[str, Any]:
        net = self.net
        enc0 = net.encoder1(x)
        enc1 = net.encoder2(states[0])
        enc2 = net.encoder3(states[1])
        enc3 = net.encoder4(states[2])
        dec3 = net.decoder5(net.encoder10(states[4]), states[3])
        dec2 = net.decoder4(dec3, enc3)
        dec1 = net.decoder3(dec2, enc2)
        dec0 = net.decoder2(dec1, enc1)
        output = net.out(net.decoder1(dec0, enc0))
        return {"output": output, "tokens": states[3].flatten(2).transpose(1, 2), "pyramid": [dec3, dec2, dec1, dec0]}

    def context(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens, pyramid[1])`` of :meth:`forward` without the finer decoder stages and the output head:
        all that Alice's teacher reads, at a fraction of the decoder's full-resolution convolutions."""
        tokens, states = self.encode(x)
        net = self.net
        if self.decoder == "autoenc":
            return tokens, net.conv3d_transpose(self._grid(tokens))
        if self.backbone == "vit":
            return tokens, net.decoder5(net.proj_feat(tokens), net.encoder4(net.proj_feat(states[9])))
        dec3 = net.decoder5(net.encoder10(states[4]), states[3])
        return tokens, net.decoder4(dec3, net.encoder4(states[2]))

    # ---- whole-volume read-outs (sliding window over roi^3 windows) -----------------------------------------
    def token_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder tokens as a map ``[B, token_dim, r/16, r/16, r/16]``."""
        tokens = self.encode(x)[0]
        side = self.roi // 16
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, side, side, side)

    def dense_features(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-scale descriptors at 1/2 resolution ``[B, sum(pyramid_dims), r/2, r/2, r/2]``: each decoder map,
        L2-normalised over its channels and upsampled (trilinear), so every scale weighs the same in a cosine
        similarity (the global + local mix of self-supervised anatomical embeddings, Yan et al. 2022)."""
        maps = self(x)["pyramid"]
        size = maps[-1].shape[2:]
        return torch.cat(
            [F.interpolate(F.normalize(m.float(), dim=1), size=size, mode="trilinear", align_corners=False)
             if m.shape[2:] != size else F.normalize(m.float(), dim=1) for m in maps], dim=1,
        )  # fmt: skip

    def over_volume(self, image: torch.Tensor, read_out: str, overlap: float = 0.25) -> torch.Tensor:
        """``read_out`` (``"token_grid"`` or ``"dense_features"``) over a whole volume ``[B, 1, D, H, W]`` (each
        side >= roi) by MONAI's sliding window; the result has the read-out's resolution."""
        return sliding_window_inference(
            image, roi_size=[self.roi] * 3, sw_batch_size=4, predictor=getattr(self, read_out), overlap=overlap,
            mode="gaussian", padding_mode="constant",
        )  # fmt: skip

    def embed_volume(self, image: torch.Tensor) -> torch.Tensor:
        """One vector per volume: encoder tokens averaged over the whole volume ``[B, token_dim]``."""
        return self.over_volume(image, "token_grid").flatten(2).mean(-1)


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, §3.1 and App.): a 3-layer MLP to a bottleneck, L2 normalisation,
    and a weight-normalised linear layer with its norm fixed to 1 (``norm_last_layer=True``), written as cosine
    similarity to ``out_dim`` prototypes. ``batch_norm`` puts BatchNorm1d after the two hidden layers (DINO's
    ``use_bn_in_head``, its setting for ResNets); over ``[B, N, C]`` tokens it normalises over all ``B x N``."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, bottleneck: int, batch_norm: bool = False) -> None:
        super().__init__()
        norm: type[nn.Module] = _TokenBatchNorm if batch_norm else nn.Identity
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), norm(hidden), nn.GELU(),
            nn.Linear(hidden, hidden), norm(hidden), nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )  # fmt: skip
        self.prototypes = nn.Parameter(torch.randn(out_dim, bottleneck) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x) @ F.normalize(self.prototypes, dim=-1).T

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised bottleneck ``[..., bottleneck]`` the prototypes score."""
        return F.normalize(self.mlp(x), dim=-1)


class PatchPrototypes(nn.Module):
    """The patch tokens' own weight-normalised prototypes (norm fixed to 1) on a :class:`DINOHead` bottleneck: the
    reference's ``last_layer2`` (``models/head.py:160-164``)."""

    def __init__(self, out_dim: int, bottleneck: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, bottleneck) * 0.02)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ F.normalize(self.weight, dim=-1).T


class _TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the last dimension of ``[..., C]`` (all leading dimensions are the batch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).view(x.shape)


class CrossAlignment(nn.Module):
    """Alice's conditional alignment layer (CASA; Jiang et al. 2023, §3.3; reference ``CASA/CASA_Module.py``):
    projected encoder tokens query projected decoder tokens through one multi-head cross-attention (SDPA, no
    biases) and a ReLU feed-forward, each with a residual and a post-LayerNorm (eps 1e-6). The reference's
    dropout (0.1) is left out, so the teacher-side targets are deterministic."""

    def __init__(self, dim: int, heads: int, ff_dim: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"align dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.proj = nn.Linear(dim, dim, bias=False)
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.ReLU(), nn.Linear(ff_dim, dim))

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``query`` ``[B, N, dim]``, ``context`` ``[B, M, dim]`` -> ``[B, N, dim]``."""
        b, n, d = query.shape
        m, h = context.shape[1], self.heads
        q = self.q(query).view(b, n, h, d // h).transpose(1, 2)
        k = self.k(context).view(b, m, h, d // h).transpose(1, 2)
        v = self.v(context).view(b, m, h, d // h).transpose(1, 2)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = self.norm1(query + self.proj(attended))
        return self.norm2(x + self.ff(x))


def _mlp_head(width: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True), nn.Linear(width, out_dim)
    )


class Contrastive3DModel(nn.Module):
    """contrastive3d: the encoder-decoder plus two heads on the mean encoder token: a contrastive projector and a
    4-way rotation classifier (Swin UNETR SSL's heads, Tang et al. 2022, §3.2).

    Both heads are SimCLR's projection MLP (``Linear -> BatchNorm1d -> ReLU -> Linear``, Chen et al. 2020, §2.1)
    where Tang uses a single ``Linear``: the mean of a ViT's layer-normalised tokens is nearly the same vector for
    every crop (cosine 0.999 between crops of different volumes after 300 steps), so a linear head leaves NT-Xent
    at its uniform value ``log(2N - 1)`` and the rotation at chance; the batch normalisation removes that common
    component.

    ``projector=False`` (``loss_form: tutorial``, which contrasts the reconstructions) builds no projector.
    """

    def __init__(self, net: VolumeNet, proj_dim: int = 512, rotation: bool = True, projector: bool = True) -> None:
        super().__init__()
        self.net, self.embed_dim = net, net.embed_dim
        net.mask_token.requires_grad_(False)  # the recipe corrupts voxels; it never hides tokens
        self.projector = _mlp_head(net.token_dim, proj_dim) if projector else None
        self.rotation_head = _mlp_head(net.token_dim, 4) if rotation else None

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        out = self.net(x)
        pooled = out["tokens"].mean(1)
        if self.projector is not None:
            out["z"] = self.projector(pooled)
        if self.rotation_head is not None:
            out["rotation"] = self.rotation_head(pooled)
        return out

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Whole-volume embedding: encoder tokens pooled over a sliding window (``[B, token_dim]``)."""
        return self.net.embed_volume(batch["image"])


def scaled_momentum(momentum: float, ref_steps: int, steps: int, floor: float) -> float:
    """The EMA's base momentum for a run of ``steps`` optimiser steps: ``1 - (1 - momentum) * ref_steps / steps``,
    bounded to ``[floor, momentum]``, so that a run shorter than the reference's ``ref_steps`` moves its teacher
    as far from its initialisation as the reference's run does (the sum of ``1 - m`` over a cosine schedule is
    ``(1 - m0) * steps / 2``, and the teacher keeps ``prod m ~ exp(-(1 - m0) steps / 2)`` of its init). A run of
    ``ref_steps`` or more, or ``ref_steps <= 0`` or ``steps <= 0``, keeps ``momentum``."""
    if ref_steps <= 0 or steps <= 0:
        return momentum
    return min(momentum, max(floor, 1.0 - (1.0 - momentum) * ref_steps / steps))


class AliceModel(nn.Module):
    """Alice's student and its EMA teacher (reference ``models/head.py``, ``CASA/CASA_Module.py``).

    - ``cls_head``: a DINO head on the [CLS] embedding, the average-pooled encoder output (the reference's
      average-pooled bottleneck).
    - ``query_proj`` / ``context_proj``: linear maps of the encoder tokens (1/16 grid) and of the decoder tokens
      (1/8 grid) (the reference head's ``mlp3`` / ``mlp4``). With ``patch_head="linear"`` (default) they map to
      ``align_dim`` and go straight into CASA. With ``patch_head="dino"`` (the reference's arrangement,
      ``models/head.py:179-196``) they map to the token width, and the tokens then go through ``cls_head``'s MLP
      (shared with [CLS]), L2 normalisation and ``patch_prototypes`` (``align_dim`` prototypes, the reference's
      ``last_layer2``) before CASA, so CASA aligns prototype scores.
    - ``align``: the shared :class:`CrossAlignment`; its ``align_dim`` outputs per token are the patch logits
      (the reference feeds CASA's output to the loss directly).

    The teacher is an EMA copy of ``net``, ``cls_head`` and ``context_proj`` (and ``patch_prototypes``): its
    decoder tokens go through its own projection (and head), then through the student's alignment layer with
    the student's queries, as in the reference. The teacher has no stochastic depth (``drop_path`` of the
    student's SwinUNETR is switched off in its copy), as DINO's teacher.

    The EMA momentum rises from its base to 1 on a cosine. With ``momentum_ref_steps`` N > 0 the base is
    :func:`scaled_momentum` of ``momentum`` for the run's planned step count, which the plugin does not get: it
    is read off the core's progress at the first :meth:`after_step` (``global_step / total``, so its increment is
    ``1 / total``) and kept in the ``planned_steps`` buffer, so a resumed run keeps its base.
    DINO's centres are buffers: the objective writes the batch means it saw into ``pending_*`` and
    :meth:`after_step` moves the centres, so a loss never depends on a centre its own batch has just changed.
    """

    def __init__(
        self,
        net: VolumeNet,
        out_dim: int = 512,
        head_hidden: int = 512,
        bottleneck: int = 256,
        align_dim: int = 256,
        align_heads: int = 8,
        align_ff: int = 1024,
        momentum: float = 0.996,
        center_momentum: float = 0.9,
        head_batch_norm: bool = False,
        momentum_at_step_start: bool = False,
        momentum_ref_steps: int = 0,
        momentum_floor: float = 0.9,
        patch_head: str = "linear",
    ) -> None:
        super().__init__()
        from monai.networks.layers import DropPath

        if patch_head not in ("linear", "dino"):
            raise ValueError(f"patch_head must be 'linear' or 'dino', got {patch_head!r}")
        self.net, self.embed_dim, self.patch_head = net, net.embed_dim, patch_head
        self.cls_head = DINOHead(net.token_dim, out_dim, head_hidden, bottleneck, head_batch_norm)
        width = align_dim if patch_head == "linear" else net.token_dim
        self.query_proj = nn.Linear(net.token_dim, width)
        self.context_proj = nn.Linear(net.decoder_dim, width)
        self.patch_prototypes = PatchPrototypes(align_dim, bottleneck) if patch_head == "dino" else None
        self.align = CrossAlignment(align_dim, align_heads, align_ff)
        self.momentum, self.momentum_ref_steps, self.momentum_floor = momentum, momentum_ref_steps, momentum_floor
        self.teacher = EMATeacher(self.student(), momentum, 1.0, "cosine")
        for module in self.teacher.modules():  # the teacher without stochastic depth (DINO's teacher)
            if isinstance(module, DropPath):
                module.drop_prob = 0.0
        self.center_momentum = center_momentum
        self.momentum_at_step_start = momentum_at_step_start
        self._step_start: float | None = None  # the progress of the last after_step (momentum_at_step_start)
        self._momentum_base: float | None = None  # the EMA's base momentum, set at the first after_step
        for name, size in (("center_cls", out_dim), ("center_patch", align_dim)):
            self.register_buffer(name, torch.zeros(size))
            self.register_buffer(name.replace("center", "pending"), torch.zeros(size))
        self.register_buffer("progress", torch.zeros(()))
        self.register_buffer("planned_steps", torch.zeros(()))  # 0: not read yet (momentum_ref_steps)

    def student(self) -> nn.ModuleList:
        """The modules the teacher follows, in the teacher's order."""
        parts = [self.net, self.cls_head, self.context_proj]
        return nn.ModuleList(parts + ([self.patch_prototypes] if self.patch_prototypes is not None else []))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        # checkpoints written before planned_steps existed: 0, i.e. read again from the next step's progress
        state_dict.setdefault(prefix + "planned_steps", torch.zeros(()))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def base_momentum(self, progress: float) -> float:
        """The EMA's base momentum: ``momentum``, or with ``momentum_ref_steps`` its :func:`scaled_momentum` for
        the planned steps (``planned_steps``, else ``1 / (progress - last progress)`` at this first step)."""
        if self.momentum_ref_steps <= 0:
            return self.momentum
        steps = float(self.planned_steps)
        if steps <= 0:
            increment = progress - float(self.progress)
            steps = float(max(round(1.0 / increment), 1)) if increment > 0 else 0.0
            self.planned_steps.fill_(steps)
        return scaled_momentum(self.momentum, self.momentum_ref_steps, int(steps), self.momentum_floor)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """After each optimiser step: EMA teacher update, DINO centring, and the training progress (0..1).

        The core passes the step count *after* the step (``global_step / total``). With ``momentum_at_step_start``
        the momentum is read at the progress the step started from instead (the previous call's; the ``progress``
        buffer once after a resume), which is the reference's ``momentum_schedule[it]`` for step ``it``
        (``engine_pretrain.py:148``). The base momentum is fixed at the first call (:meth:`base_momentum`)."""
        if self._momentum_base is None:
            self._momentum_base = self.base_momentum(progress)
            self.teacher.momentum_start = self._momentum_base
        at = progress
        if self.momentum_at_step_start:
            at = float(self.progress) if self._step_start is None else self._step_start
            self._step_start = progress
        self.teacher.update(self.student(), at)
        weight = 1.0 - self.center_momentum
        self.center_cls.lerp_(self.pending_cls, weight)
        self.center_patch.lerp_(self.pending_patch, weight)
        self.progress.fill_(progress)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Whole-volume embedding from the student encoder (``[B, token_dim]``)."""
        return self.net.embed_volume(batch["image"])
