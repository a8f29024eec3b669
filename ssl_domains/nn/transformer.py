"""A transformer block on ``scaled_dot_product_attention``, with key padding and an optional additive bias.

Written once for the plugins whose sequences vary in length (speech frames, spectrogram patches) or whose
attention carries a bias (ALiBi). ``norm="post"`` is the original/BERT arrangement (Vaswani et al. 2017, §3.1;
what TERA's reference uses); ``norm="pre"`` puts LayerNorm before each sub-layer (ViT/DeiT, as SSAST uses).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TransformerBlock", "attention_mask", "sincos_positions", "sincos_positions_2d"]


def attention_mask(valid: torch.Tensor | None) -> torch.Tensor | None:
    """SDPA's boolean mask ``[B, 1, 1, N]`` (True = attend) from a key-validity mask ``[B, N]``, or None."""
    return None if valid is None else valid[:, None, None, :]


def sincos_positions(length: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sin-cos position table ``[length, dim]`` (Vaswani et al. 2017, §3.5), float32.

    The angles are computed in float64: in float32, ``position * freq`` at position 1500 is off by ~1e-4 rad,
    which is the table's error (s3prl's ``get_sinusoid_table`` computes in float64 too)."""
    position = torch.arange(length, dtype=torch.float64).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table.float()


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, bias: torch.Tensor | None, p: float
) -> torch.Tensor:
    if bias is not None:
        bias = bias.to(q.dtype)
        mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)


def sincos_positions_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos table ``[height * width, dim]`` in row-major order: half the channels encode the row,
    half the column (MAE, He et al. 2022, ``get_2d_sincos_pos_embed``). ``dim`` must be divisible by 4."""
    if dim % 4:
        raise ValueError(f"dim {dim} must be divisible by 4 for 2-D sin-cos positions")
    rows = sincos_positions(height, dim // 2)[:, None, :].expand(height, width, dim // 2)
    cols = sincos_positions(width, dim // 2)[None, :, :].expand(height, width, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(height * width, dim)


class TransformerBlock(nn.Module):
    """Multi-head self-attention and a GELU feed-forward, each with a residual, pre- or post-norm.

    ``forward(x, mask=None, bias=None)``: ``x`` ``[B, N, dim]``; ``mask`` a boolean SDPA mask broadcastable to
    ``[B, heads, N, N]`` (True = attend; see :func:`attention_mask`); ``bias`` an additive float bias of the same
    broadcast shape (ALiBi). The two are combined into one additive mask when both are given.

    With ``cross=True`` a cross-attention sub-layer sits between self-attention and the feed-forward (the
    transformer decoder's arrangement, Vaswani et al. 2017, §3.1; CROMA's joint encoder): queries from ``x``,
    keys and values from ``context`` ``[B, M, dim]``, with its own ``context_bias`` ``[B, heads, N, M]`` (X-ALiBi).

    ``eps`` is every LayerNorm's epsilon (PyTorch 1e-5; BERT/s3prl 1e-12; timm's ViT 1e-6); ``ff_dropout=False``
    drops no units of the feed-forward's hidden layer (BERT), ``True`` does (timm's ``Mlp``); ``activation`` is the
    feed-forward's (GELU; ``"relu"`` for PyTorch's ``TransformerEncoderLayer`` default, as T-JEPA's reference);
    ``qkv_bias=False`` builds the query/key/value projections without bias (CROMA's reference code).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        ff_dim: int,
        dropout: float = 0.0,
        norm: Literal["pre", "post"] = "pre",
        cross: bool = False,
        eps: float = 1e-5,
        ff_dropout: bool = True,
        activation: Literal["gelu", "relu"] = "gelu",
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.dropout, self.norm = heads, dropout, norm
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=qkv_bias), nn.Linear(dim, dim)
        # BERT (TERA's reference) has no dropout on the feed-forward's hidden layer, timm's ViT Mlp does; the
        # module stays either way so that state-dict keys do not depend on it
        hidden_drop = nn.Dropout(dropout if ff_dropout else 0.0)
        if activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be gelu or relu, got {activation!r}")
        act = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), act, hidden_drop, nn.Linear(ff_dim, dim))
        self.drop = nn.Dropout(dropout)
        self.cross = cross
        if cross:
            self.norm_cross, self.norm_context = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
            self.q_cross, self.kv_cross, self.proj_cross = (
                nn.Linear(dim, dim, bias=qkv_bias),
                nn.Linear(dim, 2 * dim, bias=qkv_bias),
                nn.Linear(dim, dim),
            )

    def attend(self, x: torch.Tensor, mask: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        """The attention sub-layer's output (before the residual)."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = _sdpa(q, k, v, mask, bias, self.dropout if self.training else 0.0)
        return self.drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))

    def attend_context(self, x: torch.Tensor, context: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The cross-attention sub-layer's output (before the residual)."""
        b, n, c = x.shape
        m = context.shape[1]
        q = self.q_cross(x).view(b, n, self.heads, c // self.heads).transpose(1, 2)
        k, v = self.kv_cross(context).view(b, m, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = _sdpa(q, k, v, None, bias, self.dropout if self.training else 0.0)
        return self.drop(self.proj_cross(out.transpose(1, 2).reshape(b, n, c)))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if (context is not None) != self.cross:
            raise ValueError("pass context exactly when the block was built with cross=True")
        if self.norm == "pre":
            x = x + self.attend(self.norm1(x), mask, bias)
            if context is not None:
                x = x + self.attend_context(self.norm_cross(x), self.norm_context(context), context_bias)
            return x + self.drop(self.ff(self.norm2(x)))
        x = self.norm1(x + self.attend(x, mask, bias))
        if context is not None:
            x = self.norm_cross(x + self.attend_context(x, context, context_bias))
        return self.norm2(x + self.drop(self.ff(x)))
