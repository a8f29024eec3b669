"""Networks: CROMA's ALiBi encoders and joint encoder (Fuller et al. 2023) and SSL4EO's ViT (MoCo v3 / MAE).

Tokens are non-overlapping ``patch x patch`` windows in row-major order. Every encoder here takes images of any
size divisible by the patch: CROMA has no position table at all (2D-ALiBi is computed from the grid), and the
SSL4EO ViT uses fixed 2-D sin-cos positions (MoCo v3's choice, Chen et al. 2021, §4), built for the grid at hand.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ssl_domains.nn import EMATeacher, TransformerBlock, sincos_positions_2d


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, (H/p)(W/p), C p p]`` (row-major patches, channel-major inside a patch)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(tokens: torch.Tensor, channels: int, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    b = tokens.shape[0]
    gh, gw = grid
    x = tokens.reshape(b, gh, gw, channels, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, gh * patch, gw * patch)


def grid_positions(grid: tuple[int, int], device: torch.device) -> torch.Tensor:
    """``[(H/p)(W/p), 2]`` (row, column) of each token, float."""
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], device=device), torch.arange(grid[1], device=device), indexing="ij"
    )
    return torch.stack([rows, cols], dim=-1).reshape(-1, 2).float()


def alibi_slopes(heads: int, rule: str = "geometric") -> torch.Tensor:
    """CROMA's per-head slopes ``m_h = s^(h+1)``, ``s = 2^(-8/H)`` (ALiBi's geometric sequence, Press et al. 2022).

    For a power-of-2 ``heads`` both rules agree. Otherwise ``rule="alibi"`` is ALiBi's own recipe, which the
    reference code uses (antofuller/CROMA ``pretrain_croma.py:298-309``): the slopes of the closest lower power of
    2, then every other slope of twice that power; ``"geometric"`` keeps the geometric sequence for any ``heads``.
    """
    if rule not in ("geometric", "alibi"):
        raise ValueError(f"rule must be geometric or alibi, got {rule!r}")
    if rule == "geometric" or math.log2(heads).is_integer():
        return (2.0 ** (-8.0 / heads)) ** torch.arange(1, heads + 1, dtype=torch.float32)
    lower = 2 ** math.floor(math.log2(heads))
    return torch.cat([alibi_slopes(lower), alibi_slopes(2 * lower, "alibi")[0::2][: heads - lower]])


def _blocked_sincos_positions_2d(
    height: int, width: int, dim: int, first: str, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """``[height * width, dim]`` (row-major tokens): one half of the channels encodes ``first`` (``"rows"`` or
    ``"cols"``), the other half the other axis, each as all sines then all cosines; computed in ``dtype`` (MAE's
    numpy code: float64; MoCo v3's torch code: float32) and returned in float32, as the references store it."""
    if dim % 4:
        raise ValueError(f"dim {dim} must be divisible by 4 for 2-D sin-cos positions")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=dtype) / (dim / 4))

    def one_d(pos: torch.Tensor) -> torch.Tensor:
        out = pos.to(dtype).reshape(-1, 1) * omega
        return torch.cat([out.sin(), out.cos()], dim=1)

    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    halves = (rows, cols) if first == "rows" else (cols, rows)
    return torch.cat([one_d(h) for h in halves], dim=1).float()


def mae_sincos_positions_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """MAE's ``get_2d_sincos_pos_embed`` layout ``[height * width, dim]`` (row-major tokens), which CROMA's
    reference decoder uses (``pretrain_croma.py:262-291``): the first half of the channels encodes the *column*,
    the second the row, each as all sines then all cosines (``ssl_domains.nn.sincos_positions_2d``: rows first,
    sine/cosine interleaved). Same frequencies, another channel order."""
    return _blocked_sincos_positions_2d(height, width, dim, "cols")


def mocov3_sincos_positions_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """MoCo v3's ``build_2d_sincos_position_embedding`` layout (facebookresearch/moco-v3 ``vits.py`` L53-68):
    sines then cosines of the *row*, then of the column. Its ``torch.meshgrid(grid_w, grid_h)`` indexes ``ij``, so
    the table it calls ``out_w`` varies along the first (row) axis of the row-major tokens."""
    return _blocked_sincos_positions_2d(height, width, dim, "rows", torch.float32)


