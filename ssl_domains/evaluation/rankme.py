"""RankMe: the effective rank of an embedding matrix (Garrido et al., ICML 2023)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["rankme", "rankme_from_singular_values"]


def rankme(embeddings: np.ndarray | torch.Tensor, eps: float = 1e-7) -> float:
    """``exp(-sum_k p_k log p_k)`` with ``p_k = sigma_k / ||sigma||_1 + eps`` (Garrido et al. 2023, eq. 1).

    ``sigma`` are the singular values of the ``[N, D]`` embedding matrix (not centred, as in the paper). The
    value lies in ``[1, min(N, D)]``; a collapsed representation scores near 1. Needs no labels, so it applies
    to every plugin. Computed in float64, whatever the embedding dtype (bf16 included).
    """
    z = torch.as_tensor(np.asarray(embeddings) if not torch.is_tensor(embeddings) else embeddings)
    z = z.detach().to(device="cpu", dtype=torch.float64)
    if z.ndim != 2 or min(z.shape) == 0:
        raise ValueError(f"RankMe needs a non-empty [N, D] matrix, got shape {tuple(z.shape)}")
    return rankme_from_singular_values(torch.linalg.svdvals(z), eps)


def rankme_from_singular_values(sigma: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (eq. 1 of Garrido et al. 2023) from the singular values ``sigma`` of the embedding matrix."""
    sigma = sigma.to(torch.float64)
    if float(sigma.sum()) == 0.0:
        return 1.0
    p = sigma / sigma.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))
