"""The live representation monitor: spectral metrics with known values, the alarm, and that it leaves training
untouched (same weights with and without it) and under its time budget."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ssl_domains.evaluation import rankme
from ssl_domains.evaluation.spectrum import spectrum_metrics
from tests.conftest import train_cli


def test_isotropic_gaussian_has_full_rank_flat_spectrum():
    z = torch.randn(20000, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m = spectrum_metrics(z)
    assert m["effective_rank"] == pytest.approx(8, abs=0.05)
    assert m["rankme"] == pytest.approx(8, abs=0.05)
    assert m["nesum"] == pytest.approx(8, rel=0.05)
    assert m["stable_rank"] == pytest.approx(8, rel=0.05)
    assert abs(m["alpha_req"]) < 0.05
    assert m["constant"] == 0.0 and m["finite"] == 1.0


def test_alpha_req_recovers_a_power_law_decay():
    d, alpha = 32, 1.5
    scale = torch.arange(1, d + 1, dtype=torch.float64) ** (-alpha / 2)  # variance of direction i: i^-alpha
    z = torch.randn(50000, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * scale
    assert spectrum_metrics(z)["alpha_req"] == pytest.approx(alpha, abs=0.1)


def test_rankme_matches_the_evaluation_rankme():
    z = torch.randn(300, 40, generator=torch.Generator().manual_seed(2)) + 3.0  # an offset, as at init
    assert spectrum_metrics(z)["rankme"] == pytest.approx(rankme(z.numpy()), rel=1e-6)


def test_constant_zero_and_nonfinite_embeddings_are_flagged():
    offset = torch.full((64, 16), 0.7) + 1e-9 * torch.randn(64, 16)
    assert spectrum_metrics(offset)["constant"] == 1.0
    assert spectrum_metrics(torch.zeros(64, 16))["constant"] == 1.0
    bad = torch.randn(64, 16)
    bad[3, 2] = math.nan
    m = spectrum_metrics(bad)
    assert m["finite"] == 0.0 and math.isnan(m["rankme"])


def test_one_direction_has_effective_rank_one_despite_an_offset():
    t = torch.randn(1000, 1, generator=torch.Generator().manual_seed(3))
    z = t * torch.ones(1, 32) + torch.linspace(0, 5, 32)  # every item on one line, away from the origin
    assert spectrum_metrics(z)["effective_rank"] == pytest.approx(1.0, abs=0.01)


def _train(vectors: Path, out: Path, *extra: str) -> None:
    train_cli("dae", vectors, out, "--max-epochs", "3", *extra)


def test_monitoring_every_step_leaves_training_bit_identical(vectors: Path, tmp_path: Path):
    _train(vectors, tmp_path / "off", "--set", "monitor.every_n_steps=0")
    _train(vectors, tmp_path / "on", "--set", "monitor.every_n_steps=1", "--set", "monitor.max_overhead=1.0")
    off, on = load_file(tmp_path / "off" / "model.safetensors"), load_file(tmp_path / "on" / "model.safetensors")
    assert all(torch.equal(off[k], on[k]) for k in off)
    import pandas as pd

    rows = pd.read_csv(tmp_path / "on" / "metrics.csv").dropna(subset=["monitor/rankme"])
    assert len(rows) >= 10 and (rows["monitor/collapsed"] == 0).all()
    assert {"monitor/effective_rank", "monitor/alpha_req", "monitor/nesum", "monitor/stable_rank"} <= set(rows)
    assert (rows["monitor/knn_acc"] > 0.5).all()  # the template's example data has 4 separable classes
    assert "monitor/rankme" not in pd.read_csv(tmp_path / "off" / "metrics.csv")


def test_the_interval_stretches_to_keep_the_overhead_under_budget(vectors: Path, tmp_path: Path):
    _train(vectors, tmp_path / "run", "--set", "monitor.every_n_steps=1", "--set", "monitor.max_overhead=0.02")
    import pandas as pd

    rows = pd.read_csv(tmp_path / "run" / "metrics.csv").dropna(subset=["monitor/rankme"])
    steps = rows["step"].to_numpy()
    assert len(steps) >= 1 and np.all(np.diff(steps) > 1)  # not every step: the budget spaced the calls out
