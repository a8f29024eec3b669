"""SSL4EO-S12's ResNet-50 backbone (Wang et al. 2022, §4: MoCo on ResNet-50 with 13 input bands).

The network is torchvision's ``resnet50`` (He et al. 2016, v1.5: the stride in the 3 x 3 convolution), which
SSL4EO-S12's pretraining scripts build with its first convolution swapped for a 13-band one
(``models/moco_v2/builder.py`` L35-36); timm's ``resnet50`` and torchgeo's ``ResNet50_Weights.SENTINEL2_*`` use the
same keys (``conv1``, ``bn1``, ``layer{1..4}.{i}.{conv,bn}{1..3}``, ``downsample.{0,1}``), so their state dicts load
as they are. torchvision is not a dependency: the few lines are written out here.

:class:`SSL4EOResNetModel` trains it with MoCo v3's ResNet heads (Chen, Xie, He 2021: a 2-layer projector and a
2-layer predictor without output BN, ``moco/builder.py`` ``MoCo_ResNet`` L103-109) and embeds the pooled 2048-d
features, the representation the paper's linear probes read.
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_domains.nn import EMATeacher

__all__ = ["ResNet50", "SSL4EOResNetModel"]


class _Bottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, 4 * planes, 1, bias=False), nn.BatchNorm2d(4 * planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != 4 * planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, 4 * planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(4 * planes))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """torchvision's ResNet-50 without its classifier: ``[B, C, H, W] -> [B, 2048]`` (global average pool)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1, self.relu, self.maxpool = nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True), start=1):
            layers = [_Bottleneck(inplanes, planes, 1 if i == 1 else 2)]
            layers += [_Bottleneck(4 * planes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layers))
            inplanes = 4 * planes
        for m in self.modules():  # torchvision's init; MoCo v3 builds it with zero_init_residual=True (main_moco.py)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, _Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean((2, 3))


class SSL4EOResNetModel(nn.Module):
    """SSL4EO's ResNet-50 with MoCo v3's ResNet heads and the EMA key encoder (backbone + projector), the same
    interface as :class:`~ssl_domains_rs.model.SSL4EOModel` for the MoCo objective."""

    embed_dim = 2048

    def __init__(self, in_channels: int, proj_dim: int, hidden_dim: int, key_momentum: float) -> None:
        super().__init__()
        from .model import _mlp

        self.in_channels = in_channels
        self.backbone = ResNet50(in_channels)
        self.projector = _mlp([self.embed_dim, hidden_dim, proj_dim], last_bn=True)
        self.predictor = _mlp([proj_dim, hidden_dim, proj_dim], last_bn=False)
        self.key_encoder = EMATeacher(self.query_encoder(), key_momentum, 1.0)

    def query_encoder(self) -> nn.ModuleList:
        return nn.ModuleList([self.backbone, self.projector])

    @staticmethod
    def head_input(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """What the projector reads: the pooled features."""
        return backbone(x)

    def after_step(self, progress: float) -> None:
        """After each optimiser step: the key encoder moves towards the query encoder (cosine momentum schedule)."""
        self.key_encoder.update(self.query_encoder(), progress)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.features(batch["view1"])
