"""Masking-index utilities: batched, on the device, no Python loop over samples."""

from __future__ import annotations

import torch

__all__ = ["per_sample_mask", "random_subset"]


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
    ranks = noise.argsort(dim=1).argsort(dim=1)
    counts = torch.as_tensor(num_masked, device=device).reshape(-1, 1)
    return ranks < counts
