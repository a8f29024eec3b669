"""SSL4EO-S12's released ViT weights in and out (``ssl-domains import|export --plugin ssl4eo --format
ssl4eo-moco|ssl4eo-mae|timm``).

Three forms of the same networks (Wang et al. 2022, zhu-xlab/SSL4EO-S12 @ 2156913):

- ``ssl4eo-moco``: MoCo v3's checkpoint (``main_moco.py`` ``save_checkpoint``; SSL4EO-S12's
  ``pretrain_moco_v3_s2c.py``, e.g. ``B13_vits16_moco_0099_ckpt.pth``): ``{"state_dict": ..., "epoch", "arch",
  "optimizer"}`` whose state dict is a DistributedDataParallel one, ``module.base_encoder.*``,
  ``module.momentum_encoder.*`` and ``module.predictor.*`` (``moco_v3/builder.py``, ``MoCo_ViT``). A bare state dict,
  with or without ``module.``, is read too.
- ``ssl4eo-mae``: MAE's checkpoint (``mae/util/misc.py`` ``save_model``): ``{"model": MaskedAutoencoderViT
  state dict, "args": argparse.Namespace, ...}``; the ``Namespace`` is the one non-tensor class allowed in the
  ``weights_only`` load.
- ``timm``: a timm ``VisionTransformer`` state dict (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
  ``blocks.*``, ``norm``; an optional ``head`` is dropped), the layout torchgeo ships these weights in
  (``ViTSmall16_Weights.SENTINEL2_ALL_MOCO`` / ``_MAE``: ``timm.create_model("vit_small_patch16_224",
  in_chans=13)``).

Key map: timm's ``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`` are our
``blocks.i.{norm1, qkv, proj, norm2, ff.0, ff.3}``; the patch ``Conv2d`` ``[D, C, p, p]`` is our ``Linear`` on
channel-major patches, flattened; MoCo's ``base_encoder.head`` (the 3-layer projector) is our ``projector``,
``momentum_encoder`` our ``key_encoder.module.{0, 1}``; MAE's ``decoder_*`` our ``decoder.*``, with the output rows of
``decoder_pred`` reordered from MAE's ``(p, q, c)`` patch layout to ours, ``(c, p, q)``. Sizes come from the
shapes; attention heads leave no trace and follow the width at 64 per head (ViT-S 384 → 6, SSL4EO-S12's
``vit_small``). Our sin-cos table is computed, not stored: the file's ``pos_embed`` must equal one of our layouts
(MoCo v3's, MAE's), which sets ``positions``; a learnt table is refused. timm's LayerNorm ε is 1e-6.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ssl_domains import UserError

from . import weights_ssl4eo_resnet as resnet_weights
from .weights_ssl4eo_resnet import is_resnet

if TYPE_CHECKING:
    from .model import SinCosViT, SSL4EOModel
    from .plugin import SSL4EOConfig
    from .resnet import SSL4EOResNetModel

__all__ = [
    "from_mae",
    "from_moco",
    "from_timm",
    "read_mae",
    "read_moco",
    "read_timm",
    "write_mae",
    "write_moco",
    "write_timm",
]

_BLOCK = {"norm1": "norm1", "attn.qkv": "qkv", "attn.proj": "proj", "norm2": "norm2", "mlp.fc1": "ff.0",
          "mlp.fc2": "ff.3"}  # fmt: skip
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)")
_BANDS = {13: ("s2", "L1C"), 12: ("s2", "L2A"), 2: ("s1", None)}
_NOTE_NORM = ("normalisation: SSL4EO-S12 pretrained on its uint8 LMDB, each band clipped to mean ± 2 std of its "
              "published statistics and scaled to [0, 1], which is this plugin's default (stats: ssl4eo, "
              "normalise: clip2sigma)")  # fmt: skip


def _tensors(state: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise UserError(f"{source}: not a state dict, these entries are not tensors: {', '.join(bad[:8])}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _vit(sd: Mapping[str, torch.Tensor], prefix: str, ours: str, source: str) -> tuple[dict, dict, set[str]]:
    """The ViT under ``prefix`` in our keys; its sizes; the file keys used."""
    needed = [f"{prefix}{k}" for k in ("patch_embed.proj.weight", "cls_token", "pos_embed", "norm.weight")]
    absent = [k for k in needed if k not in sd]
    if absent:
        raise UserError(f"{source}: no {', '.join(absent)}; not a timm / MoCo v3 / MAE ViT state dict")
    kernel = sd[f"{prefix}patch_embed.proj.weight"]
    dim, channels, patch, patch_w = kernel.shape
    if patch != patch_w:
        raise UserError(f"{source}: {patch} x {patch_w} patches; square patches only")
    if channels not in _BANDS:
        raise UserError(f"{source}: the patch embedding takes {channels} bands; supported are 13 (S2 L1C), 12 (S2 "
                        "L2A) and 2 (S1 VV, VH); RGB weights are not for this plugin")  # fmt: skip
    out = {
        f"{ours}embed.weight": kernel.flatten(1),
        f"{ours}embed.bias": sd[f"{prefix}patch_embed.proj.bias"],
        f"{ours}cls": sd[f"{prefix}cls_token"].reshape(-1),
        f"{ours}norm.weight": sd[f"{prefix}norm.weight"],
        f"{ours}norm.bias": sd[f"{prefix}norm.bias"],
    }
    used = {f"{prefix}{k}" for k in ("patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed",
                                     "norm.weight", "norm.bias")}  # fmt: skip
    blocks: set[int] = set()
    for key, value in sd.items():
        match = _BLOCK_KEY.fullmatch(key.removeprefix(prefix)) if key.startswith(prefix) else None
        if match and match.group(2) in _BLOCK:
            blocks.add(int(match.group(1)))
            out[f"{ours}blocks.{match.group(1)}.{_BLOCK[match.group(2)]}.{match.group(3)}"] = value
            used.add(key)
    depth = len(blocks)
    if depth == 0 or blocks != set(range(depth)):
        raise UserError(f"{source}: transformer blocks {sorted(blocks)} under {prefix or 'the top level'}; "
                        "expected 0 .. n-1")  # fmt: skip
    grid = round((sd[f"{prefix}pos_embed"].shape[1] - 1) ** 0.5)
    sizes = {"patch": int(patch), "dim": int(dim), "depth": depth, "channels": int(channels), "grid": grid}
    return out, sizes, used


def _positions(table: torch.Tensor, grid: int, dim: int, source: str) -> str:
    """Which of our layouts the file's fixed ``pos_embed`` ``[1, 1 + N, D]`` is (its class row is zero)."""
    from .model import POSITION_TABLES

    patches = table[0, 1:].float()
    for name in ("mocov3", "mae", "interleaved"):
        if torch.allclose(patches, POSITION_TABLES[name](grid, grid, dim), atol=1e-5):
            return name
    raise UserError(f"{source}: pos_embed is not a fixed 2-D sin-cos table (MoCo v3's or MAE's); this plugin "
                    "computes its positions and cannot hold a learnt table")  # fmt: skip


