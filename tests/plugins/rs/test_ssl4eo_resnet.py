"""SSL4EO's ResNet-50 backbone (resnet.py) and its weights (weights_ssl4eo_resnet.py): MoCo v3 trains on it, and
SSL4EO-S12's MoCo v2 / MoCo v3 / torchvision-timm (torchgeo) files load into it."""

from __future__ import annotations

import pytest
import torch

from ssl_domains import ConfigError, UserError
from ssl_domains.transfer import load_strict
from ssl_domains_rs.objective import MoCoObjective
from ssl_domains_rs.plugin import SSL4EOConfig
from ssl_domains_rs.resnet import SSL4EOResNetModel
from ssl_domains_rs.weights_ssl4eo import from_moco, from_timm
from ssl_domains_rs.weights_ssl4eo_resnet import moco_state, timm_state


def _model() -> SSL4EOResNetModel:
    torch.manual_seed(0)
    model = SSL4EOResNetModel(13, 16, 32, 0.99)
    with torch.no_grad():  # no BN at its identity init, so that a wrong key map shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_moco_v3_trains_on_resnet50():
    model = _model().train()
    views = torch.rand(4, 13, 32, 32), torch.rand(4, 13, 32, 32)
    loss = MoCoObjective().loss(model, *views)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and model.backbone.conv1.weight.grad is not None
    assert model.features(views[0]).shape == (4, 2048)
    with pytest.raises(ConfigError, match="objective moco only"):
        SSL4EOConfig(backbone="resnet50", objective="mae").validate()


def _fresh_like(weights) -> SSL4EOResNetModel:
    layer = weights.config["ssl4eo"]
    torch.manual_seed(1)
    return SSL4EOResNetModel(13, layer.get("proj_dim", 16), layer.get("hidden_dim", 32), 0.99)


def test_torchgeo_timm_layout_and_moco_v3_layout_round_trip():
    model = _model()
    x = torch.rand(2, 13, 64, 64)
    for weights in (from_timm({**timm_state(model), "fc.weight": torch.zeros(10, 2048)}, "rn50.pth"),
                    from_moco({f"module.{k}": v for k, v in moco_state(model).items()}, "moco.pth")):  # fmt: skip
        assert weights.config["ssl4eo"]["backbone"] == "resnet50"
        ours = _fresh_like(weights)
        load_strict(ours, weights, "file")
        with torch.no_grad():
            assert torch.allclose(ours.eval().features(x), model.eval().features(x), atol=1e-5)
    v3 = from_moco(moco_state(model), "moco.pth")
    assert not v3.fresh and (v3.config["ssl4eo"]["hidden_dim"], v3.config["ssl4eo"]["proj_dim"]) == (32, 16)


def test_moco_v2_checkpoint_loads_its_encoders_and_leaves_its_head_and_queue():
    model = _model()
    state = {}
    for src, dst in (("backbone.", "encoder_q."), ("key_encoder.module.0.", "encoder_k.")):
        state.update({dst + k[len(src) :]: v for k, v in model.state_dict().items() if k.startswith(src)})
    for enc in ("encoder_q.", "encoder_k."):
        state.update({f"{enc}fc.0.weight": torch.zeros(2048, 2048), f"{enc}fc.0.bias": torch.zeros(2048),
                      f"{enc}fc.2.weight": torch.zeros(128, 2048), f"{enc}fc.2.bias": torch.zeros(128)})  # fmt: skip
    state.update(queue=torch.zeros(128, 256), queue_ptr=torch.zeros(1, dtype=torch.long))
    weights = from_moco({f"module.{k}": v for k, v in state.items()}, "B13_rn50_moco_0099_ckpt.pth")
    assert set(weights.fresh) == {"projector.", "predictor.", "key_encoder.module.1."}
    assert any("MoCo v2" in n for n in weights.notes)
    ours = _fresh_like(weights)
    load_strict(ours, weights, "file")
    assert torch.equal(ours.backbone.layer4[2].conv3.weight, model.backbone.layer4[2].conv3.weight)
    with pytest.raises(UserError, match="only ResNet-50"):
        from_timm({k: v for k, v in timm_state(model).items() if not k.startswith("layer3.5.")}, "rn.pth")
