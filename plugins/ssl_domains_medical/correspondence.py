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

from collections.abc import Sequence
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


class Geometries(Sequence):
    """Each volume's :func:`foreground_box` and ``affine`` as a dict, over arrays ``lo``, ``hi``, ``shape``
    ``[N, 3]`` and ``affine`` ``[N, 4, 4]`` (memory-mapped from the index cache: a corpus of thousands of CTs
    holds them on disk, not in each loader worker)."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, shape: np.ndarray, affine: np.ndarray) -> None:
        self.lo, self.hi, self.shape, self.affine = lo, hi, shape, affine

    def __len__(self) -> int:
        return len(self.lo)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:  # type: ignore[override]
        return {
            name: np.array(getattr(self, name)[index], dtype=np.float64) for name in ("lo", "hi", "shape", "affine")
        }


class ForegroundPoints(Sequence):
    """Each volume's sampled foreground voxels, ``points[i, :counts[i]]`` of a padded ``[N, P, 3]`` array."""

    def __init__(self, points: np.ndarray, counts: np.ndarray) -> None:
        self.points, self.counts = points, counts

    def __len__(self) -> int:
        return len(self.counts)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        return np.asarray(self.points[index, : int(self.counts[index])], dtype=np.int64)