def _layer(sizes: dict[str, int], positions: str, objective: str) -> dict[str, Any]:
    modality, level = _BANDS[sizes["channels"]]
    dim = sizes["dim"]
    layer: dict[str, Any] = {
        "objective": objective, "modality": modality, "patch": sizes["patch"], "dim": dim, "depth": sizes["depth"],
        "chip": sizes["grid"] * sizes["patch"], "positions": positions, "norm_eps": 1e-6,
    }  # fmt: skip
    if level is not None:
        layer["s2_level"] = level
        layer["s2_bands"] = []
    if dim % 64 == 0:
        layer["heads"] = dim // 64
    return layer


def _notes(sizes: dict[str, int], layer: dict[str, Any], form: str) -> list[str]:
    heads = layer.get("heads")
    return [
        f"{form}: ViT patch {sizes['patch']}, width {sizes['dim']}, {sizes['depth']} layers, {sizes['channels']} "
        f"input bands, trained on {layer['chip']}² chips; positions: {layer['positions']}; LayerNorm eps 1e-6",
        f"{heads} heads (not stored in the weights: 64 per head, as SSL4EO-S12's vit_small 384 -> 6)"
        if heads
        else f"heads unknown (width {sizes['dim']} is no multiple of 64): pass --set ssl4eo.heads=N",
        _NOTE_NORM,
    ]


