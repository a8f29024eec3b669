"""Remote-sensing data: layouts, resampling, pairing, spatial hold-out, normalisation, statistics, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from ssl_domains import ConfigError, DataError
from ssl_domains_rs.bands import S2_L2A, SSL4EO_STATS, band_name, multiband_order
from ssl_domains_rs.data import RSDataModule, normalise
from ssl_domains_rs.formats import find_acquisitions, read_bands
from ssl_domains_rs.plugin import CROMAConfig, SSL4EOConfig
from ssl_domains_rs.stats import band_statistics, stats_command
from ssl_domains_rs.synthetic import write_example_pairs, write_tif

SHIPPED = Path(__file__).resolve().parents[3] / "datasets" / "sentinel_s1s2"


def _croma_cfg(**kw) -> CROMAConfig:
    cfg = CROMAConfig(chip=16, batch_size=4, **kw)
    cfg.validate()
    return cfg


def _multiband(path: Path, bands: int, size: int = 32, dtype: str = "uint16", value: float = 1000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=size, width=size, count=bands, dtype=dtype,
                       crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 5000000)) as dst:  # fmt: skip
        dst.write(np.full((bands, size, size), value, dtype=dtype))
    return path


def test_band_names_of_every_layout_are_canonical():
    assert band_name("B1") == "B01" and band_name("B8A") == "B8A" and band_name("S2A_MSIL2A_x_87_48_B12") == "B12"
    assert band_name("S1A_IW_GRDH_1SDV_x_VH") == "VH" and band_name("cloud_mask") is None
    assert multiband_order(13, (None,) * 13)[-1] == "B8A"  # EuroSAT puts B8A last
    assert multiband_order(12, (None,) * 12) == S2_L2A
    assert multiband_order(5, (None,) * 5) == ()


def test_shipped_scenes_pair_s1_with_s2_and_resample_to_10m():
    acqs = find_acquisitions(SHIPPED)
    ssl4eo = [a for a in acqs if "0000200" in a.name and a.level == "L2A"]
    image, valid = read_bands(ssl4eo[0], S2_L2A)
    assert image.shape == (12, 264, 264) and valid.all()  # B01 (60 m, 44²) and B05 (20 m, 132²) upsampled
    dm = RSDataModule(SHIPPED, _croma_cfg(), mode="s1s2")
    dm.setup("fit")
    # 6 BigEarthNet pairs + the SSL4EO location; EuroSAT has no S1 and is not a CROMA location
    assert len(dm.scenes) == 7
    kinds = sorted(tuple(sorted(set(s.kinds))) for s in dm.scenes)
    assert all(k == ("s1", "s2") for k in kinds)
    ssl4eo_scene = next(s for s in dm.scenes if "0000200" in s.name)
    assert ssl4eo_scene.kinds.count("s1") == 2 and ssl4eo_scene.kinds.count("s2") == 2  # L1C left out
    s1, s2 = dm.eval_pair(ssl4eo_scene)
    assert (ssl4eo_scene.dates[s1], ssl4eo_scene.dates[s2]) == ("20200607", "20200604")  # closest dates
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)  # normalised on the device
    assert batch["optical"].shape == (4, 12, 16, 16) and batch["radar"].shape == (4, 2, 16, 16)
    assert float(batch["optical"].min()) >= 0.0 and float(batch["optical"].max()) <= 1.0


def test_holdout_quadrant_is_disjoint_from_training_and_tiled_without_overlap():
    dm = RSDataModule(SHIPPED, _croma_cfg(holdout_quadrant=3), mode="s1s2")
    dm.setup("fit")
    chip = 16
    for s, y, x, _ in dm.train_items:
        h, w = dm.scenes[s].shape
        assert not (y + chip > h // 2 and x + chip > w // 2), "a training chip touches the held-out quadrant"
    assert len(dm.test_items) > 0
    for s, y, x, split in dm.test_items:
        h, w = dm.scenes[s].shape
        assert split == 2 and y >= h // 2 and x >= w // 2 and y + chip <= h and x + chip <= w
    per_scene = {}
    for s, y, x, _ in dm.test_items:
        per_scene.setdefault(s, []).append((y, x))
    for starts in per_scene.values():  # non-overlapping: starts differ by at least a chip along some axis
        for i, (y1, x1) in enumerate(starts):
            for y2, x2 in starts[i + 1 :]:
                assert abs(y1 - y2) >= chip or abs(x1 - x2) >= chip


def test_temporal_mode_pairs_two_dates_of_one_location(tmp_path: Path):
    root = write_example_pairs(tmp_path)
    cfg = SSL4EOConfig(chip=16, batch_size=4, single_date="skip")
    cfg.validate()
    dm = RSDataModule(root, cfg, mode="temporal")
    dm.setup("fit")
    assert len(dm.scenes) == 2 and all(len(s.views) == 2 for s in dm.scenes)
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)  # normalised on the device
    assert batch["view1"].shape == batch["view2"].shape == (4, 12, 16, 16)
    assert not np.allclose(batch["view1"].numpy(), batch["view2"].numpy())  # two different dates


def test_fixed_normalisation_uses_the_published_statistics():
    mean, std = SSL4EO_STATS["GRD"]["VV"]
    x = np.array([mean - 2 * std, mean], dtype=np.float32).reshape(2, 1, 1)
    out = normalise(x, ("VV", "VV"), SSL4EO_STATS["GRD"], "clip2sigma")
    np.testing.assert_allclose(out.ravel(), [0.0, 0.5], atol=1e-6)
    z = normalise(np.full((1, 1, 1), mean + std, np.float32), ("VV",), SSL4EO_STATS["GRD"], "zscore")
    assert z.item() == pytest.approx(1.0)


def test_stats_command_matches_numpy_and_writes_atomically(tmp_path: Path):
    root = write_example_pairs(tmp_path / "data")
    out = tmp_path / "stats.json"
    assert stats_command(["--data", str(root), "--out", str(out)]) == 0
    stats = json.loads(out.read_text())
    vv = np.concatenate(
        [read_bands(a, ("VV", "VH"))[0][0].ravel() for a in find_acquisitions(root) if a.sensor == "s1"]
    )
    assert stats["VV"][0] == pytest.approx(vv.mean(), rel=1e-5) and stats["VV"][1] == pytest.approx(vv.std(), rel=1e-4)
    assert set(stats) == {*S2_L2A, "VV", "VH"}
    assert band_statistics(root)["B04"] == pytest.approx(stats["B04"])
    assert not list(tmp_path.glob("*.tmp"))


# ---- bad input: one clear error naming the file and the fix --------------------------------------------------------


def test_wrong_band_count_names_the_file_and_the_bands_expected(tmp_path: Path):
    bad = _multiband(tmp_path / "chips" / "five.tif", 5)
    with pytest.raises(DataError, match=r"five\.tif has 5 bands.*12 \(L2A\)"):
        find_acquisitions(tmp_path / "chips")
    l2a = _multiband(tmp_path / "l2a" / "chip.tif", 12)
    cfg = SSL4EOConfig(chip=16, s2_level="L1C")
    cfg.validate()
    with pytest.raises(DataError, match=r"chip\.tif has 12 bands.*expects 13 .*Set s2_level"):
        RSDataModule(l2a.parent, cfg, mode="temporal").setup("fit")
    with pytest.raises(ConfigError, match=r"B99"):
        SSL4EOConfig(s2_bands=["B02", "B99"]).validate()
    assert bad.exists()


def test_a_truncated_geotiff_whose_header_opens_is_named(tmp_path: Path):
    chip = _multiband(tmp_path / "l2a" / "chip.tif", 12, size=64)
    chip.write_bytes(chip.read_bytes()[: chip.stat().st_size // 2])  # the header survives, the pixels do not
    cfg = SSL4EOConfig(chip=16)
    with pytest.raises(DataError, match=r"chip\.tif: the pixel data cannot be read .*truncated or corrupt"):
        RSDataModule(chip.parent, cfg, mode="temporal").setup("fit")


def test_s1_s2_grid_mismatch_is_refused(tmp_path: Path):
    root = write_example_pairs(tmp_path, size=48, locations=1)
    for path in [*root.rglob("VV.tif"), *root.rglob("VH.tif")]:  # S1 at 20 m: same footprint, half the pixels
        with rasterio.open(path) as src:
            profile, data = src.profile, src.read(1)
        t = profile["transform"]
        profile.update(height=24, width=24, transform=Affine(t.a * 2, 0, t.c, 0, t.e * 2, t.f))
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data[::2, ::2], 1)
    with pytest.raises(DataError, match=r"different 10 m grids.*24x24.*co-register"):
        RSDataModule(root, _croma_cfg(), mode="s1s2").setup("fit")


def test_all_nodata_acquisition_is_refused(tmp_path: Path):
    root = write_example_pairs(tmp_path, locations=1)
    for band in next(root.glob("s2a/*/*")).glob("*.tif"):
        with rasterio.open(band) as src:
            profile, shape = src.profile, src.shape
        with rasterio.open(band, "w", **profile) as dst:
            dst.write(np.zeros(shape, dtype=profile["dtype"]), 1)
    with pytest.raises(DataError, match=r"every pixel is nodata"):
        RSDataModule(root, _croma_cfg(), mode="s1s2").setup("fit")


def test_non_geotiff_files_are_refused(tmp_path: Path):
    root = write_example_pairs(tmp_path, locations=1)
    (root / "preview.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(DataError, match=r"preview\.png is not a GeoTIFF"):
        find_acquisitions(root)
    (root / "preview.png").unlink()
    (root / "s2a" / "0000000" / "broken.tif").write_text("not a tiff")
    with pytest.raises(DataError, match=r"broken\.tif is not a readable GeoTIFF"):
        find_acquisitions(root)
    with pytest.raises(DataError, match=r"notes\.txt is not a GeoTIFF"):
        (tmp_path / "notes.txt").write_text("x")
        find_acquisitions(tmp_path / "notes.txt")


def test_a_corrupt_band_file_is_named_by_setup_and_nothing_is_cached(tmp_path: Path, monkeypatch):
    """Only one band of a product is opened for its header; the index's scan opens the rest, so a band that
    rasterio cannot open is one DataError of setup, before any training and with no index or pixels cached."""
    monkeypatch.setenv("SSL_DOMAINS_CACHE", str(tmp_path / "cache"))
    root = write_example_pairs(tmp_path, locations=1)
    broken = next(root.glob("s2a/*/*/B11.tif"))
    broken.write_bytes(b"II*\x00 truncated")
    with pytest.raises(DataError, match=rf"{broken.name} is not a readable GeoTIFF"):
        RSDataModule(root, _croma_cfg(cache="disk"), mode="s1s2").setup("fit")
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.suffix != ".lock"]
    assert cached == []


def test_linear_s1_and_missing_bands_are_named(tmp_path: Path):
    root = write_example_pairs(tmp_path, locations=1)
    for vv in root.rglob("VV.tif"):
        with rasterio.open(vv) as src:
            profile, data = src.profile, src.read(1)
        with rasterio.open(vv, "w", **profile) as dst:
            dst.write(np.full_like(data, 500.0), 1)
    with pytest.raises(DataError, match=r"look linear, not dB.*10 \* log10"):
        RSDataModule(root, _croma_cfg(), mode="s1s2").setup("fit")
    shutil.rmtree(root)
    root = write_example_pairs(tmp_path, locations=1)
    next(root.glob("s2a/*/*/B11.tif")).unlink()
    with pytest.raises(DataError, match=r"bands \['B11'\] are missing"):
        RSDataModule(root, _croma_cfg(), mode="s1s2").setup("fit")


def test_nan_pixels_become_invalid_and_drop_their_chips(tmp_path: Path):
    root = write_example_pairs(tmp_path, size=32, locations=1)
    for vv in root.rglob("VV.tif"):
        with rasterio.open(vv) as src:
            profile, data = src.profile, src.read(1)
        data[:16, :16] = np.nan
        with rasterio.open(vv, "w", **profile) as dst:
            dst.write(data, 1)
    dm = RSDataModule(root, CROMAConfig(chip=16, train_stride=16, max_invalid=0.1), mode="s1s2")
    dm.setup("fit")
    starts = {(int(y), int(x)) for _, y, x, _ in dm.train_items}
    assert starts == {(0, 16), (16, 0), (16, 16)}  # the NaN window is gone, values never reach the model
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)  # normalised on the device
    assert np.isfinite(batch["radar"].numpy()).all()


def test_synthetic_geotiffs_have_native_resolutions(tmp_path: Path):
    root = write_example_pairs(tmp_path, size=48, locations=1)
    with rasterio.open(next(root.rglob("B1.tif"))) as src:
        assert src.shape == (8, 8)
    with rasterio.open(next(root.rglob("B05.tif" if list(root.rglob("B05.tif")) else "B5.tif"))) as src:
        assert src.shape == (24, 24)
    write_tif(tmp_path / "x.tif", np.zeros((4, 4), np.float32), 0, 0, 1e-4)
    assert (tmp_path / "x.tif").exists()


def test_knn_probe_uses_class_folders_and_leaves_each_location_out(tmp_path: Path):
    import torch

    from ssl_domains_rs.evaluation import knn_by_location

    for cls, value in (("Forest", 500), ("SeaLake", 3000)):
        for i in range(3):
            chip = _multiband(tmp_path / "eurosat" / cls / f"{cls}_{i}.tif", 13, size=16, value=value + 10 * i)
            with rasterio.open(chip, "r+") as dst:  # separate footprints: each chip is its own location
                dst.transform = Affine(10, 0, 500000 + 1000 * i + (5000 if cls == "Forest" else 0), 0, -10, 5000000)
    cfg = SSL4EOConfig(chip=16, s2_level="L1C")
    cfg.validate()
    dm = RSDataModule(tmp_path / "eurosat", cfg, mode="temporal")
    dm.setup("predict")
    assert sorted(s.label for s in dm.scenes) == ["Forest"] * 3 + ["SeaLake"] * 3

    class MeanBands(torch.nn.Module):  # the chip's mean spectrum separates the two classes
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def embed(self, batch):
            return batch["view1"].mean((2, 3)) * self.w + torch.arange(13.0)

    result = knn_by_location(MeanBands(), dm, "cpu", k=1)
    assert result == {"knn_acc": 1.0, "knn_chips": 6.0, "knn_classes": 2.0}
