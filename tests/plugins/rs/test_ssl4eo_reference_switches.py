"""SSL4EO's reference-code switches (zhu-xlab/SSL4EO-S12's MoCo v3 and MAE; benchmarks/_equiv_ssl4eo.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ssl_domains_rs.masking import random_keep
from ssl_domains_rs.model import MAEDecoder, SSL4EOModel, mocov3_sincos_positions_2d, patchify
from ssl_domains_rs.objective import (
    MAEObjective,
    MoCoObjective,
    _crop_flip_grid,
    augment,
    masked_patch_mse,
    normalise_patches,
)
from ssl_domains_rs.plugin import REFERENCE_CODE_SSL4EO, SSL4EOConfig


def _model(**kwargs) -> SSL4EOModel:
    torch.manual_seed(0)
    return SSL4EOModel(4, 4, 16, 2, 2, 8, 16, 16, 1, 2, **kwargs)


def test_defaults_are_ours_and_reference_code_names_real_options():
    fields = {f.name: f.default for f in dataclasses.fields(SSL4EOConfig)}
    for objective, switches in REFERENCE_CODE_SSL4EO.items():
        assert objective in ("moco", "mae")
        assert set(switches) <= set(fields)
        assert all(fields[name] != value for name, value in switches.items())


def test_mocov3_positions_are_rows_then_columns_sin_then_cos():
    h, w, d = 3, 5, 16
    table = mocov3_sincos_positions_2d(h, w, d)
    omega = 1.0 / 10000 ** (torch.arange(d // 4, dtype=torch.float32) / (d // 4))
    token = 1 * w + 3  # row 1, column 3
    expected = torch.cat([(1 * omega).sin(), (1 * omega).cos(), (3 * omega).sin(), (3 * omega).cos()])
    assert torch.equal(table[token], expected)  # computed in float32, as moco-v3's vits.py does


def test_predictor_ends_in_batchnorm_without_affine():
    bn = _model().predictor[-1]
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine  # MoCo v3: every MLP layer has BN


def test_norm_eps_reaches_every_layernorm():
    model = _model(eps=1e-6)
    eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    assert eps == {1e-6}


def test_decoder_class_token_attends_and_is_dropped():
    torch.manual_seed(0)
    decoder = MAEDecoder(16, 16, 1, 2, 12)
    tokens, cls = torch.randn(2, 4, 16), torch.randn(2, 1, 16, requires_grad=True)
    keep = torch.tensor([[0, 5, 9, 15], [1, 2, 3, 4]])
    without = decoder(tokens, keep, (4, 4))
    with_cls = decoder(tokens, keep, (4, 4), cls)
    assert with_cls.shape == without.shape == (2, 16, 12)
    assert not torch.allclose(with_cls, without)
    with_cls.sum().backward()
    assert cls.grad is not None and cls.grad.abs().sum() > 0


def test_mae_loss_with_injected_masks():
    model, x = _model(), torch.rand(3, 4, 16, 16)
    keep, masked = random_keep(3, 16, 0.75, "cpu")
    for unbiased in (False, True):
        loss = MAEObjective(0.75, unbiased_patch_var=unbiased).loss(model, x, keep, masked)["loss"]
        tokens = model.backbone(x, keep)
        target = normalise_patches(patchify(x, 4), unbiased)
        expected = masked_patch_mse(model.decoder(tokens[:, 1:], keep, (4, 4)), target, masked)
        assert loss.item() == pytest.approx(expected.item())


def test_moco_call_is_loss_of_the_augmented_views():
    model, batch = _model(key_momentum=0.99), {"view1": torch.rand(4, 4, 16, 16), "view2": torch.rand(4, 4, 16, 16)}
    objective = MoCoObjective(min_scale=1.0, jitter=0.0, shared_geometry=True)
    torch.manual_seed(1)
    drawn = objective(model, batch)["loss"]
    torch.manual_seed(1)
    grid = _crop_flip_grid(batch["view1"], 1.0)
    x1, x2 = augment(batch["view1"], 1.0, 0.0, grid), augment(batch["view2"], 1.0, 0.0, grid)
    assert drawn.item() == pytest.approx(objective.loss(model, x1, x2)["loss"].item(), rel=1e-6)


def test_reference_init_mocov3_and_mae():
    import math

    moco = _model(init="mocov3")
    qkv = moco.backbone.blocks[0].qkv
    assert qkv.weight.abs().max() <= math.sqrt(6 / (16 + 16)) and torch.count_nonzero(qkv.bias) == 0
    assert moco.backbone.cls.abs().max() < 1e-5  # N(0, 1e-6)
    embed = moco.backbone.embed
    assert embed.weight.abs().max() <= math.sqrt(6 / (4 * 4 * 4 + 16)) and torch.count_nonzero(embed.bias) == 0
    assert torch.equal(moco.projector[0].weight, _model().projector[0].weight)  # heads: PyTorch's default
    mae = _model(init="mae")
    assert 0.005 < mae.backbone.cls.std() < 0.05 and 0.005 < mae.decoder.mask_token.std() < 0.05
    assert torch.count_nonzero(mae.decoder.head.bias) == 0
    with pytest.raises(ValueError, match="init must be"):
        _model(init="xavier")


def test_stop_grad_conv1_freezes_the_patch_projection_on_both_encoders():
    model = _model(key_momentum=0.9, stop_grad_conv1=True)
    assert not any(p.requires_grad for p in model.backbone.embed.parameters())
    before = model.backbone.embed.weight.clone()
    with torch.no_grad():
        model.backbone.blocks[0].qkv.weight.add_(1.0)
    model.after_step(0.5)
    key_backbone = model.key_encoder.module[0]
    assert torch.equal(key_backbone.embed.weight, before) and torch.equal(model.backbone.embed.weight, before)
    assert not torch.equal(key_backbone.blocks[0].qkv.weight, _model().backbone.blocks[0].qkv.weight)