def from_moco(state: Mapping[str, Any], source: str = "the checkpoint") -> Any:
    """A MoCo v3 ``MoCo_ViT`` state dict (SSL4EO-S12's) as :class:`ssl_domains.transfer.ImportedWeights`."""
    from ssl_domains.transfer import ImportedWeights

    sd = _tensors(state, source)
    if is_resnet(sd, "encoder_q.") or is_resnet(sd, "base_encoder."):
        return resnet_weights.from_moco(sd, source)
    ours, sizes, used = _vit(sd, "base_encoder.", "backbone.", source)
    has_momentum = "momentum_encoder.patch_embed.proj.weight" in sd
    if has_momentum:
        key, _, key_used = _vit(sd, "momentum_encoder.", "key_encoder.module.0.", source)
        ours.update(key)
        used |= key_used
    for theirs, mine in (("base_encoder.head.", "projector."), ("momentum_encoder.head.", "key_encoder.module.1."),
                         ("predictor.", "predictor.")):  # fmt: skip
        for k, v in sd.items():
            if k.startswith(theirs):
                ours[mine + k[len(theirs) :]] = v
                used.add(k)
    if not has_momentum:  # a backbone-only export: the key encoder starts as the query encoder, as in training
        ours.update({"key_encoder.module.0." + k.removeprefix("backbone."): v for k, v in ours.items()
                     if k.startswith("backbone.")})  # fmt: skip
        ours.update({"key_encoder.module.1." + k.removeprefix("projector."): v for k, v in ours.items()
                     if k.startswith("projector.")})  # fmt: skip
    unknown = sorted(set(sd) - used)
    if unknown:
        raise UserError(f"{source}: keys that are not MoCo v3's MoCo_ViT ({len(unknown)}): {', '.join(unknown[:10])}")
    projector = [v for k, v in sd.items() if k.startswith("base_encoder.head.") and v.dim() == 2]
    if len(projector) != 3 or "predictor.0.weight" not in sd:
        raise UserError(f"{source}: MoCo v3's ViT heads are a 3-layer projector (base_encoder.head.{{0,3,6}}) and a "
                        "2-layer predictor; this file has another head")  # fmt: skip
    layer = _layer(sizes, _positions(sd["base_encoder.pos_embed"], sizes["grid"], sizes["dim"], source), "moco")
    layer.update(hidden_dim=int(projector[0].shape[0]), proj_dim=int(projector[-1].shape[0]))
    notes = _notes(sizes, layer, "SSL4EO-S12 MoCo v3")
    if not has_momentum:
        notes.append("no momentum encoder in the file: the key encoder starts as a copy of the query encoder")
    return ImportedWeights({"ssl4eo": layer}, ours, fresh=("decoder.",), notes=(*notes, "the MAE decoder is fresh"))


