"""Encoder and decoder of the denoising autoencoder."""

from __future__ import annotations

import torch
from torch import nn


class DenoisingAutoencoder(nn.Module):
    """``x -> code -> x_hat`` with one hidden layer each way; the code is the representation."""

    def __init__(self, num_features: int, hidden_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.encoder = nn.Sequential(nn.Linear(num_features, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embed_dim))
        self.decoder = nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x`` from its code."""
        return self.decoder(self.encoder(x))

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The code of each row, ``[N, embed_dim]``."""
        return self.encoder(batch["x"])
