"""Chips are read alone from their files and equal the same pixels of the whole scene; the index is cached."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ssl_domains_rs.data import RSDataModule, normalise
from ssl_domains_rs.formats import find_acquisitions, read_bands
from ssl_domains_rs.plugin import CROMAConfig, SSL4EOConfig

SSL4EO = Path(__file__).resolve().parents[3] / "datasets" / "sentinel_s1s2" / "ssl4eo_s12"


@pytest.mark.parametrize("window", [(0, 0, 264), (40, 40, 120), (21, 13, 96), (143, 143, 120)])
def test_window_equals_the_whole_scene_resampled(window: tuple[int, int, int]) -> None:
    """10 m bands and the 20 m / 60 m bands GDAL resamples: a window alone is the whole read's slice, exactly."""
    (acq,) = [a for a in find_acquisitions(SSL4EO) if a.sensor == "s2" and a.level == "L1C"][:1]
    bands = tuple(acq.bands)
    assert {"B01", "B05", "B02"} <= set(bands)  # 60 m, 20 m and 10 m bands
    whole, whole_valid = read_bands(acq, bands)
    part, part_valid = read_bands(acq, bands, window=window)
    y, x, n = window
    np.testing.assert_array_equal(part, whole[:, y : y + n, x : x + n])
    np.testing.assert_array_equal(part_valid, whole_valid[y : y + n, x : x + n])


@pytest.mark.parametrize("mode", ["s1s2", "temporal"])
def test_every_chip_is_the_scene_read_whole(mode: str) -> None:
    cfg = CROMAConfig(chip=64, holdout_quadrant=3) if mode == "s1s2" else SSL4EOConfig(chip=64, s2_level="L1C")
    dm = RSDataModule(SSL4EO, cfg, mode=mode)
    dm.setup("fit")
    assert len(dm.train_items) and len(dm.test_items)
    for s, y, x, _ in [*dm.train_items[:3], *dm.test_items[:3]]:
        scene = dm.scenes[s]
        for v, acq in enumerate(scene.views):
            bands = dm.s1_bands if acq.sensor == "s1" else dm.s2_bands
            image, _ = read_bands(acq, bands)
            expected = normalise(image, bands, dm.fitted["stats"], dm.fitted["normalize"])[:, y : y + 64, x : x + 64]
            np.testing.assert_array_equal(dm.chip(scene, v, int(y), int(x)).numpy(), expected)


def _copy(tmp_path: Path) -> Path:
    data = tmp_path / "ssl4eo"
    shutil.copytree(SSL4EO, data)
    return data


def test_second_setup_reads_the_index_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_DOMAINS_CACHE", str(tmp_path / "cache"))
    data = _copy(tmp_path)
    cfg = CROMAConfig(chip=64, holdout_quadrant=3)
    first = RSDataModule(data, cfg, mode="s1s2")
    first.setup("fit")
    import ssl_domains_rs.data as data_module

    def no_scan(*args, **kwargs):
        raise AssertionError("the data were scanned again")

    monkeypatch.setattr(data_module, "find_acquisitions", no_scan)
    second = RSDataModule(data, cfg, mode="s1s2")
    second.setup("fit")
    np.testing.assert_array_equal(first.train_items, second.train_items)
    np.testing.assert_array_equal(first.test_items, second.test_items)
    batch_a = first.collate([first.sample(first.test_items[0], False, 0)])
    batch_b = second.collate([second.sample(second.test_items[0], False, 0)])
    assert all((batch_a[k] == batch_b[k]).all() for k in batch_a)
    # another chip size is another index
    with pytest.raises(AssertionError, match="scanned again"):
        RSDataModule(data, CROMAConfig(chip=32, holdout_quadrant=3), mode="s1s2").setup("fit")


def test_a_changed_file_rebuilds_the_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setenv("SSL_DOMAINS_CACHE", str(tmp_path / "cache"))
    data = _copy(tmp_path)
    cfg = SSL4EOConfig(chip=64, s2_level="L1C")
    dm = RSDataModule(data, cfg, mode="temporal")
    dm.setup("fit")
    before = sum(len(scene.views) for scene in dm.scenes)
    victim = next(p for p in sorted((data / "s2c").glob("*/*")) if p.is_dir())
    shutil.rmtree(victim)  # one date fewer
    with caplog.at_level(logging.INFO, logger="ssl_domains.indexcache"):
        again = RSDataModule(data, cfg, mode="temporal")
        again.setup("fit")
    assert "cached in" in caplog.text and sum(len(scene.views) for scene in again.scenes) == before - 1
    os.utime(next(data.rglob("B2.tif")), ns=(10**18, 10**18))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ssl_domains.indexcache"):
        RSDataModule(data, cfg, mode="temporal").setup("fit")
    assert "cached in" in caplog.text


def test_index_cache_off_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_DOMAINS_CACHE", str(tmp_path / "cache"))
    RSDataModule(SSL4EO, CROMAConfig(chip=64, index_cache=False), mode="s1s2").setup("fit")
    assert not (tmp_path / "cache").exists()
