"""CROMA and SSL4EO networks and objectives: ALiBi, masking, losses, extrapolation, bf16, EMA, retrieval."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_domains_rs.evaluation import recall_at_k
from ssl_domains_rs.masking import random_keep
from ssl_domains_rs.model import CROMA, SSL4EOModel, alibi_bias, alibi_slopes, grid_positions, patchify, unpatchify
from ssl_domains_rs.objective import CROMAObjective, MAEObjective, MoCoObjective, augment
from tests.conftest import run_cli


def _croma(dim: int = 32) -> CROMA:
    torch.manual_seed(0)
    return CROMA(12, 2, 8, dim, 2, 4, dim, 1, 4)


def _ssl4eo(moco: bool = True) -> SSL4EOModel:
    torch.manual_seed(0)
    return SSL4EOModel(12, 8, 32, 2, 4, 16, 32, 32, 1, 4, key_momentum=0.99 if moco else None)


def test_alibi_slopes_and_bias_follow_croma():
    slopes = alibi_slopes(16)
    assert slopes[0].item() == pytest.approx(2 ** (-0.5)) and slopes[-1].item() == pytest.approx(2**-8)
    pos = grid_positions((2, 2), torch.device("cpu"))[None]  # (0,0) (0,1) (1,0) (1,1)
    bias = alibi_bias(pos, pos, torch.tensor([1.0, 0.5]))
    assert bias.shape == (1, 2, 4, 4)
    assert bias[0, 0, 0, 3].item() == pytest.approx(-math.sqrt(2)) and bias[0, 1, 0, 1].item() == pytest.approx(-0.5)
    assert bias[0, :, range(4), range(4)].abs().max() == 0


def test_masked_bias_is_the_full_bias_gathered_at_kept_tokens():
    full = grid_positions((4, 4), torch.device("cpu"))[None].expand(3, -1, -1)
    slopes = alibi_slopes(4)
    keep, masked = random_keep(3, 16, 0.75, torch.device("cpu"))
    kept = torch.gather(full, 1, keep[..., None].expand(-1, -1, 2))
    reference = alibi_bias(full, full, slopes)
    gathered = reference[torch.arange(3)[:, None, None, None], torch.arange(4)[None, :, None, None],
                         keep[:, None, :, None], keep[:, None, None, :]]  # fmt: skip
    torch.testing.assert_close(alibi_bias(kept, kept, slopes), gathered)
    assert keep.shape == (3, 4) and masked.sum(1).tolist() == [12, 12, 12]
    assert (keep.diff(dim=1) > 0).all()  # raster order kept


def test_patchify_round_trip():
    x = torch.randn(2, 3, 16, 24)
    tokens = patchify(x, 8)
    assert tokens.shape == (2, 6, 192)
    torch.testing.assert_close(tokens[0, 1], x[0, :, :8, 8:16].reshape(-1))
    torch.testing.assert_close(unpatchify(tokens, 3, (2, 3), 8), x)


def test_croma_trained_on_120_embeds_240():
    model = _croma()
    small = {"radar": torch.rand(2, 2, 120, 120), "optical": torch.rand(2, 12, 120, 120)}
    large = {"radar": torch.rand(2, 2, 240, 240), "optical": torch.rand(2, 12, 240, 240)}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):  # train on 120² chips (225 tokens), as CROMA does
        loss = CROMAObjective()(model, small)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert model.embed(small).shape == model.embed(large).shape == (2, 32)
        assert torch.isfinite(model.embed(large)).all()


def test_croma_contrastive_loss_on_known_embeddings():
    model = _croma()
    objective = CROMAObjective(mask_ratio=0.75)
    batch = {"radar": torch.rand(6, 2, 16, 16), "optical": torch.rand(6, 12, 16, 16)}
    out = objective(model, batch)
    assert set(out) >= {"loss", "contrastive", "mae_optical", "mae_radar"}
    # at initialisation the embeddings are unrelated: the symmetric InfoNCE is near log(batch)
    assert out["contrastive"].item() == pytest.approx(math.log(6), abs=0.5)
    assert out["temperature"].item() == pytest.approx(0.07, rel=1e-4)


def test_croma_loss_falls_when_overfitting_a_tiny_batch():
    model = _croma()
    objective = CROMAObjective()
    torch.manual_seed(1)
    level = torch.rand(8, 1, 1, 1)  # every chip has its own brightness, seen by both sensors
    batch = {"radar": level.expand(8, 2, 32, 32) + 0.05 * torch.randn(8, 2, 32, 32),
             "optical": level.expand(8, 12, 32, 32) + 0.05 * torch.randn(8, 12, 32, 32)}  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = objective(model, batch)
    for _ in range(60):
        out = objective(model, batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    # the pairs are found; the MAE part is bounded below by the noise the inputs are made of
    assert out["contrastive"].item() < 0.5 * first["contrastive"].item()
    assert out["loss"].item() < 0.8 * first["loss"].item()


def test_moco_trains_the_query_encoder_and_the_ema_follows():
    model = _ssl4eo()
    objective = MoCoObjective(temperature=0.2)
    torch.manual_seed(0)
    first_date = torch.rand(8, 12, 16, 16)
    batch = {"view1": first_date, "view2": 0.9 * first_date + 0.05 * torch.randn(8, 12, 16, 16)}  # a second date
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if not n.startswith("key_encoder")], lr=1e-3)
    before = [p.clone() for p in model.key_encoder.parameters()]
    losses = []
    for step in range(30):
        loss = objective(model, batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.after_step(step / 30)
        losses.append(loss.item())
    assert all(p.grad is None for p in model.key_encoder.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.key_encoder.parameters(), strict=True))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_mae_variant_loss_falls_and_ignores_visible_patches():
    model = _ssl4eo(moco=False)
    objective = MAEObjective(mask_ratio=0.75)
    batch = {"view1": torch.rand(4, 12, 16, 16), "view2": torch.rand(4, 12, 16, 16)}
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = objective(model, batch)["loss"].item()
    for _ in range(40):
        loss = objective(model, batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first


def test_augmentation_is_batched_and_keeps_shape_and_range():
    torch.manual_seed(0)
    x = torch.rand(16, 12, 32, 32)
    y = augment(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.allclose(y[0], y[1] - (x[1] - x[0]))  # per-sample parameters differ
    identity = augment(x, min_scale=1.0, jitter=0.0)
    flipped = [torch.allclose(identity[i], x[i], atol=1e-5) or torch.allclose(identity[i], x[i].flip(-1), atol=1e-5)
               or torch.allclose(identity[i], x[i].flip(-2), atol=1e-5)
               or torch.allclose(identity[i], x[i].flip(-1, -2), atol=1e-5) for i in range(16)]  # fmt: skip
    assert all(flipped)


def test_recall_at_k_on_known_embeddings():
    queries = torch.eye(4)
    gallery = torch.eye(4)[[0, 1, 3, 2]]  # items 2 and 3 swapped
    assert recall_at_k(queries, gallery, (1, 2)) == {"recall1": 0.5, "recall2": 1.0}
    assert recall_at_k(queries, torch.eye(4), (1,)) == {"recall1": 1.0}


def test_cli_round_trip_on_shipped_chips(tmp_path: Path):
    data = Path(__file__).resolve().parents[3] / "datasets" / "sentinel_s1s2"
    run = tmp_path / "run"
    small = ["croma.dim=32", "croma.decoder_dim=32", "croma.heads=4", "croma.train_stride=32", "croma.batch_size=16"]
    sets = [a for s in ["trainer.progress_bar=false", *small] for a in ("--set", s)]
    done = run_cli("train", "--plugin", "croma", "--data", str(data), "--config", "croma-tiny", "--output", str(run),
                   "--max-epochs", "1", *sets)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run / "figures" / "reconstruction.png").is_file()
    done = run_cli("evaluate", "--run", str(run), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    assert metrics["chance"] == pytest.approx(1 / metrics["n_chips"]) and 0.0 <= metrics["recall1"] <= 1.0
    out = tmp_path / "emb.npy"
    done = run_cli("embed", "--run", str(run), "--data", str(data), "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    vectors = np.load(out)
    assert vectors.shape == (metrics["n_chips"], 32) and np.isfinite(vectors).all()


def test_shared_geometry_keeps_the_two_dates_aligned():
    from ssl_domains_rs.objective import _crop_flip_grid

    torch.manual_seed(0)
    x = torch.rand(8, 12, 32, 32)
    grid = _crop_flip_grid(x, 0.5)
    a = augment(x, jitter=0.0, grid=grid)
    b = augment(x, jitter=0.0, grid=grid)
    torch.testing.assert_close(a, b)  # same geometry for both views
    assert not torch.allclose(augment(x, jitter=0.0), a)  # independent draws differ
