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


def warp_frequency(feats: torch.Tensor, alpha: float | torch.Tensor, f_min: float, f_max: float) -> torch.Tensor:
    """Vocal tract length perturbation (Jaitly & Hinton, ICML 2013 workshop) of mel frames ``[T, F]``, or of a
    batch ``[N, T, F]`` with one factor per row (``alpha`` of shape ``[N]``).

    The spectrum is scaled in frequency, ``S'(f) = S(f / alpha)``: with ``alpha > 1`` formants move up, as from
    a shorter vocal tract. Each band of the output reads the input at the band whose centre is ``f / alpha``,
    linearly interpolated between neighbouring bands on the mel axis (bands spaced evenly in HTK mel between
    ``f_min`` and ``f_max``); beyond the outermost bands the edge band is repeated. The paper warps the filter
    bank itself; interpolating the computed bands is the same map up to the filters' widths, and needs no
    second STFT.
    """
    bands = feats.shape[-1]
    edges = torch.linspace(float(_hz_to_mel(torch.tensor(f_min))), float(_hz_to_mel(torch.tensor(f_max))), bands + 2)
    centres = edges[1:-1].double().to(feats.device)
    factor = torch.as_tensor(alpha, dtype=torch.float64, device=feats.device).reshape(-1, 1)  # [N or 1, 1]
    source = _hz_to_mel(_mel_to_hz(centres) / factor)
    position = ((source - centres[0]) / float(edges[1] - edges[0])).clamp(0, bands - 1)
    low = position.floor().long().clamp(max=bands - 2)
    frac = (position - low).to(feats.dtype)
    if feats.ndim == 2:
        return feats[:, low[0]] * (1 - frac[0]) + feats[:, low[0] + 1] * frac[0]
    index = low[:, None, :].expand(feats.shape)
    below, above = feats.gather(2, index), feats.gather(2, index + 1)
    return below * (1 - frac[:, None, :]) + above * frac[:, None, :]


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


# ---- on the training device: the same features, batched over padded waveforms ---------------------------------------
# The loader workers only decode and crop (:func:`waveform_window`); the features of a whole batch are then computed
# on the GPU in one call. Frame for frame the results equal :func:`log_mel` / :func:`kaldi_fbank` of the clip, rows
# ``start .. start + frames`` (tested), because the workers hand over exactly the samples those frames read.
def waveform_window(samples: np.ndarray, kind: str, start: int, frames: int) -> np.ndarray:
    """The samples that frames ``start .. start + frames`` of feature ``kind`` read from a clip, prepared as
    :func:`compute` prepares the whole clip: RMS-scaled to -25 dB and reflect-padded by half a window at both
    ends (log-mel, ``center=True``), or mean-removed (Kaldi fbank, ``snip_edges``)."""
    wave = samples.astype(np.float32, copy=False)
    if kind == "fbank":
        wave = wave - wave.mean(dtype=np.float64).astype(np.float32)
    else:
        rms = np.sqrt(np.mean(np.square(wave, dtype=np.float64)))
        wave = np.pad(wave * np.float32(10 ** (TARGET_DB / 20) / (rms + 1e-10)), WINDOW // 2, mode="reflect")
    return np.ascontiguousarray(wave[start * HOP : start * HOP + (frames - 1) * HOP + WINDOW])


def batch_features(waves: torch.Tensor, kind: str, n_mels: int, f_max: float | None = None) -> torch.Tensor:
    """``[N, T, n_mels]`` features of ``[N, S]`` windows from :func:`waveform_window` (zero-padded after each
    row's last sample; frames past a row's own are meaningless and left for the caller to mask), on their device,
    in float32. Per-utterance CMVN is not applied here: it needs each row's valid frames (:func:`masked_cmvn`)."""
    waves = waves.float()
    if kind == "fbank":
        return _batch_kaldi_fbank(waves, n_mels, f_max)
    window = torch.hann_window(WINDOW, device=waves.device)  # torchaudio's Spectrogram: periodic Hann
    spec = torch.stft(waves, WINDOW, HOP, window=window, center=False, return_complex=True).abs().pow(2)
    banks = _mel_banks(n_mels, f_max).to(waves.device)  # [F_stft, n_mels], torchaudio's MelScale (HTK, no norm)
    return torch.log(spec.transpose(1, 2) @ banks + 1e-10)


def _batch_kaldi_fbank(waves: torch.Tensor, n_mels: int, f_max: float | None) -> torch.Tensor:
    """torchaudio.compliance.kaldi.fbank with SSAST's settings, over a batch: per-frame DC removal, pre-emphasis
    0.97 (the first sample against itself), symmetric Hann window, FFT size 512, power, Kaldi mel banks from
    20 Hz, ``log(max(x, eps))``."""
    frames = waves.unfold(1, WINDOW, HOP)  # [N, T, 400], snip_edges
    frames = frames - frames.mean(dim=-1, keepdim=True)
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = (frames - 0.97 * previous) * torch.hann_window(WINDOW, periodic=False, device=waves.device)
    spectrum = torch.fft.rfft(frames, n=512).abs().pow(2)
    return torch.clamp_min(
        spectrum @ _kaldi_banks(n_mels, f_max).to(waves.device), torch.finfo(torch.float32).eps
    ).log()


@lru_cache(maxsize=4)
def _mel_banks(n_mels: int, f_max: float | None) -> torch.Tensor:
    from torchaudio.functional import melscale_fbanks

    return melscale_fbanks(WINDOW // 2 + 1, 0.0, float(f_max or SAMPLE_RATE / 2), n_mels, SAMPLE_RATE)


@lru_cache(maxsize=4)
def _kaldi_banks(n_mels: int, f_max: float | None) -> torch.Tensor:
    from torchaudio.compliance.kaldi import get_mel_banks

    banks, _ = get_mel_banks(n_mels, 512, float(SAMPLE_RATE), 20.0, float(f_max or 0.0), 100.0, -500.0, 1.0)
    return torch.nn.functional.pad(banks, (0, 1)).T.contiguous()  # [257, n_mels]


def masked_cmvn(feats: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Per-utterance CMVN of ``[N, T, F]`` over each row's first ``length`` frames (as :func:`log_mel` over a
    clip); padded frames come out zero."""
    valid = (torch.arange(feats.shape[1], device=feats.device) < length[:, None]).unsqueeze(-1)
    count = length.clamp(min=1).to(feats.dtype)[:, None, None]
    mean = (feats * valid).sum(1, keepdim=True) / count
    std = (((feats - mean) * valid).pow(2).sum(1, keepdim=True) / count).sqrt()
    return ((feats - mean) / (std + 1e-5)) * valid
