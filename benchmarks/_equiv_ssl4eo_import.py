"""SSL4EO-S12 checkpoints, saved as the reference's own training code saves them, through ``ssl-domains import``
(the ``import_max_abs_diff`` of ``benchmarks/equivalence.py --plugin ssl4eo``).

Three files from reference networks at the harness's sizes (``_equiv_ssl4eo.SIZES``), in float32 as users run:

- ``ssl4eo-moco``: ``{"epoch", "arch", "state_dict", "optimizer", "scaler"}`` as ``pretrain_moco_v3_s2c.py``
  L436-442 saves it, the state dict a DistributedDataParallel one (``module.`` keys; ``DataParallel`` gives the
  same names without a GPU);
- ``ssl4eo-mae``: ``{"model", "optimizer", "epoch", "scaler", "args"}`` as MAE's ``util/misc.py`` ``save_model``
  L303-309 (``args`` an ``argparse.Namespace``);
- ``timm``: the MoCo ``base_encoder`` (a timm ``VisionTransformer``) without its head, torchgeo's layout.

Then the way back (``export_max_abs_diff``): the imported run, perturbed, exported in the same format and loaded
*strictly* by the reference's classes (timm's ``VisionTransformer(num_classes=0)`` for ``timm``, as torchgeo's
``vit_small_patch16_224`` builds it), whose forward is compared with our embedding.

Each is imported into a run folder (``ssl_domains.transfer.import_weights`` on the shipped SSL4EO-S12 chips, heads
given with ``--set`` as the weights do not store them), loaded with ``load_encoder``, and our ``embed`` of 6 L1C
chips is compared with the reference encoder's class token: ``base_encoder.forward_features`` (MoCo, timm) and
``forward_encoder(x, 0)[0][:, 0]`` (MAE: mask ratio 0, whose shuffle leaves the class token unchanged).
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from pathlib import Path
from typing import Any

import torch
from _equiv_ssl4eo import DATA, SIZES, reference_model


def _sets(objective: str) -> list[str]:
    sizes = {"heads": SIZES["heads"], "batch_size": SIZES["batch_size"]}
    if objective == "mae":
        sizes["decoder_heads"] = SIZES["decoder_heads"]
    return [f"ssl4eo.{k}={v}" for k, v in sizes.items()]


def _chips(dm: Any) -> torch.Tensor:
    dm.setup("predict")
    return next(iter(dm.predict_dataloader()))["view1"].float()


def _save(ref: Any, cfg: Any, objective: str, path: Path) -> torch.nn.Module:
    model = reference_model(ref, cfg, 13 if objective == "moco" else ref.mae_channels, seed=3).float().eval()
    optimizer = torch.optim.AdamW(model.parameters())
    if objective == "moco":
        torch.save({"epoch": 1, "arch": "vit_small", "state_dict": torch.nn.DataParallel(model).state_dict(),
                    "optimizer": optimizer.state_dict(), "scaler": {}}, path)  # fmt: skip
        return model
    args = argparse.Namespace(model="mae_vit_small_patch16", norm_pix_loss=True, mask_ratio=cfg.mask_ratio)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1, "scaler": {},
                "args": args}, path)  # fmt: skip
    return model


def check(ref: Any, setups: dict[str, tuple]) -> dict[str, Any]:
    """``setups[objective] = (plugin, cfg, dm, batch)`` from the harness; the import figures per format."""
    from ssl_domains import load_encoder
    from ssl_domains.transfer import import_weights

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ssl4eo_import_") as tmp:
        work = Path(tmp)
        for fmt, objective in (("ssl4eo-moco", "moco"), ("ssl4eo-mae", "mae"), ("timm", "moco")):
            if objective == "mae" and (objective not in setups or ref.mae_channels != 13):
                out[fmt] = {"skipped": "needs SSL4EO-S12's 13-band MAE (upstream facebookresearch/mae is RGB, which "
                                       "no SSL4EO-S12 weights are)"}  # fmt: skip
                continue
            plugin, cfg, _dm, _batch = setups[objective]
            path = work / f"{fmt}.pth"
            reference = _save(ref, cfg, objective, path)
            if fmt == "timm":
                state = {k: v for k, v in reference.base_encoder.state_dict().items() if not k.startswith("head.")}
                torch.save(state, path)
            run = import_weights(plugin, path, DATA, work / f"run-{fmt}", fmt=fmt, overrides=_sets(objective))
            ours, dm = load_encoder(run, DATA)
            x = _chips(dm)
            with torch.no_grad():
                mine = ours.eval().embed({"view1": x})
                if objective == "moco":
                    theirs = reference.base_encoder.forward_features(x)
                else:
                    theirs = reference.forward_encoder(x, 0.0)[0][:, 0]
            out[fmt] = {"max_abs_diff": float((mine - theirs).abs().max()), "embed_abs_max": float(theirs.abs().max()),
                        "chips": int(x.shape[0]), "bands": int(x.shape[1])}  # fmt: skip
            out[fmt]["export_max_abs_diff"] = _export(ref, cfg, fmt, run, ours, x, work)
        out.update(_resnet(ref, setups["moco"][0], work))
    measured = [v for v in out.values() if "max_abs_diff" in v]
    out["import_max_abs_diff"] = max(v["max_abs_diff"] for v in measured)
    out["export_max_abs_diff"] = max(v["export_max_abs_diff"] for v in measured)
    return out


def _export(ref: Any, cfg: Any, fmt: str, run: Path, ours: torch.nn.Module, x: torch.Tensor, work: Path) -> float:
    """Our imported run, its weights perturbed (so that nothing is the file read), through ``ssl-domains export``
    and loaded strictly by the reference's own classes: ``MoCo_ViT`` (``module.`` removed, as ``main_lincls``
    does), ``MaskedAutoencoderViT``, or timm's ``VisionTransformer(num_classes=0)`` (the torchgeo route); the
    reference's forward against our embedding."""
    from timm.models.vision_transformer import VisionTransformer

    from ssl_domains.checkpoint import save_weights
    from ssl_domains.run import WEIGHTS_FILE
    from ssl_domains.transfer import export_weights

    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_weights(ours, run / WEIGHTS_FILE)
    path = export_weights(run, fmt, work / f"exported-{fmt}.pth")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    objective = "mae" if fmt == "ssl4eo-mae" else "moco"
    if fmt == "timm":
        norm = functools.partial(torch.nn.LayerNorm, eps=1e-6)
        model = VisionTransformer(img_size=cfg.chip, patch_size=cfg.patch, in_chans=13, num_classes=0,
                                  embed_dim=cfg.dim, depth=cfg.depth, num_heads=cfg.heads, norm_layer=norm)  # fmt: skip
        model.load_state_dict(saved, strict=True)
        embed = model.forward_features
    else:
        model = reference_model(ref, cfg, 13, seed=4).float()
        state = saved["state_dict"] if objective == "moco" else saved["model"]
        model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
        embed = model.base_encoder.forward_features if objective == "moco" else (
            lambda t: model.forward_encoder(t, 0.0)[0][:, 0])  # fmt: skip
    with torch.no_grad():
        return float((ours.eval().embed({"view1": x}) - embed(x)).abs().max())


