"""contrastive3d's switches reproducing the MONAI ViT self-supervised tutorial (``ssl_train.ipynb``):
``decoder: autoenc`` (MONAI's ViTAutoEnc) and ``loss_form: tutorial`` (``L1 + C x L1`` on the reconstructions)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import ContrastiveLoss
from monai.networks.nets import ViTAutoEnc

from ssl_domains import ConfigError, registry
from ssl_domains_medical.model import Contrastive3DModel, VolumeNet
from ssl_domains_medical.objective import Contrastive3DObjective
from ssl_domains_medical.plugin import Contrastive3DConfig


def test_contrastive_autoenc_decoder_is_monai_vitautoenc():
    torch.manual_seed(0)
    net = VolumeNet("vit", roi=32, hidden_size=48, num_heads=2, decoder="autoenc").double()
    monai_net = ViTAutoEnc(1, 32, 16, hidden_size=48, mlp_dim=192, num_heads=2, proj_type="conv").double()
    monai_net.load_state_dict(net.net.state_dict(), strict=True)  # the same class: keys, shapes and all
    x = torch.rand(2, 1, 32, 32, 32, dtype=torch.float64)
    out = net(x)
    expected, hidden = monai_net(x)
    assert torch.allclose(out["output"], expected, atol=1e-12)
    assert out["tokens"].shape == (2, 8, 48) and [tuple(m.shape[1:]) for m in out["pyramid"]] == [
        (48, 2, 2, 2),
        (16, 8, 8, 8),
    ]
    assert torch.allclose(net.encode(x)[1][-1], hidden[-1], atol=1e-12)
    with pytest.raises(ValueError, match="vit takes unetr or autoenc"):
        VolumeNet("swin", roi=64, feature_size=12, decoder="autoenc")
    with pytest.raises(ConfigError, match="backbone: vit"):
        Contrastive3DConfig(backbone="swin", feature_size=12, decoder="autoenc").validate()


def test_contrastive_tutorial_loss_form_is_the_notebooks_total_loss():
    def echo(views: torch.Tensor) -> dict[str, torch.Tensor]:  # reconstructs whatever it is shown
        return {"output": views * 0.9 + 0.05, "tokens": views.flatten(2).transpose(1, 2)}

    torch.manual_seed(0)
    crop = torch.rand(3, 1, 8, 8, 8)
    view1, view2 = crop * (torch.rand_like(crop) > 0.3), crop * (torch.rand_like(crop) > 0.3)
    out = Contrastive3DObjective(temperature=0.05, rotation=False, loss_form="tutorial")(
        echo, {"image": crop, "view1": view1, "view2": view2}
    )
    r1, r2 = view1 * 0.9 + 0.05, view2 * 0.9 + 0.05
    recon = F.l1_loss(r1, crop)  # view 1 only, against the clean crop
    contrast = ContrastiveLoss(temperature=0.05)(r1.flatten(1), r2.flatten(1))
    assert out["recon_l1"].item() == pytest.approx(recon.item(), rel=1e-6)
    assert out["nt_xent"].item() == pytest.approx(contrast.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((recon + contrast * recon).item(), rel=1e-5)
    with pytest.raises(ValueError, match="rotation"):
        Contrastive3DObjective(rotation=True, loss_form="tutorial")
    with pytest.raises(ConfigError, match="rotation: false"):
        Contrastive3DConfig(loss_form="tutorial").validate()


def test_contrastive_tutorial_switches_build_the_recipe_model():
    cfg = Contrastive3DConfig(roi=32, hidden_size=48, num_heads=2, decoder="autoenc", loss_form="tutorial",
                              rotation=False)  # fmt: skip
    cfg.validate()
    model = registry.load("contrastive3d").model(cfg, None)
    assert isinstance(model, Contrastive3DModel) and model.projector is None and model.rotation_head is None
    assert isinstance(model.net.net, ViTAutoEnc)
    default = Contrastive3DConfig()
    # Tang's losses; the reference decoders (no skips): ViTAutoEnc for the ViT, Tang's bottleneck for Swin
    assert (default.decoder, default.loss_form) == ("auto", "tang")
    assert isinstance(VolumeNet.from_config(Contrastive3DConfig(roi=32, hidden_size=48, num_heads=2)).net, ViTAutoEnc)


def test_swin_bottleneck_decoder_reconstructs_from_the_last_stage_alone():
    torch.manual_seed(0)
    net = VolumeNet("swin", roi=64, feature_size=12, decoder="auto")
    assert net.decoder == "bottleneck" and not hasattr(net.net, "decoder1") and not hasattr(net.net, "encoder1")
    x = torch.rand(1, 1, 64, 64, 64)
    out = net(x)
    assert out["output"].shape == (1, 1, 64, 64, 64) and out["tokens"].shape == (1, 64, 96)
    assert [tuple(m.shape[1:]) for m in out["pyramid"]] == [(96, 4, 4, 4), (48, 8, 8, 8), (24, 16, 16, 16),
                                                            (12, 32, 32, 32)]  # fmt: skip
    assert net.pyramid_dims == (96, 48, 24, 12) and net.decoder_dim == 48
    _, states = net.encode(x)
    again, _ = net.bottleneck(states[4])  # the output is a function of the 1/32 stage only: no skips
    assert torch.allclose(again, out["output"])
    with pytest.raises(ValueError, match="swin unetr or bottleneck"):
        VolumeNet("vit", roi=32, hidden_size=48, num_heads=2, decoder="bottleneck")
    with pytest.raises(ConfigError, match="needs backbone: swin"):
        Contrastive3DConfig(decoder="bottleneck").validate()
