"""The data module CROMA and SSL4EO share: locations, pairing, tiling into chips, spatial hold-out, normalisation.

- **Locations.** Acquisitions whose lon/lat footprints overlap (IoU >= 0.5) show one location.
- **Views.** ``mode="s1s2"`` (CROMA) pairs every S1 acquisition of a location with every S2 acquisition of it;
  evaluation uses the pair closest in date. ``mode="temporal"`` (SSL4EO) draws two different dates of one
  location (SSL4EO-S12's seasonal positives); a location seen once gives two crops of that date
  (``single_date: augment``) or is left out (``skip``).
- **Chips.** Windows of ``chip`` pixels with stride ``train_stride`` tile every scene (Major-TOM's 1068² cells
  included). A window is dropped when more than ``max_invalid`` of its pixels are nodata or cloud (in any view).
- **Spatial hold-out.** ``holdout_quadrant`` k in 0..3 removes quadrant k (0 top-left, 1 top-right, 2
  bottom-left, 3 bottom-right) of *every* location from training; no training window touches it. The
  evaluation chips tile that quadrant without overlap (split 2). The rest of each scene is split 0.
- **Normalisation.** Fixed per-band statistics, never batch statistics: the published SSL4EO-S12 statistics by
  default, or a JSON from ``ssl-domains run croma stats``. ``clip2sigma`` maps [mean - 2 std, mean + 2 std] to
  [0, 1] and clips (SSL4EO-S12's ``normalize`` and CROMA's README, without the uint8 rounding); ``zscore``
  standardises. The statistics are saved with the run and reused by ``embed``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ssl_domains import DataError
from ssl_domains.data import eval_loader, train_loader
from ssl_domains.datamodule import FittedDataModule

from .bands import S1_GRD, SSL4EO_STATS, bands_for
from .formats import Acquisition, find_acquisitions, read_bands

log = logging.getLogger(__name__)


@dataclass
class Scene:
    """One location: its views (acquisitions) read and normalised, with a joint validity mask."""

    name: str
    views: list[np.ndarray]  # [C, H, W] float32 each, normalised
    kinds: list[str]  # "s1" / "s2" per view
    dates: list[str]
    valid: np.ndarray  # [H, W] bool, valid in every view
    label: str | None = None


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def group_locations(acqs: list[Acquisition]) -> list[list[Acquisition]]:
    """Acquisitions grouped by footprint (IoU >= 0.5), via a grid hash on footprint centres."""
    cell = 0.01  # degrees; a centre's neighbours are searched in the 3 x 3 cells around it
    grid: dict[tuple[int, int], list[int]] = {}
    groups: list[list[Acquisition]] = []
    owner: list[int] = []
    for i, acq in enumerate(acqs):
        cx, cy = (acq.bounds[0] + acq.bounds[2]) / 2, (acq.bounds[1] + acq.bounds[3]) / 2
        key = (int(np.floor(cx / cell)), int(np.floor(cy / cell)))
        near = [j for dx in (-1, 0, 1) for dy in (-1, 0, 1) for j in grid.get((key[0] + dx, key[1] + dy), [])]
        match = next((owner[j] for j in near if _iou(acq.bounds, acqs[j].bounds) >= 0.5), None)
        if match is None:
            match = len(groups)
            groups.append([])
        groups[match].append(acq)
        owner.append(match)
        grid.setdefault(key, []).append(i)
    return groups


def load_stats(spec: str, bands: tuple[str, ...], level: str) -> dict[str, tuple[float, float]]:
    """Per-band ``(mean, std)``: ``"ssl4eo"`` (published) or a JSON file ``{band: [mean, std]}``."""
    if spec == "ssl4eo":
        table = {**SSL4EO_STATS[level], **SSL4EO_STATS["GRD"]}
    else:
        path = Path(spec)
        try:
            table = {k: tuple(v) for k, v in json.loads(path.read_text()).items()}
        except (OSError, ValueError) as exc:
            raise DataError(
                f"{path}: cannot read band statistics ({exc}); write them with `ssl-domains run croma stats`"
            ) from None
    missing = [b for b in bands if b not in table]
    if missing:
        raise DataError(
            f"band statistics {spec!r} have no entry for {missing}; compute them with `ssl-domains run croma stats`"
        )
    return {b: (float(table[b][0]), float(table[b][1])) for b in bands}


def normalise(image: np.ndarray, bands: tuple[str, ...], stats: dict[str, Any], method: str) -> np.ndarray:
    """Fixed per-band normalisation of ``[C, H, W]`` (see the module docstring)."""
    mean = np.array([stats[b][0] for b in bands], dtype=np.float32)[:, None, None]
    std = np.array([stats[b][1] for b in bands], dtype=np.float32)[:, None, None]
    if method == "zscore":
        return (image - mean) / std
    return np.clip((image - (mean - 2 * std)) / (4 * std), 0.0, 1.0)


def window_starts(extent: int, chip: int, stride: int) -> np.ndarray:
    """Start offsets of windows of ``chip`` pixels with ``stride`` inside ``[0, extent)``."""
    if extent < chip:
        return np.empty(0, dtype=np.int64)
    return np.arange(0, extent - chip + 1, stride, dtype=np.int64)


class _Chips(Dataset):
    def __init__(self, module: RSDataModule, items: np.ndarray, train: bool) -> None:
        self.module, self.items, self.train = module, items, train

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.module.sample(self.items[i], self.train, i)


class RSDataModule(FittedDataModule):
    """Sentinel-1/2 chips for CROMA (``mode="s1s2"``) or SSL4EO (``mode="temporal"``); batches are dicts.

    Batches: ``radar`` ``[B, 2, h, w]`` and ``optical`` ``[B, 12, h, w]`` (s1s2), or ``view1``/``view2`` (temporal),
    with ``id``, ``split`` and ``location``. Training draws a random view pair per chip; prediction gives every
    evaluation chip's evaluation pair (closest dates for s1s2, the first two dates for temporal).
    """

    def __init__(self, path: Path, cfg: Any, mode: str) -> None:
        super().__init__(path, cfg)
        self.mode = mode
        self.s2_bands = tuple(cfg.s2_bands) if cfg.s2_bands else bands_for(cfg.s2_level)
        self.s1_bands = S1_GRD
        self.scenes: list[Scene] = []
        # None, or the one view every item holds when data that cannot be paired is read for embedding only:
        # "optical"/"radar" (CROMA, by embed_modality) or "view1" (SSL4EO, single-date chips)
        self.single_view: str | None = None
        self._noted: set[tuple[str, ...]] = set()

    def input_spec(self) -> dict[str, Any]:
        """Bands in the order the channels hold them, their statistics and the normalisation (:func:`normalise`)."""
        stats = self.fitted["stats"]
        method = self.fitted["normalize"]
        formula = "(x - mean) / std" if method == "zscore" else "clip((x - (mean - 2 std)) / (4 std), 0, 1)"
        channels: Any = (
            {"radar": list(self.s1_bands), "optical": list(self.s2_bands)} if self.mode == "s1s2" else list(self.bands)
        )
        used = (*self.s1_bands, *self.s2_bands) if self.mode == "s1s2" else self.bands
        spec: dict[str, Any] = {
            "s2_level": self.cfg.s2_level,
            "channels": channels,
            "band_statistics": {b: list(stats[b]) for b in used},
            "normalisation": formula,
            "units": "S2: reflectance x 10000 (DN); S1: backscatter in dB",
            "chip": self.cfg.chip,
            "ground_sample_distance_m": 10,
        }
        return spec

    @property
    def bands(self) -> tuple[str, ...]:
        """The bands of a temporal view (S2 or S1, by ``modality``)."""
        return self.s1_bands if self.mode == "temporal" and self.cfg.modality == "s1" else self.s2_bands

    # ---- reading -----------------------------------------------------------------------------------------------
    def read(self, stage: str | None) -> None:
        cfg = self.cfg
        stats = self.fit("stats", lambda: load_stats(cfg.stats, self.s2_bands + self.s1_bands, cfg.s2_level))
        self.fit("normalize", lambda: cfg.normalize)
        acqs = [a for a in find_acquisitions(self.data) if self._wanted(a)]
        groups = group_locations(acqs)
        self.scenes = [scene for group in groups if (scene := self._scene(group, stats)) is not None]
        if not self.scenes and stage == "predict":
            # nothing pairs (S2-only chips for a CROMA run, single-date chips for SSL4EO): embed one view alone
            self.single_view = self._single_view()
            if self.single_view is not None:
                self.scenes = [scene for group in groups if (scene := self._scene(group, stats)) is not None]
        if not self.scenes:
            need = "an S1 (VV, VH) and an S2 acquisition of one location" if self.mode == "s1s2" else "S2 chips"
            hint = (" (to embed S2 or S1 chips alone, train with embed_modality: optical or radar)"
                    if self.mode == "s1s2" and stage == "predict" else "")  # fmt: skip
            raise DataError(
                f"{self.data}: no usable location; the plugin needs {need} with bands {list(self.bands)}{hint}"
            )
        self._index()

    def _single_view(self) -> str | None:
        if self.mode == "temporal":
            return "view1"
        modality = getattr(self.cfg, "embed_modality", "joint")
        return modality if modality in ("optical", "radar") else None

    def _wanted(self, acq: Acquisition) -> bool:
        if acq.sensor == "s1":
            return self.mode == "s1s2" or self.cfg.modality == "s1"
        if self.mode == "temporal" and self.cfg.modality == "s1":
            return False
        if acq.level and acq.level != self.cfg.s2_level and len(acq.band_index) == 0:
            return False  # another product of the same scene (SSL4EO ships L1C and L2A side by side)
        if acq.band_index and len(acq.bands) != len(self.s2_bands) and not set(self.s2_bands) <= set(acq.bands):
            raise DataError(
                f"{acq.name} has {len(acq.bands)} bands {list(acq.bands)}; the config expects {len(self.s2_bands)} "
                f"({', '.join(self.s2_bands)}). Set s2_level (L1C: 13 bands, L2A: 12) or s2_bands to match"
            )
        extra = tuple(b for b in acq.bands if b not in self.s2_bands) if acq.band_index else ()
        if extra and extra not in self._noted:  # a band superset: read by name, said once per kind of file
            self._noted.add(extra)
            log.warning("%s holds %d bands: using %d by name, leaving out %s (and so for files like it)",
                        acq.name, len(acq.bands), len(self.s2_bands), ", ".join(extra))  # fmt: skip
        return True

    def _read(self, acq: Acquisition, stats: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        bands = self.s1_bands if acq.sensor == "s1" else self.s2_bands
        image, valid = read_bands(acq, bands)
        if acq.sensor == "s1" and valid.any() and np.nanmax(image[:, valid]) > 60:
            raise DataError(
                f"{acq.name}: S1 values up to {np.nanmax(image[:, valid]):.0f} look linear, not dB; convert with "
                "10 * log10(x) (CROMA and SSL4EO-S12 take backscatter in dB)"
            )
        if not valid.any():
            raise DataError(f"{acq.name}: every pixel is nodata or cloud; remove the acquisition from the data folder")
        return normalise(image, bands, stats, self.fitted["normalize"]), valid

    def _scene(self, group: list[Acquisition], stats: dict[str, Any]) -> Scene | None:
        group = sorted(group, key=lambda a: (a.sensor, a.date, a.name))
        if self.mode == "s1s2":
            s1 = [a for a in group if a.sensor == "s1"]
            s2 = [a for a in group if a.sensor == "s2"]
            chosen = s1 + s2
            if self.single_view is not None:
                chosen = s2 if self.single_view == "optical" else s1
            elif not s1 or not s2:
                return None
            if not chosen:
                return None
        else:
            chosen = group
            if len(chosen) < 2 and self.cfg.single_date == "skip" and self.single_view is None:
                return None
        read = [self._read(a, stats) for a in chosen]
        shapes = {a.shape for a in chosen}
        if len(shapes) > 1:
            listing = ", ".join(f"{a.name} {a.shape[0]}x{a.shape[1]}" for a in chosen)
            raise DataError(
                f"acquisitions of one location have different 10 m grids ({listing}); co-register them first "
                "(e.g. gdalwarp -tr 10 10 -te <bounds of the S2 tile>)"
            )
        valid = np.logical_and.reduce([v for _, v in read])
        labels = {a.label for a in chosen if a.label} | {a.labels[0] for a in chosen if len(a.labels) == 1}
        return Scene(
            name=chosen[0].name,
            views=[img for img, _ in read],
            kinds=[a.sensor for a in chosen],
            dates=[a.date for a in chosen],
            valid=valid,
            label=sorted(labels)[0] if len(labels) == 1 else None,
        )

    # ---- chips -------------------------------------------------------------------------------------------------
    def _quadrant(self, scene: Scene) -> tuple[int, int, int, int] | None:
        k = self.cfg.holdout_quadrant
        if k < 0:
            return None
        h, w = scene.valid.shape
        top, left = (k // 2) * (h // 2), (k % 2) * (w // 2)
        return top, left, (h // 2 if k // 2 == 0 else h - h // 2), (w // 2 if k % 2 == 0 else w - w // 2)

    def _usable(self, scene: Scene, y: int, x: int, size: int) -> bool:
        window = scene.valid[y : y + size, x : x + size]
        return 1.0 - window.mean() <= self.cfg.max_invalid

    def _index(self) -> None:
        chip, stride = self.cfg.chip, self.cfg.stride
        train, test = [], []
        for s, scene in enumerate(self.scenes):
            h, w = scene.valid.shape
            quad = self._quadrant(scene)
            for y in window_starts(h, chip, stride):
                for x in window_starts(w, chip, stride):
                    if quad is not None:
                        qt, ql, qh, qw = quad
                        if y < qt + qh and y + chip > qt and x < ql + qw and x + chip > ql:
                            continue
                    if self._usable(scene, y, x, chip):
                        train.append((s, y, x, 0))
            if quad is not None and self._evaluable(scene):
                qt, ql, qh, qw = quad
                for y in window_starts(qh, chip, chip):
                    for x in window_starts(qw, chip, chip):
                        if self._usable(scene, qt + y, ql + x, chip):
                            test.append((s, qt + y, ql + x, 2))
        if not train:
            raise DataError(
                f"{self.data}: no {chip}x{chip} training chip with at most {self.cfg.max_invalid:.0%} nodata/cloud; "
                "lower chip or raise max_invalid"
            )
        self.train_items = np.array(train, dtype=np.int64)
        self.test_items = np.array(test, dtype=np.int64).reshape(-1, 4)
        if self.cfg.holdout_quadrant < 0:  # no hold-out: every scene is tiled for embedding, without overlap
            grid = [
                (s, y, x, -1)
                for s, scene in enumerate(self.scenes)
                for y in window_starts(scene.valid.shape[0], chip, chip)
                for x in window_starts(scene.valid.shape[1], chip, chip)
                if self._usable(scene, y, x, chip)
            ]
            self.test_items = np.array(grid, dtype=np.int64).reshape(-1, 4)
        log.info(
            "%d locations, %d training chips, %d evaluation chips", len(self.scenes), len(train), len(self.test_items)
        )

    def _evaluable(self, scene: Scene) -> bool:
        return self.mode == "s1s2" or len(scene.views) >= 2

    def eval_pair(self, scene: Scene) -> tuple[int, int]:
        """The views compared at evaluation: (S1, closest-date S2) or the first two dates (one date: itself)."""
        if self.mode == "temporal":
            return (0, 1) if len(scene.views) > 1 else (0, 0)
        s1 = [i for i, k in enumerate(scene.kinds) if k == "s1"]
        s2 = [i for i, k in enumerate(scene.kinds) if k == "s2"]
        gaps = [(_days(scene.dates[a], scene.dates[b]), a, b) for a in s1 for b in s2]
        _, a, b = min(gaps)
        return a, b

    def sample(self, item: np.ndarray, train: bool, index: int) -> dict[str, Any]:
        """One chip's views (random view pair when training, the evaluation pair otherwise)."""
        s, y, x, split = (int(v) for v in item)
        scene = self.scenes[s]
        chip = self.cfg.chip
        if train:
            if self.mode == "s1s2":
                s1 = [i for i, k in enumerate(scene.kinds) if k == "s1"]
                s2 = [i for i, k in enumerate(scene.kinds) if k == "s2"]
                a = s1[int(torch.randint(len(s1), ()))]
                b = s2[int(torch.randint(len(s2), ()))]
            elif len(scene.views) >= 2:
                a, b = torch.randperm(len(scene.views))[:2].tolist()
            else:
                a = b = 0
        elif self.single_view is not None:  # embedding one view alone (see read)
            view = torch.from_numpy(scene.views[0][:, y : y + chip, x : x + chip].copy())
            return {self.single_view: view, "id": index, "split": split, "location": s}
        else:
            a, b = self.eval_pair(scene)
        first = torch.from_numpy(scene.views[a][:, y : y + chip, x : x + chip].copy())
        second = torch.from_numpy(scene.views[b][:, y : y + chip, x : x + chip].copy())
        keys = ("radar", "optical") if self.mode == "s1s2" else ("view1", "view2")
        return {keys[0]: first, keys[1]: second, "id": index, "split": split, "location": s}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return {
            k: torch.stack([it[k] for it in items])
            if torch.is_tensor(items[0][k])
            else torch.tensor([it[k] for it in items])
            for k in items[0]
        }

    def train_dataloader(self) -> DataLoader:
        return train_loader(
            _Chips(self, self.train_items, train=True),
            batch_size=self.cfg.batch_size,
            collate_fn=self.collate,
            num_workers=self.cfg.num_workers,
            drop_last="auto",
        )

    def predict_dataloader(self) -> DataLoader:
        return eval_loader(
            _Chips(self, self.test_items, train=False), batch_size=self.cfg.batch_size, collate_fn=self.collate
        )


def _days(a: str, b: str) -> int:
    import datetime as dt

    if not a or not b:
        return 0
    parse = lambda d: dt.date(int(d[:4]), int(d[4:6]), int(d[6:]))  # noqa: E731
    return abs((parse(a) - parse(b)).days)
