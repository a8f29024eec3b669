"""InfoNCE with negatives gathered from every DDP rank, with gradients through the gather.

``torch.distributed.all_gather`` returns tensors without a gradient: a contrastive loss built on it trains the
local half of each similarity matrix only, and a 2-GPU run silently differs from a 1-GPU run with the same
global batch. :func:`gather_with_grad` uses the differentiable collective, whose backward sums every rank's
gradient into the slice each rank contributed; with DDP's gradient averaging the step then equals the
single-process step on the global batch (``tests/core/test_distributed_losses.py`` checks it on 2 gloo processes).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .reduction import at_least_float32

__all__ = ["gather_with_grad", "info_nce", "nt_xent"]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank concatenated along dim 0 (rank order), differentiable; ``x`` itself on one process.

    Every rank must pass the same shape.
    """
    world, _ = _world()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def info_nce(query: torch.Tensor, key: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """InfoNCE (van den Oord et al. 2018, Eq. 4): row ``i`` of ``query`` against all keys of all ranks, positive
    ``key[i]``; the mean over this rank's rows. Both ``[B, D]``, L2-normalised here; computed in float32 (float64
    inputs stay float64, so the equivalence harnesses compare in double precision).

    With keys gathered from every rank (:func:`gather_with_grad`) the negatives are the global batch, as in
    CLIP / CROMA / MoCo v3 with large batches.
    """
    q = F.normalize(at_least_float32(query), dim=-1)
    k = F.normalize(at_least_float32(key), dim=-1)
    _, rank = _world()
    keys = gather_with_grad(k)
    logits = q @ keys.T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + rank * q.shape[0]
    return F.cross_entropy(logits, labels)


def nt_xent(view1: torch.Tensor, view2: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020, Eq. 1), the 2N-way loss: each of the 2N views' positive is the other view
    of its item; every other view of the global batch, same-view ones included, is a negative.

    ``view1``/``view2`` ``[B, D]`` are the two views' projections (row ``i`` of each is item ``i``); L2-normalised
    here and computed in at least float32; the mean over this rank's ``2B`` rows. Negatives come from every rank
    through :func:`gather_with_grad`, as in :func:`info_nce`.
    """
    b = view1.shape[0]
    _, rank = _world()
    z1, z2 = F.normalize(at_least_float32(view1), dim=-1), F.normalize(at_least_float32(view2), dim=-1)
    keys = torch.cat([gather_with_grad(z1), gather_with_grad(z2)])  # [2 W B]: all first views, then all second
    total = keys.shape[0] // 2
    logits = torch.cat([z1, z2]) @ keys.T / temperature
    own = torch.arange(b, device=z1.device) + rank * b
    rows = torch.arange(2 * b, device=z1.device)
    logits[rows, torch.cat([own, own + total])] = float("-inf")  # a view is not its own negative
    return F.cross_entropy(logits, torch.cat([own + total, own]))
