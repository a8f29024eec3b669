"""Chips are read alone, from the pixel cache or their files, and equal the same pixels of the whole scene; the
index and the pixels are cached."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ssl_domains import ConfigError, DataError
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


@pytest.mark.parametrize("cache", ["disk", "none"])
@pytest.mark.parametrize("mode", ["s1s2", "temporal"])
def test_every_chip_is_the_scene_read_whole(mode: str, cache: str) -> None:
    """From the decoded-pixel cache or from the GeoTIFFs, a chip is the same pixels of the whole scene, exactly."""
    cfg = (CROMAConfig(chip=64, holdout_quadrant=3, cache=cache) if mode == "s1s2"
           else SSL4EOConfig(chip=64, s2_level="L1C", cache=cache))  # fmt: skip
    dm = RSDataModule(SSL4EO, cfg, mode=mode)
    dm.setup("fit")
    assert (dm.pixels is not None) == (cache == "disk")
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

    monkeypatch.setattr(data_module, "iter_acquisitions", no_scan)
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


def test_the_pixel_cache_keeps_s2_as_uint16_and_serves_chips_without_the_geotiffs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_DOMAINS_CACHE", str(tmp_path / "cache"))
    data = _copy(tmp_path)
    cfg = CROMAConfig(chip=64, holdout_quadrant=3)  # cache: auto, and the disk has room
    first = RSDataModule(data, cfg, mode="s1s2")
    first.setup("fit")
    assert len(list((tmp_path / "cache").rglob("pixels.bin"))) == 1
    assert first.pixels is not None
    pairs = [pair for scene in first.scenes for pair in zip(scene.views, scene.stored, strict=True)]
    stored = {(acq.sensor, ref.dtype) for acq, ref in pairs}
    assert stored == {("s1", "float32"), ("s2", "uint16")}
    (pixels,) = (tmp_path / "cache").rglob("pixels.bin")
    views = sum(len(scene.views) for scene in first.scenes)
    assert pixels.stat().st_size == sum(
        (2 * 4 if acq.sensor == "s1" else 12 * 2) * acq.shape[0] * acq.shape[1]
        for scene in first.scenes
        for acq in scene.views
    ) and views == len([r for scene in first.scenes for r in scene.stored])
    import ssl_domains_rs.data as data_module

    def no_read(*args, **kwargs):
        raise AssertionError("a GeoTIFF was read")

    monkeypatch.setattr(data_module, "read_bands", no_read)
    monkeypatch.setattr(data_module, "iter_acquisitions", no_read)
    second = RSDataModule(data, cfg, mode="s1s2")
    second.setup("fit")
    import torch

    for train in (True, False):
        torch.manual_seed(0)
        a = first.collate([first.sample(item, train, i) for i, item in enumerate(first.train_items[:4])])
        torch.manual_seed(0)
        b = second.collate([second.sample(item, train, i) for i, item in enumerate(second.train_items[:4])])
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_auto_reads_the_geotiffs_when_the_pixels_would_take_most_of_the_free_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    import shutil as shutil_module

    import ssl_domains_rs.pixelcache as pixelcache

    monkeypatch.setenv("SSL_DOMAINS_CACHE", str(tmp_path / "cache"))
    tiny = shutil_module._ntuple_diskusage(10**12, 10**12 - 10**6, 10**6)  # 1 MB free
    monkeypatch.setattr(pixelcache.shutil, "disk_usage", lambda path: tiny)
    with caplog.at_level(logging.WARNING):
        dm = RSDataModule(SSL4EO, CROMAConfig(chip=64, holdout_quadrant=3), mode="s1s2")
        dm.setup("fit")
    assert dm.pixels is None and "chips are read from their GeoTIFFs" in caplog.text
    assert not list((tmp_path / "cache").rglob("pixels.bin"))
    with pytest.raises(DataError, match=r"the decoded pixels need .* GB and the disk has 0\.0 GB free.*cache: none"):
        RSDataModule(SSL4EO, CROMAConfig(chip=64, holdout_quadrant=3, cache="disk"), mode="s1s2").setup("fit")
    assert not list((tmp_path / "cache").rglob("pixels.bin")) and not list((tmp_path / "cache").rglob(".*"))
    monkeypatch.undo()  # room again: the next run writes the pixels it left out
    monkeypatch.setenv("SSL_DOMAINS_CACHE", str(tmp_path / "cache"))
    again = RSDataModule(SSL4EO, CROMAConfig(chip=64, holdout_quadrant=3), mode="s1s2")
    again.setup("fit")
    assert again.pixels is not None and len(list((tmp_path / "cache").rglob("pixels.bin"))) == 1


def test_cache_disk_needs_the_index_cache() -> None:
    with pytest.raises(ConfigError, match="cache: disk keeps the pixels with the chip index"):
        CROMAConfig(cache="disk", index_cache=False).validate()


@pytest.mark.parametrize("method", ["clip2sigma", "zscore"])
def test_training_batches_normalised_on_the_device_equal_the_loaders_normalisation(method: str) -> None:
    """Training chips leave the workers raw (uint16 DN as int16 bits, S1 float32) and are normalised after the
    transfer: bit for bit what :func:`normalise` gives, DN above 32767 included."""
    import torch

    from ssl_domains_rs.data import normalise_batch

    dm = RSDataModule(SSL4EO, CROMAConfig(chip=64, holdout_quadrant=3, normalize=method), mode="s1s2")
    dm.setup("fit")
    torch.manual_seed(0)
    raw = dm.collate([dm.sample(item, True, i) for i, item in enumerate(dm.train_items[:4])])
    assert raw["raw_optical"].dtype == torch.int16 and raw["raw_radar"].dtype == torch.float32
    batch = dm.on_after_batch_transfer(raw, 0)
    assert set(batch) == {"radar", "optical", "id", "split", "location"}
    for key, bands in (("optical", dm.s2_bands), ("radar", dm.s1_bands)):
        bits = raw[f"raw_{key}"].numpy()
        values = (bits.view(np.uint16) if bits.dtype == np.int16 else bits).astype(np.float32)
        expected = np.stack([normalise(v, bands, dm.fitted["stats"], method) for v in values])
        np.testing.assert_array_equal(batch[key].numpy(), expected)
    high = np.array([0, 1, 32767, 32768, 40000, 65535], dtype=np.uint16).reshape(1, 1, 2, 3).repeat(12, axis=1)
    got = normalise_batch(torch.from_numpy(high.view(np.int16)), dm.s2_bands, dm.fitted["stats"], method)
    np.testing.assert_array_equal(got[0].numpy(), normalise(high[0].astype(np.float32), dm.s2_bands,
                                                            dm.fitted["stats"], method))  # fmt: skip
    assert dm.on_after_batch_transfer({"optical": batch["optical"]}, 0)["optical"] is batch["optical"]


@pytest.mark.parametrize("mode", ["s1s2", "temporal"])
def test_a_training_batch_read_in_place_equals_its_items_collated(mode: str) -> None:
    """``read_batch`` (the pixel cache read into the batch's tensors) gives what ``collate`` makes of ``sample``'s
    items, from the same random view pairs; a loader worker hands it on in shared memory."""
    import torch

    cfg = (CROMAConfig(chip=64, holdout_quadrant=3, cache="disk", batch_size=4) if mode == "s1s2"
           else SSL4EOConfig(chip=64, s2_level="L1C", cache="disk", batch_size=4))  # fmt: skip
    dm = RSDataModule(SSL4EO, cfg, mode=mode)
    dm.setup("fit")
    ids = list(range(min(4, len(dm.train_items))))[::-1]
    torch.manual_seed(3)
    whole = dm.read_batch(dm.train_items[ids], ids)
    torch.manual_seed(3)
    items = dm.collate([dm.sample(dm.train_items[i], True, i) for i in ids])
    assert set(whole) == set(items) and any(k.startswith("raw_") for k in whole)
    for key in items:
        assert whole[key].dtype == items[key].dtype, key
        torch.testing.assert_close(whole[key], items[key], rtol=0, atol=0)
    dm.cfg.num_workers = 1
    batch = next(iter(dm.train_dataloader()))
    raw = [k for k in batch if k.startswith("raw_")]
    assert raw and all(batch[k].shape == (4, *whole[k].shape[1:]) for k in raw)
