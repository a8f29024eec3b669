"""T-JEPA networks (Thimonier et al., "T-JEPA: augmentation-free self-supervised learning for tabular data", 2024).

- :class:`FeatureTokenizer`: FT-Transformer tokens (Gorishniy et al. 2021, eq. 1): ``x_j W_j + b_j`` for numeric
  features, one embedding row plus a per-feature bias for categorical ones, plus a learned feature-index
  embedding. The reference adds sinusoidal positions instead (and has feature-index embeddings switched off);
  table columns have no order, so we learn one vector per column, as the issue asks.
- :class:`TabularEncoder`: [REG] tokens (the paper's regularisation tokens, §3.3, prepended and kept in the
  embedding), transformer blocks, then LayerNorm → Linear → LayerNorm, the reference's head. Blocks are pre-norm
  (the reference uses PyTorch's post-norm ``TransformerEncoderLayer``); pre-norm trains its 16 layers without
  warm-up tricks. Attention is ``scaled_dot_product_attention``.
- :class:`Predictor`: context tokens projected to ``predictor_dim`` with fixed sin-cos positions, learned mask
  tokens at the target positions, a transformer, and a projection back (reference ``TransformerPredictor``).
- :class:`TJEPAModel`: context encoder, EMA target encoder and predictor. ``embed`` is the target encoder's
  output on all features, flattened (the paper's ``(n_reg + D) × H`` embedding) or pooled.

Switches that reproduce the reference's choices (jose-melo/t-jepa @ 98dda99; defaults are ours, and with the
defaults the state-dict keys are those of runs made before the switches existed):

- ``norm="post"``: post-norm blocks, PyTorch's ``TransformerEncoderLayer`` (``src/tjepa_transformer.py:583-596``).
- ``activation="relu"``: the reference's default ``model_act_func`` / ``pred_activation`` (``src/configs.py:362-366,
  428-432``; the launch script keeps it), through ``TransformerBlock(activation=...)``.
- ``positions="sincos"``: no feature-index embedding; the reference's ``PositionalEncoding`` (base 100, sin on even
  and cos on odd channels, ``src/utils/train_utils.py:22-45``) added to ``[REG] + features`` before the context
  is gathered (``src/encoder.py:264-284``).
- ``predictor_head="encoder_head"``: the predictor's transformer ends in the encoder's head, dropout → LayerNorm →
  Linear → dropout → LayerNorm (``src/encoder.py:340-349``), then its own LayerNorm and the projection
  (``src/predictors.py:326-335``).
- ``predictor_positions="halves"``: the predictor's fixed table as MAE's ``get_1d_sincos_pos_embed``, sin in the
  first half of the channels and cos in the second (``src/utils/train_utils.py:48-66``), not interleaved.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssl_domains.nn import EMATeacher, TransformerBlock, sincos_positions


class FeatureTokenizer(nn.Module):
    """One ``dim``-vector per feature: numeric ``x_j W_j + b_j``, categorical ``E_j[c] + b_j``, plus the column's
    learned index embedding. Output ``[B, D, dim]`` in the order numeric columns, then categorical columns."""

    def __init__(self, num_numeric: int, cardinalities: list[int], dim: int, index_embedding: bool = True) -> None:
        super().__init__()
        bound = dim**-0.5  # FT-Transformer's uniform(-1/sqrt(d), 1/sqrt(d)) initialisation
        self.num_weight = nn.Parameter(torch.empty(num_numeric, dim).uniform_(-bound, bound))
        self.num_bias = nn.Parameter(torch.empty(num_numeric, dim).uniform_(-bound, bound))
        self.cat_embedding = nn.Embedding(max(sum(cardinalities), 1), dim)
        nn.init.uniform_(self.cat_embedding.weight, -bound, bound)
        self.cat_bias = nn.Parameter(torch.empty(len(cardinalities), dim).uniform_(-bound, bound))
        offsets = torch.tensor([0, *cardinalities[:-1]], dtype=torch.long).cumsum(0) if cardinalities else None
        self.register_buffer("cat_offsets", offsets if offsets is not None else torch.zeros(0, dtype=torch.long))
        if offsets is not None:  # the unseen-category rows (never in the training split: never trained) are zero, so
            with torch.no_grad():  # an unseen category is its column's bias alone, as an imported checkpoint has it
                self.cat_embedding.weight[offsets] = 0.0
        # positions="sincos" (the reference) has no feature-index embedding: the parameter does not exist then
        if index_embedding:
            self.feature_embedding = nn.Parameter(torch.randn(num_numeric + len(cardinalities), dim) * 0.02)
        else:
            self.feature_embedding = None
        # a table without numeric (or categorical) columns never uses those weights: frozen, so that DDP's reducer
        # does not wait for their gradients
        if not num_numeric:
            self.num_weight.requires_grad_(False)
            self.num_bias.requires_grad_(False)
        if not cardinalities:
            self.cat_embedding.requires_grad_(False)
            self.cat_bias.requires_grad_(False)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        tokens = []
        if self.num_weight.shape[0]:
            tokens.append(numeric.unsqueeze(-1) * self.num_weight + self.num_bias)
        if self.cat_offsets.numel():
            tokens.append(self.cat_embedding(categorical + self.cat_offsets) + self.cat_bias)
        out = torch.cat(tokens, dim=1)
        return out if self.feature_embedding is None else out + self.feature_embedding


def reference_positions(length: int, dim: int) -> torch.Tensor:
    """The reference encoder's sinusoidal table ``[length, dim]`` (``src/utils/train_utils.py:22-45``): frequencies
    ``100^(-2i/dim)`` (base 100, not 10000), sin on even and cos on odd channels, computed in float32 as there."""
    if dim % 2:
        raise ValueError(f"positions=sincos needs an even dim, got {dim}")
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(100.0) / dim))
    table = torch.zeros(length, dim, dtype=torch.float32)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)
    return table


def halves_positions(length: int, dim: int) -> torch.Tensor:
    """Sin-cos table ``[length, dim]`` with sin in the first half of the channels and cos in the second (MAE's
    ``get_1d_sincos_pos_embed``, the reference predictor's, ``src/utils/train_utils.py:48-66``): float64, rounded to
    float32 as the reference stores it (``src/predictors.py:251-257``)."""
    if dim % 2:
        raise ValueError(f"predictor_positions=halves needs an even predictor_dim, got {dim}")
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = torch.arange(length, dtype=torch.float64).unsqueeze(1) * omega
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def transformer_block(
    dim: int, heads: int, ff_dim: int, dropout: float, norm: str = "pre", activation: str = "gelu"
) -> TransformerBlock:
    """``ssl_domains.nn.TransformerBlock`` with T-JEPA's choices (the activation has no parameters, so the
    state-dict keys do not depend on it)."""
    return TransformerBlock(dim, heads, ff_dim, dropout, norm=norm, activation=activation)  # type: ignore[arg-type]


def _gather(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class TabularEncoder(nn.Module):
    """[REG] tokens + (a subset of) feature tokens → transformer → LayerNorm → Linear → LayerNorm."""

    def __init__(
        self, num_numeric: int, cardinalities: list[int], dim: int, depth: int, heads: int, ff_dim: int,
        dropout: float, num_reg_tokens: int, norm: str = "pre", activation: str = "gelu", positions: str = "learned",
    ) -> None:  # fmt: skip
        super().__init__()
        if positions not in ("learned", "sincos"):
            raise ValueError(f"positions must be learned or sincos, got {positions!r}")
        self.tokenizer = FeatureTokenizer(num_numeric, cardinalities, dim, index_embedding=positions == "learned")
        self.reg_tokens = nn.Parameter(torch.randn(num_reg_tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(
            transformer_block(dim, heads, ff_dim, dropout, norm, activation) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.dropout = dropout  # the reference's dropout1 / dropout2 around its head (src/encoder.py:341, 346)
        self.sincos = positions == "sincos"
        if self.sincos:
            table = reference_positions(num_reg_tokens + num_numeric + len(cardinalities), dim)
            self.register_buffer("positions", table, persistent=False)

    def forward(
        self,
        numeric: torch.Tensor,
        categorical: torch.Tensor,
        features: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Output tokens of a subset of the sequence ``[REG] * R + features``.

        ``features`` (``[B, k]`` feature indices ``0..D-1``): the [REG] tokens and those features, ``[B, R + k,
        dim]`` (the paper's masking). ``tokens`` (``[B, k]`` indices ``0..R+D-1`` into the whole sequence): those
        tokens only, ``[B, k, dim]`` (the reference's masking, ``mask_indexing=reference``). Neither: all tokens.
        """
        x = self.tokenizer(numeric, categorical)
        reg = self.reg_tokens.expand(x.shape[0], -1, -1)
        if self.sincos:  # added to every token, [REG] included, before the context is gathered (reference)
            reg = reg + self.positions[: reg.shape[1]]
            x = x + self.positions[reg.shape[1] :]
        if features is not None:
            x = _gather(x, features)
        x = torch.cat([reg, x], dim=1)
        if tokens is not None:
            x = _gather(x, tokens)
        for block in self.blocks:
            x = block(x)
        if self.dropout > 0 and self.training:
            x = F.dropout(x, self.dropout, True)
            return self.head[1](F.dropout(self.head[0](self.norm(x)), self.dropout, True))
        return self.head(self.norm(x))


