"""The locations of the RS chip index: scenes (a location's views on one grid), their grouping by footprint, and
the index the data module caches (:class:`ChipIndex`).

The index is built once per corpus and kept by every loader worker, so it is packed: the locations are pickles in
two arrays (:class:`ssl_domains.data.PackedList`). As a list of objects it took 43-53 kB a location in the main
process, about 30-40 kB more in every worker (the objects' pages are copied as they are touched), and would have
been 70-95 GB for SSL4EO-S12's 251,079 locations with 8 workers (``benchmarks/index_memory.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ssl_domains.arrayfile import StoredArray
from ssl_domains.data import PackedList

from .formats import Acquisition, acquisition_from_state


class Scene:
    """One location: its views (acquisitions, not their pixels) on one 10 m grid of ``shape``, and where the pixel
    cache holds each view (``stored``).

    Pickled (into the packed index), a scene keeps its views as what :meth:`Acquisition.__reduce__` keeps, and
    builds them again only when ``views`` is read: a training batch from the pixel cache needs only ``kinds``,
    ``shape`` and ``stored``, and building CROMA's 8 views took 60 us a chip, 5 % of a worker's time.
    """

    __slots__ = ("_states", "_views", "kinds", "label", "shape", "stored")

    def __init__(self, views: list[Acquisition], shape: tuple[int, int], label: str | None = None,
                 stored: list[StoredArray] | None = None) -> None:  # fmt: skip
        self._views: list[Acquisition] | None = list(views)
        self._states: tuple[tuple[Any, ...], ...] = ()
        self.kinds = [a.sensor for a in self._views]  # "s1" / "s2" per view
        self.shape = shape  # (H, W) at 10 m
        self.label = label
        self.stored = list(stored or [])

    @property
    def views(self) -> list[Acquisition]:
        if self._views is None:
            self._views, self._states = [acquisition_from_state(*state) for state in self._states], ()
        return self._views

    @property
    def name(self) -> str:
        return self.views[0].name

    @property
    def dates(self) -> list[str]:
        return [a.date for a in self.views]

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        states = self._states if self._views is None else tuple(a.__reduce__()[1] for a in self._views)
        return _packed_scene, (states, self.kinds, self.shape, self.label, self.stored)

    def __repr__(self) -> str:
        return f"Scene({len(self.kinds)} views {self.kinds}, shape={self.shape}, label={self.label!r})"


def _packed_scene(states: tuple[tuple[Any, ...], ...], kinds: list[str], shape: tuple[int, int], label: str | None,
                  stored: list[StoredArray]) -> Scene:  # fmt: skip
    """A :class:`Scene` from what its ``__reduce__`` kept; its views are built when first read."""
    scene = Scene.__new__(Scene)
    scene._views, scene._states, scene.kinds = None, states, kinds
    scene.shape, scene.label, scene.stored = shape, label, stored
    return scene


@dataclass
class ChipIndex:
    """What :meth:`RSDataModule.read` builds once and caches: the locations and every chip's
    ``(location, row, col, split)``. The locations are pickles in two arrays (:class:`~ssl_domains.data.PackedList`):
    a list of ``Scene`` objects took 43-53 kB a location in the main process, and was copied into every loader
    worker (``benchmarks/index_memory.py``)."""

    scenes: PackedList[Scene]
    train_items: np.ndarray
    test_items: np.ndarray
    notes: list[str]  # warnings about the files, said again on every run that reads the index from the cache
    pixels: bool = False  # whether the views are in the pixel cache beside the index (Scene.stored)


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def group_locations(bounds: np.ndarray) -> list[np.ndarray]:
    """The acquisitions (rows of their lon/lat ``bounds``, ``[N, 4]``) grouped by footprint (IoU >= 0.5), via a
    grid hash on footprint centres: each group's indices, ascending, the groups in order of their first member."""
    cell = 0.01  # degrees; a centre's neighbours are searched in the 3 x 3 cells around it
    centres = (bounds[:, :2] + bounds[:, 2:]) / 2
    keys = np.floor(centres / cell).astype(np.int64).tolist()
    rows = bounds.tolist()
    grid: dict[tuple[int, int], list[int]] = {}
    owner = np.empty(len(bounds), dtype=np.int64)
    groups = 0
    for i, (kx, ky) in enumerate(keys):
        near = (j for dx in (-1, 0, 1) for dy in (-1, 0, 1) for j in grid.get((kx + dx, ky + dy), ()))
        match = next((int(owner[j]) for j in near if _iou(rows[i], rows[j]) >= 0.5), None)
        if match is None:
            match, groups = groups, groups + 1
        owner[i] = match
        grid.setdefault((kx, ky), []).append(i)
    order = np.argsort(owner, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(owner[order])) + 1) if len(order) else []


def window_starts(extent: int, chip: int, stride: int) -> np.ndarray:
    """Start offsets of windows of ``chip`` pixels with ``stride`` inside ``[0, extent)``."""
    if extent < chip:
        return np.empty(0, dtype=np.int64)
    return np.arange(0, extent - chip + 1, stride, dtype=np.int64)
