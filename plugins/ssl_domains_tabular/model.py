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
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_domains.nn import EMATeacher, TransformerBlock, sincos_positions


class FeatureTokenizer(nn.Module):
    """One ``dim``-vector per feature: numeric ``x_j W_j + b_j``, categorical ``E_j[c] + b_j``, plus the column's
    learned index embedding. Output ``[B, D, dim]`` in the order numeric columns, then categorical columns."""

    def __init__(self, num_numeric: int, cardinalities: list[int], dim: int) -> None:
        super().__init__()
        bound = dim**-0.5  # FT-Transformer's uniform(-1/sqrt(d), 1/sqrt(d)) initialisation
        self.num_weight = nn.Parameter(torch.empty(num_numeric, dim).uniform_(-bound, bound))
        self.num_bias = nn.Parameter(torch.empty(num_numeric, dim).uniform_(-bound, bound))
        self.cat_embedding = nn.Embedding(max(sum(cardinalities), 1), dim)
        nn.init.uniform_(self.cat_embedding.weight, -bound, bound)
        self.cat_bias = nn.Parameter(torch.empty(len(cardinalities), dim).uniform_(-bound, bound))
        offsets = torch.tensor([0, *cardinalities[:-1]], dtype=torch.long).cumsum(0) if cardinalities else None
        self.register_buffer("cat_offsets", offsets if offsets is not None else torch.zeros(0, dtype=torch.long))
        self.feature_embedding = nn.Parameter(torch.randn(num_numeric + len(cardinalities), dim) * 0.02)
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
        return torch.cat(tokens, dim=1) + self.feature_embedding


class TabularEncoder(nn.Module):
    """[REG] tokens + (a subset of) feature tokens → transformer → LayerNorm → Linear → LayerNorm."""

    def __init__(
        self, num_numeric: int, cardinalities: list[int], dim: int, depth: int, heads: int, ff_dim: int,
        dropout: float, num_reg_tokens: int,
    ) -> None:  # fmt: skip
        super().__init__()
        self.tokenizer = FeatureTokenizer(num_numeric, cardinalities, dim)
        self.reg_tokens = nn.Parameter(torch.randn(num_reg_tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, ff_dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))

    def forward(
        self, numeric: torch.Tensor, categorical: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Tokens ``[B, R + k, dim]`` for the features ``features`` (``[B, k]`` indices; None: all ``D``)."""
        tokens = self.tokenizer(numeric, categorical)
        if features is not None:
            tokens = tokens.gather(1, features.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        x = torch.cat([self.reg_tokens.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class Predictor(nn.Module):
    """Predicts target-encoder tokens at target positions from the context tokens (reference TransformerPredictor)."""

    def __init__(self, dim: int, predictor_dim: int, depth: int, heads: int, num_positions: int, dropout: float):
        super().__init__()
        self.embed = nn.Linear(dim, predictor_dim)
        self.register_buffer("positions", sincos_positions(num_positions, predictor_dim), persistent=False)
        self.mask_token = nn.Parameter(torch.randn(predictor_dim) * 0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(predictor_dim, heads, predictor_dim, dropout) for _ in range(depth)
        )
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
        return self.out(self.norm(h[:, -k:])).view(b, t, k, -1)


class TJEPAModel(nn.Module):
    """Context encoder, EMA target encoder (momentum rising 0.996 → 1.0, linear, as I-JEPA) and predictor."""

    def __init__(
        self, num_numeric: int, cardinalities: list[int], *, dim: int, depth: int, heads: int, ff_dim: int,
        dropout: float, num_reg_tokens: int, predictor_dim: int, predictor_depth: int, predictor_heads: int,
        ema: tuple[float, float], embedding: str,
    ) -> None:  # fmt: skip
        super().__init__()
        self.num_features = num_numeric + len(cardinalities)
        self.num_reg_tokens, self.embedding, self.dim = num_reg_tokens, embedding, dim
        self.context_encoder = TabularEncoder(
            num_numeric, cardinalities, dim, depth, heads, ff_dim, dropout, num_reg_tokens
        )
        self.target_encoder = EMATeacher(self.context_encoder, ema[0], ema[1], schedule="linear")
        self.predictor = Predictor(
            dim, predictor_dim, predictor_depth, predictor_heads, num_reg_tokens + self.num_features, dropout
        )
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
