"""``ssl-domains import --plugin ssl4eo``: SSL4EO-S12's MoCo v3, MAE and timm/torchgeo ViT files (weights_ssl4eo.py).

The files are written here from one of our models through the documented key map in reverse (the reference code
itself is checked in benchmarks/_equiv_ssl4eo_import.py): importing them must give back the same network.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from ssl_domains import UserError, load_encoder, registry
from ssl_domains.transfer import import_weights
from ssl_domains_rs.model import POSITION_TABLES, SSL4EOModel

DATA = Path(__file__).resolve().parents[3] / "datasets" / "sentinel_s1s2" / "ssl4eo_s12"
_TIMM = {"qkv": "attn.qkv", "proj": "attn.proj", "ff.0": "mlp.fc1", "ff.3": "mlp.fc2", "norm1": "norm1",
         "norm2": "norm2"}  # fmt: skip


def _model(positions: str) -> SSL4EOModel:
    torch.manual_seed(0)
    model = SSL4EOModel(13, 8, 64, 2, 1, 16, 32, 32, 1, 1, key_momentum=0.99, positions=positions, eps=1e-6)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _timm(state: dict[str, torch.Tensor], prefix: str, positions: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key == "embed.weight":
            out[prefix + "patch_embed.proj.weight"] = value.reshape(64, 13, 8, 8)
        elif key == "embed.bias":
            out[prefix + "patch_embed.proj.bias"] = value
        elif key == "cls":
            out[prefix + "cls_token"] = value.reshape(1, 1, -1)
        elif key.startswith("blocks."):
            _, i, rest = key.split(".", 2)
            module, leaf = rest.rsplit(".", 1)
            out[f"{prefix}blocks.{i}.{_TIMM[module]}.{leaf}"] = value
        else:
            out[prefix + key] = value
    table = POSITION_TABLES[positions](4, 4, 64)
    out[prefix + "pos_embed"] = torch.cat([torch.zeros(1, 64), table])[None]
    return out


def _sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _moco_file(model: SSL4EOModel) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    out = _timm(_sub(sd, "backbone."), "base_encoder.", "mocov3")
    out.update(_timm(_sub(sd, "key_encoder.module.0."), "momentum_encoder.", "mocov3"))
    out.update({f"base_encoder.head.{k}": v for k, v in _sub(sd, "projector.").items()})
    out.update({f"momentum_encoder.head.{k}": v for k, v in _sub(sd, "key_encoder.module.1.").items()})
    out.update({f"predictor.{k}": v for k, v in _sub(sd, "predictor.").items()})
    return {f"module.{k}": v for k, v in out.items()}


def _import(tmp_path: Path, payload: object, fmt: str, sets: tuple[str, ...] = ()) -> torch.nn.Module:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{fmt}.pth"
    torch.save(payload, path)
    run = import_weights(registry.load("ssl4eo"), path, DATA, tmp_path / "run", fmt=fmt, overrides=list(sets))
    return load_encoder(run, DATA).model


def _same_backbone(ours: torch.nn.Module, model: SSL4EOModel) -> None:
    torch.manual_seed(1)
    x = torch.rand(3, 13, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours.eval().features(x), model.eval().features(x), atol=1e-6)


def test_moco_checkpoint_round_trips(tmp_path: Path):
    model = _model("mocov3")
    ckpt = {"epoch": 100, "arch": "vit_small", "state_dict": _moco_file(model), "optimizer": {}}
    ours = _import(tmp_path, ckpt, "ssl4eo-moco")
    assert ours.backbone.positions == "mocov3" and ours.in_channels == 13
    for key, value in model.state_dict().items():
        if not key.startswith("decoder."):
            assert torch.equal(ours.state_dict()[key], value), key
    _same_backbone(ours, model)


def test_mae_checkpoint_with_its_args_namespace(tmp_path: Path):
    model = _model("mae")
    sd = model.state_dict()
    state = _timm(_sub(sd, "backbone."), "", "mae")
    for theirs, mine in (("decoder_embed", "decoder.project"), ("decoder_norm", "decoder.norm")):
        state.update({f"{theirs}.{k}": sd[f"{mine}.{k}"] for k in ("weight", "bias")})
    state["mask_token"] = sd["decoder.mask_token"].reshape(1, 1, -1)
    for kind in ("weight", "bias"):  # ours (c, p, q) -> MAE's (p, q, c)
        value = sd[f"decoder.head.{kind}"]
        rest = value.shape[1:]
        state[f"decoder_pred.{kind}"] = value.reshape(13, 8, 8, *rest).permute(1, 2, 0, *range(3, 3 + len(rest)))
        state[f"decoder_pred.{kind}"] = state[f"decoder_pred.{kind}"].reshape(value.shape)
    for key, value in _sub(sd, "decoder.blocks.").items():
        i, rest = key.split(".", 1)
        module, leaf = rest.rsplit(".", 1)
        state[f"decoder_blocks.{i}.{_TIMM[module]}.{leaf}"] = value
    state["decoder_pos_embed"] = torch.cat([torch.zeros(1, 32), POSITION_TABLES["mae"](4, 4, 32)])[None]
    ckpt = {"model": state, "epoch": 1, "args": argparse.Namespace(norm_pix_loss=True)}
    ours = _import(tmp_path, ckpt, "ssl4eo-mae")
    assert ours.backbone.positions == "mae"
    assert torch.equal(ours.state_dict()["decoder.head.weight"], sd["decoder.head.weight"])
    _same_backbone(ours, model)


def test_timm_backbone_and_its_refusals(tmp_path: Path):
    model = _model("mocov3")
    state = _timm(_sub(model.state_dict(), "backbone."), "", "mocov3")
    ours = _import(tmp_path, {**state, "head.weight": torch.zeros(10, 64), "head.bias": torch.zeros(10)}, "timm")
    _same_backbone(ours, model)
    imported = ours.state_dict()
    assert torch.equal(imported["key_encoder.module.0.embed.weight"], imported["backbone.embed.weight"])

    learnt = {**state, "pos_embed": state["pos_embed"] + 0.01}
    with pytest.raises(UserError, match="learnt table"):
        _import(tmp_path / "a", learnt, "timm")
    rgb = {**state, "patch_embed.proj.weight": torch.zeros(64, 3, 8, 8)}
    with pytest.raises(UserError, match="3 bands"):
        _import(tmp_path / "b", rgb, "timm")
    with pytest.raises(UserError, match="no base_encoder"):
        _import(tmp_path / "c", state, "ssl4eo-moco")
    assert not (tmp_path / "a" / "run").exists()
