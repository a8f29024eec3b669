"""Swin UNETR's self-supervised reconstruction decoder: from the bottleneck alone, no skip connections.

Tang et al. (CVPR 2022, §3.2, in-painting) reconstruct the crop from the encoder's last (1/32) stage; their
``SSLHead`` (``research-contributions/SwinUNETR/Pretrain/models/ssl_head.py``, ``upsample="vae"``, the default)
does it with five stages of 3 x 3 x 3 convolution, instance norm, LeakyReLU and x2 trilinear upsampling, the width
halving at each of the first four, then a 1 x 1 x 1 convolution to the output. Without skips, a corrupted region
can only be filled in from what the encoder represents; with SwinUNETR's decoder and its full-resolution skips
(``decoder: unetr``) it can be copied around the bottleneck. Written here from that description.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

__all__ = ["BottleneckDecoder"]


class BottleneckDecoder(nn.Module):
    """``[B, C, r/32, r/32, r/32]`` (Swin stage 4, ``C = 16 feature_size``) -> ``(output [B, out, r, r, r], maps)``,
    ``maps`` the upsampled features at 1/16, 1/8, 1/4 and 1/2 (the pyramid the dense read-outs use)."""

    def __init__(self, in_channels: int, out_channels: int = 1) -> None:
        super().__init__()
        widths = [in_channels, in_channels // 2, in_channels // 4, in_channels // 8, in_channels // 16,
                  in_channels // 16]  # fmt: skip
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv3d(a, b, 3, padding=1), nn.InstanceNorm3d(b), nn.LeakyReLU(),
                          nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False))
            for a, b in itertools.pairwise(widths)
        )  # fmt: skip
        self.out = nn.Conv3d(widths[-1], out_channels, 1)
        self.pyramid_dims = tuple(widths[1:5])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return self.out(x), maps[:4]
