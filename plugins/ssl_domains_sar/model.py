"""MERLIN's U-Net (Dalsasso, Denis, Tupin, IEEE TGRS 2021, Fig. 2), batched.

The layer names and shapes are those of the authors' network (``enc0``-``enc6``, ``dec5``-``dec1``), so their
published weights load with no renaming (see :mod:`ssl_domains_sar.weights`). The network maps the normalised
log-amplitude of one SLC component to the normalised log-reflectivity: it predicts the residual ``n`` and
returns ``x - n``. Input height and width must be multiples of 32 (five 2x max-pools).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOG_OFFSET = 1e-3
"""Added to a component's square before the log, as in the reference (keeps log finite where a = 0)."""

DOWNSAMPLING = 32
"""Tile sides must be multiples of this: the U-Net pools five times."""


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)


def wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least float32: bf16/fp16 activations are widened for the log-domain maths, float64 stays."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class MerlinUNet(nn.Module):
    """U-Net on one SLC component; ``forward`` works on normalised log-amplitudes ``[B, 1, H, W]``.

    ``log_max`` / ``log_min`` are the sensor constants ``M`` / ``m`` (bounds of ``log|a|``) that map
    ``log(a^2 + 1e-3)`` to roughly [0, 1]: ``x = (log(a^2 + 1e-3) - 2m) / (2(M - m))`` (reference
    ``normalize``). They are buffers, so a checkpoint carries the constants it was trained with.
    """

    def __init__(self, log_max: float, log_min: float, width: int = 48, decoder_width: int = 96) -> None:
        super().__init__()
        if not log_max > log_min:
            raise ValueError(f"log_max ({log_max}) must exceed log_min ({log_min})")
        self.register_buffer("log_max", torch.tensor(float(log_max), dtype=torch.float64))
        self.register_buffer("log_min", torch.tensor(float(log_min), dtype=torch.float64))
        w, d = width, decoder_width
        self.enc0, self.enc1 = _conv(1, w), _conv(w, w)
        self.enc2, self.enc3, self.enc4, self.enc5, self.enc6 = (_conv(w, w) for _ in range(5))
        self.dec5, self.dec5b = _conv(2 * w, d), _conv(d, d)
        self.dec4, self.dec4b = _conv(d + w, d), _conv(d, d)
        self.dec3, self.dec3b = _conv(d + w, d), _conv(d, d)
        self.dec2, self.dec2b = _conv(d + w, d), _conv(d, d)
        self.dec1a, self.dec1b, self.dec1 = _conv(d + 1, 64), _conv(64, 32), _conv(32, 1)
        self.embed_dim = w
        self.to(memory_format=torch.channels_last)  # see _encode

    # ---- normalisation (reference merlin_denoiser.py and training/model.py) ------------------------------------
    def normalize(self, component: torch.Tensor) -> torch.Tensor:
        """``(log(a^2 + 1e-3) - 2m) / (2(M - m))``, computed in float32 whatever the autocast dtype."""
        # 0-d tensor arithmetic on the buffers' device: float(buffer) would be a host sync per call on a GPU
        m, span = wide(self.log_min), wide(self.log_max - self.log_min)
        with torch.autocast(component.device.type, enabled=False):
            return (torch.log(wide(component).square() + LOG_OFFSET) - 2 * m) / (2 * span)

    def log_reflectivity(self, out: torch.Tensor) -> torch.Tensor:
        """``log R = 2 (out (M - m) + m)``: the network output as a log-intensity (loss_function's ``log_hat_R``)."""
        m, span = wide(self.log_min), wide(self.log_max - self.log_min)
        return 2.0 * (wide(out) * span + m)

    # ---- network -----------------------------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Skip tensors (input first) and the bottleneck after ``enc6``."""
        act = nn.functional.leaky_relu
        # Channels-last weights and activations: oneDNN then runs its NHWC convolution kernels, 1.17-1.58x faster
        # on 2 CPU cores for this narrow U-Net; on an H100 no faster (docs/performance.md). Same state-dict values.
        x = x.contiguous(memory_format=torch.channels_last)
        skips = [x]
        n = F.max_pool2d(act(self.enc1(act(self.enc0(x), 0.1)), 0.1), 2)
        skips.append(n)
        for conv in (self.enc2, self.enc3, self.enc4):
            n = F.max_pool2d(act(conv(n), 0.1), 2)
            skips.append(n)
        n = F.max_pool2d(act(self.enc5(n), 0.1), 2)
        return skips, act(self.enc6(n), 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoised normalised log-amplitude ``[B, 1, H, W]`` from the noisy one (same shape)."""
        if x.shape[-1] % DOWNSAMPLING or x.shape[-2] % DOWNSAMPLING:
            raise ValueError(f"MERLIN needs tile sides that are multiples of {DOWNSAMPLING}, got {tuple(x.shape)}")
        act = nn.functional.leaky_relu
        skips, n = self._encode(x)
        for first, second in ((self.dec5, self.dec5b), (self.dec4, self.dec4b), (self.dec3, self.dec3b)):
            n = torch.cat((F.interpolate(n, scale_factor=2.0, mode="nearest"), skips.pop()), dim=1)
            n = act(second(act(first(n), 0.1)), 0.1)
        n = torch.cat((F.interpolate(n, scale_factor=2.0, mode="nearest"), skips.pop()), dim=1)
        n = act(self.dec2b(act(self.dec2(n), 0.1)), 0.1)
        n = torch.cat((F.interpolate(n, scale_factor=2.0, mode="nearest"), skips.pop()), dim=1)
        n = act(self.dec1b(act(self.dec1a(n), 0.1)), 0.1)
        return x - self.dec1(n)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-patch representation: the bottleneck features (after ``enc6``) of the real part, averaged."""
        _, bottleneck = self._encode(self.normalize(batch["real"]).to(self.enc0.weight.dtype))
        return bottleneck.mean(dim=(-2, -1))
