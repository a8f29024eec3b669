"""Spectrum centring (zero-Doppler) of SLC images, so that real and imaginary parts are independent.

MERLIN's likelihood treats ``a = Re z`` and ``b = Im z`` as independent, which holds when the sensor's
point-spread function is real: its spectrum must be symmetric about zero frequency in both axes (reference
``utils.symetrise_real_and_imaginary_parts``, made optional in deepdespeckling PR #16). A Doppler centroid
away from zero shifts the azimuth spectrum and correlates ``a`` with its neighbours' ``b``.

We roll the 2-D spectrum, per axis, by the integer number of bins that brings the circular centroid of the
mean-|spectrum| profile to zero frequency. The reference instead cross-correlates each profile with its mirror
image and chooses between the two resulting symmetry axes with a Gaussian window; for the symmetric,
single-lobed spectra of SAR sensors both find the same centre, and the centroid needs no tie-break.
Batched over leading dimensions; runs on the tensor's device.
"""

from __future__ import annotations

import math

import torch


def _centring_shift(profile: torch.Tensor) -> torch.Tensor:
    """Integer roll (per leading index) that moves the circular centroid of ``profile [..., N]`` to bin 0."""
    n = profile.shape[-1]
    angle = 2 * math.pi * torch.arange(n, device=profile.device, dtype=profile.dtype) / n
    centroid = torch.atan2((profile * torch.sin(angle)).sum(-1), (profile * torch.cos(angle)).sum(-1))
    return -torch.round(centroid * n / (2 * math.pi)).long()


def _roll_per_item(spectrum: torch.Tensor, shift: torch.Tensor, dim: int) -> torch.Tensor:
    n = spectrum.shape[dim]
    index = (torch.arange(n, device=spectrum.device) - shift.unsqueeze(-1)) % n  # [..., N]
    index = index.unsqueeze(-1 if dim == -2 else -2).expand(*spectrum.shape)
    return torch.gather(spectrum, dim, index)


def centre_spectrum(slc: torch.Tensor) -> torch.Tensor:
    """``slc [..., H, W]`` (complex) with its azimuth (rows) and range (columns) spectra centred on zero."""
    if not slc.is_complex():
        raise TypeError("centre_spectrum needs a complex tensor")
    spectrum = torch.fft.fft2(slc.to(torch.complex64))
    magnitude = spectrum.abs()
    spectrum = _roll_per_item(spectrum, _centring_shift(magnitude.mean(-1)), dim=-2)
    spectrum = _roll_per_item(spectrum, _centring_shift(magnitude.mean(-2)), dim=-1)
    return torch.fft.ifft2(spectrum)
