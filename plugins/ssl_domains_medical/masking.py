"""Masks and views computed on the device, batched: Alice's column mask and Swin UNETR SSL's rotations.

Crops are ``[B, C, X, Y, Z]`` with the axes in RAS order (``Orientationd``): x left-right, y posterior-anterior,
z inferior-superior.
"""

from __future__ import annotations

import torch

from ssl_domains.nn import per_sample_mask


def column_mask(batch: int, roi: int, patch: int, ratio: float, device: torch.device, axis: int = 0) -> torch.Tensor:
    """Alice's masked-image-modelling mask (reference ``utils.MaskGenerator``): a random 2-D mask over a grid of
    ``patch`` x ``patch`` cells, repeated along one spatial axis, so every hidden cell is a column through the crop.

    ``axis`` 0 (default) draws the (y, z) grid and repeats it along x. The reference (``utils.py:1071-1101``)
    draws the grid over the first two axes of its ``[B, C, H, W, D]`` crops and repeats it along the last, i.e.
    ``axis`` 2 here (after ``Orientationd(as_closest_canonical=True)`` its axes are RAS too: columns along z).
    Exactly ``round(ratio * g^2)`` of the ``g^2`` cells are hidden in every crop (``g = roi / patch``; the
    reference rounds up), one ``argsort`` for the batch. Returns bool ``[B, X, Y, Z]``, True = hidden.
    """
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    cells = roi // patch
    hidden = round(ratio * cells * cells)
    grid = per_sample_mask(batch, cells * cells, hidden, device).view(batch, cells, cells)
    plane = grid.repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    return plane.unsqueeze(1 + axis).expand(batch, roi, roi, roi)


def rotate90(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate each crop of ``[B, C, X, Y, Z]`` by ``turns[b] * 90`` degrees in the (y, z) plane.

    Swin UNETR SSL's ``rot_rand`` (Tang et al. 2022, §3.2) rotates each sample ``x.rot90(k, (2, 3))`` of
    ``[C, H, W, D]`` in a Python loop; here the four rotations of the batch are stacked once and each crop picks
    its own with one ``gather``-free index (crops are cubes, so every rotation keeps the shape).
    """
    stacked = torch.stack([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])  # [4, B, C, X, Y, Z]
    return stacked[turns, torch.arange(x.shape[0], device=x.device)]
