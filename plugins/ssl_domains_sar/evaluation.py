"""Despeckling metrics and classical baselines (boxcar, Lee), as used in Dalsasso et al. 2021, §IV.

* Amplitude PSNR against a clean reference, with the 99th percentile of the reference amplitude as the peak
  (reference ``compute_psnr``).
* ENL (equivalent number of looks, ``mean^2 / var`` of intensity) on homogeneous windows. The windows are chosen
  on a Lee-filtered image, never on the estimate being scored.
* The ratio image ``|z|^2 / R_hat``: for a faithful filter it is pure speckle, with mean 1, ENL near 1, and no
  trace of the scene (its correlation with ``log R_hat`` near 0).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter


def boxcar(intensity: np.ndarray, size: int) -> np.ndarray:
    """Mean of the intensity over a ``size x size`` window."""
    return uniform_filter(np.asarray(intensity, dtype=np.float64), size=size, mode="reflect")


def lee(intensity: np.ndarray, size: int = 7, looks: float = 1.0) -> np.ndarray:
    """Lee's local linear MMSE filter on intensity (Lee 1980), with speckle variation ``Cu^2 = 1 / looks``."""
    intensity = np.asarray(intensity, dtype=np.float64)
    mean = boxcar(intensity, size)
    var = np.maximum(boxcar(intensity**2, size) - mean**2, 0.0)
    cu2 = 1.0 / looks
    signal_var = np.maximum((var - cu2 * mean**2) / (1.0 + cu2), 0.0)
    gain = signal_var / np.maximum(signal_var + cu2 * mean**2, 1e-30)
    return mean + gain * (intensity - mean)


def psnr_amplitude(estimate: np.ndarray, reference: np.ndarray) -> float:
    """``10 log10(peak^2 / MSE)`` on amplitudes; peak is the 99th percentile of the reference amplitude."""
    reference = np.asarray(reference, dtype=np.float64)
    peak = np.percentile(reference, 99)
    mse = np.mean((np.asarray(estimate, dtype=np.float64) - reference) ** 2)
    return float(10 * np.log10(peak**2 / mse))


def homogeneous_windows(intensity: np.ndarray, size: int = 16, count: int = 5) -> list[tuple[int, int]]:
    """Top-left corners of the ``count`` non-overlapping ``size`` windows with the flattest Lee-filtered image."""
    smooth = lee(intensity, 7)
    scores = []
    for r in range(0, intensity.shape[0] - size + 1, size):
        for c in range(0, intensity.shape[1] - size + 1, size):
            w = smooth[r : r + size, c : c + size]
            scores.append((w.std() / max(w.mean(), 1e-30), r, c))
    scores.sort()
    return [(r, c) for _, r, c in scores[:count]]


def enl(intensity: np.ndarray, windows: list[tuple[int, int]], size: int = 16) -> float:
    """Median over ``windows`` of ``mean^2 / var`` of the intensity."""
    values = []
    for r, c in windows:
        w = np.asarray(intensity[r : r + size, c : c + size], dtype=np.float64)
        values.append(w.mean() ** 2 / max(w.var(), 1e-30))
    return float(np.median(values))


def ratio_statistics(slc: np.ndarray, estimate: np.ndarray) -> dict[str, float]:
    """Mean and ENL of ``|z|^2 / R_hat``, and its correlation with ``log R_hat`` (scene structure left behind)."""
    intensity = np.abs(slc).astype(np.float64) ** 2
    ratio = intensity / np.maximum(estimate, 1e-30)
    local_ratio, log_estimate = boxcar(ratio, 5).ravel(), np.log(np.maximum(estimate, 1e-30)).ravel()
    # a constant estimate leaves nothing to correlate with: no structure by definition
    structure = 0.0 if log_estimate.std() == 0 else np.corrcoef(local_ratio, log_estimate)[0, 1]
    return {
        "ratio_mean": float(ratio.mean()),
        "ratio_enl": float(ratio.mean() ** 2 / ratio.var()),
        "ratio_structure": float(structure),
    }


def evaluate_on_images(model, images: list[np.ndarray], device: str = "cpu") -> dict[str, float]:
    """ENL on homogeneous windows and ratio statistics of the model and the classical filters, over ``images``."""
    from .denoise import despeckle_array

    rows: dict[str, list[float]] = {}
    for slc in images:
        intensity = np.abs(slc).astype(np.float64) ** 2
        size = max(min(16, min(slc.shape) // 4), 4)
        windows = homogeneous_windows(intensity, size)
        estimates = {
            "noisy": intensity,
            "boxcar7": boxcar(intensity, 7),
            "lee7": lee(intensity, 7),
            "model": despeckle_array(model, slc, device=str(device)),
        }
        for name, estimate in estimates.items():
            rows.setdefault(f"enl_{name}", []).append(enl(estimate, windows, size))
        for key, value in ratio_statistics(slc, estimates["model"]).items():
            rows.setdefault(key, []).append(value)
    return {key: float(np.mean(values)) for key, values in rows.items()}
