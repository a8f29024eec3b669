"""Spectral features, computed with torchaudio on 16 kHz mono samples.

- :func:`log_mel`: TERA's input (s3prl ``upstream/baseline/preprocessor.py``, ``pretrain/tera/config_model.yaml``):
  waveform RMS-scaled to -25 dB, STFT with a 400-sample (25 ms) Hann window, hop 160 (10 ms), ``center=True``,
  power → 80 HTK mel bands → ``log(x + 1e-10)`` → per-utterance CMVN (mean and std of each band over time).
- :func:`kaldi_fbank`: SSAST's input (``src/dataloader.py::_wav2fbank``): mean-removed waveform,
  ``torchaudio.compliance.kaldi.fbank`` with 128 bins, Hanning window, no dither, no energy, HTK-compatible.
  It is normalised later with dataset statistics, SSAST's ``(x - mean) / (2 std)``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

SAMPLE_RATE = 16_000
HOP = 160  # 10 ms
WINDOW = 400  # 25 ms
TARGET_DB = -25.0


def log_mel(samples: np.ndarray, n_mels: int = 80, cmvn: bool = True, f_max: float | None = None) -> torch.Tensor:
    """``[T, n_mels]`` log-mel frames of 16 kHz ``samples`` (bands up to ``f_max`` Hz, default Nyquist);
    per-utterance CMVN when ``cmvn``."""
    wave = torch.as_tensor(samples, dtype=torch.float32)
    rms = wave.pow(2).mean().sqrt()
    wave = wave * (10 ** (TARGET_DB / 20) / (rms + 1e-10))
    feats = torch.log(_mel_spectrogram(n_mels, f_max)(wave) + 1e-10).T.contiguous()
    if cmvn:
        feats = (feats - feats.mean(dim=0)) / (feats.std(dim=0, unbiased=False) + 1e-5)
    return feats


@lru_cache(maxsize=4)
def _mel_spectrogram(n_mels: int, f_max: float | None) -> Any:
    from torchaudio.transforms import MelSpectrogram

    return MelSpectrogram(
        SAMPLE_RATE, n_fft=WINDOW, win_length=WINDOW, hop_length=HOP, n_mels=n_mels, power=2.0, f_max=f_max
    )


def kaldi_fbank(samples: np.ndarray, n_mels: int = 128, f_max: float | None = None) -> torch.Tensor:
    """``[T, n_mels]`` Kaldi log-mel filter banks of 16 kHz ``samples`` (SSAST's settings; bands up to ``f_max``
    Hz, default Nyquist), not normalised."""
    from torchaudio.compliance import kaldi

    wave = torch.as_tensor(samples, dtype=torch.float32)
    wave = (wave - wave.mean()).unsqueeze(0)
    return kaldi.fbank(
        wave, htk_compat=True, sample_frequency=SAMPLE_RATE, use_energy=False, window_type="hanning",
        num_mel_bins=n_mels, dither=0.0, frame_shift=10, high_freq=f_max or 0.0,
    )  # fmt: skip


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(f / 700.0)  # HTK, as torchaudio's MelSpectrogram and Kaldi's fbank use


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * torch.expm1(m / 1127.0)


def warp_frequency(feats: torch.Tensor, alpha: float, f_min: float, f_max: float) -> torch.Tensor:
    """Vocal tract length perturbation (Jaitly & Hinton, ICML 2013 workshop) of mel frames ``[T, F]``.

    The spectrum is scaled in frequency, ``S'(f) = S(f / alpha)``: with ``alpha > 1`` formants move up, as from
    a shorter vocal tract. Each band of the output reads the input at the band whose centre is ``f / alpha``,
    linearly interpolated between neighbouring bands on the mel axis (bands spaced evenly in HTK mel between
    ``f_min`` and ``f_max``); beyond the outermost bands the edge band is repeated. The paper warps the filter
    bank itself; interpolating the computed bands is the same map up to the filters' widths, and needs no
    second STFT.
    """
    bands = feats.shape[1]
    edges = torch.linspace(float(_hz_to_mel(torch.tensor(f_min))), float(_hz_to_mel(torch.tensor(f_max))), bands + 2)
    centres = edges[1:-1].double()
    source = _hz_to_mel(_mel_to_hz(centres) / alpha)
    position = ((source - centres[0]) / (edges[1] - edges[0])).clamp(0, bands - 1)
    low = position.floor().long().clamp(max=bands - 2)
    frac = (position - low).to(feats.dtype)
    return feats[:, low] * (1 - frac) + feats[:, low + 1] * frac


def band_range(kind: str, f_max: float | None) -> tuple[float, float]:
    """Lowest and highest mel filter edge (Hz) of feature ``kind``: torchaudio's 0 Hz, Kaldi's default 20 Hz."""
    return (20.0 if kind == "fbank" else 0.0), float(f_max or SAMPLE_RATE / 2)


def num_frames(num_samples: int, kind: str) -> int:
    """Frames that :func:`log_mel` (``center=True``) or :func:`kaldi_fbank` (``snip_edges``) make from a clip."""
    if kind.startswith("logmel"):
        return 1 + num_samples // HOP
    return max(0, 1 + (num_samples - WINDOW) // HOP)


def compute(samples: np.ndarray, kind: str, n_mels: int, f_max: float | None = None) -> torch.Tensor:
    """Feature ``kind`` of one clip: "logmel" (CMVN log-mel), "logmel_global" (log-mel, normalised later with
    dataset statistics) or "fbank" (Kaldi fbank, normalised later)."""
    if kind == "fbank":
        return kaldi_fbank(samples, n_mels, f_max)
    return log_mel(samples, n_mels, cmvn=kind == "logmel", f_max=f_max)