class Predictor(nn.Module):
    """Predicts target-encoder tokens at target positions from the context tokens (reference TransformerPredictor)."""

    def __init__(
        self, dim: int, predictor_dim: int, depth: int, heads: int, num_positions: int, dropout: float,
        ff_dim: int | None = None, norm: str = "pre", activation: str = "gelu", head: str = "norm",
        position_layout: str = "interleaved",
    ) -> None:  # fmt: skip
        super().__init__()
        if head not in ("norm", "encoder_head"):
            raise ValueError(f"predictor_head must be norm or encoder_head, got {head!r}")
        tables = {"interleaved": sincos_positions, "halves": halves_positions}
        if position_layout not in tables:
            raise ValueError(f"predictor_positions must be interleaved or halves, got {position_layout!r}")
        self.embed = nn.Linear(dim, predictor_dim)
        self.register_buffer("positions", tables[position_layout](num_positions, predictor_dim), persistent=False)
        self.mask_token = nn.Parameter(torch.randn(predictor_dim) * 0.02)
        ff_dim = predictor_dim if ff_dim is None else ff_dim
        self.blocks = nn.ModuleList(
            transformer_block(predictor_dim, heads, ff_dim, dropout, norm, activation) for _ in range(depth)
        )
        if head == "encoder_head":  # LayerNorm, Linear, LayerNorm (reference src/encoder.py:332-349)
            self.head = nn.Sequential(
                nn.LayerNorm(predictor_dim), nn.Linear(predictor_dim, predictor_dim), nn.LayerNorm(predictor_dim)
            )
        else:
            self.head = None
        self.dropout = dropout
        self.norm = nn.LayerNorm(predictor_dim)
        self.out = nn.Linear(predictor_dim, dim)

    def forward(self, context: torch.Tensor, context_positions: torch.Tensor, target_positions: torch.Tensor):
        """``context`` ``[B, L, dim]`` at token positions ``[B, L]``; targets ``[B, T, k]`` → ``[B, T, k, dim]``."""
        b, t, k = target_positions.shape
        x = self.embed(context) + self.positions[context_positions]
        x = x.unsqueeze(1).expand(-1, t, -1, -1).reshape(b * t, x.shape[1], -1)
        queries = self.mask_token + self.positions[target_positions.reshape(b * t, k)]
        h = torch.cat([x, queries], dim=1)
        for block in self.blocks:
            h = block(h)
        h = h[:, -k:]
        if self.head is not None and self.dropout > 0 and self.training:  # dropout as the reference's head
            h = self.head[2](F.dropout(self.head[1](self.head[0](F.dropout(h, self.dropout))), self.dropout))
        elif self.head is not None:
            h = self.head(h)
        return self.out(self.norm(h)).view(b, t, k, -1)


