"""CROMA's reference-code switches (antofuller/CROMA's choices, off by default; benchmarks/_equiv_croma.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ssl_domains.nn import sincos_positions_2d
from ssl_domains_rs.masking import croma_masks
from ssl_domains_rs.model import CROMA, alibi_slopes, mae_sincos_positions_2d
from ssl_domains_rs.objective import CROMAObjective, masked_patch_mse, normalise_patches
from ssl_domains_rs.plugin import REFERENCE_CODE, CROMAConfig


def _croma(**switches) -> CROMA:
    torch.manual_seed(0)
    return CROMA(12, 2, 8, 16, 2, 4, 16, 1, 4, **switches)


def _batch(b: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {"radar": torch.rand(b, 2, 32, 32), "optical": torch.rand(b, 12, 32, 32)}


def test_defaults_are_ours_and_reference_code_names_real_options():
    fields = {f.name: f.default for f in dataclasses.fields(CROMAConfig)}
    assert set(REFERENCE_CODE) <= set(fields)
    assert all(fields[name] != value for name, value in REFERENCE_CODE.items())


def test_alibi_slopes_rule():
    assert torch.equal(alibi_slopes(8, "alibi"), alibi_slopes(8))  # powers of 2: one sequence
    expected = [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]  # 4 heads' slopes, then 8 heads' odd ones
    assert alibi_slopes(6, "alibi").tolist() == pytest.approx(expected)
    assert alibi_slopes(6).tolist() == pytest.approx([2.0 ** (-8 * h / 6) for h in range(1, 7)])
    with pytest.raises(ValueError, match="geometric or alibi"):
        alibi_slopes(4, "linear")


def test_mae_positions_are_columns_then_rows_sin_then_cos():
    h, w, d = 3, 5, 16
    table = mae_sincos_positions_2d(h, w, d)
    omega = 1.0 / 10000 ** (torch.arange(d // 4, dtype=torch.float64) / (d // 4))
    token = 1 * w + 3  # row 1, column 3
    expected = torch.cat([(3 * omega).sin(), (3 * omega).cos(), (1 * omega).sin(), (1 * omega).cos()]).float()
    assert torch.allclose(table[token], expected)
    # the same values as the interleaved rows-first table, in another channel order
    ours = sincos_positions_2d(h, w, d)
    assert torch.allclose(table.sort(dim=1).values, ours.sort(dim=1).values, atol=1e-6)


def test_qkv_bias_off_drops_only_query_key_value_biases():
    keys = set(_croma(qkv_bias=False).state_dict())
    assert not [k for k in keys if k.endswith(("qkv.bias", "q_cross.bias", "kv_cross.bias"))]
    assert {"joint.0.proj_cross.bias", "radar.blocks.0.proj.bias", "decoder.blocks.0.proj.bias"} <= keys
    assert keys | {k for k in _croma().state_dict() if k.endswith("bias")} == set(_croma().state_dict())


def test_shared_cross_norm_is_one_module_under_both_names():
    shared, separate = _croma(shared_cross_norm=True), _croma()
    block = shared.joint[0]
    assert block.norm_context is block.norm_cross
    assert set(shared.state_dict()) == set(separate.state_dict())  # keys unchanged: weights load either way
    n_shared = sum(p.numel() for p in shared.parameters())
    assert sum(p.numel() for p in separate.parameters()) - n_shared == 2 * 16 * len(shared.joint)


def test_joint_self_bias_cross_only_matters_when_the_masks_differ():
    batch = _batch()
    torch.manual_seed(2)
    (keep_r, _), (keep_o, _) = croma_masks(3, 16, 0.5, "cpu")
    radar, cross = _croma(), _croma(joint_self_bias="cross")
    with torch.no_grad():
        same = [m(batch["radar"], batch["optical"], keep_r, keep_r)["joint"] for m in (radar, cross)]
        other = [m(batch["radar"], batch["optical"], keep_r, keep_o)["joint"] for m in (radar, cross)]
    assert torch.allclose(same[0], same[1], atol=1e-6)
    assert not torch.allclose(other[0], other[1], atol=1e-4)


def test_unbiased_patch_var():
    x = torch.randn(2, 5, 7, dtype=torch.float64)
    expected = (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True, unbiased=True) + 1e-6).sqrt()
    assert torch.allclose(normalise_patches(x, unbiased=True), expected)
    assert not torch.allclose(normalise_patches(x), expected)
    assert masked_patch_mse(x, torch.zeros_like(x), torch.ones(2, 5, dtype=torch.bool)).dtype == torch.float64


def test_detach_keys_changes_gradients_not_the_loss():
    batch, model = _batch(), _croma()
    masks = croma_masks(3, 16, 0.75, "cpu")
    grads, losses = [], []
    for detach in (False, True):
        model.zero_grad()
        out = CROMAObjective(detach_keys=detach).loss(model, batch["radar"], batch["optical"], *masks)
        out["loss"].backward()
        losses.append(out["loss"].item())
        grads.append(model.proj_radar.weight.grad.clone())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert not torch.allclose(grads[0], grads[1])


def test_loss_with_injected_masks_is_the_objective():
    batch, model = _batch(), _croma()
    objective = CROMAObjective(flips=False)
    torch.manual_seed(3)
    drawn = objective(model, batch)["loss"]
    torch.manual_seed(3)
    injected = objective.loss(model, batch["radar"], batch["optical"], *croma_masks(3, 16, 0.75, "cpu"))["loss"]
    assert drawn.item() == pytest.approx(injected.item(), rel=1e-6)
