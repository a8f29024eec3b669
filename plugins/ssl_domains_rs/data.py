"""The data module CROMA and SSL4EO share: locations, pairing, tiling into chips, spatial hold-out, normalisation.

- **Locations.** Acquisitions whose lon/lat footprints overlap (IoU >= 0.5) show one location.
- **Views.** ``mode="s1s2"`` (CROMA) pairs every S1 acquisition of a location with every S2 acquisition of it;
  evaluation uses the pair closest in date. ``mode="temporal"`` (SSL4EO) draws two different dates of one
  location (SSL4EO-S12's seasonal positives); a location seen once gives two crops of that date
  (``single_date: augment``) or is left out (``skip``).
- **Chips.** Windows of ``chip`` pixels with stride ``train_stride`` tile every scene (Major-TOM's 1068² cells
  included). A window is dropped when more than ``max_invalid`` of its pixels are nodata or cloud (in any view).
- **Memory.** Pixels are never held: the index (acquisitions' paths, shapes and dates, and each chip's offsets)
  is built once by reading every location once, one at a time, and is cached on disk
  (:func:`ssl_domains.indexcache.cached_index`, keyed by the files, their sizes and mtimes, and the settings
  below); each chip is then read alone in the loader's workers: from the decoded-pixel cache the scan writes
  beside the index (``cache: auto|disk``, :mod:`.pixelcache`), or from its GeoTIFFs (``rasterio.windows``,
  ``cache: none``). Memory stays flat in the corpus size, and a second run on the same files skips the scan.
  The index keeps its locations as pickles in two arrays (:class:`ssl_domains.data.PackedList`), not as Python
  objects, which a forked loader worker would copy as it touches them; the scan packs the acquisitions and
  locations as it finds them, so the corpus is never held as objects either.
- **Spatial hold-out.** ``holdout_quadrant`` k in 0..3 removes quadrant k (0 top-left, 1 top-right, 2
  bottom-left, 3 bottom-right) of *every* location from training; no training window touches it. The
  evaluation chips tile that quadrant without overlap (split 2). The rest of each scene is split 0.
- **Normalisation.** Fixed per-band statistics, never batch statistics: the published SSL4EO-S12 statistics by
  default, or a JSON from ``ssl-domains run croma stats``. ``clip2sigma`` maps [mean - 2 std, mean + 2 std] to
  [0, 1] and clips (SSL4EO-S12's ``normalize`` and CROMA's README); ``zscore`` standardises; ``quantize: uint8``
  keeps clip2sigma's values as SSL4EO-S12's uint8 LMDB does (:mod:`.normalisation`). The statistics are saved
  with the run and reused by ``embed``.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ssl_domains import DataError
from ssl_domains.arrayfile import ArrayFile, ArrayFileWriter
from ssl_domains.data import PackedList, batch_tensors, eval_loader, train_loader
from ssl_domains.datamodule import FittedDataModule
from ssl_domains.indexcache import cached_folder, cached_index

from . import pixelcache
from .bands import S1_GRD, bands_for
from .formats import Acquisition, chip_footprints, iter_acquisitions, read_bands
from .locations import ChipIndex, Scene, group_locations, window_starts
from .normalisation import dequantise, load_stats, normalise, normalise_batch, quantise
from .plugin import RSDataConfig

# a cached view's dtype -> its batch tensor's: uint16 DN travel as int16 bits (pinned memory and the CUDA copy
# take every dtype but uint16 fully), uint8 (quantize) as is
_BATCH_DTYPE = {"uint16": torch.int16, "uint8": torch.uint8, "float32": torch.float32}
INDEX_VERSION = 4  # bump when what the index holds changes: older cached indexes are then rebuilt

log = logging.getLogger(__name__)


class _Chips(Dataset):
    def __init__(self, module: RSDataModule, items: np.ndarray, train: bool) -> None:
        self.module, self.items, self.train = module, items, train

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.module.sample(self.items[i], self.train, i)

    def __getitems__(self, indices: list[int]) -> dict[str, Any] | list[dict[str, Any]]:
        """A training batch read from the pixel cache straight into its tensors (:meth:`RSDataModule.read_batch`);
        otherwise the batch's items."""
        if self.train and self.module.pixels is not None:
            return self.module.read_batch(self.items[indices], indices)
        return [self[i] for i in indices]


