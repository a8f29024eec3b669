"""MERLIN plugin: U-Net against the authors' network, loss values, tiled despeckling, CLI round trip."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from ssl_domains import DataError
from ssl_domains_sar.denoise import despeckle_array, tile_starts
from ssl_domains_sar.evaluation import boxcar, enl, homogeneous_windows, lee, psnr_amplitude, ratio_statistics
from ssl_domains_sar.masking import component_views
from ssl_domains_sar.model import MerlinUNet
from ssl_domains_sar.objective import MerlinObjective, merlin_nll
from ssl_domains_sar.simulate import simulate_slc
from ssl_domains_sar.weights import load_official, official_weights_path
from tests.conftest import run_cli


@pytest.mark.parametrize("name", ["sentinel_tops", "stripmap"])
def test_imported_weights_reproduce_the_authors_network(name: str):
    from deepdespeckling.model import Model  # imports torch and numpy only (not the GDAL-bound utils)

    reference = Model(torch.device("cpu"), height=64, width=96)
    reference.load_state_dict(torch.load(official_weights_path(name), map_location="cpu", weights_only=True))
    ours = load_official(name, name)
    x = torch.rand(2, 1, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = torch.stack([reference(x[i]).reshape(1, 64, 96) for i in range(2)])
        got = ours(x)  # batched
    assert (got - expected).abs().max() < 1e-4


def test_loss_on_known_values_and_its_minimiser():
    # log R = 0, b = 1: 1/2 * 0 + 1 / 1 = 1
    assert merlin_nll(torch.zeros(3, 1, 4, 4), torch.ones(3, 1, 4, 4)).item() == pytest.approx(1.0)
    # for b ~ N(0, R/2) the expected loss 1/2 log r + R/(2r) is smallest at r = R
    b = torch.randn(200_000, generator=torch.Generator().manual_seed(0)) * math.sqrt(8.0 / 2)
    grid = torch.linspace(math.log(4.0), math.log(16.0), 121)
    losses = torch.stack([merlin_nll(torch.full_like(b, g), b) for g in grid])
    assert math.exp(grid[losses.argmin()]) == pytest.approx(8.0, rel=0.03)


def test_views_use_both_directions_in_one_batch():
    a, b = torch.full((2, 1, 32, 32), 1.0), torch.full((2, 1, 32, 32), 2.0)
    inputs, targets = component_views(a, b)
    assert inputs.shape == targets.shape == (4, 1, 32, 32)
    assert inputs[:2].eq(1).all() and targets[:2].eq(2).all() and inputs[2:].eq(2).all() and targets[2:].eq(1).all()


def test_objective_survives_bf16_autocast_with_huge_and_zero_components():
    model = MerlinUNet(10.089, -1.429, width=8, decoder_width=16)
    real = torch.randn(2, 1, 64, 64) * 300
    real[0, 0, :4, :4] = 0.0  # log(0 + 1e-3) must stay finite
    batch = {"real": real, "imag": torch.randn(2, 1, 64, 64) * 300, "id": torch.arange(2)}
    full = MerlinObjective()(model, batch)["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = MerlinObjective()(model, batch)
    assert half["loss"].dtype == torch.float32 and torch.isfinite(half["loss"])
    assert half["loss"].item() == pytest.approx(full.item(), rel=0.05)
    half["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _naive_tiled_intensity(model: MerlinUNet, z: np.ndarray, patch: int, stride: int) -> np.ndarray:
    """Every tile of the whole image at once, averaged: what the streaming despeckler must equal."""
    sums, counts = np.zeros((2, *z.shape)), np.zeros(z.shape)
    with torch.no_grad():
        for r in tile_starts(z.shape[0], patch, stride):
            for c in tile_starts(z.shape[1], patch, stride):
                tile = torch.from_numpy(z[r : r + patch, c : c + patch])
                x = torch.stack([tile.real, tile.imag])[:, None]
                sums[:, r : r + patch, c : c + patch] += model(model.normalize(x))[:, 0].double().numpy()
                counts[r : r + patch, c : c + patch] += 1
    mean = sums / counts
    span, low = float(model.log_max - model.log_min), float(model.log_min)
    return 0.5 * np.exp(2 * (mean * span + low)).sum(0)


def test_streaming_despeckler_equals_whole_image_tiling():
    torch.manual_seed(0)
    model = MerlinUNet(8.0, -3.0, width=8, decoder_width=16).eval()
    z = simulate_slc(np.full((150, 200), 1e4), np.random.default_rng(0))
    streamed = despeckle_array(model, z, patch=64, stride=40, batch=3)
    np.testing.assert_allclose(streamed, _naive_tiled_intensity(model, z, 64, 40), rtol=1e-4)


def test_classical_filters_and_metrics_on_known_speckle():
    reflectivity = np.full((128, 128), 400.0)
    z = simulate_slc(reflectivity, np.random.default_rng(2))
    intensity = np.abs(z).astype(np.float64) ** 2
    windows = homogeneous_windows(intensity, 16)
    assert enl(intensity, windows) == pytest.approx(1.0, abs=0.35)
    assert enl(boxcar(intensity, 7), windows) > 5 * enl(intensity, windows)
    assert enl(lee(intensity, 7), windows) > 3
    truth = ratio_statistics(z, reflectivity)  # the true R leaves pure speckle behind
    assert truth["ratio_mean"] == pytest.approx(1.0, abs=0.05) and truth["ratio_enl"] == pytest.approx(1.0, abs=0.1)
    assert psnr_amplitude(np.sqrt(reflectivity) * 1.1, np.sqrt(reflectivity)) == pytest.approx(20.0, abs=1e-6)


@pytest.fixture(scope="module")
def imported_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("weights") / "s1"
    result = run_cli("run", "merlin", "import-weights", "--weights", "sentinel_tops", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_denoise_cli_writes_a_georeferenced_geotiff(imported_run: Path, tmp_path: Path):
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    from ssl_domains_sar.formats import write_complex_geotiff

    z = simulate_slc(np.full((96, 128), 200.0**2), np.random.default_rng(0))  # flat, Sentinel-1-like level
    source = write_complex_geotiff(tmp_path / "slc.tif", z, CRS.from_epsg(32631), from_origin(5e5, 5e6, 10, 10))
    out = tmp_path / "out" / "despeckled.tif"
    result = run_cli(
        "run", "merlin", "denoise", "--run", str(imported_run), str(source), str(out), "--patch", "64", "--stride", "32"
    )
    assert result.returncode == 0, result.stderr
    with rasterio.open(source) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform and dst.shape == src.shape
        intensity = dst.read(1).astype(np.float64) ** 2
    assert np.isfinite(intensity).all()
    assert intensity.mean() ** 2 / intensity.var() > 10  # the input has ENL 1
    assert intensity.mean() == pytest.approx(200.0**2, rel=0.35)
    assert [p.name for p in out.parent.iterdir()] == ["despeckled.tif"]  # no partial file left behind


def test_denoise_cli_refuses_bad_input_and_leaves_nothing(imported_run: Path, tmp_path: Path):
    z = simulate_slc(np.full((40, 50), 100.0), np.random.default_rng(0))
    np.save(tmp_path / "small.npy", z)
    np.save(tmp_path / "amplitude.npy", np.abs(z))
    out = tmp_path / "out.tif"
    small = run_cli("run", "merlin", "denoise", "--run", str(imported_run), str(tmp_path / "small.npy"), str(out))
    assert small.returncode == 2 and "smaller than the 256-pixel tile; use --patch 32" in small.stderr
    real = run_cli("run", "merlin", "denoise", "--run", str(imported_run), str(tmp_path / "amplitude.npy"), str(out))
    assert real.returncode == 2 and "single-look complex" in real.stderr
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_training_refuses_a_patch_larger_than_the_images(tmp_path: Path):
    np.save(tmp_path / "tiny.npy", simulate_slc(np.full((48, 48), 100.0), np.random.default_rng(0)))
    result = run_cli(
        "train",
        "--plugin",
        "merlin",
        "--data",
        str(tmp_path),
        "--output",
        str(tmp_path / "run"),
        "--set",
        "merlin.patch_size=64",
    )
    assert result.returncode == 2
    assert "tiny.npy: the image (48 x 48) is smaller than the 64-pixel patch" in result.stderr
    assert "merlin.patch_size=N with N <= 32" in result.stderr


def test_fine_tuning_starts_from_the_given_weights_but_keeps_the_runs_constants():
    from types import SimpleNamespace

    from ssl_domains_sar.plugin import MerlinPlugin

    plugin = MerlinPlugin()
    cfg = plugin.default_config()
    cfg.init_weights = str(official_weights_path("stripmap"))
    model = plugin.model(cfg, SimpleNamespace(log_bounds=(9.0, -2.0)))
    state = torch.load(official_weights_path("stripmap"), map_location="cpu", weights_only=True)
    assert torch.equal(model.enc0.weight, state["enc0.weight"]) and torch.equal(model.dec1.bias, state["dec1.bias"])
    assert (float(model.log_max), float(model.log_min)) == (9.0, -2.0)
    cfg.width = 32
    with pytest.raises(DataError, match="does not fit this U-Net"):
        plugin.model(cfg, SimpleNamespace(log_bounds=(9.0, -2.0)))