class TJEPAModel(nn.Module):
    """Context encoder, EMA target encoder (momentum rising 0.996 → 1.0, linear, as I-JEPA) and predictor."""

    def __init__(
        self, num_numeric: int, cardinalities: list[int], *, dim: int, depth: int, heads: int, ff_dim: int,
        dropout: float, num_reg_tokens: int, predictor_dim: int, predictor_depth: int, predictor_heads: int,
        ema: tuple[float, float], embedding: str, predictor_ff_dim: int | None = None, norm: str = "pre",
        activation: str = "gelu", positions: str = "learned", predictor_head: str = "norm",
        predictor_positions: str = "interleaved",
    ) -> None:  # fmt: skip
        super().__init__()
        self.num_features = num_numeric + len(cardinalities)
        self.num_reg_tokens, self.embedding, self.dim = num_reg_tokens, embedding, dim
        self.context_encoder = TabularEncoder(
            num_numeric, cardinalities, dim, depth, heads, ff_dim, dropout, num_reg_tokens, norm, activation,
            positions,
        )  # fmt: skip
        self.target_encoder = EMATeacher(self.context_encoder, ema[0], ema[1], schedule="linear")
        self.predictor = Predictor(
            dim, predictor_dim, predictor_depth, predictor_heads, num_reg_tokens + self.num_features, dropout,
            predictor_ff_dim, norm, activation, predictor_head, predictor_positions,
        )  # fmt: skip
        tokens = {"flatten": num_reg_tokens + self.num_features, "reg": num_reg_tokens, "mean": 1}[embedding]
        self.embed_dim = tokens * dim

    def after_step(self, progress: float) -> None:
        """After each optimiser step: the target encoder moves towards the context encoder (I-JEPA's EMA)."""
        self.target_encoder.update(self.context_encoder, progress)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The target encoder's tokens for every feature: flattened, the [REG] tokens only, or their mean."""
        tokens = self.target_encoder(batch["numeric"], batch["categorical"])
        if self.embedding == "mean":
            return tokens.mean(dim=1)
        if self.embedding == "reg":
            tokens = tokens[:, : self.num_reg_tokens]
        return tokens.flatten(1)
