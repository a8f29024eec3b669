"""Label-free quality of an embedding matrix from its spectrum: RankMe, alpha-ReQ, NESum and stable rank.

All four come from two symmetric eigendecompositions of ``D x D`` (or ``N x N``) Gram matrices, one of the raw
embeddings (their squared singular values) and one of the centred ones (the covariance spectrum):

- **RankMe** (Garrido et al., ICML 2023, eq. 1): ``exp(-sum p_k log p_k)``, ``p_k = sigma_k / ||sigma||_1 + eps``
  over the singular values of the raw matrix. In ``[1, min(N, D)]``; a collapse scores near 1.
- **alpha-ReQ** (Agrawal et al., NeurIPS 2022, eq. 3): the decay ``alpha`` of the covariance eigenvalues,
  ``lambda_i ~ i^-alpha``, fitted by least squares in log-log over the non-zero eigenvalues. Near 1 for good
  representations; large values mean a few directions dominate.
- **NESum** (He and Ozay, 2022): ``sum_i lambda_i / lambda_1``, the covariance spectrum normalised by its top
  eigenvalue.
- **Stable rank**: ``||Z||_F^2 / ||Z||_2^2 = sum sigma_k^2 / sigma_1^2`` of the raw matrix.
- **Effective rank of the centred embeddings** (Roy and Vetterli 2007; RankMe's formula on ``Z - mean``): unlike
  RankMe it ignores the embeddings' common offset, which at initialisation often dominates the raw spectrum, so
  it is the one the collapse alarm reads (:mod:`ssl_domains.monitor`).

``constant`` is true when the embeddings barely vary (total variance below ``1e-10`` of the mean squared norm):
the complete collapse a zeroed projector or a diverged run produces.
"""

from __future__ import annotations

import torch

from .rankme import rankme_from_singular_values

__all__ = ["spectrum_metrics"]


def _gram_eigenvalues(z: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of ``z^T z`` (or of ``z z^T``, the same non-zero ones, when N < D), descending, >= 0."""
    gram = z.T @ z if z.shape[0] >= z.shape[1] else z @ z.T
    return torch.linalg.eigvalsh(gram).flip(0).clamp_min(0.0)


def spectrum_metrics(embeddings: torch.Tensor, eps: float = 1e-7) -> dict[str, float]:
    """RankMe, alpha-ReQ, NESum, stable rank and ``constant`` of an ``[N, D]`` embedding matrix (N >= 2),
    computed in float64 on the embeddings' device (on the host for MPS, which has no float64)."""
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"need an [N >= 2, D] embedding matrix, got shape {tuple(embeddings.shape)}")
    device = "cpu" if embeddings.device.type == "mps" else embeddings.device
    z = embeddings.detach().to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(z).all()):
        nan = float("nan")
        keys = ("rankme", "effective_rank", "alpha_req", "nesum", "stable_rank")
        return {**dict.fromkeys(keys, nan), "constant": 1.0, "finite": 0.0}
    sigma_sq = _gram_eigenvalues(z)
    centred = z - z.mean(dim=0, keepdim=True)
    lam = _gram_eigenvalues(centred) / (z.shape[0] - 1)
    total = float(lam.sum())
    mean_sq_norm = float((z * z).sum(dim=1).mean())
    constant = total <= 1e-10 * mean_sq_norm or mean_sq_norm == 0.0
    top_sq, top_lam = float(sigma_sq[0]), float(lam[0])
    positive = lam > max(top_lam, 1e-300) * 1e-12
    alpha = float("nan")
    if int(positive.sum()) >= 2 and not constant:
        x = torch.arange(1, lam.shape[0] + 1, device=lam.device, dtype=torch.float64)[positive].log()
        y = lam[positive].log()
        x0 = x - x.mean()
        alpha = float(-(x0 * (y - y.mean())).sum() / (x0 * x0).sum())
    return {
        "rankme": rankme_from_singular_values(sigma_sq.sqrt(), eps),
        "effective_rank": 0.0 if constant else rankme_from_singular_values(lam.sqrt(), eps),
        "alpha_req": alpha,
        "nesum": 0.0 if constant else total / top_lam,
        "stable_rank": 0.0 if top_sq == 0.0 else float(sigma_sq.sum()) / top_sq,
        "constant": float(constant),
        "finite": 1.0,
    }
