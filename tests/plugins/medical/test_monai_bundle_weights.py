"""``ssl-domains import --plugin contrastive3d --format monai-bundle``: a MONAI bundle's UNETR / SwinUNETR weights
(weights_monai.py), from networks MONAI itself builds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ssl_domains import UserError
from ssl_domains.transfer import load_strict
from ssl_domains_medical.model import Contrastive3DModel, VolumeNet
from ssl_domains_medical.plugin import Contrastive3DConfig
from ssl_domains_medical.weights_monai import from_bundle


def _ours(layer: dict) -> Contrastive3DModel:
    fields = {f.name for f in dataclasses.fields(Contrastive3DConfig)}
    cfg = Contrastive3DConfig(**{k: v for k, v in layer.items() if k in fields})
    return Contrastive3DModel(VolumeNet.from_config(cfg), cfg.proj_dim, cfg.rotation, cfg.loss_form == "tang")


def test_swin_unetr_segmentation_bundle_loads_all_but_its_class_head():
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    bundle = SwinUNETR(in_channels=1, out_channels=14, feature_size=12, spatial_dims=3).eval()
    weights = from_bundle({"model": bundle.state_dict()})
    layer = weights.config["contrastive3d"]
    assert (layer["backbone"], layer["feature_size"]) == ("swin", 12)
    ours = _ours(weights.config["contrastive3d"])
    fresh = load_strict(ours, weights, "model.pt")
    fresh_prefixes = ("net.net.out.", "net.mask_token", "projector.", "rotation_head.")
    assert fresh and all(k.startswith(fresh_prefixes) for k in fresh)
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        theirs = bundle.swinViT(x, normalize=True)[3].flatten(2).transpose(1, 2)
        assert torch.allclose(ours.eval().net.encode(x)[0], theirs, atol=1e-6)


def test_unetr_bundle_sizes_from_shapes_and_missing_cross_norms_fresh():
    from monai.networks.nets import UNETR

    torch.manual_seed(0)
    bundle = UNETR(1, 1, 64, feature_size=8, hidden_size=128, mlp_dim=512, num_heads=2, proj_type="conv",
                   norm_name="instance", res_block=True)  # fmt: skip
    state = {k: v for k, v in bundle.state_dict().items() if "norm_cross_attn" not in k}  # a pre-1.4 bundle
    weights = from_bundle(state)
    layer = weights.config["contrastive3d"]
    assert (layer["hidden_size"], layer["roi"], layer["feature_size"], layer["num_heads"]) == (128, 64, 8, 2)
    assert "net.net.out.conv.conv.weight" in weights.state_dict  # one output channel: ours, loaded
    ours = _ours(layer)
    fresh = load_strict(ours, weights, "model.pt")
    assert any("norm_cross_attn" in k for k in fresh)
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours.eval().net.encode(x)[0], bundle.eval().vit(x)[0], atol=1e-5)


def test_other_networks_are_refused():
    with pytest.raises(UserError, match="neither a MONAI UNETR"):
        from_bundle({"model.0.conv.weight": torch.zeros(1)})
    with pytest.raises(UserError, match="input channels"):
        from_bundle({"swinViT.patch_embed.proj.weight": torch.zeros(12, 4, 2, 2, 2)})


def test_alice_reads_the_same_files_into_student_and_teacher():
    from monai.networks.nets import SwinUNETR

    from ssl_domains import registry
    from ssl_domains_medical.plugin import AliceConfig
    from ssl_domains_medical.weights_monai import for_alice

    torch.manual_seed(0)
    bundle = SwinUNETR(in_channels=1, out_channels=14, feature_size=12, spatial_dims=3).eval()
    weights = for_alice(from_bundle(bundle.state_dict()))
    layer = weights.config["alice"]
    assert "decoder" not in layer and layer["backbone"] == "swin"
    fields = {f.name for f in dataclasses.fields(AliceConfig)}
    model = registry.load("alice").model(AliceConfig(**{k: v for k, v in layer.items() if k in fields}), None)
    load_strict(model, weights, "model.pt")
    for key, value in bundle.swinViT.state_dict().items():
        assert torch.equal(model.net.net.swinViT.state_dict()[key], value)
        assert torch.equal(model.teacher.module[0].net.swinViT.state_dict()[key], value)
