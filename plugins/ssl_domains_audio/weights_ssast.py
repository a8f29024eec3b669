"""SSAST's released checkpoints in and out (``ssl-domains import|export --plugin ssast --format ssast``).

The format (YuanGongND/ssast @ a1a3eec): ``torch.save(audio_model.state_dict(), path)`` of the pretraining-stage
``ASTModel`` (``src/models/ast_models.py``) wrapped in ``torch.nn.DataParallel`` (``src/traintest_mask.py``:
``audio_model = nn.DataParallel(audio_model)``, then ``torch.save(audio_model.state_dict(), ...)``), so every key
starts with ``module.``. ``ASTModel`` holds a timm 0.4.5 DeiT-distilled ViT as ``v`` with its patch projection
replaced by a one-channel ``Conv2d(kernel = stride = (fshape, tshape))`` and its position table by one sized for
the pretraining input (``input_fdim × input_tdim``, saved as the 0-dim ``p_input_fdim`` / ``p_input_tdim``).
The fine-tuning code (``ASTModel(pretrain_stage=False, load_pretrained_mdl_path=...)``) reads exactly these files.

Key map (reference, after ``module.`` → ours, :class:`ssl_domains_audio.model.SSASTModel`):

==========================================  =============================================================
``v.patch_embed.proj.{weight,bias}``        ``patch_embed.{weight,bias}`` (kernel ``[dim, 1, fshape, tshape]``)
``v.cls_token``, ``v.dist_token``           ``cls_tokens`` (``[1, 2, dim]``: cls then dist)
``v.pos_embed`` ``[1, 2 + F·T, dim]``       ``cls_positions`` (its first 2 rows) and ``positions``
                                            ``[1, F, T, dim]`` (the rest; row-major over frequency, time)
``v.blocks.i.norm1`` / ``norm2``            ``blocks.i.norm1`` / ``norm2``
``v.blocks.i.attn.qkv`` / ``attn.proj``     ``blocks.i.qkv`` / ``proj`` (same ``[3, heads, head_dim]`` layout)
``v.blocks.i.mlp.fc1`` / ``mlp.fc2``        ``blocks.i.ff.0`` / ``ff.3``
``v.norm``                                  ``norm``
``cpredlayer.{0,2}`` / ``gpredlayer.{0,2}`` ``discriminative_head.{0,2}`` / ``generative_head.{0,2}``
``mask_embed``                              ``mask_embed``
``p_input_fdim``, ``p_input_tdim``          the config layer (``num_mel_bins``, ``max_frames``)
``v.head``, ``v.head_dist``                 dropped: DeiT's ImageNet classifiers, never used by SSAST
                                            (the writer fills them with zeros, so a strict load works)
==========================================  =============================================================

Sizes come from the shapes: ``fshape × tshape`` from the kernel (16 × 16: ``mode: patch``; ``input_fdim`` × 2:
``mode: frame``), ``dim`` from its output channels, ``depth`` from the block count, ``ff_dim`` from ``fc1``.
Attention heads leave no trace in the weights: they follow the width as in the reference's three sizes (DeiT
tiny 192 → 3, small 384 → 6, base 768 → 12; head width 64, used for any other multiple of 64); any other width
needs ``--set ssast.heads=N``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ssl_domains import UserError

if TYPE_CHECKING:
    from .plugin import SSASTConfig

__all__ = ["REFERENCE_NORM", "from_reference", "read", "to_reference", "write"]

REFERENCE_NORM = (-4.2677393, 4.5689974)
"""AudioSet's fbank mean and std, with which every released model was pretrained (``dataset_mean`` /
``dataset_std`` in ``src/pretrain/run_mask_{patch,frame}.sh``; the loader computes ``(x - mean) / (2 std)``)."""
DEIT_SIZES = {192: ("tiny", 3), 384: ("small", 6), 768: ("base", 12)}
"""Width -> (the reference's ``model_size``, heads): ``ASTModel`` builds DeiT tiny, small or base, 12 layers."""
REFERENCE_PATCH_DIM = 256
"""``cpredlayer`` / ``gpredlayer`` output 256 values, hard-coded in the reference (16 × 16 or 128 × 2 patches)."""
IMAGENET_CLASSES = 1000

_PREFIX = "module."
_BLOCK = {
    "norm1": "norm1", "attn.qkv": "qkv", "attn.proj": "proj", "norm2": "norm2", "mlp.fc1": "ff.0", "mlp.fc2": "ff.3",
}  # fmt: skip
_LINEAR = {
    "v.patch_embed.proj": "patch_embed",
    "v.norm": "norm",
    "cpredlayer.0": "discriminative_head.0",
    "cpredlayer.2": "discriminative_head.2",
    "gpredlayer.0": "generative_head.0",
    "gpredlayer.2": "generative_head.2",
}
_DEIT_HEADS = ("v.head.weight", "v.head.bias", "v.head_dist.weight", "v.head_dist.bias")
_BLOCK_KEY = re.compile(r"v\.blocks\.(\d+)\.(.+)\.(weight|bias)")


def _strip(state: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise UserError(f"{source}: not an SSAST state dict, these entries are not tensors: {', '.join(bad[:8])}")
    return {k[len(_PREFIX) :] if k.startswith(_PREFIX) else k: v for k, v in state.items()}


def from_reference(state: Mapping[str, Any], source: str = "the checkpoint") -> Any:
    """Map a reference ``ASTModel`` state dict (with or without DataParallel's ``module.``) onto
    :class:`~ssl_domains_audio.model.SSASTModel`; an :class:`ssl_domains.transfer.ImportedWeights`."""
    from ssl_domains.transfer import ImportedWeights

    sd = _strip(state, source)
    needed = ("v.patch_embed.proj.weight", "v.pos_embed", "v.cls_token", "p_input_fdim", "p_input_tdim")
    absent = [_PREFIX + k for k in needed if k not in sd]
    if absent:
        raise UserError(
            f"{source} is not a pretraining-stage SSAST ASTModel state dict: no {', '.join(absent)} (the released "
            "SSAST-*.pth files and `torch.save(nn.DataParallel(ASTModel(pretrain_stage=True)).state_dict())` "
            "hold them; fine-tuned AST checkpoints are not supported)"
        )
    if "v.dist_token" not in sd:
        raise UserError(f"{source}: no module.v.dist_token; only DeiT-distilled SSAST (tiny, small, base) is "
                        "supported, not model_size 'base_nokd' (one cls token)")  # fmt: skip
    kernel = sd["v.patch_embed.proj.weight"]
    dim, channels, fshape, tshape = kernel.shape
    fdim, tdim = int(sd["p_input_fdim"]), int(sd["p_input_tdim"])
    if channels != 1:
        raise UserError(f"{source}: the patch projection takes {channels} channels; SSAST's takes 1 (a spectrogram)")
    if (fshape, tshape) == (16, 16):
        mode = "patch"
    elif tshape == 2 and fshape == fdim:
        mode = "frame"
    else:
        raise UserError(
            f"{source}: patches of {fshape} x {tshape} on a {fdim}-bin input; supported are 16 x 16 (patch) and "
            f"{fdim} x 2 (frame), the shapes of the released models"
        )
    rows, cols = fdim // fshape, tdim // tshape
    positions = sd["v.pos_embed"]
    if tuple(positions.shape) != (1, 2 + rows * cols, dim):
        raise UserError(f"{source}: module.v.pos_embed is {tuple(positions.shape)}; a {fdim} x {tdim} input in "
                        f"{fshape} x {tshape} patches needs (1, {2 + rows * cols}, {dim})")  # fmt: skip

    ours: dict[str, torch.Tensor] = {}
    used = set(needed) | {"v.dist_token"}
    ours["patch_embed.weight"] = kernel
    ours["cls_tokens"] = torch.cat([sd["v.cls_token"], sd["v.dist_token"]], dim=1)
    ours["cls_positions"] = positions[:, :2]
    ours["positions"] = positions[:, 2:].reshape(1, rows, cols, dim)
    for theirs, mine in _LINEAR.items():
        for kind in ("weight", "bias"):
            if f"{theirs}.{kind}" in sd and f"{mine}.{kind}" not in ours:
                ours[f"{mine}.{kind}"] = sd[f"{theirs}.{kind}"]
                used.add(f"{theirs}.{kind}")
    blocks: set[int] = set()
    for key, value in sd.items():
        match = _BLOCK_KEY.fullmatch(key)
        if match and match.group(2) in _BLOCK:
            blocks.add(int(match.group(1)))
            ours[f"blocks.{match.group(1)}.{_BLOCK[match.group(2)]}.{match.group(3)}"] = value
            used.add(key)
    if "mask_embed" in sd:
        ours["mask_embed"] = sd["mask_embed"]
        used.add("mask_embed")
    used |= {k for k in _DEIT_HEADS if k in sd}
    unknown = sorted(set(sd) - used)
    if unknown:
        listed = ", ".join(_PREFIX + k for k in unknown[:12]) + (" ..." if len(unknown) > 12 else "")
        raise UserError(f"{source}: keys that are not part of SSAST's ASTModel ({len(unknown)}): {listed}")
    depth = len(blocks)
    if blocks != set(range(depth)) or depth == 0:
        raise UserError(f"{source}: transformer blocks {sorted(blocks)}; expected 0 .. n-1")
    fc1 = sd.get("v.blocks.0.mlp.fc1.weight")
    fresh = tuple(
        prefix
        for prefix, theirs in (
            ("discriminative_head", "cpredlayer"),
            ("generative_head", "gpredlayer"),
            ("mask_embed", "mask_embed"),
        )
        if not any(k == theirs or k.startswith(theirs + ".") for k in sd)
    )
    size, heads = DEIT_SIZES.get(dim, (None, dim // 64 if dim % 64 == 0 else None))
    layer: dict[str, Any] = {
        "mode": mode,
        "num_mel_bins": fdim,
        "dim": dim,
        "depth": depth,
        "max_frames": cols * tshape,
        "norm_mean": REFERENCE_NORM[0],
        "norm_std": REFERENCE_NORM[1],
        "position_crop": "centre",
    }
    if fc1 is not None:
        layer["ff_dim"] = int(fc1.shape[0])
    if heads is not None:
        layer["heads"] = heads
    name = f"SSAST-{(size or 'custom').capitalize()}-{mode.capitalize()}"
    notes = [
        f"{name}: {fshape} x {tshape} patches, dim {dim}, {depth} layers, feed-forward {layer.get('ff_dim')}, "
        + (
            f"{heads} heads (not stored in the weights: taken from the width as the reference's DeiT "
            "tiny 192 -> 3, small 384 -> 6, base 768 -> 12, i.e. 64 per head)"
            if heads is not None
            else f"heads unknown (not stored in the weights; width {dim} is no multiple of 64): pass "
            "--set ssast.heads=N"
        ),
        f"pretraining input {fdim} bins x {tdim} frames: the position table covers max_frames {cols * tshape}; "
        "longer clips are centre-cropped at embed time (the reference's fine-tuning interpolates the table)",
        "position_crop: centre (shorter clips take the centre columns of the table, as the reference's "
        "fine-tuning cuts it)",
        f"normalisation: AudioSet's fbank mean {REFERENCE_NORM[0]} and std {REFERENCE_NORM[1]}, (x - mean) / "
        "(2 std), as the released models were pretrained (src/pretrain/run_mask_*.sh); "
        "--set ssast.norm_mean=null --set ssast.norm_std=null fits the data's own instead",
    ]
    if any(k in sd for k in _DEIT_HEADS):
        notes.append("dropped module.v.head and module.v.head_dist: DeiT's ImageNet classifiers, unused by SSAST")
    if fresh:
        notes.append(f"not in the file, left at their initialisation: {', '.join(fresh)}")
    return ImportedWeights(config={"ssast": layer}, state_dict=ours, fresh=fresh, notes=tuple(notes))


def read(path: Path) -> Any:
    """``ssl-domains import --format ssast``: a released SSAST ``.pth`` file as ``ImportedWeights``."""
    from ssl_domains.transfer import read_checkpoint

    return from_reference(read_checkpoint(Path(path)), str(path))


def to_reference(model: torch.nn.Module, cfg: SSASTConfig) -> dict[str, torch.Tensor]:
    """Our model's weights in the reference's key layout, with the ``module.`` prefix (see the key map)."""
    ours = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    dim = ours["patch_embed.weight"].shape[0]
    rows, cols = ours["positions"].shape[1:3]
    sd: dict[str, torch.Tensor] = {}
    for theirs, mine in _LINEAR.items():
        for kind in ("weight", "bias"):
            sd[f"{theirs}.{kind}"] = ours[f"{mine}.{kind}"]
    for key, value in ours.items():
        match = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key)
        if match:
            theirs = {v: k for k, v in _BLOCK.items()}[match.group(2)]
            sd[f"v.blocks.{match.group(1)}.{theirs}.{match.group(3)}"] = value
    sd["v.cls_token"], sd["v.dist_token"] = ours["cls_tokens"][:, :1].clone(), ours["cls_tokens"][:, 1:].clone()
    sd["v.pos_embed"] = torch.cat([ours["cls_positions"], ours["positions"].reshape(1, rows * cols, dim)], dim=1)
    sd["mask_embed"] = ours["mask_embed"]
    dtype = sd["v.pos_embed"].dtype
    sd["v.head.weight"] = torch.zeros(IMAGENET_CLASSES, dim, dtype=dtype)
    sd["v.head.bias"] = torch.zeros(IMAGENET_CLASSES, dtype=dtype)
    sd["v.head_dist.weight"] = torch.zeros(IMAGENET_CLASSES, dim, dtype=dtype)
    sd["v.head_dist.bias"] = torch.zeros(IMAGENET_CLASSES, dtype=dtype)
    patch_t = cfg.patch()[1]
    sd["p_input_fdim"] = torch.tensor(int(cfg.num_mel_bins))
    sd["p_input_tdim"] = torch.tensor(int(cols) * patch_t)
    return {_PREFIX + k: v.contiguous() for k, v in sd.items()}


def write(model: torch.nn.Module, cfg: SSASTConfig, path: Path, *, any_size: bool = False) -> None:
    """``ssl-domains export --format ssast``: a file that the reference's ``ASTModel(pretrain_stage=False,
    load_pretrained_mdl_path=path, model_size=...)`` loads (and ``nn.DataParallel(ASTModel(pretrain_stage=True))
    .load_state_dict`` strictly).

    The reference builds only DeiT tiny / small / base (12 layers, feed-forward 4 · dim) and loads with
    ``strict=False``, which would leave missing blocks at random without a word: other sizes are refused
    (``any_size=True``, for tests and the equivalence check only, writes them anyway)."""
    patch_f, patch_t = cfg.patch()
    if patch_f * patch_t != REFERENCE_PATCH_DIM:
        raise UserError(f"ssast export: the reference's heads output {REFERENCE_PATCH_DIM} values; this run's "
                        f"patches are {patch_f} x {patch_t} (frame mode needs num_mel_bins 128)")  # fmt: skip
    size = DEIT_SIZES.get(int(cfg.dim))
    if not any_size and (size is None or size[1] != cfg.heads or cfg.depth != 12 or cfg.ff_dim != 4 * cfg.dim):
        raise UserError(
            f"ssast export: the reference's ASTModel builds DeiT tiny (dim 192, 3 heads), small (384, 6) or base "
            f"(768, 12), 12 layers, feed-forward 4 x dim; this run is dim {cfg.dim}, {cfg.heads} heads, "
            f"{cfg.depth} layers, feed-forward {cfg.ff_dim}, which its code cannot load"
        )
    torch.save(to_reference(model, cfg), str(path))
