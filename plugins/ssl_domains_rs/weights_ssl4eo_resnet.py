"""SSL4EO-S12's ResNet-50 weights, the ResNet half of ``weights_ssl4eo.py`` (same formats, dispatched by the keys).

- ``ssl4eo-moco`` with ``encoder_q.*``: SSL4EO-S12's MoCo v2 ResNet-50 (``pretrain_moco_v2_s2c.py``, e.g.
  ``B13_rn50_moco_0099_ckpt.pth``: ``models/moco_v2/builder.py``, torchvision ``resnet50`` with a 13-band
  ``conv1``, ``fc`` = MLP 2048 → 2048 → 128, plus the ``queue``). The encoders load; MoCo v2's head and queue have
  no place in MoCo v3's heads and are left out, with a note (the projector and predictor start fresh).
- ``ssl4eo-moco`` with ``base_encoder.conv1``: a MoCo v3 ``MoCo_ResNet`` (``base_encoder.fc`` = the 2-layer projector),
  all of it, as the writer saves it.
- ``timm``: a torchvision / timm ``resnet50`` state dict (torchgeo's ``ResNet50_Weights.SENTINEL2_ALL_MOCO``);
  ``fc`` (a classifier) is dropped.

The keys are torchvision's, ours under ``backbone.`` (``ssl_domains_rs.resnet.ResNet50``), so the map is a prefix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from ssl_domains import UserError

if TYPE_CHECKING:
    from .resnet import SSL4EOResNetModel

_KEY = re.compile(r"(conv1|bn1|layer[1-4]\.\d+\.(conv[1-3]|bn[1-3]|downsample\.[01]))\.(weight|bias|running_mean|"
                  r"running_var|num_batches_tracked)")  # fmt: skip
_BANDS = {13: ("s2", "L1C"), 12: ("s2", "L2A"), 2: ("s1", None)}


def is_resnet(sd: Mapping[str, Any], prefix: str = "") -> bool:
    return f"{prefix}conv1.weight" in sd and f"{prefix}layer1.0.conv1.weight" in sd


def _encoder(sd: Mapping[str, torch.Tensor], prefix: str, ours: str, source: str) -> tuple[dict, set[str], int]:
    out, used = {}, set()
    for key, value in sd.items():
        if key.startswith(prefix) and _KEY.fullmatch(key[len(prefix) :]):
            out[ours + key[len(prefix) :]] = value
            used.add(key)
    kernel = sd[f"{prefix}conv1.weight"]
    if tuple(kernel.shape[2:]) != (7, 7) or kernel.shape[0] != 64:
        raise UserError(f"{source}: {prefix}conv1 is {tuple(kernel.shape)}; ResNet-50's is (64, bands, 7, 7)")
    blocks = [len({k[len(prefix) :].split(".")[1] for k in sd if k.startswith(f"{prefix}layer{i}.")})
              for i in range(1, 5)]  # fmt: skip
    if blocks != [3, 4, 6, 3] or sd[f"{prefix}layer1.0.conv3.weight"].shape[0] != 256:
        raise UserError(f"{source}: blocks per stage {blocks} under {prefix or 'the top level'}; only ResNet-50 "
                        "(3, 4, 6, 3 bottlenecks) is built here")  # fmt: skip
    channels = int(kernel.shape[1])
    if channels not in _BANDS:
        raise UserError(f"{source}: conv1 takes {channels} bands; supported are 13 (S2 L1C), 12 (S2 L2A), 2 (S1)")
    return out, used, channels


def _layer(channels: int) -> dict[str, Any]:
    modality, level = _BANDS[channels]
    layer: dict[str, Any] = {"backbone": "resnet50", "objective": "moco", "modality": modality}
    if level is not None:
        layer.update(s2_level=level, s2_bands=[])
    return layer


def _copy(state: dict[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    return {dst + k[len(src) :]: v for k, v in state.items() if k.startswith(src)}


def from_moco(sd: Mapping[str, torch.Tensor], source: str) -> Any:
    """MoCo v2 (``encoder_q``/``encoder_k``) or MoCo v3 (``base_encoder``/``momentum_encoder``) ResNet-50."""
    from ssl_domains.transfer import ImportedWeights

    v2 = is_resnet(sd, "encoder_q.")
    query, key = ("encoder_q.", "encoder_k.") if v2 else ("base_encoder.", "momentum_encoder.")
    ours, used, channels = _encoder(sd, query, "backbone.", source)
    if is_resnet(sd, key):
        more, more_used, _ = _encoder(sd, key, "key_encoder.module.0.", source)
        ours.update(more)
        used |= more_used
    else:
        ours.update(_copy(ours, "backbone.", "key_encoder.module.0."))
    layer, notes = _layer(channels), [f"ResNet-50, {channels} input bands"]
    if v2:
        used |= {k for k in sd if k.startswith((f"{query}fc.", f"{key}fc.")) or k in ("queue", "queue_ptr")}
        notes.append("MoCo v2 checkpoint: the encoders load; its fc MLP head and queue have no place in MoCo v3's "
                     "projector/predictor and are left out (those start fresh)")  # fmt: skip
        fresh: tuple[str, ...] = ("projector.", "predictor.", "key_encoder.module.1.")
    else:
        for theirs, mine in ((f"{query}fc.", "projector."), (f"{key}fc.", "key_encoder.module.1."),
                             ("predictor.", "predictor.")):  # fmt: skip
            ours.update(_copy(dict(sd), theirs, mine))
            used |= {k for k in sd if k.startswith(theirs)}
        weights = [v for k, v in sd.items() if k.startswith(f"{query}fc.") and v.dim() == 2]
        if len(weights) != 2:
            raise UserError(f"{source}: MoCo v3's ResNet projector has 2 layers; {query}fc has {len(weights)}")
        layer.update(hidden_dim=int(weights[0].shape[0]), proj_dim=int(weights[-1].shape[0]))
        fresh = ()
    unknown = sorted(set(sd) - used)
    if unknown:
        raise UserError(f"{source}: keys that are not a MoCo ResNet-50's ({len(unknown)}): {', '.join(unknown[:10])}")
    return ImportedWeights({"ssl4eo": layer}, ours, fresh=fresh, notes=tuple(notes))


def from_timm(sd: Mapping[str, torch.Tensor], source: str) -> Any:
    """A torchvision / timm ``resnet50`` state dict (torchgeo's SSL4EO-S12 ResNet weights)."""
    from ssl_domains.transfer import ImportedWeights

    ours, used, channels = _encoder(sd, "", "backbone.", source)
    used |= {k for k in sd if k.startswith("fc.")}
    unknown = sorted(set(sd) - used)
    if unknown:
        raise UserError(f"{source}: keys that are not a ResNet-50's ({len(unknown)}): {', '.join(unknown[:10])}")
    ours.update(_copy(ours, "backbone.", "key_encoder.module.0."))
    notes = (f"ResNet-50, {channels} input bands (torchvision / timm layout); fc dropped", "the heads are fresh")
    fresh = ("projector.", "predictor.", "key_encoder.module.1.")
    return ImportedWeights({"ssl4eo": _layer(channels)}, ours, fresh=fresh, notes=notes)


def timm_state(model: SSL4EOResNetModel) -> dict[str, torch.Tensor]:
    """Our ResNet-50 in torchvision / timm names (no ``fc``: ``resnet50(num_classes=0)`` loads it strictly)."""
    return {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}


def moco_state(model: SSL4EOResNetModel) -> dict[str, torch.Tensor]:
    """MoCo v3's ``MoCo_ResNet`` layout: ``base_encoder.*`` with ``fc`` = projector, ``momentum_encoder.*``,
    ``predictor.*``."""
    key_backbone, key_projector = model.key_encoder.module
    state: dict[str, torch.Tensor] = {}
    for prefix, module in (("base_encoder.", model.backbone), ("base_encoder.fc.", model.projector),
                           ("momentum_encoder.", key_backbone), ("momentum_encoder.fc.", key_projector),
                           ("predictor.", model.predictor)):  # fmt: skip
        state.update({prefix + k: v.detach().clone() for k, v in module.state_dict().items()})
    return state