class RSDataModule(FittedDataModule[RSDataConfig]):
    """Sentinel-1/2 chips for CROMA (``mode="s1s2"``) or SSL4EO (``mode="temporal"``); batches are dicts.

    Batches: ``radar`` ``[B, 2, h, w]`` and ``optical`` ``[B, 12, h, w]`` (s1s2), or ``view1``/``view2`` (temporal),
    with ``id``, ``split`` and ``location``. Training draws a random view pair per chip; prediction gives every
    evaluation chip's evaluation pair (closest dates for s1s2, the first two dates for temporal).
    """

    def __init__(self, path: Path, cfg: RSDataConfig, mode: str) -> None:
        super().__init__(path, cfg)
        self.mode = mode
        self.s2_bands = tuple(cfg.s2_bands) if cfg.s2_bands else bands_for(cfg.s2_level)
        self.s1_bands = S1_GRD
        self.scenes: PackedList[Scene] = PackedList()
        # None, or the one view every item holds when data that cannot be paired is read for embedding only:
        # "optical"/"radar" (CROMA, by embed_modality) or "view1" (SSL4EO, single-date chips)
        self.single_view: str | None = None
        self._noted: dict[tuple[str, ...], str] = {}
        self._said: set[str] = set()
        self.pixels: ArrayFile | None = None  # the decoded-pixel cache, when read() found or wrote one

    def input_spec(self) -> dict[str, Any]:
        """Bands in the order the channels hold them, their statistics and the normalisation (:func:`normalise`)."""
        stats = self.fitted["stats"]
        method = self.fitted["normalize"]
        formula = "(x - mean) / std" if method == "zscore" else "clip((x - (mean - 2 std)) / (4 std), 0, 1)"
        if self.cfg.quantize == "uint8":  # SSL4EO-S12's LMDB: normalize's uint8, then ToTensor's / 255
            formula = "floor(clip((x - (mean - 2 std)) / (4 std) * 255, 0, 255)) / 255"
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
    def index_key(self, single_view: str | None) -> dict[str, Any]:
        """Everything besides the files that the chip index depends on (the key of its on-disk cache)."""
        cfg = self.cfg
        return {
            "index": "ssl_domains_rs", "version": INDEX_VERSION, "mode": self.mode, "single_view": single_view,
            "s2_level": cfg.s2_level, "s2_bands": list(self.s2_bands), "modality": getattr(cfg, "modality", None),
            "single_date": getattr(cfg, "single_date", None), "chip": cfg.chip, "stride": cfg.stride,
            "max_invalid": cfg.max_invalid, "holdout_quadrant": cfg.holdout_quadrant,
        }  # fmt: skip

    def read(self, stage: str | None) -> None:
        cfg = self.cfg
        self.fit("stats", lambda: load_stats(cfg.stats, self.s2_bands + self.s1_bands, cfg.s2_level))
        self.fit("normalize", lambda: cfg.normalize)
        index = self._cached_index(None)
        if not index.scenes and stage == "predict":
            # nothing pairs (S2-only chips for a CROMA run, single-date chips for SSL4EO): embed one view alone
            self.single_view = self._single_view()
            if self.single_view is not None:
                index = self._cached_index(self.single_view)
        if not index.scenes:
            need = "an S1 (VV, VH) and an S2 acquisition of one location" if self.mode == "s1s2" else "S2 chips"
            hint = (" (to embed S2 or S1 chips alone, train with embed_modality: optical or radar)"
                    if self.mode == "s1s2" and stage == "predict" else "")  # fmt: skip
            raise DataError(
                f"{self.data}: no usable location; the plugin needs {need} with bands {list(self.bands)}{hint}"
            )
        if not len(index.train_items):
            raise DataError(
                f"{self.data}: no {cfg.chip}x{cfg.chip} training chip with at most {cfg.max_invalid:.0%} nodata/cloud; "
                "lower chip or raise max_invalid"
            )
        self.scenes, self.train_items, self.test_items = index.scenes, index.train_items, index.test_items
        log.info(
            "%d locations, %d training chips, %d evaluation chips",
            len(self.scenes), len(self.train_items), len(self.test_items),
        )  # fmt: skip

    def _cached_index(self, single_view: str | None) -> ChipIndex:
        key = self.index_key(single_view)
        if self.cfg.cache == "none" or not self.cfg.index_cache:
            self.pixels = None
            build = lambda: self._build_index(single_view)  # noqa: E731
            index = cached_index(self.data, key, build, enabled=self.cfg.index_cache)
        else:  # the index and the decoded pixels, written in one scan into one cache folder

            def write(folder: Path) -> None:
                index = self._build_index(single_view, folder / pixelcache.PIXELS)
                (folder / pixelcache.INDEX).write_bytes(pickle.dumps(index, protocol=pickle.HIGHEST_PROTOCOL))

            def load(folder: Path) -> tuple[ChipIndex, ArrayFile | None]:
                index = pickle.loads((folder / pixelcache.INDEX).read_bytes())
                if not index.pixels and pixelcache.decide(self.cfg.cache, self._pixel_bytes(index.scenes))[0]:
                    raise LookupError("the pixels were left out for want of space, and there is room now")
                return index, ArrayFile(folder / pixelcache.PIXELS) if index.pixels else None

            index, self.pixels = cached_folder(self.data, {**key, "pixels": True, **self._pixel_form()}, write, load)
        for note in index.notes:
            if note not in self._said:
                self._said.add(note)
                log.warning("%s", note)
        return index

    def _build_index(self, single_view: str | None, pixels: Path | None = None) -> ChipIndex:
        """Find the acquisitions, group them into locations and tile them; pixels are read once per location, to
        find the chips without nodata or cloud, and dropped before the next location (after being appended to
        the pixel cache at ``pixels``, when ``cache`` chooses it)."""
        self._noted.clear()
        # packed as they come: the corpus's acquisitions and scenes are never Python objects all at once
        acqs = PackedList(a for a in iter_acquisitions(self.data) if self._wanted(a))
        bounds = np.fromiter((v for a in acqs for v in a.bounds), np.float64, 4 * len(acqs)).reshape(-1, 4)
        found = (self._scene([acqs[int(j)] for j in g], single_view) for g in group_locations(bounds))
        unscanned = PackedList(s for s in found if s is not None)
        del acqs
        write, note = False, None
        if pixels is not None:
            write, note = pixelcache.decide(self.cfg.cache, self._pixel_bytes(unscanned))
        train: list[np.ndarray] = []
        test: list[np.ndarray] = []
        as_items = lambda rows: np.array(rows, dtype=np.int64).reshape(-1, 4)  # noqa: E731

        def scan(writer: ArrayFileWriter | None) -> Iterator[Scene]:
            for s, scene in enumerate(unscanned):
                valid = self._valid(scene, writer)  # fills scene.stored
                train.append(as_items(self._train_windows(s, scene, valid)))
                test.append(as_items(self._test_windows(s, scene, valid)))
                yield scene

        # the writer flushes and syncs only when the scan succeeds: a scan's error is not masked by a full disk's
        with ArrayFileWriter(pixels) if write else contextlib.nullcontext() as writer:
            scenes = PackedList(scan(writer))
        notes = [*self._noted.values(), *([note] if note else [])]
        joined = lambda parts: np.concatenate(parts) if parts else as_items([])  # noqa: E731
        return ChipIndex(scenes, joined(train), joined(test), notes, pixels=writer is not None)

    def _pixel_form(self) -> dict[str, Any]:
        """What the cached pixels depend on besides the index: quantised pixels, on the statistics they used."""
        if self.cfg.quantize == "none":
            return {}
        stats = self.fitted["stats"]
        return {"quantize": self.cfg.quantize, "stats": {b: list(stats[b]) for b in self.s2_bands + self.s1_bands}}

    def _pixel_bytes(self, scenes: Sequence[Scene]) -> int:
        bands = {"s1": len(self.s1_bands), "s2": len(self.s2_bands)}
        return pixelcache.pixel_bytes(scenes, bands, quantised=self.cfg.quantize == "uint8")

    def _sensor_bands(self, sensor: str) -> tuple[str, ...]:
        return self.s1_bands if sensor == "s1" else self.s2_bands

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
            self._noted[extra] = (f"{acq.name} holds {len(acq.bands)} bands: using {len(self.s2_bands)} by name, "
                                  f"leaving out {', '.join(extra)} (and so for files like it)")  # fmt: skip
        return True

    def _valid(self, scene: Scene, writer: ArrayFileWriter | None = None) -> np.ndarray:
        """``[H, W]``: valid in every view. Reads each view whole, once, checks its values, and appends it to the
        pixel cache's ``writer``, if any."""
        valid = np.ones(scene.shape, dtype=bool)
        scene.stored = []
        for acq in scene.views:
            image, ok = read_bands(acq, self._sensor_bands(acq.sensor))
            if writer is not None:
                stored = (quantise(image, self._sensor_bands(acq.sensor), self.fitted["stats"], acq.sensor)
                          if self.cfg.quantize == "uint8" else pixelcache.stored_form(image, acq.sensor))  # fmt: skip
                scene.stored.append(writer.append(stored))
            if acq.sensor == "s1" and ok.any() and np.nanmax(image[:, ok]) > 60:
                raise DataError(
                    f"{acq.name}: S1 values up to {np.nanmax(image[:, ok]):.0f} look linear, not dB; convert with "
                    "10 * log10(x) (CROMA and SSL4EO-S12 take backscatter in dB)"
                )
            if not ok.any():
                raise DataError(
                    f"{acq.name}: every pixel is nodata or cloud; remove the acquisition from the data folder"
                )
            valid &= ok
        return valid

    def _scene(self, group: list[Acquisition], single_view: str | None) -> Scene | None:
        group = sorted(group, key=lambda a: (a.sensor, a.date, a.name))
        if self.mode == "s1s2":
            s1 = [a for a in group if a.sensor == "s1"]
            s2 = [a for a in group if a.sensor == "s2"]
            chosen = s1 + s2
            if single_view is not None:
                chosen = s2 if single_view == "optical" else s1
            elif not s1 or not s2:
                return None
            if not chosen:
                return None
        else:
            chosen = group
            if len(chosen) < 2 and self.cfg.single_date == "skip" and single_view is None:
                return None
        shapes = {a.shape for a in chosen}
        if len(shapes) > 1:
            listing = ", ".join(f"{a.name} {a.shape[0]}x{a.shape[1]}" for a in chosen)
            raise DataError(
                f"acquisitions of one location have different 10 m grids ({listing}); co-register them first "
                "(e.g. gdalwarp -tr 10 10 -te <bounds of the S2 tile>)"
            )
        labels = {a.label for a in chosen if a.label} | {a.labels[0] for a in chosen if len(a.labels) == 1}
        return Scene(
            views=chosen,
            shape=chosen[0].shape,
            label=sorted(labels)[0] if len(labels) == 1 else None,
        )

    # ---- chips -------------------------------------------------------------------------------------------------
    def _quadrant(self, scene: Scene) -> tuple[int, int, int, int] | None:
        k = self.cfg.holdout_quadrant
        if k < 0:
            return None
        h, w = scene.shape
        top, left = (k // 2) * (h // 2), (k % 2) * (w // 2)
        return top, left, (h // 2 if k // 2 == 0 else h - h // 2), (w // 2 if k % 2 == 0 else w - w // 2)

    def _usable(self, valid: np.ndarray, y: int, x: int, size: int) -> bool:
        window = valid[y : y + size, x : x + size]
        return 1.0 - window.mean() <= self.cfg.max_invalid

    def _train_windows(self, s: int, scene: Scene, valid: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Training chips (split 0): every ``stride`` window clear of the held-out quadrant."""
        chip, quad = self.cfg.chip, self._quadrant(scene)
        rows = []
        for y in window_starts(scene.shape[0], chip, self.cfg.stride):
            for x in window_starts(scene.shape[1], chip, self.cfg.stride):
                if quad is not None:
                    qt, ql, qh, qw = quad
                    if y < qt + qh and y + chip > qt and x < ql + qw and x + chip > ql:
                        continue
                if self._usable(valid, y, x, chip):
                    rows.append((s, int(y), int(x), 0))
        return rows

    def _test_windows(self, s: int, scene: Scene, valid: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Evaluation chips: the held-out quadrant tiled without overlap (split 2), or with no hold-out the
        whole scene tiled without overlap for embedding (split -1)."""
        chip, quad = self.cfg.chip, self._quadrant(scene)
        if quad is None:
            top, left, height, width, split = 0, 0, scene.shape[0], scene.shape[1], -1
        elif self._evaluable(scene):
            (top, left, height, width), split = quad, 2
        else:
            return []
        return [
            (s, top + int(y), left + int(x), split)
            for y in window_starts(height, chip, chip)
            for x in window_starts(width, chip, chip)
            if self._usable(valid, top + y, left + x, chip)
        ]

    def _evaluable(self, scene: Scene) -> bool:
        return self.mode == "s1s2" or len(scene.kinds) >= 2

    def eval_pair(self, scene: Scene) -> tuple[int, int]:
        """The views compared at evaluation: (S1, closest-date S2) or the first two dates (one date: itself)."""
        if self.mode == "temporal":
            return (0, 1) if len(scene.kinds) > 1 else (0, 0)
        s1 = [i for i, k in enumerate(scene.kinds) if k == "s1"]
        s2 = [i for i, k in enumerate(scene.kinds) if k == "s2"]
        gaps = [(_days(scene.dates[a], scene.dates[b]), a, b) for a in s1 for b in s2]
        _, a, b = min(gaps)
        return a, b

    def raw_chip(self, scene: Scene, view: int, y: int, x: int) -> np.ndarray:
        """View ``view`` of ``scene`` at ``(y, x)``, ``[C, chip, chip]`` before normalisation: from the pixel cache
        (uint16 S2 DN, float32 S1 dB) or read alone from its files (float32); uint8 with ``quantize: uint8``."""
        size = self.cfg.chip
        if self.pixels is not None:  # the view as read_bands returned it whole, nodata 0: the same pixels
            return self.pixels.read_window(scene.stored[view], y, x, size, size)
        bands = self._sensor_bands(scene.kinds[view])
        image = read_bands(scene.views[view], bands, window=(y, x, size))[0]  # nodata is 0, as when the index was built
        if self.cfg.quantize == "uint8":
            return quantise(image, bands, self.fitted["stats"], scene.kinds[view])
        return image

    def chip(self, scene: Scene, view: int, y: int, x: int) -> torch.Tensor:
        """:meth:`raw_chip`, normalised (float32)."""
        raw = self.raw_chip(scene, view, y, x)
        if raw.dtype == np.uint8:  # quantize: uint8
            return torch.from_numpy(dequantise(raw))
        bands = self._sensor_bands(scene.kinds[view])
        image = raw.astype(np.float32, copy=False)
        return torch.from_numpy(normalise(image, bands, self.fitted["stats"], self.fitted["normalize"]))

    def view_bands(self, key: str) -> tuple[str, ...]:
        """The bands of a batch's view ``key`` (radar, optical, view1, view2)."""
        return {"radar": self.s1_bands, "optical": self.s2_bands}.get(key, self.bands)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches carry their views raw (``raw_<view>``: uint16 DN as int16, float32, or uint8) and are
        normalised here, on the training device (:func:`normalise_batch`): in a loader worker, normalising and
        stacking float32 chips cost 55 % of a cached chip's time. Other batches pass through."""
        if not isinstance(batch, dict) or not any(k.startswith("raw_") for k in batch):
            return batch
        out = {k: v for k, v in batch.items() if not k.startswith("raw_")}
        for key in (k for k in batch if k.startswith("raw_")):
            view = key[len("raw_") :]
            out[view] = normalise_batch(
                batch[key], self.view_bands(view), self.fitted["stats"], self.fitted["normalize"]
            )
        return out

    def sample(self, item: np.ndarray, train: bool, index: int) -> dict[str, Any]:
        """One chip's views (random view pair when training, the evaluation pair otherwise)."""
        s, y, x, split = (int(v) for v in item)
        scene = self.scenes[s]
        if train:
            a, b = self._train_pair(scene)
        elif self.single_view is not None:  # embedding one view alone (see read)
            return {self.single_view: self.chip(scene, 0, y, x), "id": index, "split": split, "location": s}
        else:
            a, b = self.eval_pair(scene)
        keys = self._view_keys()
        if train:  # normalised on the device (on_after_batch_transfer)
            first = self.raw_chip(scene, a, y, x)
            second = first.copy() if b == a else self.raw_chip(scene, b, y, x)
            return {f"raw_{keys[0]}": first, f"raw_{keys[1]}": second, "id": index, "split": split, "location": s}
        first = self.chip(scene, a, y, x)
        second = first.clone() if b == a else self.chip(scene, b, y, x)
        return {keys[0]: first, keys[1]: second, "id": index, "split": split, "location": s}

    def _view_keys(self) -> tuple[str, str]:
        return ("radar", "optical") if self.mode == "s1s2" else ("view1", "view2")

    def _train_pair(self, scene: Scene) -> tuple[int, int]:
        """The views of one training chip: a random (S1, S2) pair, or two different dates (one date: itself)."""
        if self.mode == "s1s2":
            s1 = [i for i, k in enumerate(scene.kinds) if k == "s1"]
            s2 = [i for i, k in enumerate(scene.kinds) if k == "s2"]
            return s1[int(torch.randint(len(s1), ()))], s2[int(torch.randint(len(s2), ()))]
        if len(scene.kinds) >= 2:
            a, b = torch.randperm(len(scene.kinds))[:2].tolist()
            return a, b
        return 0, 0

    def read_batch(self, items: np.ndarray, ids: list[int]) -> dict[str, torch.Tensor]:
        """The training batch of ``items`` read from the pixel cache into its tensors in place (in a loader worker,
        one shared-memory segment from :func:`ssl_domains.data.batch_tensors`): what :meth:`collate` makes of
        :meth:`sample`'s items, from the same random draws, without an array per chip or a copy to hand the batch
        on. Stacking the chips and the copy into shared memory took 60 % of a worker's time for SSL4EO's two
        13-band views."""
        assert self.pixels is not None
        scenes = [self.scenes[int(s)] for s in items[:, 0]]
        pairs = [self._train_pair(scene) for scene in scenes]
        size, n, keys = self.cfg.chip, len(items), self._view_keys()
        refs = [[scene.stored[pair[k]] for scene, pair in zip(scenes, pairs, strict=True)] for k in range(2)]
        # one stored dtype a view: its batch dtype (S2 DN as int16 bits, as collate does); mixed, float32, as when
        # some S2 files hold values that are not whole numbers (kept as float32) beside uint16 DN
        kinds = [{ref.dtype for ref in view} for view in refs]
        dtypes = [_BATCH_DTYPE[next(iter(k))] if len(k) == 1 else torch.float32 for k in kinds]
        fields = {f"raw_{key}": ((n, view[0].shape[0], size, size), dtype)
                  for key, view, dtype in zip(keys, refs, dtypes, strict=True)}  # fmt: skip
        out = batch_tensors({**fields, "id": ((n,), torch.int64), "split": ((n,), torch.int64),
                             "location": ((n,), torch.int64)})  # fmt: skip
        for view in refs:  # every window announced first: a cold cache's reads go to the disk together
            for ref, row in zip(view, items, strict=True):
                self.pixels.will_need_window(ref, int(row[1]), size)
        for key, view, dtype in zip(keys, refs, dtypes, strict=True):
            target = out[f"raw_{key}"].numpy()
            target = target.view(np.uint16) if dtype == torch.int16 else target
            for i, (ref, row) in enumerate(zip(view, items, strict=True)):
                self.pixels.read_window(ref, int(row[1]), int(row[2]), size, size, out=target[i])
        out["id"].copy_(torch.as_tensor(ids, dtype=torch.int64))
        out["split"].copy_(torch.from_numpy(items[:, 3]))  # items: int64 rows (scene, y, x, split)
        out["location"].copy_(torch.from_numpy(items[:, 0]))
        return out

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Stacks the views; raw views (NumPy) stay in their dtype, uint16 as int16 bits, float32 if mixed."""
        out: dict[str, torch.Tensor] = {}
        for k in items[0]:
            values = [it[k] for it in items]
            if isinstance(values[0], np.ndarray):
                if len({v.dtype for v in values}) > 1:
                    values = [v.astype(np.float32) for v in values]
                stacked = np.stack(values)
                out[k] = torch.from_numpy(stacked.view(np.int16) if stacked.dtype == np.uint16 else stacked)
            elif torch.is_tensor(values[0]):
                out[k] = torch.stack(values)
            else:
                out[k] = torch.tensor(values)
        return out

    def provenance(self, ids: np.ndarray) -> dict[str, Any]:
        """Each embedded chip's location (its first view's file or folder), pixel offset, and footprint: the
        grid's ``crs``, native ``bounds`` and a lon/lat ``geometry`` (GeoParquet)."""
        items = self.test_items[np.asarray(ids)]
        views = [self.scenes[s].views[0] for s in items[:, 0]]
        where = chip_footprints(views, items[:, 1], items[:, 2], self.cfg.chip)
        return {"location": [v.name for v in views], "row": items[:, 1], "col": items[:, 2], **where}

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