def _noised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():  # weights and BN statistics, so that a wrong key map shows
                t.add_(0.05 * torch.randn_like(t)).abs_() if name.endswith("running_var") else t.add_(
                    0.05 * torch.randn_like(t)
                )
    return model.eval()


def _resnet(ref: Any, plugin: Any, work: Path) -> dict[str, Any]:
    """ResNet-50: SSL4EO-S12's MoCo v2 ``builder.MoCo(resnet50, mlp=True, bands="B13")`` with timm 0.4.9's
    ``resnet50`` for torchvision's (the same network and key names; torchvision is not installed here), saved as
    ``pretrain_moco_v2_s2c.py`` saves it; and timm's ``resnet50(in_chans=13, num_classes=0)`` (torchgeo's layout).
    Each imported, embedded against the reference encoder's pooled features, then exported (``ssl4eo-moco`` as MoCo
    v3's ``MoCo_ResNet``, ``timm``) and loaded strictly by MoCo v3's ``MoCo_ResNet`` / timm's ``resnet50``."""
    from timm.models.resnet import resnet50

    from ssl_domains import load_encoder
    from ssl_domains.transfer import export_weights, import_weights

    out: dict[str, Any] = {}
    sets = ["ssl4eo.chip=64", f"ssl4eo.batch_size={SIZES['batch_size']}"]
    if ref.builder_v2 is not None:  # SSL4EO-S12's released ResNet-50s are MoCo v2
        moco = _noised(ref.builder_v2.MoCo(resnet50, dim=128, K=256, mlp=True, bands="B13"), 5)
        encoder_q = moco.encoder_q
    else:  # a moco-v3 checkout: its MoCo_ResNet
        moco = _noised(ref.builder.MoCo_ResNet(functools.partial(resnet50, in_chans=13), 256, 1024), 5)
        encoder_q = moco.base_encoder
    tv = _noised(resnet50(in_chans=13, num_classes=0), 6)
    for fmt, payload, encoder in (
        ("ssl4eo-moco", {"epoch": 1, "arch": "resnet50", "state_dict": torch.nn.DataParallel(moco).state_dict()},
         lambda t: encoder_q.global_pool(encoder_q.forward_features(t))),
        ("timm", tv.state_dict(), tv),
    ):  # fmt: skip
        path = work / f"rn50-{fmt}.pth"
        torch.save(payload, path)
        run = import_weights(plugin, path, DATA, work / f"run-rn50-{fmt}", fmt=fmt, overrides=sets)
        ours, dm = load_encoder(run, DATA)
        x = _chips(dm)
        with torch.no_grad():
            theirs = encoder(x)
            diff = float((ours.eval().embed({"view1": x}) - theirs).abs().max())
        exported = export_weights(run, fmt, work / f"rn50-exported-{fmt}.pth")
        saved = torch.load(exported, map_location="cpu", weights_only=True)
        if fmt == "timm":
            back = resnet50(in_chans=13, num_classes=0)
            back.load_state_dict(saved, strict=True)
        else:
            hidden, proj = ours.projector[0].out_features, ours.projector[3].out_features
            back = ref.builder.MoCo_ResNet(functools.partial(resnet50, in_chans=13), proj, hidden)
            back.load_state_dict({k.removeprefix("module."): v for k, v in saved["state_dict"].items()}, strict=True)
            back = back.base_encoder
            back.fc = torch.nn.Identity()
        with torch.no_grad():
            back_diff = float((ours.embed({"view1": x}) - back.eval()(x)).abs().max())
        out[f"{fmt} (resnet50)"] = {"max_abs_diff": diff, "embed_abs_max": float(theirs.abs().max()),
                                    "export_max_abs_diff": back_diff, "chips": int(x.shape[0])}  # fmt: skip
    return out
