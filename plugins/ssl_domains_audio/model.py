"""TERA's and SSAST's networks, on :class:`ssl_domains.nn.TransformerBlock` (SDPA attention, key padding).

- :class:`TERAModel` (Liu et al. 2021, §III-B; s3prl ``upstream/mockingjay/model.py``): ``Linear(F → d)`` plus
  sinusoidal positions, LayerNorm and dropout, post-norm transformer layers (BERT-style, as the reference), and
  the prediction head ``Linear → GELU → LayerNorm → Linear(→ F)``. As the reference: every Linear drawn from
  N(0, 0.02) with zero bias (``init_Transformer_weights``), LayerNorm eps 1e-12, no dropout on the
  feed-forward's hidden layer (BERT's ``TransformerIntermediate``), and the hidden states are the input
  representation followed by each layer's output (its ``all_encoder_layers``).
- :class:`SSASTModel` (Gong et al. 2022, §2.1; reference ``src/models/ast_models.py``): non-overlapping patches of
  the ``[F, T]`` spectrogram (16 × 16, or 128 × 2 frames) embedded by a strided convolution; two leading tokens as
  DeiT-distilled (cls, dist); learnable positions; a learnable mask embedding that replaces the patch embedding
  of masked patches (BEiT-style); pre-norm blocks; the discriminative head ``Linear → ReLU → Linear(→ patch)``
  and a generative head of the same shape. Positions are a ``[rows, max_cols]`` table, sliced to the clip's
  width, so shorter inputs need no padding to ``max_frames``.

``embed`` is the mean over a clip's valid frames (TERA) or patches (SSAST) of the last layer, or of the mean
of all layers' outputs (``embedding="layer_mean"``: a uniform layer weighting, SUPERB's weighted sum before
any training). ``frame_embeddings`` gives the per-frame (per-time-step) states.
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_domains.nn import TransformerBlock, attention_mask, masked_mean, sincos_positions

from .masking import valid_mask


def _pool(layers: list[torch.Tensor], valid: torch.Tensor, embedding: str, pooling: str) -> torch.Tensor:
    states = (layers[-1] if embedding == "last" else torch.stack(layers).mean(0)).float()
    mean = masked_mean(states, valid)
    if pooling == "mean":
        return mean
    std = masked_mean((states - mean[:, None]).pow(2), valid).clamp(min=1e-8).sqrt()
    return torch.cat([mean, std], dim=1)


class TERAModel(nn.Module):
    """TERA's transformer encoder and reconstruction head over ``[B, T, F]`` features."""

    def __init__(
        self, n_mels: int, *, dim: int, depth: int, heads: int, ff_dim: int, dropout: float, max_frames: int,
        embedding: str = "last", pooling: str = "mean", eps: float = 1e-12,
    ) -> None:  # fmt: skip
        super().__init__()
        self.n_mels, self.embedding, self.pooling = n_mels, embedding, pooling
        self.embed_dim = dim * (2 if pooling == "mean_std" else 1)
        self.input = nn.Linear(n_mels, dim)
        self.register_buffer("positions", sincos_positions(max_frames, dim), persistent=False)
        self.input_norm = nn.LayerNorm(dim, eps=eps)
        self.input_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, ff_dim, dropout, norm="post", eps=eps, ff_dropout=False) for _ in range(depth)
        )
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=eps), nn.Linear(dim, n_mels))
        for module in self.modules():
            if isinstance(module, nn.Linear):  # BERT's init, as s3prl's init_Transformer_weights
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """Hidden states ``[B, T, dim]``: the input representation, then each layer's output (``depth + 1``)."""
        t = x.shape[1]
        if t > self.positions.shape[0]:
            self.positions = sincos_positions(t, self.positions.shape[1]).to(self.positions.device)
        h = self.input_drop(self.input_norm(self.input(x) + self.positions[:t]))
        mask = attention_mask(valid_mask(lengths, t))
        layers = [h]
        for block in self.blocks:
            h = block(h, mask)
            layers.append(h)
        return layers

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Reconstructed features ``[B, T, F]`` from (altered) features."""
        return self.head(self.encode(x, lengths)[-1])

    def frame_embeddings(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-frame representations ``[B, T, dim]`` (padding frames included; ``batch["length"]`` says where)."""
        layers = self.encode(batch["features"], batch["length"])
        return layers[-1] if self.embedding == "last" else torch.stack(layers).mean(0)

    def embed_positions(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(frame_embeddings [B, T, dim], lengths [B])``: what ``ssl-domains embed --per-position`` writes, one
        row per feature frame (10 ms)."""
        return self.frame_embeddings(batch), batch["length"]

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One vector per clip: the mean of the frame representations over the clip's frames."""
        x, lengths = batch["features"], batch["length"]
        return _pool(self.encode(x, lengths), valid_mask(lengths, x.shape[1]), self.embedding, self.pooling)


class SSASTModel(nn.Module):
    """SSAST's ViT over spectrogram patches, with the masked-patch heads.

    Initialised and normed as the reference's timm 0.4.5 DeiT (``VisionTransformer._init_weights``): every
    Linear of the blocks from trunc_normal(std 0.02) with zero bias, LayerNorm eps 1e-6, the cls/dist tokens and
    the position table trunc_normal(0.02), the mask embedding ``xavier_normal_`` (``ast_models.py``), and the
    patch convolution and both heads at PyTorch's default (the reference creates them after timm's init).

    ``position_crop``: which columns of the ``[rows, max_cols]`` position table a clip of ``c`` patch columns
    gets. ``"left"`` (default): columns ``0 .. c-1``, where the reference's pretraining puts a clip (it pads
    every clip on the right to its ``target_length``). ``"centre"``: columns ``max_cols // 2 - c // 2`` onwards,
    the slice the reference's fine-tuning cuts (``ASTModel.__init__``, ``pretrain_stage=False``: ``int(p_t_dim/2)
    - int(t_dim/2)``), the way its released weights are used on shorter inputs. The offset is per clip (from its
    own length, not the batch's padded width), so a clip's embedding still does not depend on its batch.
    """

    def __init__(
        self, n_mels: int, *, patch: tuple[int, int], dim: int, depth: int, heads: int, ff_dim: int,
        dropout: float, max_frames: int, embedding: str = "last", pooling: str = "mean",
        position_crop: str = "left",
    ) -> None:  # fmt: skip
        super().__init__()
        patch_f, patch_t = patch
        self.pooling = pooling
        if position_crop not in ("left", "centre"):
            raise ValueError(f"position_crop must be 'left' or 'centre', not {position_crop!r}")
        self.position_crop = position_crop
        if n_mels % patch_f or max_frames % patch_t:
            raise ValueError(f"patch {patch} must tile {n_mels} bins and max_frames {max_frames}")
        self.patch, self.embedding = (patch_f, patch_t), embedding
        self.embed_dim = dim * (2 if pooling == "mean_std" else 1)
        self.rows, self.max_cols = n_mels // patch_f, max_frames // patch_t
        self.patch_embed = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.cls_tokens = nn.Parameter(torch.zeros(1, 2, dim))  # DeiT-distilled: cls and dist
        self.cls_positions = nn.Parameter(torch.zeros(1, 2, dim))
        self.positions = nn.Parameter(torch.zeros(1, self.rows, self.max_cols, dim))
        self.mask_embed = nn.Parameter(torch.zeros(1, 1, dim))
        for param in (self.cls_tokens, self.cls_positions, self.positions):
            nn.init.trunc_normal_(param, std=0.02)
        nn.init.xavier_normal_(self.mask_embed)  # the reference's mask_embed init
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, ff_dim, dropout, norm="pre", eps=1e-6) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)  # timm 0.4.5 ViT: partial(nn.LayerNorm, eps=1e-6)
        for module in self.blocks.modules():  # timm's _init_weights (the heads below keep PyTorch's default)
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        patch_size = patch_f * patch_t
        self.discriminative_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, patch_size))
        self.generative_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, patch_size))

    def grid(self, frames: int) -> tuple[int, int]:
        """``(rows, cols)`` of the patch grid of a ``frames``-long input."""
        return self.rows, frames // self.patch[1]

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """Raw patches ``[B, P, patch_f · patch_t]`` of features ``[B, T, F]``, row-major over (freq, time)."""
        b, t, f = x.shape
        pf, pt = self.patch
        spec = x.transpose(1, 2).reshape(b, f // pf, pf, t // pt, pt)
        return spec.permute(0, 1, 3, 2, 4).reshape(b, (f // pf) * (t // pt), pf * pt)

    def patch_validity(self, lengths: torch.Tensor, frames: int) -> torch.Tensor:
        """``[B, P]``: True for patches that hold at least one frame of audio."""
        rows, cols = self.grid(frames)
        return valid_mask(self.columns_with_audio(lengths), cols).repeat(1, rows)

    def columns_with_audio(self, lengths: torch.Tensor) -> torch.Tensor:
        """``[B]``: how many patch columns of each clip hold at least one frame of audio."""
        return torch.div(lengths + self.patch[1] - 1, self.patch[1], rounding_mode="floor")

    def position_table(self, lengths: torch.Tensor, cols: int) -> torch.Tensor:
        """The positions of a ``cols``-wide batch, ``[1 or B, rows · cols, dim]`` (see ``position_crop``)."""
        if self.position_crop == "left":
            return self.positions[:, :, :cols].reshape(1, self.rows * cols, -1)
        start = self.max_cols // 2 - self.columns_with_audio(lengths) // 2  # [B], the reference's centre cut
        # padding columns past the table's end (masked out of attention) repeat its last column
        index = (start[:, None] + torch.arange(cols, device=lengths.device)).clamp(max=self.max_cols - 1)
        table = self.positions[0][:, index]  # [rows, B, cols, dim]
        return table.transpose(0, 1).reshape(index.shape[0], self.rows * cols, -1)

    def encode(
        self, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Patch-token states after each layer (the last one normed) ``[B, P, dim]``, and patch validity."""
        b, t, _ = x.shape
        _, cols = self.grid(t)
        if cols > self.max_cols:
            raise ValueError(f"{t} frames exceed max_frames {self.max_cols * self.patch[1]}")
        tokens = self.patch_embed(x.transpose(1, 2).unsqueeze(1)).flatten(2).transpose(1, 2)  # [B, P, dim]
        if mask is not None:
            tokens = torch.where(mask[:, :, None], self.mask_embed.to(tokens.dtype), tokens)
        tokens = tokens + self.position_table(lengths, cols)
        h = torch.cat([(self.cls_tokens + self.cls_positions).expand(b, -1, -1), tokens], dim=1)
        valid = self.patch_validity(lengths, t)
        attend = attention_mask(torch.cat([valid.new_ones(b, 2), valid], dim=1))
        layers = []
        for block in self.blocks:
            h = block(h, attend)
            layers.append(h[:, 2:])
        layers[-1] = self.norm(layers[-1])
        return layers, valid

    def frame_embeddings(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-time-step representations ``[B, cols, dim]``: patch states averaged over frequency rows."""
        layers, _ = self.encode(batch["features"], batch["length"])
        states = layers[-1] if self.embedding == "last" else torch.stack(layers).mean(0)
        rows, cols = self.grid(batch["features"].shape[1])
        return states.view(states.shape[0], rows, cols, -1).mean(1)

    def embed_positions(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(frame_embeddings [B, cols, dim], lengths [B])`` in patch columns (``patch[1]`` frames each: 2 in
        frame mode, 16 in patch mode): what ``ssl-domains embed --per-position`` writes."""
        return self.frame_embeddings(batch), self.columns_with_audio(batch["length"])

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One vector per clip: the mean patch-token state over the clip's patches (SSAST's ``ft_avgtok``)."""
        layers, valid = self.encode(batch["features"], batch["length"])
        return _pool(layers, valid, self.embedding, self.pooling)