def from_mae(state: Mapping[str, Any], source: str = "the checkpoint") -> Any:
    """An MAE ``MaskedAutoencoderViT`` state dict (SSL4EO-S12's) as ``ImportedWeights``."""
    from ssl_domains.transfer import ImportedWeights

    from .model import POSITION_TABLES

    sd = _tensors(state, source)
    ours, sizes, used = _vit(sd, "", "backbone.", source)
    channels, patch = sizes["channels"], sizes["patch"]
    decoder_dim = int(sd["decoder_embed.weight"].shape[0]) if "decoder_embed.weight" in sd else None
    if decoder_dim is None:
        raise UserError(f"{source}: no decoder_embed.weight; an MAE checkpoint holds its decoder (else use --format "
                        "timm for the encoder alone)")  # fmt: skip
    ours["decoder.mask_token"] = sd["mask_token"].reshape(-1)
    for theirs, mine in (("decoder_embed", "decoder.project"), ("decoder_norm", "decoder.norm")):
        ours.update({f"{mine}.{k}": sd[f"{theirs}.{k}"] for k in ("weight", "bias")})
    for kind in ("weight", "bias"):
        value = sd[f"decoder_pred.{kind}"]
        rest = value.shape[1:]
        ours[f"decoder.head.{kind}"] = (value.reshape(patch, patch, channels, *rest)
                                        .permute(2, 0, 1, *range(3, 3 + len(rest))).reshape(value.shape))  # fmt: skip
    used |= {"mask_token", "decoder_pos_embed"} | {f"decoder_{m}.{k}" for m in ("embed", "norm", "pred")
                                                   for k in ("weight", "bias")}  # fmt: skip
    blocks: set[int] = set()
    for key, value in sd.items():
        match = _BLOCK_KEY.fullmatch(key.removeprefix("decoder_")) if key.startswith("decoder_blocks.") else None
        if match and match.group(2) in _BLOCK:
            blocks.add(int(match.group(1)))
            ours[f"decoder.blocks.{match.group(1)}.{_BLOCK[match.group(2)]}.{match.group(3)}"] = value
            used.add(key)
    unknown = sorted(set(sd) - used)
    if unknown:
        raise UserError(f"{source}: keys that are not MAE's MaskedAutoencoderViT ({len(unknown)}): "
                        f"{', '.join(unknown[:10])}")  # fmt: skip
    positions = _positions(sd["pos_embed"], sizes["grid"], sizes["dim"], source)
    decoder_table = sd["decoder_pos_embed"][0, 1:].float()
    expected = POSITION_TABLES[positions](sizes["grid"], sizes["grid"], decoder_dim)
    if not torch.allclose(decoder_table, expected, atol=1e-5):
        raise UserError(f"{source}: decoder_pos_embed is not the encoder's sin-cos layout at width {decoder_dim}")
    layer = _layer(sizes, positions, "mae")
    layer.update(decoder_dim=decoder_dim, decoder_depth=len(blocks), decoder_cls=True, unbiased_patch_var=True)
    if decoder_dim % 32 == 0:
        layer["decoder_heads"] = decoder_dim // 32
    notes = _notes(sizes, layer, "SSL4EO-S12 MAE")
    notes.append(f"decoder {decoder_dim} x {len(blocks)}, class token through the decoder (decoder_cls) and "
                 "unbiased norm_pix_loss variance, as MAE's code; decoder heads are not stored: 32 per head, as "
                 "MAE's 512-wide decoder has 16 (else --set ssl4eo.decoder_heads=N)")  # fmt: skip
    return ImportedWeights({"ssl4eo": layer}, ours, fresh=("projector.", "predictor."), notes=tuple(notes))


def from_timm(state: Mapping[str, Any], source: str = "the checkpoint") -> Any:
    """A timm ``VisionTransformer`` state dict (torchgeo's SSL4EO-S12 ViT weights) as ``ImportedWeights``."""
    from ssl_domains.transfer import ImportedWeights

    sd = _tensors(state, source)
    if is_resnet(sd):
        return resnet_weights.from_timm(sd, source)
    ours, sizes, used = _vit(sd, "", "backbone.", source)
    used |= {k for k in sd if k.startswith(("head.", "fc_norm."))}
    unknown = sorted(set(sd) - used)
    if unknown:
        raise UserError(f"{source}: keys that are not a timm VisionTransformer's ({len(unknown)}): "
                        f"{', '.join(unknown[:10])}")  # fmt: skip
    positions = _positions(sd["pos_embed"], sizes["grid"], sizes["dim"], source)
    layer = _layer(sizes, positions, "moco")
    ours.update({"key_encoder.module.0." + k.removeprefix("backbone."): v for k, v in ours.items()})
    notes = _notes(sizes, layer, "timm ViT (torchgeo layout)")
    notes.append("the encoder alone: projector, predictor and MAE decoder are fresh, the key encoder's backbone "
                 "is a copy of it (MoCo v3 starts so)")  # fmt: skip
    if any(k.startswith("head.") for k in sd):
        notes.append("dropped head.*: a classifier the SSL heads do not use")
    fresh = ("projector.", "predictor.", "decoder.", "key_encoder.module.1.")
    return ImportedWeights({"ssl4eo": layer}, ours, fresh=fresh, notes=tuple(notes))


