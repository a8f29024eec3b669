"""Fixed per-band normalisation of Sentinel-1/2 chips, and the uint8 form SSL4EO-S12 pretrained on.

- **Statistics.** Per band ``(mean, std)``, never batch statistics (batch statistics break on uniform, cloudy
  chips: rslearn PR #169): the published SSL4EO-S12 ones (50k samples) or a JSON from ``ssl-domains run croma
  stats``, keyed by band so that any subset or order is normalised right.
- **clip2sigma** maps ``[mean - 2 std, mean + 2 std]`` to ``[0, 1]`` and clips: SSL4EO-S12's ``normalize`` and
  CROMA's README. **zscore** standardises.
- **quantize: uint8** (:func:`quantise`) rounds as SSL4EO-S12's pretraining data was rounded: its LMDB
  (``ssl4eo_250k_s2c_uint8.lmdb``) holds each band as ``normalize``'s uint8, ``(x - lo) / (hi - lo) * 255``
  clipped to ``[0, 255]`` and truncated, which ``ToTensor`` divides by 255 (zhu-xlab/SSL4EO-S12,
  ``src/benchmark/pretrain_ssl/datasets/SSL4EO/ssl4eo_dataset_lmdb.py``). The chip is then ``u8 / 255``: clip2sigma
  with the values floored to 1/255, one byte a value instead of two (S2 DN) or four (S1 dB).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_domains import DataError

from .bands import SSL4EO_STATS


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


def quantise(image: np.ndarray, bands: tuple[str, ...], stats: dict[str, Any], sensor: str) -> np.ndarray:
    """``[C, H, W]`` uint8 as SSL4EO-S12's ``normalize`` writes its LMDB: ``(x - lo) / (hi - lo) * 255`` with
    ``lo, hi = mean -/+ 2 std``, clipped to ``[0, 255]`` and truncated. In the precision NumPy computes it there:
    float64 for S2 (a uint16 array against Python floats), float32 for S1 (a float32 array against Python floats,
    which stay float32), so a value on a step's edge rounds as there."""
    dtype = np.float32 if sensor == "s1" else np.float64
    out = np.empty(image.shape, dtype=np.uint8)
    for i, band in enumerate(bands):
        mean, std = stats[band]
        low, high = mean - 2 * std, mean + 2 * std  # Python floats, as the reference's per-band scalars
        plane = image[i].astype(dtype, copy=False)
        out[i] = np.clip((plane - dtype(low)) / dtype(high - low) * dtype(255.0), 0, 255)
    return out


def dequantise(image: np.ndarray) -> np.ndarray:
    """A :func:`quantise`\\ d chip as the network sees it: ``u8 / 255`` in float32 (``ToTensor``)."""
    return image.astype(np.float32) / np.float32(255)


def normalise_batch(raw: torch.Tensor, bands: tuple[str, ...], stats: dict[str, Any], method: str) -> torch.Tensor:
    """:func:`normalise` (or, for a uint8 batch, :func:`dequantise`) of a ``[B, C, H, W]`` batch on its device, the
    same float32 operations in the same order (equal to the loader's result bit for bit). ``int16`` holds uint16
    DN bit for bit (pinned memory and the CUDA copy take every dtype but uint16 fully)."""
    if raw.dtype == torch.uint8:  # quantize: uint8, already clip2sigma'd when the pixels were read
        return raw.float() / 255
    x = (raw.to(torch.int32) & 0xFFFF).float() if raw.dtype == torch.int16 else raw.float()
    mean = torch.tensor([stats[b][0] for b in bands], dtype=torch.float32, device=x.device)[:, None, None]
    std = torch.tensor([stats[b][1] for b in bands], dtype=torch.float32, device=x.device)[:, None, None]
    if method == "zscore":
        return (x - mean) / std
    return ((x - (mean - 2 * std)) / (4 * std)).clamp(0.0, 1.0)
