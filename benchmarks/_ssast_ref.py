"""One training step of the reference SSAST (YuanGongND/ssast @ a1a3eec) at our configuration, for speed comparisons.

The reference is never part of this repository: pass the directory of a checkout
(``git clone https://github.com/YuanGongND/ssast /tmp/ssast_ref && git -C /tmp/ssast_ref checkout a1a3eec``).
It needs ``timm==0.4.5`` (its ``ASTModel`` asserts the version; a pure-Python wheel: ``pip install --no-deps
timm==0.4.5``, which leaves torch alone). timm 0.4.5 imports torchvision only for its image transforms, which
are never used here: when torchvision is absent, empty stand-ins take its place. Only
``src/models/ast_models.py`` is loaded (by file path); its training loop (``src/traintest_mask.py::trainmask``)
is not: :func:`reference_step` repeats its per-iteration body for ``--task pretrain_joint``.

What one reference step does, all included in the closure: the host-to-device copy of the batch, the
``pretrain_mpc`` forward (unfold of the raw patches; a Python loop over the clips drawing each clip's mask with
``gen_maskid_patch``, pure-Python ``randrange`` draws and set unions, or ``gen_maskid_frame``, then indexed copies
to the device; the masked ViT; a second loop applying the discriminative head clip by clip; a third computing
InfoNCE and accuracy clip by clip), the ``pretrain_mpg`` forward (the same with a fresh mask, and the generative
head and its target gathered clip by clip), ``loss = nce + 10 * mse``, ``zero_grad``, backward, ``Adam.step``,
and the loop's three ``.item()`` reads of the accuracy and loss (host syncs). On CUDA the model is wrapped in
``nn.DataParallel`` on the batch's device, as ``trainmask`` does (one device: a scatter of the inputs, then a
direct call).

Settings mapped from our ``SSASTConfig``: the patch (``mode``: 16 × 16 patches with cluster masking, or
``num_mel_bins`` × 2 frames with random masking, as the reference's ``cluster = num_mel_bins != fshape``),
``num_mel_bins`` (``input_fdim``), the batch's frame count (``input_tdim``), ``dim``, ``depth``, ``heads``,
``ff_dim`` (DeiT's ``mlp_ratio`` = ``ff_dim / dim``), ``dropout`` (timm's ``drop_rate`` and
``attn_drop_rate``), ``mask_ratio`` (``mask_patch`` = ``round(mask_ratio · patches)``); Adam at our learning
rate, betas and weight decay (plugin ``run_defaults``: those of the reference's ``trainmask`` and its tiny
launch script). The ViT is the reference's own construction path: ``ASTModel(..., model_size="tiny",
pretrain_stage=True)`` with timm's ``create_model`` answering the DeiT-distilled request at our sizes (the same
``DistilledVisionTransformer`` class, through timm's ``_create_vision_transformer``), then the reference replaces
the patch projection and position table as it always does.

Differences that remain:

- Forward passes: the reference's joint task runs the encoder twice per step, each with its own mask (one for
  the InfoNCE, one for the MSE); ours runs once by default (``forward_passes=1``; ``forward_passes=2``
  reproduces the reference's two passes).
- Masking: the reference masks ``mask_patch`` patches of every clip anywhere on the grid, padding included, and
  attends over every patch (no padding mask); ours masks ``round(mask_ratio · valid patches)`` among the patches
  holding audio and excludes padding from attention and losses. Its cluster squares are built from a random
  side drawn once per clip in ``[3, 5]``, anchors drawn until more than ``mask_patch`` distinct patches are
  covered, kept as ``list(set(...))[:mask_patch]`` (set order, not draw order; patch 0 is never masked, squares
  wrap across frequency rows); ours also draws one side per clip, places anchors only on audio, takes patches in
  the order the squares cover them, and clips squares at the grid's edges, all in one batched op.
- InfoNCE: the reference normalises over the predictions for each target (ssast#13); ours follows the paper's
  Eq. 1 by default (``nce_softmax="reference"`` reproduces it). The reference's MSE weight is a literal 10
  (ours ``mse_weight``, 10 by default).
- Blocks: timm 0.4.5's ViT block (``qkv`` Linear, explicit ``q @ k^T`` / softmax / dropout, ``nn.LayerNorm``
  eps 1e-6, GELU MLP, ``DropPath`` at rate 0); ours are pre-norm SDPA blocks with ``nn.LayerNorm`` eps 1e-6 and
  timm's initialisation (the same function: ``benchmarks/equivalence.py --plugin ssast``).
  The reference model also holds DeiT's unused ImageNet heads (``head``, ``head_dist``: ``dim × 1000`` each),
  trainable but never given a gradient, which Adam skips. Apart from those and the position table (the
  reference's sized for the batch's frame count, ours for ``max_frames``), the parameter counts are equal.
- Optimizer: ``torch.optim.Adam`` in PyTorch's default (for-each) implementation, at a fixed rate (the
  reference's warm-up sets the rate every 50 of its first 1000 steps); ours is ``fused=True`` on CUDA.
- Inputs: our batch (FSDD fbank, 128-frame crops by default, zero-padded), copied to the host once when the
  closure is built, as the reference's DataLoader hands it host tensors; the reference trains on 1024-frame
  AudioSet + LibriSpeech clips padded or cut to ``target_length`` (``mask_patch`` 400 of 512 patches).
- Precision: float32 (the reference has no mixed precision).
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import io
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _timm import import_timm

REFERENCE_PATCH_DIM = 256
"""The reference's heads and InfoNCE buffers are hard-coded to 256 outputs (16 × 16 patches, or 128 × 2 frames)."""
REFERENCE_MSE_WEIGHT = 10
"""``loss = loss1 + 10 * loss2`` in ``traintest_mask.py`` (``pretrain_joint``)."""

