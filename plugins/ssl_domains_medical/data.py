"""The data module Alice and contrastive3d share: MONAI transforms (:mod:`.transforms`) from files to cached,
normalised volumes, then random crops (contrastive3d) or crops at corresponding points of two volumes (Alice).

Deterministic part, cached once per volume (``CacheDataset``, or ``PersistentDataset`` on disk)::

    LoadImaged -> EnsureChannelFirstd -> (checks) -> Orientationd(RAS) -> Spacingd(spacing)
    -> ScaleIntensityRanged(CT window) | ScaleIntensityRangePercentilesd(MR) -> CropForegroundd
    -> SpatialPadd(roi)   (or, with pad: false, an error for a volume smaller than the ROI)

Random part, per training item:

- ``mode="views"`` (contrastive3d, the MONAI ViT recipe): a random ``roi`` crop (MONAI's ``RandSpatialCropd``
  with ``corruptions_on: loader``; with ``device``, corners drawn uniformly as it draws them), copied into two
  views, each ``OneOf[RandCoarseDropoutd in-painting | out-painting] -> RandCoarseShuffled``; the clean crop is
  the target.
  The recipe's hole sizes (in voxels of a 96^3 crop) are scaled by ``roi / 96``. With ``corruptions_on: device``
  (the default) the workers only crop, and the views are drawn for the whole batch on the training device after
  the transfer (:func:`.transforms.corrupt_batch`, MONAI's draws vectorised); ``loader`` runs MONAI's transforms
  in the workers.
- ``mode="pairs"`` (Alice): a random foreground point of volume A, its corresponding point in another volume B
  (:mod:`.correspondence`), and a ``roi`` crop centred on each, zero-padded at the edges (as ``SpatialCrop`` +
  ``BorderPad``); ``query_view``/``anchor_view``, the student's copies, are made after the transfer.
- ``intensity_aug``: each view (contrastive3d) or student copy (Alice) also gets a random bias field, gamma and
  noise (:func:`.transforms.jitter_batch`), batched on the training device once the batch is there
  (``on_after_batch_transfer``), not in the loader workers; the targets (clean crop, teacher input) do not.

Alice's batches, and contrastive3d's with the corruptions on the device, are built in place (``__getitems__`` into
:func:`ssl_domains.data.batch_tensors`, one shared-memory segment from a worker): each crop is one copy from the
memory-mapped volume into the batch (:func:`.transforms.crop_batch`, every crop's pages announced to the kernel
first), with no per-item tensors and no collate.

MONAI's random transforms draw from their own generator; each item reseeds it from torch's (seeded) generator, so
a run's crops follow ``trainer.seed`` like every other plugin's randomness.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from monai.data import CacheDataset, PersistentDataset
from monai.data import Dataset as MonaiDataset
from monai.data.utils import pickle_hashing
from torch.utils.data import DataLoader, Dataset

from ssl_domains import DataError
from ssl_domains.data import eval_loader, train_loader
from ssl_domains.datamodule import FittedDataModule
from ssl_domains.indexcache import cache_root, cached_arrays, cached_index
from ssl_domains.memory import fits_in_memory

from .correspondence import ForegroundPoints, Geometries, foreground_box
from .crops import CorrespondingViews, PairCrops, ViewCrops, Volumes, flatten_collate
from .formats import VolumeRecord, find_volumes, preprocessed_bytes
from .plugin import MedicalConfig
from .transforms import corrupt_batch, jitter_batch, preprocessing

log = logging.getLogger(__name__)
FOREGROUND_POINTS = 20000  # foreground voxels kept per volume to draw Alice's query points from
INDEX_VERSION = 2  # bump when what the cached foreground index or the preprocessed cache holds changes
# the settings a preprocessed volume depends on
PREPROCESSING = ("intensity", "ct_window", "mr_percentiles", "orientation", "spacing", "foreground_threshold",
                 "foreground_margin", "roi", "pad", "volume_dtype")  # fmt: skip


def _stamped_hash(item: dict[str, str]) -> bytes:
    """PersistentDataset's key of an item: its files with their sizes and mtimes, so that a file replaced at the
    same path is preprocessed again rather than read stale from the cache."""
    stamps = {k: (v, os.stat(v).st_size, os.stat(v).st_mtime_ns) for k, v in sorted(item.items())}
    return pickle_hashing(stamps)


class _MappedPersistentDataset(PersistentDataset):
    """``PersistentDataset`` whose cached volumes come back memory-mapped (``torch.load(mmap=True)``): a ``roi``
    crop then reads its own pages, not the whole preprocessed volume (25-60 MB for a CT at 1.5 mm), so a loader
    item costs about the same whatever the scan's size. Misses and unreadable files take MONAI's own path."""

    def _cachecheck(self, item_transformed: dict[str, Any]) -> Any:
        name = self.hash_func(item_transformed).decode("utf-8") + self.transform_hash  # MONAI's own naming
        hashfile = Path(self.cache_dir) / f"{name}.pt"
        if hashfile.is_file():
            try:
                return torch.load(hashfile, weights_only=self.weights_only, mmap=True)
            except Exception:  # a truncated or foreign file: MONAI's path warns, recomputes and rewrites it
                pass
        return super()._cachecheck(item_transformed)


class MedicalDataModule(FittedDataModule[MedicalConfig]):
    """Reads ``data`` (folder, glob, file or manifest; NIfTI or DICOM series) through MONAI and serves crops.

    ``predict_dataloader`` yields whole preprocessed volumes, one per batch (sizes differ); ``embed`` pools them
    with a sliding window.
    """

    def __init__(self, data: Path, cfg: MedicalConfig, mode: str) -> None:
        super().__init__(data, cfg)
        if mode not in ("views", "pairs", "corresponding_views"):
            raise ValueError(f"mode must be 'views', 'pairs' or 'corresponding_views', got {mode!r}")
        self.mode = mode
        self.records: list[VolumeRecord] = []
        self._volumes: Dataset | None = None
        self.cache = ""  # what read() chose: memory, disk or none

    # ---- setup ---------------------------------------------------------------------------------------------
    def read(self, stage: str | None) -> None:
        self.records = find_volumes(self.data)
        if self.mode != "views" and len(self.records) < 2:
            raise DataError(
                f"{self.data}: {'Alice' if self.mode == 'pairs' else 'contrastive3d with positives: corresponding'}"
                " pairs a point of one volume with the same anatomy in *another* volume, and "
                f"only {len(self.records)} volume was found; give at least 2 volumes of the same body region"
            )
        has_label = all(r.label is not None for r in self.records)
        keys = ("image", "label") if has_label else ("image",)
        items = [{k: str(getattr(r, k)) for k in keys} for r in self.records]
        transform = preprocessing(self.cfg, keys)
        try:
            self.cache = self._choose_cache()
            if self.cache == "memory":
                volumes: Dataset = CacheDataset(items, transform, cache_rate=1.0, progress=False)
            elif self.cache == "disk":
                volumes = _MappedPersistentDataset(
                    items, transform, cache_dir=self.cache_folder(), hash_func=_stamped_hash
                )
            else:
                volumes = MonaiDataset(items, transform)
            self._volumes = volumes
            self._describe()
            # nothing else is fitted on the training volumes (intensities are fixed windows or per-volume
            # percentiles); the run records which volumes it was trained on
            self.fit("files", lambda: [str(r.image) for r in self.records])
        except Exception as exc:
            self._volumes = None
            raise self._diagnose(items, transform, exc) from None

    def input_spec(self) -> dict[str, Any]:
        """The MONAI preprocessing (:func:`.transforms.preprocessing`) a volume goes through before the network."""
        cfg = self.cfg
        if cfg.intensity == "ct":
            intensity = f"CT: HU window {list(cfg.ct_window)} scaled to [0, 1], clipped (ScaleIntensityRanged)"
        else:
            intensity = f"MR: percentiles {list(cfg.mr_percentiles)} scaled to [0, 1], clipped (per volume)"
        return {
            "channels": 1,
            "orientation": cfg.orientation,
            "spacing_mm": list(cfg.spacing),
            "intensity": intensity,
            "foreground_crop": f"voxels above {cfg.foreground_threshold} after scaling, margin {cfg.foreground_margin}",
            "roi": [cfg.roi] * 3,
            "stored_as": f"{cfg.volume_dtype} (the network takes float32)",
            "embedding": "sliding window of roi-sized crops over the whole volume, pooled",
        }

    def provenance(self, ids: np.ndarray) -> dict[str, Any]:
        """Each embedded volume's file (a DICOM series: its folder)."""
        return {"path": [str(self.records[i].image) for i in ids]}

    def _diagnose(self, items: list[dict[str, str]], transform: mt.Compose, exc: Exception) -> Exception:
        """The first volume that fails on its own, as a DataError naming its file (MONAI wraps errors raised in
        worker threads as ``RuntimeError: applying transform ...``, which names no file)."""
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, DataError):
                return cause
            cause = cause.__cause__
        for item in items:
            try:
                transform(dict(item))
            except Exception as inner:
                error: BaseException | None = inner
                while error is not None and not isinstance(error, DataError):
                    error = error.__cause__
                if error is not None:
                    return error
                root = inner
                while root.__cause__ is not None:
                    root = root.__cause__  # type: ignore[assignment]
                files = item["image"] + (f" or its label map {item['label']}" if item.get("label") else "")
                return DataError(
                    f"{files}: cannot be read as a volume ({type(root).__name__}: {root}); check that the "
                    "file is a complete NIfTI file or DICOM series"
                )
        return exc

    # ---- caches --------------------------------------------------------------------------------------------
    def _files(self) -> list[Path]:
        return [p for r in self.records for p in (r.image, r.label) if p is not None]

    def _key(self, what: str) -> dict[str, Any]:
        settings = {name: getattr(self.cfg, name) for name in PREPROCESSING}
        return {"medical": what, "version": INDEX_VERSION, **json.loads(json.dumps(settings))}

    def preprocessed_size(self) -> int:
        """Bytes of all the preprocessed volumes, an upper bound from the headers (cached with the index)."""
        spacing = tuple(self.cfg.spacing)
        value = torch.finfo(getattr(torch, self.cfg.volume_dtype)).bits // 8
        size = lambda: sum(preprocessed_bytes(r, spacing, value) for r in self.records)  # noqa: E731
        return cached_index(self.data, self._key("size"), size, enabled=self.cfg.index_cache, files=self._files())

    def cache_folder(self) -> Path:
        """PersistentDataset's folder: ``cache_dir``, else one per preprocessing setup under
        ``$SSL_DOMAINS_CACHE/medical`` (kept across runs: the second run on a corpus preprocesses nothing)."""
        if self.cfg.cache_dir:
            return Path(self.cfg.cache_dir)
        import monai

        key = json.dumps({**self._key("volumes"), "monai": monai.__version__}, sort_keys=True)
        return cache_root() / "medical" / hashlib.sha256(key.encode()).hexdigest()[:16]

    def _choose_cache(self) -> str:
        """``cache: auto``: in memory when every preprocessed volume fits the memory budget, else on disk. A disk
        cache that the filesystem cannot hold is refused now, not hours into the first epoch."""
        choice = self.cfg.cache
        if choice == "auto":
            choice = "memory" if fits_in_memory(self.preprocessed_size(), f"{len(self.records)} volumes") else "disk"
        if choice == "disk":
            folder = self.cache_folder()
            folder.mkdir(parents=True, exist_ok=True)
            need, free = self.preprocessed_size(), shutil.disk_usage(folder).free
            if not any(folder.iterdir()) and need > free:
                raise DataError(
                    f"{folder}: the preprocessed volumes need up to {need / 1e9:.1f} GB and the disk has "
                    f"{free / 1e9:.1f} GB free; point cache_dir (--set PLUGIN.cache_dir=DIR) or $SSL_DOMAINS_CACHE "
                    "at a larger disk, or set cache: none to preprocess each volume whenever a crop is drawn from it"
                )
            log.info("preprocessed volumes cached on disk in %s", folder)
        return choice

    def _describe(self) -> None:
        """Per volume: foreground points (Alice's query points), foreground box and affine (correspondence),
        measured on the preprocessed volumes once and cached on disk (:func:`~ssl_domains.indexcache.cached_arrays`):
        a second run on the same files and settings reads no volume here."""
        key = {**self._key("foreground"), "points": FOREGROUND_POINTS}
        arrays = cached_arrays(self.data, key, self._measure, enabled=self.cfg.index_cache, files=self._files())
        self.foreground_points = ForegroundPoints(arrays["points"], arrays["counts"])
        self.geometry = Geometries(arrays["lo"], arrays["hi"], arrays["shape"], arrays["affine"])
        log.info("%d volumes from %s", len(self.records), self.data)

    def _measure(self) -> dict[str, np.ndarray]:
        gen, n = np.random.default_rng(0), len(self.records)
        volume_points = np.zeros((n, FOREGROUND_POINTS, 3), np.int16)  # sides < 32768 voxels: any scan at >= 0.1 mm
        counts, lo, hi, shape = np.zeros(n, np.int64), np.zeros((n, 3)), np.zeros((n, 3)), np.zeros((n, 3))
        affines = np.zeros((n, 4, 4))
        for i in range(n):
            image = self.volume(i)["image"]
            array = np.asarray(image[0])
            points = np.argwhere(array > self.cfg.foreground_threshold)
            if len(points) == 0:
                raise DataError(
                    f"{self.records[i].image}: no voxel above foreground_threshold {self.cfg.foreground_threshold} "
                    "after intensity scaling; lower the threshold or check the intensity settings (ct_window)"
                )
            if len(points) > FOREGROUND_POINTS:
                points = points[gen.choice(len(points), FOREGROUND_POINTS, replace=False)]
            volume_points[i, : len(points)], counts[i] = points, len(points)
            box = foreground_box(array > self.cfg.foreground_threshold)
            lo[i], hi[i], shape[i] = box["lo"], box["hi"], box["shape"]
            affines[i] = np.asarray(getattr(image, "affine", np.eye(4)), dtype=np.float64)
        return {"points": volume_points, "counts": counts, "lo": lo, "hi": hi, "shape": shape, "affine": affines}

    def volume(self, index: int) -> dict[str, Any]:
        """The preprocessed (cached) volume ``index``: ``{"image": [1, D, H, W]}`` and ``"label"`` if given."""
        assert self._volumes is not None, "call setup() first"
        return self._volumes[index]

    # ---- loaders -------------------------------------------------------------------------------------------
    @property
    def corrupts_on_device(self) -> bool:
        """contrastive3d's views are corrupted after the transfer (``corruptions_on: device``), not in the workers."""
        return self.mode != "pairs" and getattr(self.cfg, "corruptions_on", "loader") == "device"

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """On the training device, batched: contrastive3d's corrupted views of the clean crops
        (:func:`.transforms.corrupt_batch`, 11 of the 12.5 ms of a crop in a loader worker), then ``intensity_aug``
        (:func:`.transforms.jitter_batch`; 14 of the 17 ms of an Alice item): the network's input views change,
        the targets stay clean. Batches that already hold their views, and other batches, pass through."""
        predicting = self.trainer is not None and self.trainer.predicting  # embed's whole volumes need no views
        if isinstance(batch, dict) and self.corrupts_on_device and not predicting and "view1" not in batch:
            batch = dict(batch)
            batch["view1"] = corrupt_batch(batch["image"], self.cfg)
            batch["view2"] = corrupt_batch(batch.get("image2", batch["image"]), self.cfg)
        if isinstance(batch, dict) and "query" in batch and "query_view" not in batch:  # Alice: the student's copies
            batch = {**batch, "query_view": batch["query"], "anchor_view": batch["anchor"]}
        if self.cfg.intensity_aug and isinstance(batch, dict):
            for view in ("view1", "view2", "query_view", "anchor_view"):
                if view in batch:
                    batch[view] = jitter_batch(batch[view])
        return batch

    def train_dataloader(self) -> DataLoader:
        if self.mode == "pairs":
            dataset, collate = PairCrops(self), None
        elif self.mode == "corresponding_views":
            dataset, collate = CorrespondingViews(self), None
        else:
            dataset, collate = ViewCrops(self), flatten_collate
        return train_loader(
            dataset, batch_size=self.cfg.batch_size, collate_fn=collate, num_workers=self.cfg.num_workers,
            drop_last="auto",
        )  # fmt: skip

    def predict_dataloader(self) -> DataLoader:
        return eval_loader(Volumes(self), batch_size=1, num_workers=self.cfg.num_workers)