POSITION_TABLES = {
    "interleaved": sincos_positions_2d,
    "mae": mae_sincos_positions_2d,
    "mocov3": mocov3_sincos_positions_2d,
}
"""The fixed 2-D sin-cos layouts: ours, MAE's and MoCo v3's. The same frequencies in another channel order; a
checkpoint's weights only fit the layout it was trained with."""


def alibi_bias(query_pos: torch.Tensor, key_pos: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
    """2D-ALiBi ``bias[b, h, i, j] = -m_h * ||p_i - p_j||_2`` (CROMA Eq. 1); X-ALiBi when the two sets differ.

    ``query_pos`` ``[B, N, 2]`` and ``key_pos`` ``[B, M, 2]`` are the grid positions of the tokens actually present
    (after masking), so the bias of a masked sequence is the full-grid bias gathered at the kept tokens.
    """
    dist = torch.cdist(query_pos, key_pos)
    return -slopes.to(dist)[None, :, None, None] * dist[:, None]


def gather_tokens(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Rows ``keep`` ``[B, n]`` of ``x`` ``[B, N, D]``."""
    return torch.gather(x, 1, keep[..., None].expand(-1, -1, x.shape[-1]))


class ALiBiViT(nn.Module):
    """CROMA's encoder: linear patch embedding, no position embedding, pre-LN blocks with 2D-ALiBi."""

    def __init__(
        self, in_channels: int, patch: int, dim: int, depth: int, heads: int, qkv_bias: bool = True,
        slopes: str = "geometric",
    ) -> None:  # fmt: skip
        super().__init__()
        self.patch, self.heads = patch, heads
        self.embed = nn.Linear(in_channels * patch * patch, dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, 4 * dim, norm="pre", qkv_bias=qkv_bias) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("slopes", alibi_slopes(heads, slopes), persistent=False)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [B, n, dim], positions [B, n, 2])`` of the kept tokens (all of them when ``keep`` is None)."""
        grid = (x.shape[-2] // self.patch, x.shape[-1] // self.patch)
        tokens = self.embed(patchify(x, self.patch))
        pos = grid_positions(grid, x.device).expand(x.shape[0], -1, -1)
        if keep is not None:
            tokens, pos = gather_tokens(tokens, keep), gather_tokens(pos, keep)
        bias = alibi_bias(pos, pos, self.slopes)
        for block in self.blocks:
            tokens = block(tokens, bias=bias)
        return self.norm(tokens), pos


def _gap_ffn(dim: int) -> nn.Sequential:
    """CROMA's head on mean-pooled tokens: LN, d -> 4d, GELU, 4d -> d."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))


class MAEDecoder(nn.Module):
    """A light MAE decoder (He et al. 2022): mask tokens fill the hidden positions, 2-D sin-cos positions, pre-LN
    blocks, a linear head to the pixels of each patch. CROMA uses one layer of width 512 without ALiBi (its issue #6).
    """

    def __init__(
        self, in_dim: int, dim: int, depth: int, heads: int, out_dim: int, positions: str = "interleaved",
        qkv_bias: bool = True, eps: float = 1e-5,
    ) -> None:  # fmt: skip
        super().__init__()
        if positions not in POSITION_TABLES:
            raise ValueError(f"positions must be one of {sorted(POSITION_TABLES)}, got {positions!r}")
        self.positions = positions
        self.project = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, 4 * dim, norm="pre", qkv_bias=qkv_bias, eps=eps) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, out_dim)

    def forward(
        self, tokens: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int], cls: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predictions ``[B, N, out_dim]`` for every patch of the grid, from the tokens kept at ``keep``.

        With ``cls`` ``[B, 1, in_dim]`` (the encoder's class token) it is projected and prepended at a zero
        position, attends with the patches and is dropped before the output, as MAE's ``forward_decoder`` does
        (facebookresearch/mae ``models_mae.py`` L160-185)."""
        b, n_total = tokens.shape[0], grid[0] * grid[1]
        x = self.mask_token.to(tokens.dtype).expand(b, n_total, -1).clone()
        projected = self.project(tokens)
        x = x.to(projected.dtype).scatter(1, keep[..., None].expand(-1, -1, x.shape[-1]), projected)
        x = x + POSITION_TABLES[self.positions](*grid, x.shape[-1]).to(x)
        if cls is not None:
            x = torch.cat([self.project(cls).to(x.dtype), x], dim=1)
        for block in self.blocks:
            x = block(x)
        out = self.head(self.norm(x))
        return out if cls is None else out[:, 1:]


class CROMA(nn.Module):
    """CROMA (Fuller, Millard, Green, NeurIPS 2023): optical ViT, radar ViT at half depth, joint encoder whose
    blocks are self-attention -> cross-attention (queries radar, keys/values optical, X-ALiBi) -> FFN, contrastive
    heads, and an MAE decoder reconstructing both modalities from the joint tokens.

    ``embed(batch)`` returns the mean-pooled joint tokens (``embed_modality="joint"``, CROMA's ``joint_GAP``) or one
    modality's GAP head output (``optical``/``radar``), computed on the unmasked chip.

    The reference code's choices, off by default (``docs/plugins/croma.md``, "Equivalence"): ``qkv_bias=False``
    (its q/k/v projections have no bias), ``shared_cross_norm`` (one LayerNorm for the cross-attention's queries
    and context: ``norm_context`` *is* ``norm_cross``), ``joint_self_bias="cross"`` (the joint encoder's radar
    self-attention gets the radar-to-optical X-ALiBi bias), ``alibi_slopes="alibi"``, ``decoder_positions="mae"``.
    """

    def __init__(
        self,
        optical_channels: int,
        radar_channels: int,
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        decoder_dim: int,
        decoder_depth: int,
        decoder_heads: int,
        embed_modality: str = "joint",
        qkv_bias: bool = True,
        shared_cross_norm: bool = False,
        joint_self_bias: str = "radar",
        alibi_slopes: str = "geometric",
        decoder_positions: str = "interleaved",
    ) -> None:
        super().__init__()
        if joint_self_bias not in ("radar", "cross"):
            raise ValueError(f"joint_self_bias must be radar or cross, got {joint_self_bias!r}")
        self.patch, self.embed_modality = patch, embed_modality
        self.optical_channels, self.radar_channels = optical_channels, radar_channels
        self.joint_self_bias = joint_self_bias
        half = max(depth // 2, 1)
        self.optical = ALiBiViT(optical_channels, patch, dim, depth, heads, qkv_bias, alibi_slopes)
        self.radar = ALiBiViT(radar_channels, patch, dim, half, heads, qkv_bias, alibi_slopes)
        self.joint = nn.ModuleList(
            TransformerBlock(dim, heads, 4 * dim, norm="pre", cross=True, qkv_bias=qkv_bias) for _ in range(half)
        )
        for block in self.joint:
            if shared_cross_norm:  # one module under two names: state-dict keys unchanged, one parameter set
                block.norm_context = block.norm_cross
        self.joint_norm = nn.LayerNorm(dim)
        self.gap_optical, self.gap_radar = _gap_ffn(dim), _gap_ffn(dim)
        self.proj_optical, self.proj_radar = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature 0.07
        out = (optical_channels + radar_channels) * patch * patch
        self.decoder = MAEDecoder(dim, decoder_dim, decoder_depth, decoder_heads, out, decoder_positions, qkv_bias)
        self.embed_dim = dim

    def joint_encode(self, radar: tuple[torch.Tensor, torch.Tensor], optical: tuple[torch.Tensor, torch.Tensor]):
        """Joint tokens at the radar tokens' positions."""
        (x, r_pos), (context, o_pos) = radar, optical
        cross_bias = alibi_bias(r_pos, o_pos, self.radar.slopes)
        # the reference's radar self-attention takes the cross bias (pretrain_croma.py:115-127, 255): query i and
        # key j are radar tokens, but the penalty is the distance of radar token i to *optical* token j
        self_bias = cross_bias if self.joint_self_bias == "cross" else alibi_bias(r_pos, r_pos, self.radar.slopes)
        for block in self.joint:
            x = block(x, bias=self_bias, context=context, context_bias=cross_bias)
        return self.joint_norm(x)

    def global_embeddings(self, radar_tokens: torch.Tensor, optical_tokens: torch.Tensor):
        """The contrastive embeddings (before normalisation): projection of the GAP head of each modality."""
        return (
            self.proj_radar(self.gap_radar(radar_tokens.mean(1))),
            self.proj_optical(self.gap_optical(optical_tokens.mean(1))),
        )

    def forward(
        self,
        radar: torch.Tensor,
        optical: torch.Tensor,
        keep_radar: torch.Tensor | None,
        keep_optical: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """Encode both (masked) modalities; return tokens, joint tokens and contrastive embeddings."""
        r = self.radar(radar, keep_radar)
        o = self.optical(optical, keep_optical)
        z_radar, z_optical = self.global_embeddings(r[0], o[0])
        return {
            "radar": r[0],
            "optical": o[0],
            "joint": self.joint_encode(r, o),
            "z_radar": z_radar,
            "z_optical": z_optical,
        }

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One modality's GAP head needs only that modality's encoder (``use_croma.py`` returns the same), so a
        batch of S2 (or S1) chips alone embeds; ``joint`` needs both."""
        if self.embed_modality == "optical":
            return self.gap_optical(self.optical(batch["optical"])[0].mean(1))
        if self.embed_modality == "radar":
            return self.gap_radar(self.radar(batch["radar"])[0].mean(1))
        return self(batch["radar"], batch["optical"], None, None)["joint"].mean(1)


class SinCosViT(nn.Module):
    """The MoCo v3 ViT (Chen, Xie, He 2021): patch embedding, a class token, fixed 2-D sin-cos positions, pre-LN."""

    def __init__(
        self, in_channels: int, patch: int, dim: int, depth: int, heads: int, positions: str = "interleaved",
        eps: float = 1e-5,
    ) -> None:  # fmt: skip
        super().__init__()
        if positions not in POSITION_TABLES:
            raise ValueError(f"positions must be one of {sorted(POSITION_TABLES)}, got {positions!r}")
        self.patch, self.positions = patch, positions
        self.embed = nn.Linear(in_channels * patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.cls, std=1e-6)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, 4 * dim, norm="pre", eps=eps) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, 1 + n, dim]``: the class token then the kept patch tokens."""
        grid = (x.shape[-2] // self.patch, x.shape[-1] // self.patch)
        table = POSITION_TABLES[self.positions](*grid, self.cls.shape[0])
        tokens = self.embed(patchify(x, self.patch)) + table.to(x)
        if keep is not None:
            tokens = gather_tokens(tokens, keep)
        tokens = torch.cat([self.cls.to(tokens.dtype).expand(tokens.shape[0], 1, -1), tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


def _mlp(dims: list[int], last_bn: bool) -> nn.Sequential:
    """MoCo v3's projector/predictor: Linear-BN-ReLU layers, the last one Linear(-BN without affine)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b, bias=False))
        if i < len(dims) - 2:
            layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*layers)


class SSL4EOModel(nn.Module):
    """SSL4EO-S12's ViT with MoCo v3 heads (projector 3 layers, predictor 2 layers) and an MAE decoder for the MAE
    variant. ``embed`` pools the class token (``pooling="cls"``, the linear-probe read-out of MoCo v3) or the patch
    tokens' mean. With ``key_momentum`` (MoCo) the model holds the EMA key encoder, a copy of backbone and
    projector, and moves it in :meth:`after_step`; without it ``key_encoder`` is None."""

    def __init__(
        self, in_channels: int, patch: int, dim: int, depth: int, heads: int, proj_dim: int, hidden_dim: int,
        decoder_dim: int, decoder_depth: int, decoder_heads: int, pooling: str = "cls",
        key_momentum: float | None = None, positions: str = "interleaved", eps: float = 1e-5, init: str = "pytorch",
        stop_grad_conv1: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.patch, self.pooling, self.in_channels = patch, pooling, in_channels
        self.backbone = SinCosViT(in_channels, patch, dim, depth, heads, positions, eps)
        self.projector = _mlp([dim, hidden_dim, hidden_dim, proj_dim], last_bn=True)
        # "all layers in both MLPs have BN" (Chen et al. 2021, §4); moco-v3's MoCo_ViT builds it so (builder.py
        # L122), where its ResNet predictor has no output BN (L109)
        self.predictor = _mlp([proj_dim, hidden_dim, proj_dim], last_bn=True)
        self.decoder = MAEDecoder(
            dim, decoder_dim, decoder_depth, decoder_heads, in_channels * patch * patch, positions, eps=eps
        )
        self.embed_dim = dim
        if init != "pytorch":
            reference_init(self, init)
        if stop_grad_conv1:  # MoCo v3's random patch projection (§4.2; SSL4EO-S12's --stop-grad-conv1)
            self.backbone.embed.requires_grad_(False)
        self.key_encoder = None if key_momentum is None else EMATeacher(self.query_encoder(), key_momentum, 1.0)

    def query_encoder(self) -> nn.ModuleList:
        """What the key encoder follows: backbone and projector (MoCo v3's momentum encoder)."""
        return nn.ModuleList([self.backbone, self.projector])

    @staticmethod
    def head_input(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """What MoCo's projector reads: the class token (MoCo v3's ViT)."""
        return backbone(x)[:, 0]

    def after_step(self, progress: float) -> None:
        """After each optimiser step: the key encoder moves towards the query encoder (cosine momentum schedule)."""
        if self.key_encoder is not None:
            self.key_encoder.update(self.query_encoder(), progress)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled representation of images ``[B, C, H, W]``."""
        tokens = self.backbone(x)
        return tokens[:, 0] if self.pooling == "cls" else tokens[:, 1:].mean(1)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.features(batch["view1"])


@torch.no_grad()
def reference_init(model: SSL4EOModel, scheme: str) -> None:
    """The references' ViT initialisation. ``mocov3`` (moco-v3 ``vits.py`` L33-50): Xavier-uniform linears, q, k
    and v each as its own matrix, zero biases, the patch embedding uniform in ``±sqrt(6 / (C p² + D))`` (the
    reference writes 3 for C, its RGB; we take the real band count), the MLP heads PyTorch's default (they are
    built after it). ``mae`` (``models_mae.py`` ``initialize_weights``): Xavier-uniform linears and patch
    embedding, zero biases, class and mask tokens N(0, 0.02). LayerNorms are 1 / 0 in both."""
    if scheme not in ("mocov3", "mae"):
        raise ValueError(f"init must be pytorch, mocov3 or mae, got {scheme!r}")
    modules = [model.backbone] + ([model.decoder] if scheme == "mae" else [])
    for name, m in (item for module in modules for item in module.named_modules()):
        if isinstance(m, nn.Linear) and not name.startswith("embed"):
            if scheme == "mocov3" and name.endswith("qkv"):
                bound = math.sqrt(6.0 / (m.weight.shape[0] // 3 + m.weight.shape[1]))
                nn.init.uniform_(m.weight, -bound, bound)
            else:
                nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    embed = model.backbone.embed
    bound = math.sqrt(6.0 / (embed.weight.shape[1] + embed.weight.shape[0]))  # C p p + D, the Xavier bound
    nn.init.uniform_(embed.weight, -bound, bound)
    nn.init.zeros_(embed.bias)
    nn.init.normal_(model.backbone.cls, std=1e-6 if scheme == "mocov3" else 0.02)
    if scheme == "mae":
        nn.init.normal_(model.decoder.mask_token, std=0.02)


def resize_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of ``[B, C, H, W]`` to ``size`` x ``size`` (the resize rule of Corley et al. 2024)."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
