"""Alice review (issue 31): the EMA base momentum scaled to the run, the reference's patch head before CASA
(``patch_head: dino``) and the student's stochastic depth (``drop_path``)."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.layers import DropPath

from ssl_domains import ConfigError
from ssl_domains_medical.model import AliceModel, VolumeNet, scaled_momentum
from ssl_domains_medical.objective import AliceObjective, _tokens
from ssl_domains_medical.plugin import AliceConfig, AlicePlugin

SMALL = {"backbone": "vit", "roi": 32, "feature_size": 4, "hidden_size": 48, "num_heads": 2, "out_dim": 32,
         "head_hidden": 32, "head_bottleneck": 16, "align_dim": 32, "align_heads": 2, "align_ff": 64,
         "intensity_aug": False}  # fmt: skip


def _model(**overrides) -> AliceModel:
    torch.manual_seed(0)
    return AlicePlugin().model(AliceConfig(**{**SMALL, **overrides}), None).double()


def _teacher_share(model: AliceModel, steps: int, start: int = 0) -> float:
    """Run ``steps`` after_step calls as the core makes them, with the student at 0: what is left in the teacher
    of its initialisation (``prod m``), read off one parameter."""
    with torch.no_grad():
        for p in model.student().parameters():
            p.zero_()
    teacher = model.teacher.module[1].mlp[0].weight
    before = teacher.clone()
    for step in range(start, steps):
        model.after_step((step + 1) / steps)  # ssl_domains/module.py: global_step / total after the step
    return float((teacher / before).mean())


def test_scaled_momentum_values():
    assert scaled_momentum(0.996, 3000, 280, 0.9) == pytest.approx(1 - 0.004 * 3000 / 280)  # 0.95714
    assert scaled_momentum(0.996, 3000, 40, 0.9) == 0.9  # the floor
    assert scaled_momentum(0.996, 3000, 6000, 0.9) == 0.996  # a longer run: the reference's momentum
    assert scaled_momentum(0.996, 0, 280, 0.9) == 0.996  # off


def test_teacher_share_of_its_init_after_a_short_run():
    plain = _model(momentum_ref_steps=0)
    assert _teacher_share(plain, 280) == pytest.approx(0.571873, abs=1e-6), "the reference schedule at 280 steps"
    assert plain.teacher.momentum_start == 0.996
    scaled = _model()  # default momentum_ref_steps 3000
    assert _teacher_share(scaled, 280) == pytest.approx(0.002295, abs=1e-6)
    assert float(scaled.planned_steps) == 280 and scaled.teacher.momentum_start == pytest.approx(0.957142857)
    # the reference's own run (3000 steps at 0.996) keeps 0.00246 of its init: the scaled short run is as far
    prod = math.prod(1 - 0.004 * (math.cos(math.pi * k / 3000) + 1) / 2 for k in range(1, 3001))
    assert prod == pytest.approx(0.002461, abs=1e-6)


def test_planned_steps_survive_a_resume_and_old_checkpoints_load():
    model = _model()
    for step in range(3):
        model.after_step((step + 1) / 280)
    state = model.state_dict()
    resumed = _model()
    resumed.load_state_dict(state)
    resumed.after_step(4 / 500)  # a longer total after the resume: the base stays that of the planned run
    assert resumed.teacher.momentum_start == pytest.approx(1 - 0.004 * 3000 / 280)
    old = _model()
    old.load_state_dict({k: v for k, v in state.items() if k != "planned_steps"})  # before planned_steps
    old.after_step(4 / 280)  # read again from the increment after the restored progress (3 / 280)
    assert float(old.planned_steps) == 280


def test_patch_head_dino_scores_tokens_with_the_dino_head_before_casa():
    model = _model(patch_head="dino")
    cfg = AliceConfig(**SMALL, patch_head="dino")
    assert model.query_proj.out_features == 48 and model.context_proj.out_features == 48  # the token width
    assert len(model.teacher.module) == 4, "the teacher follows the patch prototypes too"
    seen = []
    align = model.align.forward
    model.align.forward = lambda q, ctx: (seen.append((q, ctx)), align(q, ctx))[1]
    crops = torch.rand(2, 1, 32, 32, 32, dtype=torch.float64)
    hidden = []
    net = model.net.forward
    model.net.forward = lambda x, mask=None: (hidden.append(net(x, mask)), hidden[-1])[1]
    out = AliceObjective(cfg)(model, {"query": crops[:1], "anchor": crops[1:], "query_view": crops[:1],
                                      "anchor_view": crops[1:]})  # fmt: skip
    assert torch.isfinite(out["loss"])
    student = hidden[0]
    head, protos = model.cls_head, model.patch_prototypes
    query = protos(head.embed(model.query_proj(student["tokens"])))
    context = protos(head.embed(model.context_proj(_tokens(student["pyramid"][1]))))
    _, (q_s, c_s) = seen  # the teacher side is aligned first
    torch.testing.assert_close(q_s, query, rtol=0, atol=0)
    torch.testing.assert_close(c_s, context, rtol=0, atol=0)
    assert c_s.shape == (2, 64, 32) and float(c_s.detach().abs().max()) <= 1 + 1e-12, "cosines to 32 prototypes"
    with pytest.raises(ValueError):
        AliceModel(VolumeNet("vit", 32, 4, 48, 2), patch_head="mlp")


def test_drop_path_student_swin_only_teacher_none():
    assert AliceConfig().student_drop_path() == 0.0  # vit: MONAI's UNETR ViT has no stochastic depth
    assert AliceConfig(backbone="swin", feature_size=12).student_drop_path() == 0.1
    with pytest.raises(ConfigError, match="stochastic depth"):
        AliceConfig(drop_path=0.1).validate()
    with pytest.raises(ValueError):
        VolumeNet("vit", 32, 4, 48, 2, drop_path=0.1)
    torch.manual_seed(0)
    cfg = AliceConfig(backbone="swin", roi=64, feature_size=12, out_dim=16, head_hidden=16, head_bottleneck=8,
                      align_dim=16, align_heads=2, align_ff=32)  # fmt: skip
    cfg.validate()
    model = AlicePlugin().model(cfg, None)
    student = [m.drop_prob for m in model.net.modules() if isinstance(m, DropPath)]
    teacher = [m.drop_prob for m in model.teacher.modules() if isinstance(m, DropPath)]
    assert len(student) == len(teacher) == 7  # 8 Swin blocks, linspace(0, 0.1, 8): the first one is an Identity
    assert max(student) == pytest.approx(0.1) and min(student) == pytest.approx(0.1 / 7)
    assert teacher == [0.0] * 7
