"""3-D medical models and objectives: MONAI equivalence, masks, rotations, losses on known inputs, EMA/centring,
bf16, evaluation mechanics, and CLI round trips for alice and contrastive3d."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import UNETR, SwinUNETR

from ssl_domains import ConfigError
from ssl_domains_medical.evaluation import (
    dense_landmark_error,
    landmark_error,
    point_embeddings,
    sample_map,
    warp_with_coordinates,
)
from ssl_domains_medical.masking import column_mask, rotate90
from ssl_domains_medical.model import AliceModel, Contrastive3DModel, VolumeNet
from ssl_domains_medical.objective import (
    AliceObjective,
    Contrastive3DObjective,
    dino_cross_entropy,
    sinkhorn_knopp,
    soft_cross_entropy,
)
from ssl_domains_medical.plugin import AliceConfig
from ssl_domains_medical.synthetic import phantom

SMALL = {"backbone": "vit", "roi": 32, "feature_size": 4, "hidden_size": 48, "num_heads": 2}


def _net(**kw) -> VolumeNet:
    torch.manual_seed(0)
    return VolumeNet(**{**SMALL, **kw})


def test_vit_forward_is_monai_unetr_and_its_weights_load_into_monai():
    net = _net()
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x)["output"], net.net(x), atol=1e-5), "re-run forward == MONAI's forward"
    seg = UNETR(1, 3, 32, feature_size=4, hidden_size=48, mlp_dim=192, num_heads=2)
    result = seg.load_state_dict({k: v for k, v in net.net.state_dict().items() if not k.startswith("out.")},
                                 strict=False)  # fmt: skip
    assert not result.unexpected_keys and set(result.missing_keys) == {"out.conv.conv.weight", "out.conv.conv.bias"}
    out = net(x)
    assert out["tokens"].shape == (2, 8, 48) and [m.shape[-1] for m in out["pyramid"]] == [2, 4, 8, 16]
    tokens, context = net.context(x)  # Alice's teacher: the same tokens and 1/8 map, decoder cut short
    assert torch.equal(tokens, out["tokens"]) and torch.allclose(context, out["pyramid"][1], atol=1e-6)


def test_swin_forward_is_monai_swinunetr():
    torch.manual_seed(0)
    net = VolumeNet("swin", roi=64, feature_size=12)
    x = torch.rand(1, 1, 64, 64, 64)
    net.eval()
    with torch.no_grad():
        out = net(x)
        assert torch.allclose(out["output"], net.net(x), atol=1e-5)
    assert isinstance(net.net, SwinUNETR) and out["tokens"].shape == (1, 64, 96)
    assert [m.shape[1] for m in out["pyramid"]] == list(net.pyramid_dims)
    with torch.no_grad():
        tokens, context = net.context(x)
    assert torch.equal(tokens, out["tokens"]) and torch.allclose(context, out["pyramid"][1], atol=1e-6)


def test_mask_token_replaces_hidden_patch_embeddings():
    net = _net().eval()
    x = torch.rand(1, 1, 32, 32, 32)
    hidden = column_mask(1, 32, 16, 0.5, x.device)
    other = torch.where(hidden[:, None], torch.rand_like(x), x)  # different content under the mask only
    with torch.no_grad():
        assert torch.allclose(net(x, hidden)["tokens"], net(other, hidden)["tokens"], atol=1e-6)
        assert not torch.allclose(net(x)["tokens"], net(other)["tokens"], atol=1e-6)


def test_column_mask_hides_exact_columns_along_x():
    mask = column_mask(6, 64, 16, 0.75, torch.device("cpu"))
    assert mask.shape == (6, 64, 64, 64)
    assert torch.equal(mask, mask[:, :1].expand_as(mask)), "columns run through the whole first axis"
    cells = mask[:, 0, ::16, ::16].flatten(1)
    assert cells.sum(1).tolist() == [12] * 6  # round(0.75 * 16) of the 4 x 4 (y, z) cells
    assert mask.float().mean().item() == pytest.approx(0.75)
    assert len({tuple(c.tolist()) for c in cells}) > 1, "every crop draws its own mask"


def test_rotate90_turns_each_crop_by_its_own_angle():
    x = torch.rand(4, 1, 8, 8, 8)
    turns = torch.tensor([0, 1, 2, 3])
    out = rotate90(x, turns)
    for i, k in enumerate(turns.tolist()):
        assert torch.equal(out[i], torch.rot90(x[i], k, dims=(-2, -1)))
    assert torch.equal(rotate90(out, (4 - turns) % 4), x)


def test_dino_cross_entropy_known_values():
    logits = torch.randn(3, 5, 16)
    zero = torch.zeros(16)
    uniform_teacher = torch.zeros(3, 5, 16)
    loss, entropy = dino_cross_entropy(uniform_teacher, torch.zeros(3, 5, 16), zero, torch.tensor(0.04), 0.1)
    assert loss.item() == pytest.approx(math.log(16)) and entropy.item() == pytest.approx(math.log(16))
    loss, entropy = dino_cross_entropy(logits, logits, zero, torch.tensor(0.1), 0.1)
    assert loss.item() == pytest.approx(entropy.item(), rel=1e-5)  # H(p, p) = H(p)
    shifted, _ = dino_cross_entropy(logits + 5.0, logits, logits.new_full((16,), 5.0), torch.tensor(0.1), 0.1)
    assert shifted.item() == pytest.approx(loss.item(), rel=1e-5)  # centring removes a constant offset


def _alice(**cfg):
    config = AliceConfig(**{**SMALL, "out_dim": 32, "head_hidden": 32, "head_bottleneck": 16, "align_dim": 32,
                            "align_heads": 2, "align_ff": 64, **cfg})  # fmt: skip
    torch.manual_seed(0)
    model = AliceModel(VolumeNet.from_config(config), 32, 32, 16, 32, 2, 64, config.momentum, config.center_momentum,
                       head_batch_norm=True)  # fmt: skip
    return model, AliceObjective(config), config


def _pairs(query: torch.Tensor, anchor: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"query": query, "anchor": anchor, "query_view": query, "anchor_view": anchor}


def test_alice_teacher_temperature_centres_and_ema():
    model, objective, _ = _alice(teacher_temp_start=0.008, teacher_temp=0.01, teacher_temp_warmup=0.5)
    temps = [objective.teacher_temperature(torch.tensor(p)).item() for p in (0.0, 0.25, 0.5, 1.0)]
    assert temps == pytest.approx([0.008, 0.009, 0.01, 0.01])
    batch = _pairs(torch.rand(2, 1, 32, 32, 32), torch.rand(2, 1, 32, 32, 32))
    out = objective(model, batch)
    assert set(out) >= {"loss_cls", "loss_patch", "loss_mim", "teacher_entropy_cls"}
    expected = out["loss_cls"] + out["loss_patch"] + 10 * out["loss_mim"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    out["loss"].backward()
    pending = model.pending_cls.clone()
    assert model.center_cls.abs().sum() == 0 and pending.abs().sum() > 0
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(1.0)
    teacher_before = next(model.teacher.module[0].parameters()).clone()
    model.after_step(0.0)
    assert torch.allclose(model.center_cls, 0.1 * pending), "centre <- 0.9 centre + 0.1 batch mean"
    moved = next(model.teacher.module[0].parameters()) - teacher_before
    assert torch.allclose(moved, torch.full_like(moved, 0.004), atol=1e-5), "teacher <- 0.996 teacher + 0.004 student"
    assert model.progress.item() == 0.0


@pytest.mark.parametrize("centering", ["ema", "sinkhorn"])
def test_alice_cls_target_is_the_other_crop_of_the_pair(centering):
    model, objective, cfg = _alice(cls_weight=1.0, patch_weight=0.0, recon_weight=0.0, centering=centering)
    model.center_cls.normal_()  # a non-zero centre, so that a centre left out would show
    query, anchor = torch.rand(2, 1, 32, 32, 32), torch.rand(2, 1, 32, 32, 32)
    torch.manual_seed(1)
    loss = objective(model, _pairs(query, anchor))["loss_cls"]
    # the same step by hand: the student's [CLS] of the 4 masked crops, the teacher's of the 4 clean ones
    crops = torch.cat([query, anchor])
    torch.manual_seed(1)
    hidden = column_mask(4, 32, cfg.mask_patch, cfg.mask_ratio, crops.device)
    student = model.cls_head(model.net(crops.masked_fill(hidden[:, None], 0.0), hidden)["tokens"].mean(1))
    teacher_net, teacher_cls, _ = model.teacher.module
    with torch.no_grad():
        teacher = teacher_cls(teacher_net.context(crops)[0].mean(1))
    temp = objective.teacher_temperature(model.progress)
    if centering == "sinkhorn":
        target = sinkhorn_knopp(teacher, temp, cfg.sinkhorn_iterations)
    else:
        target = torch.softmax((teacher - model.center_cls) / temp, -1)
    swapped, _ = soft_cross_entropy(torch.cat([target[2:], target[:2]]), student, cfg.student_temp)
    unswapped, _ = soft_cross_entropy(target, student, cfg.student_temp)
    assert loss.item() == pytest.approx(swapped.item(), rel=1e-4), "query <- anchor's teacher target and back"
    assert abs(loss.item() - unswapped.item()) > 1e-3


def test_sinkhorn_knopp_spreads_a_batch_over_the_prototypes():
    torch.manual_seed(0)
    teacher = torch.randn(6, 8) * 3
    target = sinkhorn_knopp(teacher, torch.tensor(0.1), iterations=200)
    assert torch.allclose(target.sum(1), torch.ones(6)), "one distribution per output"
    assert torch.allclose(target.sum(0), torch.full((8,), 6 / 8), atol=1e-3), "equal mass per prototype"
    shifted = sinkhorn_knopp(teacher + torch.randn(6, 1) * 5, torch.tensor(0.1), iterations=200)
    assert torch.allclose(shifted, target, atol=1e-5), "a per-output offset changes nothing"
    # one prototype dominating every output: EMA-free softmax puts all of the batch on it, Sinkhorn cannot
    collapsed = torch.zeros(4, 8)
    collapsed[:, 0] = 10.0
    assert torch.softmax(collapsed / 0.1, -1)[:, 0].min() > 0.99
    assert torch.allclose(sinkhorn_knopp(collapsed, torch.tensor(0.1)), torch.full((4, 8), 1 / 8), atol=1e-3)
    # [B, T, K] patch logits: the batch is every token; no overflow at the reference's 0.01
    tokens = sinkhorn_knopp(torch.randn(2, 5, 8) * 100, torch.tensor(0.01))
    assert tokens.shape == (2, 5, 8) and torch.isfinite(tokens).all()
    assert torch.allclose(tokens.sum(-1), torch.ones(2, 5))


def test_contrastive_objective_logs_and_rotation_targets():
    torch.manual_seed(0)
    model = Contrastive3DModel(_net(), proj_dim=16, rotation=True)
    objective = Contrastive3DObjective()
    crop = torch.rand(2, 1, 32, 32, 32)
    out = objective(model, {"image": crop, "view1": crop.clone(), "view2": crop.clone()})
    assert out["loss"].item() == pytest.approx((out["recon_l1"] + out["nt_xent"] + out["rotation_ce"]).item(), rel=1e-5)
    assert 0.0 <= out["rotation_acc"].item() <= 1.0
    no_rotation = Contrastive3DObjective(rotation=False)(Contrastive3DModel(_net(), 16, rotation=False),
                                                        {"image": crop, "view1": crop, "view2": crop})  # fmt: skip
    assert "rotation_ce" not in no_rotation


def test_contrastive_reconstruction_target_turns_with_its_view():
    def echo(views: torch.Tensor) -> dict[str, torch.Tensor]:  # a perfect autoencoder of whatever it is shown
        return {"output": views, "z": views.flatten(1)[:, :8], "rotation": torch.zeros(len(views), 4)}

    crop = torch.rand(4, 1, 8, 8, 8)
    torch.manual_seed(0)
    out = Contrastive3DObjective(rotation=True)(echo, {"image": crop, "view1": crop, "view2": crop})
    assert out["recon_l1"].item() == 0.0, "the clean crop is turned exactly as its view"
    torch.manual_seed(0)
    assert (torch.randint(0, 4, (8,)) != 0).any(), "the seed turns some views"


def test_corresponding_positives_reconstruct_each_view_to_its_own_crop():
    def echo(views: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"output": views, "z": views.flatten(1)[:, :8], "rotation": torch.zeros(len(views), 4)}

    crop, other = torch.rand(2, 1, 8, 8, 8), torch.rand(2, 1, 8, 8, 8)
    objective = Contrastive3DObjective(rotation=False)
    own = objective(echo, {"image": crop, "image2": other, "view1": crop, "view2": other})
    assert own["recon_l1"].item() == 0.0
    shared = objective(echo, {"image": crop, "view1": crop, "view2": other})  # no image2: both aim at image
    assert shared["recon_l1"].item() == pytest.approx(0.5 * (other - crop).abs().mean().item(), rel=1e-5)


def test_known_warp_returns_true_source_coordinates():
    image = torch.as_tensor(phantom((24, 24, 24), 0)[0])[None]
    shift_only = {"sigma_range": (1.0, 1.0), "magnitude_range": (0.0, 0.0), "rotate_range": 0, "scale_range": 0,
                  "translate_range": (3.0, 3.0, 3.0)}  # fmt: skip
    shifted, source, valid = warp_with_coordinates(image, 0, **shift_only)
    grid = torch.stack(torch.meshgrid(*[torch.arange(24.0)] * 3, indexing="ij"))
    offset = (source - grid)[:, valid]
    assert torch.allclose(offset, offset[:, :1].expand_as(offset), atol=1e-3), "a pure shift moves every voxel alike"
    assert offset[:, 0].abs().max() <= 3.0 + 1e-4
    p = np.array([[12.0, 12.0, 12.0]])
    assert np.allclose(sample_map(source, p)[0], source[:, 12, 12, 12].numpy(), atol=1e-4)
    # the image was sampled where ``source`` says
    q = source[:, 12, 12, 12].numpy()[None]
    assert sample_map(image, q)[0, 0] == pytest.approx(float(shifted[0, 12, 12, 12]), abs=1e-2)


class _VoxelIdNet:
    """A stand-in encoder whose embedding of a crop is a fixed random vector of the crop's centre voxel value."""

    roi = 8

    def __init__(self, ids: int) -> None:
        self.table = torch.randn(ids + 1, 16, generator=torch.Generator().manual_seed(0))

    def eval(self) -> _VoxelIdNet:
        return self

    def encode(self, crops: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.table[crops[:, 0, 4, 4, 4].round().long()][:, None, :], None


def test_landmark_matching_finds_the_true_counterpart_through_a_known_shift():
    ids = torch.arange(1, 12**3 + 1, dtype=torch.float32).reshape(1, 12, 12, 12)  # every voxel unique
    net = _VoxelIdNet(12**3)
    same = landmark_error(net, ids, ids, lambda p: p, (2.0, 2.0, 2.0), points=50, stride=1)
    assert same["landmark_mm"] == 0.0 and same["landmark_points"] == 50 and same["landmark_floor_mm"] == 0.0
    # on a 3-voxel candidate grid (centres 1, 4, 7, 10 per axis) no match can beat the nearest candidate
    coarse = landmark_error(net, ids, ids, lambda p: p, (2.0, 2.0, 2.0), points=50, stride=3)
    assert 0.0 < coarse["landmark_floor_mm"] <= coarse["landmark_mm"]
    assert coarse["landmark_floor_mm"] <= 2.0 * math.sqrt(3 * 1.5**2)  # half a cell's diagonal at 2 mm voxels
    shifted = torch.roll(ids, shifts=2, dims=1)  # B's voxel (x, y, z) is A's (x - 2, y, z)
    result = landmark_error(net, ids, shifted, lambda p: p - [2.0, 0.0, 0.0], (2.0, 2.0, 2.0), points=50, stride=1)
    assert result["landmark_mm"] == 0.0
    wrong = landmark_error(net, ids, shifted, lambda p: p, (2.0, 2.0, 2.0), points=50, stride=1)
    # scored against the wrong truth every match is 2 voxels (4 mm) off, or 10 voxels where the roll wrapped round
    assert wrong["landmark_mm"] >= 4.0


def test_point_read_outs_are_the_token_pieces_they_name():
    torch.manual_seed(0)
    net = VolumeNet("vit", roi=64, feature_size=4, hidden_size=48, num_heads=2).eval()
    image = torch.rand(1, 70, 70, 70)
    centres = np.array([[35, 35, 35], [33, 36, 37]])  # crops inside the volume, so no padding
    crops = torch.stack(
        [image[:, c[0] - 32 : c[0] + 32, c[1] - 32 : c[1] + 32, c[2] - 32 : c[2] + 32] for c in centres]
    )
    with torch.no_grad():
        tokens, states = net.encode(crops)
        grid = tokens.transpose(1, 2).reshape(2, 48, 4, 4, 4)
        patches = net.net.vit.patch_embedding(crops)
    read = {
        r: point_embeddings(net, image, centres, read_out=r) for r in ("mean", "centre", "grid", "block:0", "block:12")
    }
    assert torch.allclose(read["mean"], tokens.mean(1), atol=1e-5)
    assert torch.allclose(read["centre"], grid[..., 1:3, 1:3, 1:3].flatten(2).mean(-1), atol=1e-5)  # 8 of 64 tokens
    assert not torch.allclose(read["centre"], read["mean"], atol=1e-3)
    assert read["grid"].shape == (2, 64 * 48) and torch.allclose(read["grid"], grid.flatten(1), atol=1e-5)
    assert torch.allclose(read["block:0"], patches.mean(1), atol=1e-5)
    assert torch.allclose(read["block:12"], states[11].mean(1), atol=1e-5)  # before the final LayerNorm
    with pytest.raises(ConfigError, match="unknown point read-out"):
        point_embeddings(net, image, centres, read_out="cls")
    with pytest.raises(ConfigError, match="from 0 to 12"):
        point_embeddings(net, image, centres, read_out="block:13")


class _CellIdNet:
    """A stand-in whose dense features (1/2 resolution) are a fixed random vector of each 2^3 cell's mean value."""

    def __init__(self, ids: int) -> None:
        self.table = torch.randn(ids + 1, 16, generator=torch.Generator().manual_seed(0))

    def eval(self) -> _CellIdNet:
        return self

    def over_volume(self, x: torch.Tensor, method: str) -> torch.Tensor:
        assert method == "dense_features"
        cells = F.avg_pool3d(x, 2).round().long()[:, 0]  # [B, d, h, w]
        return self.table[cells].permute(0, 4, 1, 2, 3)


def test_dense_landmark_error_is_zero_for_a_volume_against_itself():
    image = torch.as_tensor(phantom((48, 48, 48), 1)[0] / 1000.0)[None].float()
    result = dense_landmark_error(_net(), image, image, lambda p: p, (2.0, 2.0, 2.0), points=30)
    assert result["landmark_mm"] == 0.0 and result["landmark_points"] == 30


def test_dense_landmark_matching_finds_the_true_counterpart_through_a_known_shift():
    ids = torch.arange(1, 16**3 + 1, dtype=torch.float32).reshape(1, 16, 16, 16)
    net = _CellIdNet(16**3)
    shifted = torch.roll(ids, shifts=2, dims=1)  # one feature cell: B's voxel (x, y, z) is A's (x - 2, y, z)
    result = dense_landmark_error(net, ids, shifted, lambda p: p - [2.0, 0.0, 0.0], (2.0, 2.0, 2.0), points=40)
    assert result["landmark_mm"] == 0.0 and result["landmark_points"] == 40  # wrapped cells have no counterpart
    wrong = dense_landmark_error(net, ids, shifted, lambda p: p, (2.0, 2.0, 2.0), points=40)
    assert wrong["landmark_mm"] >= 4.0  # scored against the wrong truth, every match is one cell (2 voxels) off
