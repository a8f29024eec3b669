"""Alice's default-off switches that reproduce the reference code (alibaba-damo-academy/alice @ d45cfcd; see
docs/plugins/alice.md, Equivalence), and the float64 path the equivalence check measures on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssl_domains_medical.masking import column_mask
from ssl_domains_medical.model import AliceModel, VolumeNet
from ssl_domains_medical.objective import AliceObjective, dino_cross_entropy
from ssl_domains_medical.plugin import AliceConfig

SMALL = {"backbone": "vit", "roi": 32, "feature_size": 4, "hidden_size": 48, "num_heads": 2, "out_dim": 32,
         "head_hidden": 32, "head_bottleneck": 16, "align_dim": 32, "align_heads": 2, "align_ff": 64}  # fmt: skip


def _model(cfg: AliceConfig) -> AliceModel:
    torch.manual_seed(0)
    return AliceModel(VolumeNet.from_config(cfg), 32, 32, 16, 32, 2, 64, cfg.momentum, cfg.center_momentum,
                      momentum_at_step_start=cfg.momentum_at_step_start)  # fmt: skip


@pytest.mark.parametrize(("axis", "name"), [(0, "x"), (2, "z")])
def test_column_mask_runs_along_the_chosen_axis(axis, name):
    mask = column_mask(5, 64, 16, 0.75, torch.device("cpu"), axis)
    assert torch.equal(mask, mask.narrow(1 + axis, 0, 1).expand_as(mask)), f"columns along {name}"
    for other in {0, 1, 2} - {axis}:
        assert not torch.equal(mask, mask.narrow(1 + other, 0, 1).expand_as(mask))
    assert mask.float().mean().item() == pytest.approx(0.75)
    with pytest.raises(ValueError):
        column_mask(1, 64, 16, 0.75, torch.device("cpu"), 3)


def test_mask_axis_z_is_what_the_student_sees():
    cfg = AliceConfig(**SMALL, mask_axis="z", intensity_aug=False)
    model, seen = _model(cfg), {}
    forward = model.net.forward

    def spy(x, mask=None):
        seen["x"], seen["mask"] = x, mask
        return forward(x, mask)

    model.net.forward = spy
    crops = torch.rand(2, 1, 32, 32, 32) + 0.1
    AliceObjective(cfg)(model, {"query": crops[:1], "anchor": crops[1:], "query_view": crops[:1],
                                "anchor_view": crops[1:]})  # fmt: skip
    mask = seen["mask"]
    assert torch.equal(mask, mask[..., :1].expand_as(mask)), "the reference's columns: constant along z"
    assert torch.equal(seen["x"] == 0, mask[:, None]), "hidden voxels are zeroed in the student's input"


def test_teacher_temp_epochs_is_the_reference_table():
    epochs, warm, niter = 100, 30, 3
    cfg = AliceConfig(teacher_temp_start=0.008, teacher_temp=0.01, teacher_temp_warmup=warm / epochs,
                      teacher_temp_epochs=epochs)  # fmt: skip
    table = np.concatenate([np.linspace(0.008, 0.01, warm), np.full(epochs - warm, 0.01)])  # loss.py:46-50
    progress = torch.arange(epochs * niter, dtype=torch.float64) / (epochs * niter)
    temps = AliceObjective(cfg).teacher_temperature(progress).numpy()
    np.testing.assert_allclose(temps, np.repeat(table, niter), rtol=1e-12)
    default = AliceObjective(AliceConfig(teacher_temp_start=0.008, teacher_temp=0.01, teacher_temp_warmup=0.3))
    assert default.teacher_temperature(torch.tensor(0.15)).item() == pytest.approx(0.009), "default: per step"


@pytest.mark.parametrize("at_start", [False, True])
def test_momentum_at_step_start_reads_the_step_own_index(at_start):
    cfg = AliceConfig(**SMALL, momentum_at_step_start=at_start)
    model, used = _model(cfg), []
    update = model.teacher.update
    model.teacher.update = lambda student, progress: (used.append(progress), update(student, progress))[1]
    total = 4
    for step in range(total):
        model.after_step((step + 1) / total)  # what the core passes: global_step / total after the step
    expected = [s / total for s in range(total)] if at_start else [(s + 1) / total for s in range(total)]
    assert used == pytest.approx(expected)
    assert math.isclose(model.teacher.momentum(used[0]), 0.996 if at_start else model.teacher.momentum(0.25))


def test_alice_losses_keep_float64():
    logits = torch.randn(4, 16, dtype=torch.float64)
    loss, _ = dino_cross_entropy(logits, logits, torch.zeros(16, dtype=torch.float64), torch.tensor(0.04), 0.1)
    assert loss.dtype == torch.float64
    cfg = AliceConfig(**SMALL, intensity_aug=False)
    model = _model(cfg).double()
    crops = torch.rand(2, 1, 32, 32, 32, dtype=torch.float64)
    out = AliceObjective(cfg)(model, {"query": crops[:1], "anchor": crops[1:], "query_view": crops[:1],
                                      "anchor_view": crops[1:]})  # fmt: skip
    assert out["loss"].dtype == torch.float64 and model.pending_cls.dtype == torch.float64
