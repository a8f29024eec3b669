"""Correlated single-look SLC speckle with an exact clean reference (method card §3).

``z = sqrt(R) * s`` with ``s = IFFT(H * FFT(w))``, ``w`` circular complex white Gaussian noise and ``H`` a real,
symmetric, separable generalised-Hamming transfer function over part of the band, normalised so that
``mean(H^2) = 1``. Then ``E|z|^2 = R`` exactly, ``|z|^2 / R`` is exponential (ENL 1), the real and imaginary
parts are independent (``H`` is real and symmetric), and neighbouring pixels are correlated as in a real SAR
image (the transfer function sets the correlation).
"""

from __future__ import annotations

import numpy as np


def hamming_transfer(size: int, alpha: float = 0.7, band: float = 0.8) -> np.ndarray:
    """1-D generalised Hamming window ``alpha - (1 - alpha) cos`` over the central ``band`` share of the spectrum.

    Returned in FFT order (zero frequency first), zero outside the band, symmetric, ``mean(H^2) = 1`` in 2-D
    once two of these are multiplied.
    """
    freq = np.fft.fftfreq(size)  # cycles per pixel, zero first; symmetric: H(f) = H(-f)
    h = np.where(np.abs(freq) <= band / 2, alpha + (1 - alpha) * np.cos(2 * np.pi * freq / band), 0.0)
    return h / np.sqrt(np.mean(h**2))


def speckle_field(
    shape: tuple[int, int], rng: np.random.Generator, alpha: float = 0.7, band: float = 0.8
) -> np.ndarray:
    """Unit-mean-intensity correlated complex speckle ``s`` (complex64 ``[H, W]``)."""
    h, w = shape
    white = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2)
    transfer = np.outer(hamming_transfer(h, alpha, band), hamming_transfer(w, alpha, band))
    return np.fft.ifft2(transfer * np.fft.fft2(white)).astype(np.complex64)


def simulate_slc(
    reflectivity: np.ndarray, rng: np.random.Generator, alpha: float = 0.7, band: float = 0.8
) -> np.ndarray:
    """A single-look complex image whose expected intensity ``E|z|^2`` is ``reflectivity`` exactly."""
    reflectivity = np.asarray(reflectivity, dtype=np.float64)
    if reflectivity.ndim != 2 or (reflectivity < 0).any():
        raise ValueError("reflectivity must be a non-negative 2-D intensity image")
    return (np.sqrt(reflectivity) * speckle_field(reflectivity.shape, rng, alpha, band)).astype(np.complex64)


def lag1_intensity_correlation(slc: np.ndarray) -> float:
    """Mean of the row- and column-lag-1 correlation coefficients of ``|z|^2`` (real S1 data: about 0.2-0.35)."""
    intensity = np.abs(slc).astype(np.float64) ** 2
    rows = np.corrcoef(intensity[:, :-1].ravel(), intensity[:, 1:].ravel())[0, 1]
    cols = np.corrcoef(intensity[:-1].ravel(), intensity[1:].ravel())[0, 1]
    return float((rows + cols) / 2)


def reflectivity_from_image(image: np.ndarray, mean_amplitude: float = 200.0, floor: float = 1e-3) -> np.ndarray:
    """A clean intensity from a grey image: amplitude proportional to the grey level, scaled to ``mean_amplitude``.

    A small floor keeps black pixels positive (log-domain networks need ``R > 0``). The scale is that of
    Sentinel-1 SLC (mean ``|z|`` about 200), far above the reference's ``1e-3`` log offset.
    """
    grey = np.asarray(image, dtype=np.float64)
    if grey.ndim == 3:
        grey = grey[..., :3].mean(-1)
    grey = grey - grey.min()
    amplitude = grey / max(grey.mean(), 1e-12) + floor
    return (mean_amplitude * amplitude / amplitude.mean()) ** 2