_LOADED: dict[Path, types.ModuleType] = {}


def import_reference(ref_dir: Path) -> types.ModuleType:
    """The reference's ``src/models/ast_models.py``, loaded by file path (with timm 0.4.5)."""
    path = Path(ref_dir).resolve() / "src" / "models" / "ast_models.py"
    if path in _LOADED:
        return _LOADED[path]
    if not path.is_file():
        raise FileNotFoundError(f"{ref_dir} is not an ssast checkout (no src/models/ast_models.py)")
    import_timm("the SSAST reference", "0.4.5")  # with torchvision and matplotlib stand-ins (_timm.py)
    spec = importlib.util.spec_from_file_location("_ssast_ast_models", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    _LOADED[path] = module
    return module


def _optim_defaults() -> dict[str, Any]:
    from ssl_domains_audio.plugin import SSASTPlugin

    return SSASTPlugin.run_defaults["optim"]


@contextlib.contextmanager
def deit_at_sizes(cfg: Any) -> Any:
    """While active, timm's ``create_model`` answers ``ASTModel``'s DeiT-distilled request at the sizes of our
    ``SSASTConfig`` (timm's own factory and class), and the constructor's prints are swallowed."""
    import timm
    from timm.models import vision_transformer

    def create_model(variant: str, pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
        # the DeiT-distilled ViT ASTModel asks for, at our sizes (timm's own factory and class)
        assert not pretrained and "distilled" in variant, variant
        return vision_transformer._create_vision_transformer(
            variant, pretrained=False, distilled=True, patch_size=16, embed_dim=cfg.dim, depth=cfg.depth,
            num_heads=cfg.heads, mlp_ratio=cfg.ff_dim / cfg.dim, drop_rate=cfg.dropout,
            attn_drop_rate=cfg.dropout, **kwargs,
        )  # fmt: skip

    original = timm.create_model
    timm.create_model = create_model
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the constructor prints the patch layout
            yield
    finally:
        timm.create_model = original


def reference_model(ref_dir: Path, cfg: Any, frames: int) -> torch.nn.Module:
    """The reference ``ASTModel`` (pretraining stage) at the sizes of our ``SSASTConfig`` for ``frames``-long inputs."""
    ast_models = import_reference(ref_dir)
    patch_f, patch_t = cfg.patch()
    if patch_f * patch_t != REFERENCE_PATCH_DIM:
        raise ValueError(f"the reference's heads output {REFERENCE_PATCH_DIM} values; patch {patch_f}x{patch_t}")
    with deit_at_sizes(cfg):
        return ast_models.ASTModel(
            fshape=patch_f, tshape=patch_t, fstride=patch_f, tstride=patch_t, input_fdim=cfg.num_mel_bins,
            input_tdim=frames, model_size="tiny", pretrain_stage=True,
        )  # fmt: skip


def reference_step(
    ref_dir: Path,
    cfg: Any,
    batch: dict[str, torch.Tensor],
    *,
    lr: float | None = None,
    weight_decay: float | None = None,
    betas: tuple[float, float] | None = None,
) -> Callable[[], torch.Tensor]:
    """Return a closure running one full reference ``pretrain_joint`` step (transfer, two masked forward passes
    with their per-clip loops, nce + 10 · mse, backward, Adam step) on the fixed batch; it returns the loss tensor.

    ``cfg`` is our ``SSASTConfig``; ``batch`` one of our training batches (``features`` float32 ``[B, T, F]``,
    ``T`` a multiple of the patch width), on the device the reference model is put on. ``lr``, ``weight_decay``
    and ``betas`` default to the plugin's ``run_defaults``.
    """
    optim = _optim_defaults()
    lr = optim["lr"] if lr is None else lr
    weight_decay = optim["weight_decay"] if weight_decay is None else weight_decay
    betas = tuple(optim["betas"]) if betas is None else betas
    features = batch["features"]
    device = features.device
    model = reference_model(ref_dir, cfg, int(features.shape[1])).to(device).train()
    num_patches = model.num_patches
    mask_patch = max(1, round(cfg.mask_ratio * num_patches))
    cluster = cfg.mode == "patch"
    if cluster and mask_patch >= num_patches - 1:
        # gen_maskid_patch draws until more than mask_patch distinct patches in 1..P-1: it would never end
        raise ValueError(f"mask_patch {mask_patch} of {num_patches} patches: the reference's cluster masking hangs")
    audio_model = torch.nn.DataParallel(model, device_ids=[device]) if device.type == "cuda" else model
    trainables = [p for p in audio_model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainables, lr, weight_decay=weight_decay, betas=betas)
    host_features = features.detach().float().cpu()  # the DataLoader's batch (pin_memory=False)

    def step() -> torch.Tensor:
        audio_input = host_features.to(device, non_blocking=True)
        acc, loss1 = audio_model(audio_input, "pretrain_mpc", mask_patch=mask_patch, cluster=cluster)
        acc, loss1 = acc.mean(), loss1.mean()
        loss2 = audio_model(audio_input, "pretrain_mpg", mask_patch=mask_patch, cluster=cluster)
        loss2 = loss2.mean()
        loss = loss1 + REFERENCE_MSE_WEIGHT * loss2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        # the loop's meters: train_acc_meter, train_nce_meter, loss_meter (three host syncs)
        acc.detach().cpu().item()
        loss.detach().cpu().item()
        loss.item()
        return loss.detach()

    step.modules = {"model": model}
    step.mask_patch = mask_patch
    return step
