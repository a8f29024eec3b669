"""Swin UNETR's self-supervised encoder in (``ssl-domains import --plugin contrastive3d --format swinvit``).

The file: Tang et al. (CVPR 2022)'s released ``model_swinvit.pt``, ``{"state_dict": {"module.patch_embed...",
"module.layers{1..4}.0.blocks.{i}...", "module.layers{1..4}.0.downsample..."}}``, the layout MONAI's
``SwinUNETR.load_from`` reads (``monai/networks/nets/swin_unetr.py``: ``SwinTransformerBlock.load_from`` maps
``mlp.fc1`` / ``mlp.fc2`` to MONAI's ``mlp.linear1`` / ``linear2``). A checkpoint of Tang's own pretraining script
(``research-contributions/SwinUNETR/Pretrain/main.py``: ``{"state_dict": SSLHead.state_dict()}``, the encoder
under ``swin_vit.`` (``swinViT.`` in older versions) with MONAI's ``linear1`` names, plus its rotation,
contrastive and reconstruction heads) is read too: the encoder is taken, the heads are reported and left out
(ours differ, see docs/plugins/contrastive3d.md).

Key map: ``[module.][swin_vit. | swinViT.]K`` → ``net.net.swinViT.K`` (our ``VolumeNet`` holds MONAI's ``SwinUNETR`` as
``net``), ``fc1``/``fc2`` → ``linear1``/``linear2``. ``feature_size`` comes from the patch embedding; depths (2, 2,
2, 2), heads (3, 6, 12, 24) and window 7 are MONAI's defaults, which our network builds and the file is checked
against. The decoder, the mask token and the two heads are fresh. Preprocessing is set to the pretraining's:
``ScaleIntensityRanged(a_min=-1000, a_max=1000, b_min=0, b_max=1, clip=True)``, spacing 1.5 × 1.5 × 2.0 mm,
96³ crops (``Pretrain/main.py`` arguments ``--a_min`` ... ``--roi_x``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ssl_domains import UserError

__all__ = ["from_swinvit", "read"]

DEPTHS, HEADS, WINDOW = (2, 2, 2, 2), (3, 6, 12, 24), 7
PRETRAINING = {"intensity": "ct", "ct_window": [-1000.0, 1000.0], "spacing": [1.5, 1.5, 2.0], "roi": 96}
_ENCODER = re.compile(r"(patch_embed\.proj|layers[1-4]\.0\.(blocks\.\d+|downsample))\..+")
_HEADS = ("rotation_head.", "contrastive_head.", "conv.", "rotation_pre.", "contrastive_pre.")


def from_swinvit(state: Mapping[str, Any], source: str = "the checkpoint") -> Any:
    """The Swin encoder of ``state`` (see the module docstring) as :class:`ssl_domains.transfer.ImportedWeights`."""
    from ssl_domains.transfer import ImportedWeights

    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise UserError(f"{source}: not a state dict, these entries are not tensors: {', '.join(bad[:8])}")
    sd = {k.removeprefix("module.").removeprefix("swinViT.").removeprefix("swin_vit."): v for k, v in state.items()}
    heads = sorted(k for k in sd if k.startswith(_HEADS))
    other = sorted(k for k in sd if not _ENCODER.fullmatch(k) and k not in heads)
    if "patch_embed.proj.weight" not in sd:
        raise UserError(f"{source}: no module.patch_embed.proj.weight; not a Swin UNETR encoder (model_swinvit.pt, "
                        "or a checkpoint of Tang et al.'s SwinUNETR/Pretrain)")  # fmt: skip
    if other:
        raise UserError(f"{source}: keys that are not a Swin UNETR encoder's ({len(other)}): {', '.join(other[:10])}")
    kernel = sd["patch_embed.proj.weight"]
    feature_size, channels = int(kernel.shape[0]), int(kernel.shape[1])
    if channels != 1 or tuple(kernel.shape[2:]) != (2, 2, 2):
        raise UserError(f"{source}: a patch embedding of {tuple(kernel.shape)}; this plugin takes one channel in "
                        "2 x 2 x 2 patches (SwinUNETR(in_channels=1))")  # fmt: skip
    for stage, (depth, heads_expected) in enumerate(zip(DEPTHS, HEADS, strict=True), start=1):
        blocks = {int(k.split(".")[3]) for k in sd if k.startswith(f"layers{stage}.0.blocks.")}
        table = sd.get(f"layers{stage}.0.blocks.0.attn.relative_position_bias_table")
        rows = (2 * WINDOW - 1) ** 3
        if blocks != set(range(depth)) or table is None or tuple(table.shape) != (rows, heads_expected):
            raise UserError(
                f"{source}: stage {stage} has blocks {sorted(blocks)} and a bias table of "
                f"{None if table is None else tuple(table.shape)}; MONAI's SwinUNETR, which this plugin builds, has "
                f"{depth} blocks, {heads_expected} heads and window {WINDOW} ((2 * 7 - 1)^3 rows)"
            )
    ours = {
        "net.net.swinViT." + k.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2."): v
        for k, v in sd.items()
        if k not in heads
    }
    notes = [
        f"Swin UNETR encoder, feature_size {feature_size} (Tang et al.: 48), depths {DEPTHS}, heads {HEADS}",
        "preprocessing of the pretraining (SwinUNETR/Pretrain/main.py): CT window -1000..1000 HU to [0, 1], spacing "
        "1.5 x 1.5 x 2.0 mm, 96^3 crops; --set to change",
        "fresh: the decoder (decoder: auto = Tang et al.'s bottleneck decoder), the mask token, and the projector and "
        "rotation heads",
    ]
    if heads:
        names = ", ".join(sorted({h.split(".")[0] for h in heads}))
        notes.append(f"left out: the pretraining heads of the file ({len(heads)} tensors: {names}); ours differ")
    layer = {"backbone": "swin", "feature_size": feature_size, **PRETRAINING}
    fresh = (
        "net.net.encoder",
        "net.net.decoder",
        "net.net.out",
        "net.bottleneck.",
        "net.mask_token",
        "projector.",
        "rotation_head.",
    )
    return ImportedWeights({"contrastive3d": layer}, ours, fresh=fresh, notes=tuple(notes))


def read(path: Path) -> Any:
    """``--format swinvit``: ``model_swinvit.pt`` or a SwinUNETR/Pretrain checkpoint (its ``state_dict``)."""
    from ssl_domains.transfer import read_checkpoint

    state = read_checkpoint(path)
    inner = state.get("state_dict")
    return from_swinvit(inner if isinstance(inner, Mapping) else state, str(path))


def read_alice(path: Path) -> Any:
    """``alice --format swinvit``: as :func:`read`, for an Alice run (student and teacher; SwinUNETR's decoder
    fresh)."""
    from .weights_monai import for_alice

    return for_alice(read(path))
