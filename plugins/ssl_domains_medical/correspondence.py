"""Anatomical correspondence between two volumes, for Alice's cross-volume positive pairs.

Alice (Jiang et al., ICCV 2023, §3.1) finds the point of volume B that corresponds to a point of volume A with a
pretrained self-supervised anatomical embedding (SAM, Yan et al., TMI 2022). Neither SAM's weights nor its
mmdet 2.x stack can be installed here, so the plugin computes correspondence itself, from geometry:

- ``"box"`` (default): an affine alignment of the two volumes' foreground bounding boxes. After ``Orientationd``
  (RAS) and ``Spacingd`` both volumes share axis directions and voxel size, so the box maps each axis of A onto
  the same axis of B with its own scale and offset: a 6-parameter affine (per-axis scale and translation) that
  matches body extents. It needs no registration and no prior alignment, and is exact when two subjects differ
  by a per-axis scaling and a shift; the residual of real anatomy is what the crops' size absorbs (a 64^3 crop
  spans 128 mm at 2 mm spacing).
- ``"world"``: the same scanner (world) coordinate, through both volumes' affines. Right for volumes already
  registered to one space (template-space data, longitudinal scans of one patient).

Both are computed per item in the data loader (microseconds), so positives cost nothing at training time.
"""

from __future__ import annotations

from typing import Literal

import numpy as np


def foreground_box(mask: np.ndarray) -> dict[str, np.ndarray]:
    """``{"lo", "hi", "shape"}``: the inclusive voxel bounds of ``mask``'s True voxels, and the array shape."""
    coords = np.argwhere(mask)
    return {"lo": coords.min(0).astype(np.float64), "hi": coords.max(0).astype(np.float64),
            "shape": np.asarray(mask.shape, dtype=np.float64)}  # fmt: skip


def corresponding_point(
    point: np.ndarray,
    geometry_a: dict[str, np.ndarray],
    geometry_b: dict[str, np.ndarray],
    method: Literal["box", "world"] = "box",
    clip: bool = True,
) -> np.ndarray:
    """The voxel of volume B corresponding to voxel ``point`` of volume A (float; clipped into B unless ``clip``
    is False). ``"box"`` always lands inside B; ``"world"`` leaves B when B's field of view does not hold the
    point, which :func:`inside` tells."""
    point = np.asarray(point, dtype=np.float64)
    if method == "world":
        world = geometry_a["affine"] @ np.append(point, 1.0)
        mapped = (np.linalg.inv(geometry_b["affine"]) @ world)[:3]
    else:
        extent_a = geometry_a["hi"] - geometry_a["lo"] + 1.0
        extent_b = geometry_b["hi"] - geometry_b["lo"] + 1.0
        relative = (point - geometry_a["lo"] + 0.5) / extent_a
        mapped = geometry_b["lo"] + relative * extent_b - 0.5
    return np.clip(mapped, 0.0, geometry_b["shape"] - 1.0) if clip else mapped


def inside(point: np.ndarray, geometry: dict[str, np.ndarray]) -> bool:
    """Whether voxel ``point`` lies within the volume of ``geometry``."""
    return bool(((point >= 0.0) & (point <= geometry["shape"] - 1.0)).all())