def _read(path: Path, *inner: str) -> Mapping[str, Any]:
    from ssl_domains.transfer import read_checkpoint

    with torch.serialization.safe_globals([argparse.Namespace]):  # MAE's save_model stores its args
        state = read_checkpoint(path)
    for key in inner:
        if isinstance(state.get(key), Mapping):
            return state[key]
    return state


def read_moco(path: Path) -> Any:
    """``--format ssl4eo-moco``: MoCo v3's checkpoint (``state_dict``) or a bare ``MoCo_ViT`` state dict."""
    return from_moco(_read(path, "state_dict"), str(path))


def read_mae(path: Path) -> Any:
    """``--format ssl4eo-mae``: MAE's checkpoint (``model``) or a bare ``MaskedAutoencoderViT`` state dict."""
    return from_mae(_read(path, "model"), str(path))


def read_timm(path: Path) -> Any:
    """``--format timm``: a timm ViT state dict (torchgeo's SSL4EO-S12 weights; ``state_dict`` / ``model`` too)."""
    return from_timm(_read(path, "state_dict", "model"), str(path))


# ---- out: ``ssl-domains export`` ---------------------------------------------------------------------------------
_TO_TIMM = {v: k for k, v in _BLOCK.items()}


def _timm_state(backbone: SinCosViT, prefix: str, channels: int, patch: int, grid: int) -> dict[str, torch.Tensor]:
    """Our ``SinCosViT`` in timm's names, with the fixed table it uses as ``pos_embed`` (class row zero)."""
    from .model import POSITION_TABLES

    out: dict[str, torch.Tensor] = {}
    for key, value in backbone.state_dict().items():
        match = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key)
        if key.startswith("embed."):
            leaf = key.split(".")[1]
            kernel = value.reshape(-1, channels, patch, patch) if leaf == "weight" else value
            out[f"{prefix}patch_embed.proj.{leaf}"] = kernel
        elif key == "cls":
            out[f"{prefix}cls_token"] = value.reshape(1, 1, -1)
        elif match:
            out[f"{prefix}blocks.{match.group(1)}.{_TO_TIMM[match.group(2)]}.{match.group(3)}"] = value
        else:
            out[prefix + key] = value
    dim = backbone.cls.shape[0]
    table = POSITION_TABLES[backbone.positions](grid, grid, dim).to(backbone.cls.dtype)
    out[f"{prefix}pos_embed"] = torch.cat([torch.zeros(1, dim, dtype=table.dtype), table])[None]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def _sizes(model: SSL4EOModel, cfg: SSL4EOConfig) -> tuple[int, int, int]:
    if cfg.chip % cfg.patch:
        raise UserError(f"chip {cfg.chip} is not a multiple of patch {cfg.patch}")
    return model.in_channels, model.patch, cfg.chip // cfg.patch


