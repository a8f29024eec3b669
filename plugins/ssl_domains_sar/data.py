"""SLC images served as random patches of their real and imaginary parts, as dict batches.

A batch is ``{"real": [B, 1, P, P], "imag": [B, 1, P, P], "id": [B]}`` (float32 components in the SLC's own
units; the model normalises them on the device). Training patches are drawn at random positions with random
flips and 90-degree rotations (reference ``train.py``); the draw is a function of ``(seed, epoch, slot)`` only,
so a resumed run sees the same patches.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ssl_domains import DataError
from ssl_domains.data import EpochShuffleSampler, eval_loader, mix_seed, train_loader
from ssl_domains.datamodule import FittedDataModule

from .formats import find_slc_files, open_slc, write_complex_geotiff
from .model import DOWNSAMPLING, LOG_OFFSET
from .plugin import MerlinConfig
from .simulate import reflectivity_from_image, simulate_slc

log = logging.getLogger(__name__)


def estimate_log_bounds(images: list[np.ndarray], low: float = 0.1, high: float = 99.9) -> tuple[float, float]:
    """Sensor constants ``(M, m)`` from training data: percentiles of ``1/2 log(a^2 + 1e-3)`` over both parts.

    The reference's constants are the extremes of this quantity over its TerraSAR-X training set; percentiles
    keep a handful of outlier pixels from setting the scale. Any affine choice is learnable; these put the
    network's input in roughly [0, 1].
    """
    values = np.concatenate(
        [
            0.5 * np.log(np.concatenate([z.real.ravel(), z.imag.ravel()]).astype(np.float64) ** 2 + LOG_OFFSET)
            for z in images
        ]
    )
    m, big_m = np.percentile(values, [low, high])
    return float(big_m), float(m)


class _PatchSampler(EpochShuffleSampler):
    """Yields keys ``epoch * N + slot``: a fresh set of random patches each epoch, reproducible per epoch."""

    def __iter__(self):  # type: ignore[override]
        offset = self.epoch * self.num_items
        for slot in super().__iter__():
            yield offset + slot


class RandomPatches(Dataset):
    """``patches_per_epoch`` random square patches; a key picks image, position, flip and rotation."""

    def __init__(self, images: list[np.ndarray], patch: int, patches_per_epoch: int, seed: int) -> None:
        self.images, self.patch, self.length, self.seed = images, patch, patches_per_epoch, seed
        areas = np.array([(z.shape[0] - patch + 1) * (z.shape[1] - patch + 1) for z in images], dtype=np.float64)
        self.weights = areas / areas.sum()  # every admissible position equally likely

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int) -> np.ndarray:
        rng = np.random.default_rng(mix_seed(self.seed, key))
        z = self.images[int(rng.choice(len(self.images), p=self.weights))]
        top = int(rng.integers(0, z.shape[0] - self.patch + 1))
        left = int(rng.integers(0, z.shape[1] - self.patch + 1))
        crop = z[top : top + self.patch, left : left + self.patch]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        return np.ascontiguousarray(np.rot90(crop, int(rng.integers(0, 4))))


def _collate(crops: list[np.ndarray], ids: list[int] | None = None) -> dict[str, torch.Tensor]:
    z = torch.from_numpy(np.stack(crops))[:, None]
    ident = torch.as_tensor(ids if ids is not None else range(len(crops)), dtype=torch.long)
    return {"real": z.real.contiguous(), "imag": z.imag.contiguous(), "id": ident}


class Tiles(Dataset):
    """Non-overlapping ``patch`` tiles of every image, in raster order (the clean view for ``embed``)."""

    def __init__(self, images: list[np.ndarray], patch: int) -> None:
        self.images, self.patch = images, patch
        self.index = [
            (i, r, c)
            for i, z in enumerate(images)
            for r in range(0, z.shape[0] - patch + 1, patch)
            for c in range(0, z.shape[1] - patch + 1, patch)
        ]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> tuple[np.ndarray, int]:
        i, r, c = self.index[k]
        return self.images[i][r : r + self.patch, c : c + self.patch], k

    @staticmethod
    def collate(items: list[tuple[np.ndarray, int]]) -> dict[str, torch.Tensor]:
        return _collate([np.ascontiguousarray(crop) for crop, _ in items], [k for _, k in items])


class SLCDataModule(FittedDataModule[MerlinConfig]):
    """Reads the SLC files under ``data``; fits the sensor constants on them unless the config gives them."""

    def __init__(self, data: Path, cfg: MerlinConfig) -> None:
        super().__init__(data, cfg)
        self.images: list[np.ndarray] = []
        self.files: list[Path] = []
        self._tile_index: np.ndarray | None = None  # (file, row, col) of each embedded tile, for provenance

    def input_spec(self) -> dict[str, Any]:
        """The SLC input and the sensor constants ``M``, ``m`` of MERLIN's normalisation (Dalsasso et al. 2021)."""
        big_m, m = self.log_bounds
        return {
            "input": "complex SLC (real and imaginary parts), one polarisation, single look",
            "log_max_M": big_m,
            "log_min_m": m,
            "normalisation": f"(log(a^2 + {LOG_OFFSET:g}) - 2m) / (2(M - m)) per component a",
            "spectrum_centred": bool(self.cfg.centre_spectrum),
            "tile": f"{self.cfg.patch_size} pixels (sides a multiple of {DOWNSAMPLING})",
        }

    @property
    def log_bounds(self) -> tuple[float, float]:
        """``(M, m)``: the normalisation constants the model uses."""
        return float(self.fitted["log_max"]), float(self.fitted["log_min"])

    def read(self, stage: str | None) -> None:
        patch = self.cfg.patch_size
        if patch % DOWNSAMPLING:
            raise DataError(f"merlin.patch_size={patch} must be a multiple of {DOWNSAMPLING} (the U-Net pools 5 times)")
        self.files = find_slc_files(self.data)
        for path in self.files:
            z = open_slc(path).read()
            if min(z.shape) < patch:
                raise DataError(
                    f"{path}: the image ({z.shape[0]} x {z.shape[1]}) is smaller than the {patch}-pixel patch; "
                    f"set --set merlin.patch_size=N with N <= {min(z.shape) // DOWNSAMPLING * DOWNSAMPLING} "
                    f"(a multiple of {DOWNSAMPLING}), or leave this file out"
                )
            if self.cfg.centre_spectrum:
                from .spectrum import centre_spectrum

                z = centre_spectrum(torch.from_numpy(z)).numpy().astype(np.complex64)
            self.images.append(z)
        if "log_max" not in self.fitted:
            if self.cfg.log_max is not None and self.cfg.log_min is not None:
                big_m, m = self.cfg.log_max, self.cfg.log_min
            else:
                big_m, m = estimate_log_bounds(self.images)
                if not big_m > m:
                    raise DataError(
                        f"{self.data}: every pixel has the same amplitude, so the data carry no speckle to learn "
                        "from (the estimated M and m are equal); check the files, or set merlin.log_max/log_min"
                    )
                log.info("estimated normalisation constants from the training data: M=%.4f, m=%.4f", big_m, m)
            self.fitted.update(log_max=float(big_m), log_min=float(m))

    def train_dataloader(self) -> Any:
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        patches = RandomPatches(self.images, self.cfg.patch_size, self.cfg.patches_per_epoch, seed)
        return train_loader(
            patches,
            batch_size=self.cfg.batch_size,
            seed=seed,
            sampler=_PatchSampler(len(patches), seed),  # Lightning calls set_epoch on it
            collate_fn=_collate,
            num_workers=self.cfg.num_workers,
        )

    def predict_dataloader(self) -> Any:
        return eval_loader(
            Tiles(self.images, self.cfg.patch_size), batch_size=self.cfg.batch_size, collate_fn=Tiles.collate
        )

    def provenance(self, ids: np.ndarray) -> dict[str, Any]:
        """Each embedded tile's file and its top-left pixel (row, col) in the SLC's own grid."""
        if self._tile_index is None:  # built once: provenance is asked per predicted batch
            self._tile_index = np.asarray(Tiles(self.images, self.cfg.patch_size).index, dtype=np.int64)
        index = self._tile_index[np.asarray(ids)]
        return {"path": [str(self.files[i]) for i in index[:, 0]], "row": index[:, 1], "col": index[:, 2]}


def write_example_slc(root: Path, size: int = 128, count: int = 2) -> Path:
    """Simulated single-look SLC GeoTIFFs (CFloat32, with a CRS) of a synthetic scene, for tests and examples."""
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    root = Path(root)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        scene = 1.0 + 3.0 * ((xx - 0.3 - 0.2 * i) ** 2 + (yy - 0.5) ** 2 < 0.05) + 2.0 * (xx > 0.75) + yy
        write_complex_geotiff(
            root / f"scene_{i}.tif",
            simulate_slc(reflectivity_from_image(scene), rng),
            crs=CRS.from_epsg(32631),
            transform=from_origin(500000.0, 5000000.0 - i * 2000, 10.0, 10.0),
        )
    return root
