"""Means over the global batch: a loss averaged over a varying number of items (masked frames, patches, nodes).

Under DDP each rank computes its loss and the gradients are averaged over ranks. A loss that is the mean over
this rank's own count of masked positions then weighs a position on a rank with few of them more than one on
a rank with many, and the step is not the single-process step on the global batch whenever the counts differ
(clips of different lengths, graphs of different sizes). :func:`global_mean` divides the local sum by the count
summed over all ranks (times the world size, which DDP's averaging divides out again), so the gradient is that
of ``sum over all ranks / count over all ranks`` exactly (``tests/core/test_distributed_losses.py``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["global_mean", "masked_mean"]


def global_mean(total: torch.Tensor, count: torch.Tensor | int | float) -> torch.Tensor:
    """``total / count`` with ``count`` summed over the DDP ranks and ``total`` scaled by the world size.

    ``total`` is this rank's sum of the per-item losses; ``count`` how many items it summed (a tensor or a
    number; the division is by at least 1). On one process, or where no gradient is being recorded
    (validation, figures drawn on rank 0 alone), this is the local mean: the count's all-reduce is a collective
    that every rank must enter, and only a training step is guaranteed to run on every rank. The all-reduce
    runs on the device, without a host sync. The value logged on each rank is its share of the global mean, so
    the ranks' average (what ``sync_dist`` logs) is the global mean.
    """
    count = torch.as_tensor(count, dtype=torch.float32, device=total.device)
    if not (torch.is_grad_enabled() and dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return total / count.clamp(min=1.0)
    count = count.detach().clone()
    dist.all_reduce(count)
    return total * dist.get_world_size() / count.clamp(min=1.0)


def masked_mean(states: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``states`` ``[B, N, D]`` over the positions where ``valid`` ``[B, N]`` holds (padding left out);
    a row without a valid position gives zeros."""
    weights = valid.to(states.dtype)[:, :, None]
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` for a loss: half precision (autocast's bf16/fp16) up to float32, float32 and float64 as they are,
    so the float64 equivalence checks against reference code stay in float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
