"""MONAI bundle weights in (``ssl-domains import --plugin contrastive3d --format monai-bundle``).

A MONAI model-zoo bundle keeps its network's weights in ``models/model.pt``: the ``state_dict()`` of the network its
``configs/inference.json`` builds, plain or under ``"model"`` / ``"state_dict"`` (``CheckpointSaver`` /
``CheckpointLoader``). Where that network is one of ours, MONAI's ``UNETR`` or ``SwinUNETR`` with one input channel
(e.g. ``swin_unetr_btcv_segmentation``: ``SwinUNETR(in_channels=1, out_channels=14, feature_size=48)``), the whole
encoder-decoder loads into our ``VolumeNet.net`` under the identity key map ``k -> net.net.k``. The output layer
``out.*`` is a segmentation head of the bundle's classes: it loads only when its shape is ours (one channel, the
reconstruction), else it starts fresh, with a note. Sizes come from the shapes: ``feature_size`` (``encoder1``),
the ViT width and the crop (``position_embeddings``: ``(roi / 16)^3`` tokens); ViT heads are not stored and follow
the width at 64 per head (MONAI's 768 → 12). MONAI's cross-attention norms (``norm_cross_attn``, absent from bundles
written before MONAI 1.4) start fresh when missing: they are unused without cross-attention.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ssl_domains import UserError

__all__ = ["from_bundle", "read"]


def _state(state: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict", "network"):
        if isinstance(state.get(key), Mapping):
            state = state[key]
            break
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise UserError(f"{source}: not a network state dict, these entries are not tensors: {', '.join(bad[:8])}")
    return {k.removeprefix("module."): v for k, v in state.items()}


ALICE_FRESH = (
    "cls_head.",
    "query_proj.",
    "context_proj.",
    "align.",
    "patch_prototypes",
    "teacher.module.1.",
    "teacher.module.2.",
    "teacher.module.3.",
    "center_",
    "pending_",
    "progress",
    "planned_steps",
)
"""What an encoder-decoder file leaves fresh in an Alice model: its heads, CASA and the DINO state."""


def for_alice(weights: Any) -> Any:
    """``weights`` of a contrastive3d import, for Alice: the network also as the teacher's starting copy
    (``teacher.module.0``, as ``EMATeacher`` starts), the Alice heads and DINO state fresh."""
    from ssl_domains.transfer import ImportedWeights

    layer = {k: v for k, v in weights.config["contrastive3d"].items() if k != "decoder"}
    ours = dict(weights.state_dict)
    # the student's ``net.K`` is the teacher's ``teacher.module.0.K`` (its first part is the VolumeNet itself)
    ours.update({"teacher.module.0." + k[4:]: v for k, v in weights.state_dict.items() if k.startswith("net.")})
    fresh = [f for f in weights.fresh if not f.startswith(("projector.", "rotation_head.", "net.bottleneck"))]
    fresh += ["teacher.module.0." + f[4:] for f in fresh if f.startswith("net.")] + list(ALICE_FRESH)
    notes = [n.replace("the projector and rotation heads", "the Alice heads") for n in weights.notes]
    return ImportedWeights({"alice": layer}, ours, fresh=tuple(fresh), notes=(*notes, "the teacher starts as a copy"))


def from_bundle(state: Mapping[str, Any], source: str = "the checkpoint") -> Any:
    """A bundle's ``UNETR`` / ``SwinUNETR`` state dict as :class:`ssl_domains.transfer.ImportedWeights`."""
    from ssl_domains.transfer import ImportedWeights

    sd = _state(state, source)
    if "swinViT.patch_embed.proj.weight" in sd:
        kernel = sd["swinViT.patch_embed.proj.weight"]
        layer: dict[str, Any] = {"backbone": "swin", "decoder": "unetr", "feature_size": int(kernel.shape[0])}
        channels, name = int(kernel.shape[1]), "SwinUNETR"
        fresh: list[str] = []
    elif "vit.patch_embedding.position_embeddings" in sd:
        positions = sd["vit.patch_embedding.position_embeddings"]
        tokens, hidden = int(positions.shape[1]), int(positions.shape[2])
        grid = round(tokens ** (1 / 3))
        if grid**3 != tokens:
            raise UserError(f"{source}: {tokens} position embeddings are no cube; our UNETR takes cubic crops")
        fc1 = sd.get("vit.blocks.0.mlp.linear1.weight")
        if fc1 is not None and fc1.shape[0] != 4 * hidden:
            raise UserError(f"{source}: the ViT's MLP is {fc1.shape[0]} wide; ours is 4 x hidden_size ({4 * hidden})")
        layer = {"backbone": "vit", "decoder": "unetr", "hidden_size": hidden, "roi": grid * 16,
                 "feature_size": int(sd["encoder1.layer.conv1.conv.weight"].shape[0])}  # fmt: skip
        if hidden % 64 == 0:
            layer["num_heads"] = hidden // 64
        channels = int(sd["vit.patch_embedding.patch_embeddings.weight"].shape[1])
        name = "UNETR"
        blocks = sorted({int(k.split(".")[2]) for k in sd if k.startswith("vit.blocks.")})
        fresh = [f"net.net.vit.blocks.{i}.norm_cross_attn" for i in blocks
                 if f"vit.blocks.{i}.norm_cross_attn.weight" not in sd]  # fmt: skip
    else:
        raise UserError(f"{source}: neither a MONAI UNETR (vit.patch_embedding...) nor a SwinUNETR "
                        "(swinViT.patch_embed...) state dict; other bundle networks are not this plugin's")  # fmt: skip
    if channels != 1:
        raise UserError(f"{source}: the {name} takes {channels} input channels; this plugin's takes 1")
    ours = {f"net.net.{k}": v for k, v in sd.items() if not k.startswith("out.")}
    out = {k: v for k, v in sd.items() if k.startswith("out.")}
    out_channels = int(out["out.conv.conv.weight"].shape[0]) if "out.conv.conv.weight" in out else None
    notes = [f"MONAI {name} bundle weights: {', '.join(f'{k} {v}' for k, v in layer.items())}"]
    if out_channels == 1:
        ours.update({f"net.net.{k}": v for k, v in out.items()})
    else:
        fresh.append("net.net.out.")
        notes.append(f"the bundle's output layer ({out_channels} classes) is a segmentation head: left out, our "
                     "1-channel reconstruction head starts fresh")  # fmt: skip
    if "num_heads" not in layer and name == "UNETR":
        notes.append(f"ViT heads unknown (width {layer['hidden_size']} is no multiple of 64): pass --set "
                     "contrastive3d.num_heads=N")  # fmt: skip
    notes.append("fresh: the mask token and the projector and rotation heads; preprocessing: set intensity, "
                 "ct_window and spacing as the bundle's configs/train.json transforms do")  # fmt: skip
    fresh += ["net.mask_token", "projector.", "rotation_head."]
    return ImportedWeights({"contrastive3d": layer}, ours, fresh=tuple(fresh), notes=tuple(notes))


def read(path: Path) -> Any:
    """``--format monai-bundle``: a bundle's ``models/model.pt`` (or any saved UNETR / SwinUNETR state dict)."""
    from ssl_domains.transfer import read_checkpoint

    return from_bundle(read_checkpoint(path), str(path))


def read_alice(path: Path) -> Any:
    """``alice --format monai-bundle``: as :func:`read`, for an Alice run (student and teacher)."""
    return for_alice(read(path))
