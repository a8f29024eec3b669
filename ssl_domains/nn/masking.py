"""Masking-index utilities: batched, on the device, no Python loop over samples."""

from __future__ import annotations

import torch

__all__ = ["lowest_ranks", "per_sample_mask", "random_keep", "random_subset"]


def random_subset(
    num_items: int, num_selected: int, device: torch.device | str, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniformly random split of ``range(num_items)`` into ``num_selected`` chosen and the rest.

    Returns ``(selected, rest)`` index tensors on ``device``.
    """
    perm = torch.randperm(num_items, device=device, generator=generator)
    return perm[:num_selected], perm[num_selected:]


def per_sample_mask(
    batch_size: int,
    length: int,
    num_masked: int | torch.Tensor,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Boolean ``[batch_size, length]`` mask with exactly ``num_masked`` True entries per row, at random places.

    ``num_masked`` is an int, or an int tensor ``[batch_size]`` for a different count per sample. The positions
    are the lowest ranks of i.i.d. uniform noise (the MAE trick), so the whole batch is one ``argsort``.
    """
    noise = torch.rand(batch_size, length, device=device, generator=generator)
    return lowest_ranks(noise, torch.as_tensor(num_masked, device=device))


def lowest_ranks(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B, N]`` mask of the ``counts[b]`` lowest ``scores`` of each row (``counts``: ``[B]`` or a scalar).

    With uniform noise as ``scores`` this is a uniform random subset per row; adding a penalty to the scores of
    some positions (padding, positions already used) keeps them out. Two ``argsort`` calls, no host sync.
    """
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < counts.reshape(-1, 1)


def random_keep(
    batch_size: int, num_tokens: int, mask_ratio: float, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAE-style masking (He et al. 2022, §3): each row keeps ``round(N (1 - ratio))`` tokens chosen uniformly.

    Returns ``(keep, masked)``: kept indices ``[B, n_keep]`` in ascending (raster) order, and a bool ``[B, N]``
    that is True on masked tokens. The count depends only on shapes, so nothing is read back from the device.
    """
    n_keep = max(1, min(num_tokens, round(num_tokens * (1.0 - mask_ratio))))
    noise = torch.rand(batch_size, num_tokens, device=device)
    keep = noise.argsort(dim=1)[:, :n_keep].sort(dim=1).values
    masked = torch.ones(batch_size, num_tokens, dtype=torch.bool, device=device)
    masked.scatter_(1, keep, False)
    return keep, masked
