"""TERA and SSAST: masking statistics, loss values on known inputs, padding, the probe and the CLI round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_domains.config import from_mapping
from ssl_domains_audio.masking import patch_mask, tera_alter, tera_time_blocks, valid_mask
from ssl_domains_audio.model import SSASTModel, TERAModel
from ssl_domains_audio.objective import SSASTObjective
from ssl_domains_audio.plugin import SSASTConfig, SSASTPlugin, TERAConfig, TERAPlugin
from tests.conftest import run_cli, train_cli


def test_tera_time_blocks_cover_15_percent_in_7_frame_blocks():
    torch.manual_seed(0)
    lengths = torch.full((4000,), 300)
    starts = tera_time_blocks(lengths, 300, ratio=0.15, width=7)
    assert (starts.sum(1) == round(300 * 0.15 / 7)).all()  # 6 distinct starts per clip
    assert not starts[:, 294:].any()  # a block never runs past the clip
    short = tera_time_blocks(torch.tensor([10, 3]), 12, ratio=0.15, width=7)
    assert short.sum(1).tolist() == [1, 1]  # at least one block (s3prl#342 asserts on short clips)


def test_tera_alteration_policy():
    torch.manual_seed(0)
    b, t, f = 2000, 120, 80
    x = torch.randn(b, t, f) + 5.0  # nothing is zero before alteration
    lengths = torch.randint(60, t + 1, (b,))
    altered, predict = tera_alter(x, lengths)
    valid = valid_mask(lengths, t)
    assert not (predict & ~valid[:, :, None]).any()  # padding is never predicted
    freq = (predict | ~valid[:, :, None]).all(dim=1)  # bins predicted on every real frame: the frequency block
    width = freq.sum(1).float()
    assert int(width.max()) <= 16 and 7.0 < float(width.mean()) < 9.0  # U[0, 16]: mean 8
    time_frames = predict.all(dim=2) & valid
    share = time_frames.sum(1).float() / lengths
    assert 0.10 < float(share.mean()) < 0.20  # 15 % in overlapping blocks (plus full-width freq blocks)
    zeroed = (altered.abs() < 1e-6).all(dim=2) & time_frames
    clip_zeroed = zeroed.sum(1) == time_frames.sum(1)
    assert 0.76 < float(clip_zeroed.float().mean()) < 0.84  # one draw per clip: 80 % zero their blocks
    unchanged = torch.isclose(altered, x).all(dim=2) & time_frames
    kept = (unchanged.sum(1) == time_frames.sum(1)) & (width == 0)
    assert 0.0 < float(kept.float().mean()) < 0.2
    assert torch.isclose(altered, x)[~predict].all()  # outside the predicted positions nothing changes


def test_tera_replacement_copies_frames_of_the_same_clip():
    torch.manual_seed(1)
    b, t, f = 400, 50, 8
    x = torch.arange(b * t, dtype=torch.float32).view(b, t, 1).expand(b, t, f).contiguous()  # frame = unique id
    altered, predict = tera_alter(x, torch.full((b,), t), freq_max=0.0)
    time_frames = predict.all(dim=2)
    swapped = time_frames & (altered[:, :, 0] != x[:, :, 0]) & (altered[:, :, 0] != 0)
    assert swapped.any()
    source_clip = (altered[:, :, 0] // t)[swapped]
    assert torch.equal(source_clip, torch.arange(b)[:, None].expand(b, t)[swapped])


def test_patch_mask_counts_validity_and_clusters():
    torch.manual_seed(0)
    rows, cols = 8, 64
    lengths = torch.randint(8, cols + 1, (500,))
    valid = valid_mask(lengths, cols).repeat(1, rows)
    for cluster in (True, False):
        mask = patch_mask(valid, (rows, cols), 0.78, cluster=cluster)
        assert torch.equal(mask.sum(1), torch.round(valid.sum(1) * 0.78).long())
        assert not (mask & ~valid).any()
    full = torch.ones(500, 512, dtype=torch.bool)

    def neighbours(mask: torch.Tensor) -> float:
        grid = mask.view(-1, 8, 64).float()
        right = (grid[:, :, 1:] * grid[:, :, :-1]).sum()
        return float(right / grid.sum())

    clustered = patch_mask(full, (8, 64), 400 / 512, cluster=True)
    scattered = patch_mask(full, (8, 64), 400 / 512, cluster=False)
    assert (clustered.sum(1) == 400).all()  # the paper's 400 of 512
    assert neighbours(patch_mask(full, (8, 64), 0.2, cluster=True)) > 2 * neighbours(
        patch_mask(full, (8, 64), 0.2, cluster=False)
    )
    assert neighbours(clustered) >= neighbours(scattered)


def _ssast(**overrides) -> tuple[SSASTModel, SSASTObjective]:
    cfg = from_mapping(SSASTConfig, {"dim": 32, "depth": 2, "heads": 2, "ff_dim": 64, **overrides}, "ssast")
    model = SSASTModel(128, patch=cfg.patch(), dim=32, depth=2, heads=2, ff_dim=64, dropout=0.0, max_frames=256)
    return model, SSASTPlugin().objective(cfg)


def test_ssast_infonce_on_known_inputs():
    _, objective = _ssast()
    targets = torch.eye(6).repeat(2, 1, 1) * 50.0  # orthogonal patches
    slot_valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    nce, accuracy = objective.nce(targets.clone(), targets, slot_valid)
    assert float(nce) < 1e-6 and float(accuracy) == 1.0
    nce, _ = objective.nce(torch.zeros(2, 6, 6), targets, slot_valid)
    # uniform scores: log(6) for the full clip's 6 rows, log(4) for the other's 4 valid rows
    assert float(nce) == pytest.approx((6 * math.log(6) + 4 * math.log(4)) / 10, rel=1e-5)
    swapped = torch.stack([targets[0], targets[0].roll(1, dims=0)])  # clip 2's predictions point elsewhere
    _, accuracy = objective.nce(swapped, targets, torch.ones(2, 6, dtype=torch.bool))
    assert float(accuracy) == 0.5


def test_ssast_softmax_dimension_is_a_choice():
    _, paper = _ssast()
    _, reference = _ssast(nce_softmax="reference")
    predictions = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # both predictions point at target 0
    targets = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    # paper (per prediction, over targets): row 1 puts equal... reference (per target, over predictions) differs
    assert float(paper.nce(predictions, targets, valid)[0]) != pytest.approx(
        float(reference.nce(predictions, targets, valid)[0])
    )


@pytest.mark.parametrize("mode", ["patch", "frame"])
def test_ssast_padding_does_not_change_a_clip(mode):
    torch.manual_seed(0)
    model, _ = _ssast(mode=mode)
    model.eval()
    x = torch.randn(1, 48, 128)
    padded = torch.cat([x, torch.zeros(1, 64, 128)], dim=1)
    one = model.embed({"features": x, "length": torch.tensor([48])})
    two = model.embed({"features": padded, "length": torch.tensor([48])})
    torch.testing.assert_close(one, two, atol=1e-5, rtol=1e-5)


def test_tera_padding_does_not_change_a_clip_and_loss_is_l1_on_altered_positions():
    torch.manual_seed(0)
    model = TERAModel(80, dim=32, depth=2, heads=2, ff_dim=64, dropout=0.0, max_frames=200).eval()
    x = torch.randn(1, 40, 80)
    padded = torch.cat([x, torch.zeros(1, 30, 80)], dim=1)
    one = model.embed({"features": x, "length": torch.tensor([40])})
    two = model.embed({"features": padded, "length": torch.tensor([40])})
    torch.testing.assert_close(one, two, atol=1e-5, rtol=1e-5)

    class Constant(torch.nn.Module):
        def forward(self, altered, lengths):
            return torch.ones_like(altered)

    cfg = from_mapping(TERAConfig, {}, "tera")
    batch = {"features": torch.zeros(3, 50, 80), "length": torch.tensor([50, 30, 20])}
    out = TERAPlugin().objective(cfg)(Constant(), batch)
    assert float(out["loss"]) == pytest.approx(1.0)  # |1 - 0| averaged over the predicted positions only


@pytest.mark.slow
@pytest.mark.parametrize("plugin", ["tera", "ssast"])
def test_speaker_probe_and_per_position_embeddings_through_the_cli(tmp_path: Path, plugin: str):
    from ssl_domains_audio.synthetic import write_example_clips

    data = write_example_clips(tmp_path / "data")
    run = tmp_path / "run"
    small = [f"{plugin}.dim=32", f"{plugin}.depth=1", f"{plugin}.heads=2", f"{plugin}.ff_dim=64"]
    args = ["--set", f"{plugin}.test_speakers=[cyd]", *[a for s in small for a in ("--set", s)]]
    train_cli(plugin, data, run, "--max-epochs", "2", *args)
    assert (run / "figures" / f"{plugin}_reconstruction.png").is_file()
    done = run_cli("evaluate", "--run", str(run), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0.0 <= metrics["probe_test_acc"] <= 1.0 and metrics["num_clips"] == 27
    out = tmp_path / "emb.npy"
    done = run_cli("embed", "--run", str(run), "--data", str(data), "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    vectors, ids = np.load(out), np.load(tmp_path / "emb.ids.npy")
    assert vectors.shape == (27, 32) and sorted(ids.tolist()) == list(range(27))
    frames = tmp_path / "frames.parquet"
    done = run_cli("embed", "--run", str(run), "--data", str(data), "--out", str(frames), "--per-position")
    assert done.returncode == 0, done.stderr[-2000:]
    import pyarrow.parquet as pq

    table = pq.read_table(frames).to_pandas()
    assert set(table["id"]) == set(range(27)) and len(table) > 2 * 27  # frames, or 16-frame patch columns
    files = table.groupby("id")["path"].agg(set)  # each frame names its clip's file, and the clip's speaker
    assert all(len(paths) == 1 and Path(next(iter(paths))).is_file() for paths in files)
    assert (table["speaker"] == [Path(p).stem.split("_")[1] for p in table["path"]]).all()  # {label}_{speaker}_n
    for clip, rows in table.groupby("id"):
        assert rows["position"].tolist() == list(range(len(rows))), "positions 0..T-1 per clip, padding left out"
        # the clip vector is the mean over the clip's positions (mean pooling of the same states)
        np.testing.assert_allclose(np.stack(rows["embedding"]).mean(0), vectors[ids.tolist().index(clip)], atol=1e-4)