def write_timm(model: SSL4EOModel | SSL4EOResNetModel, cfg: SSL4EOConfig, path: Path) -> None:
    """``--format timm``: the encoder as a timm ``VisionTransformer`` state dict (``num_classes=0``), loadable with
    ``timm.create_model("vit_small_patch16_224", in_chans=13, num_classes=0).load_state_dict(...)`` at ViT-S sizes
    and by torchgeo's ViT; ``pos_embed`` holds our fixed table (a timm ViT learns it from there)."""
    if cfg.backbone == "resnet50":  # torchvision / timm resnet50(num_classes=0), torchgeo's ResNet50 weights
        torch.save(resnet_weights.timm_state(model), path)
        return
    channels, patch, grid = _sizes(model, cfg)
    torch.save(_timm_state(model.backbone, "", channels, patch, grid), path)


def write_moco(model: SSL4EOModel | SSL4EOResNetModel, cfg: SSL4EOConfig, path: Path) -> None:
    """``--format ssl4eo-moco``: MoCo v3's checkpoint layout, which SSL4EO-S12's ``main_lincls``-style loaders and
    ``MoCo_ViT.load_state_dict`` (after removing ``module.``) read."""
    if model.key_encoder is None:
        raise UserError("this run trained objective mae: it has no MoCo heads or momentum encoder; export --format "
                        "ssl4eo-mae (or timm for the encoder alone)")  # fmt: skip
    if cfg.backbone == "resnet50":
        state = {f"module.{k}": v for k, v in resnet_weights.moco_state(model).items()}
        torch.save({"epoch": 0, "arch": "resnet50", "state_dict": state}, path)
        return
    channels, patch, grid = _sizes(model, cfg)
    key_backbone, key_projector = model.key_encoder.module
    state = _timm_state(model.backbone, "base_encoder.", channels, patch, grid)
    state.update(_timm_state(key_backbone, "momentum_encoder.", channels, patch, grid))
    for prefix, module in (("base_encoder.head.", model.projector), ("momentum_encoder.head.", key_projector),
                           ("predictor.", model.predictor)):  # fmt: skip
        state.update({prefix + k: v.detach().clone() for k, v in module.state_dict().items()})
    torch.save({"epoch": 0, "arch": "vit_small", "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)


def write_mae(model: SSL4EOModel, cfg: SSL4EOConfig, path: Path) -> None:
    """``--format ssl4eo-mae``: MAE's checkpoint layout (``{"model": MaskedAutoencoderViT state dict}``)."""
    from .model import POSITION_TABLES

    if cfg.objective != "mae" or not cfg.decoder_cls:
        raise UserError("MAE's code passes the class token through its decoder: export --format ssl4eo-mae needs a "
                        "run trained with objective: mae and decoder_cls: true (or export --format timm)")  # fmt: skip
    channels, patch, grid = _sizes(model, cfg)
    state = _timm_state(model.backbone, "", channels, patch, grid)
    decoder = {k: v.detach().clone() for k, v in model.decoder.state_dict().items()}
    state["mask_token"] = decoder.pop("mask_token").reshape(1, 1, -1)
    for ours, theirs in (("project", "decoder_embed"), ("norm", "decoder_norm")):
        for leaf in ("weight", "bias"):
            state[f"{theirs}.{leaf}"] = decoder.pop(f"{ours}.{leaf}")
    for leaf in ("weight", "bias"):  # our (c, p, q) patch layout -> MAE's (p, q, c)
        value = decoder.pop(f"head.{leaf}")
        rest = value.shape[1:]
        state[f"decoder_pred.{leaf}"] = (
            value.reshape(channels, patch, patch, *rest)
            .permute(1, 2, 0, *range(3, 3 + len(rest)))
            .reshape(value.shape)
            .contiguous()
        )
    for key, value in decoder.items():
        i, sub = key.removeprefix("blocks.").split(".", 1)
        module, leaf = sub.rsplit(".", 1)
        state[f"decoder_blocks.{i}.{_TO_TIMM[module]}.{leaf}"] = value
    dim = model.decoder.mask_token.shape[0]
    table = POSITION_TABLES[model.decoder.positions](grid, grid, dim)
    state["decoder_pos_embed"] = torch.cat([torch.zeros(1, dim), table])[None].to(state["mask_token"].dtype)
    torch.save({"model": state, "epoch": 0}, path)
