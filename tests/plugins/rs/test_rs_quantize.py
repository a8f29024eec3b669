"""``quantize: uint8``: chips hold SSL4EO-S12's uint8 of ``normalize`` (its pretraining LMDB), read as ``u8 / 255``,
the same from the pixel cache, the GeoTIFFs, a training batch and ``embed``; the cache takes a byte a value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_domains import ConfigError
from ssl_domains_rs.data import RSDataModule
from ssl_domains_rs.formats import read_bands
from ssl_domains_rs.normalisation import dequantise, normalise, quantise
from ssl_domains_rs.plugin import CROMAConfig, SSL4EOConfig

SSL4EO = Path(__file__).resolve().parents[3] / "datasets" / "sentinel_s1s2" / "ssl4eo_s12"


def _config(mode: str, **kw: object) -> CROMAConfig | SSL4EOConfig:
    if mode == "s1s2":
        return CROMAConfig(chip=64, holdout_quadrant=3, quantize="uint8", **kw)
    return SSL4EOConfig(chip=64, s2_level="L1C", quantize="uint8", **kw)


def test_quantise_is_ssl4eo_s12s_normalize() -> None:
    """lo, hi = mean -/+ 2 std; (x - lo) / (hi - lo) * 255, clipped, truncated: known values, S2 DN and S1 dB."""
    stats = {"B02": (1000.0, 250.0), "VV": (-12.0, 5.0)}
    dn = np.array([0, 499, 500, 1000, 1003.9, 1500, 1501, 65535], dtype=np.float32).reshape(1, 1, -1)
    assert quantise(dn, ("B02",), stats, "s2").ravel().tolist() == [0, 0, 0, 127, 128, 255, 255, 255]
    db = np.array([-40.0, -22.0, -12.0, -2.0, 0.0], dtype=np.float32).reshape(1, 1, -1)
    assert quantise(db, ("VV",), stats, "s1").ravel().tolist() == [0, 0, 127, 255, 255]
    assert quantise(dn, ("B02",), stats, "s2").dtype == np.uint8
    # u8 / 255 is clip2sigma floored to a 1/255 step: never above it, never a step below
    x = np.linspace(0, 3000, 10_001, dtype=np.float32).reshape(1, 1, -1)
    exact = normalise(x, ("B02",), stats, "clip2sigma")
    steps = dequantise(quantise(x, ("B02",), stats, "s2"))
    assert np.all(steps <= exact + 1e-6) and np.all(exact - steps < 1 / 255 + 1e-6)


def _reference_normalize(img: np.ndarray, mean: float, std: float) -> np.ndarray:
    """SSL4EO-S12's ``normalize`` (ssl4eo_dataset_lmdb.py), on one band, with Python floats as it is called."""
    min_value, max_value = mean - 2 * std, mean + 2 * std
    return np.clip((img - min_value) / (max_value - min_value) * 255.0, 0, 255).astype(np.uint8)


def test_quantise_rounds_in_the_references_precision() -> None:
    """S2 arrives as uint16 (float64 arithmetic there), S1 as float32 (float32 there): equal on a million values,
    step edges included."""
    gen = np.random.default_rng(0)
    stats = {"B02": (1390.78157673, 850.34818441), "VV": (-12.54847273, 5.25697717)}
    dn = gen.integers(0, 6000, (1, 1000, 1000)).astype(np.uint16)
    got = quantise(dn.astype(np.float32), ("B02",), stats, "s2")
    np.testing.assert_array_equal(got[0], _reference_normalize(dn[0], *stats["B02"]))
    db = gen.uniform(-30, 5, (1, 1000, 1000)).astype(np.float32)
    got = quantise(db, ("VV",), stats, "s1")
    np.testing.assert_array_equal(got[0], _reference_normalize(db[0], *stats["VV"]))


@pytest.mark.parametrize("cache", ["disk", "none"])
@pytest.mark.parametrize("mode", ["s1s2", "temporal"])
def test_every_chip_is_the_scene_quantised_whole(mode: str, cache: str) -> None:
    """From the uint8 pixel cache or the GeoTIFFs: a chip is the whole scene quantised, then cut, exactly."""
    dm = RSDataModule(SSL4EO, _config(mode, cache=cache), mode=mode)
    dm.setup("fit")
    assert (dm.pixels is not None) == (cache == "disk")
    for s, y, x, _ in [*dm.train_items[:3], *dm.test_items[:3]]:
        scene = dm.scenes[s]
        for v, acq in enumerate(scene.views):
            bands = dm.s1_bands if acq.sensor == "s1" else dm.s2_bands
            whole = quantise(read_bands(acq, bands)[0], bands, dm.fitted["stats"], acq.sensor)
            whole = whole[:, y : y + 64, x : x + 64]
            raw = dm.raw_chip(scene, v, int(y), int(x))
            assert raw.dtype == np.uint8
            np.testing.assert_array_equal(raw, whole)
            np.testing.assert_array_equal(dm.chip(scene, v, int(y), int(x)).numpy(), whole / np.float32(255))


@pytest.mark.parametrize("mode", ["s1s2", "temporal"])
def test_a_uint8_training_batch_is_read_in_place_and_dequantised_on_the_device(mode: str) -> None:
    """``read_batch`` fills uint8 tensors equal to ``collate`` of ``sample``'s items; after the transfer they are
    ``u8 / 255`` in float32 (:func:`dequantise`, what ``chip`` returns). Without a cache, ``collate`` of chips read
    from the GeoTIFFs is uint8 too."""
    dm = RSDataModule(SSL4EO, _config(mode, cache="disk", batch_size=4), mode=mode)
    dm.setup("fit")
    ids = list(range(min(4, len(dm.train_items))))
    torch.manual_seed(5)
    whole = dm.read_batch(dm.train_items[ids], ids)
    torch.manual_seed(5)
    items = dm.collate([dm.sample(dm.train_items[i], True, i) for i in ids])
    raw = [k for k in whole if k.startswith("raw_")]
    assert len(raw) == 2 and all(whole[k].dtype == torch.uint8 for k in raw)
    for key in items:
        torch.testing.assert_close(whole[key], items[key], rtol=0, atol=0)
    batch = dm.on_after_batch_transfer(whole, 0)
    for key in raw:
        view = batch[key[len("raw_") :]]
        assert view.dtype == torch.float32
        torch.testing.assert_close(view, torch.from_numpy(dequantise(whole[key].numpy())), rtol=0, atol=0)
    uncached = RSDataModule(SSL4EO, _config(mode, cache="none", batch_size=4), mode=mode)
    uncached.setup("fit")
    torch.manual_seed(5)
    items = uncached.collate([uncached.sample(uncached.train_items[i], True, i) for i in ids])
    for key in raw:
        assert items[key].dtype == torch.uint8
        torch.testing.assert_close(items[key], whole[key], rtol=0, atol=0)  # the same pixels, the same draws


def test_the_uint8_cache_takes_a_byte_a_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """S2 DN in one byte instead of two, S1 dB in one instead of four: the file is what ``pixel_bytes`` counts.
    The two caches of one corpus are two files: a uint8 run never reads the DN cache, nor the other way round."""
    monkeypatch.setenv("SSL_DOMAINS_CACHE", str(tmp_path / "cache"))
    modules = {}
    for quantize in ("none", "uint8", "none"):
        dm = RSDataModule(SSL4EO, CROMAConfig(chip=64, holdout_quadrant=3, quantize=quantize), mode="s1s2")
        dm.setup("fit")
        assert dm.pixels is not None
        assert dm.pixels.path.stat().st_size == pytest.approx(dm._pixel_bytes(dm.scenes), rel=0.01)
        s, y, x, _ = dm.train_items[0]
        assert dm.raw_chip(dm.scenes[s], 0, int(y), int(x)).dtype == (np.uint8 if quantize == "uint8" else np.float32)
        modules.setdefault(quantize, dm)
    assert modules["none"].pixels.path != modules["uint8"].pixels.path
    # bytes a pixel of a view: S1 2 bands x 4 -> 2 x 1, S2 12 bands x 2 -> 12 x 1
    dn = sum(sc.shape[0] * sc.shape[1] * (8 if k == "s1" else 24) for sc in modules["none"].scenes for k in sc.kinds)
    u8 = sum(sc.shape[0] * sc.shape[1] * (2 if k == "s1" else 12) for sc in modules["none"].scenes for k in sc.kinds)
    sizes = {q: m.pixels.path.stat().st_size for q, m in modules.items()}
    assert sizes["uint8"] / sizes["none"] == pytest.approx(u8 / dn, rel=0.01)


def test_other_statistics_write_other_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantised pixels depend on the statistics, so the cache is keyed by them: new statistics, a new cache."""
    monkeypatch.setenv("SSL_DOMAINS_CACHE", str(tmp_path / "cache"))
    first = RSDataModule(SSL4EO, _config("temporal", cache="disk"), mode="temporal")
    first.setup("fit")
    stats = {b: [m * 0.5, s] for b, (m, s) in first.fitted["stats"].items()}
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    second = RSDataModule(SSL4EO, _config("temporal", cache="disk", stats=str(tmp_path / "stats.json")), "temporal")
    second.setup("fit")
    assert second.pixels is not None and second.pixels.path != first.pixels.path
    s, y, x, _ = second.train_items[0]
    scene, bands = second.scenes[s], second.s2_bands
    expected = quantise(read_bands(scene.views[0], bands)[0], bands, second.fitted["stats"], "s2")
    expected = expected[:, y : y + 64, x : x + 64]
    np.testing.assert_array_equal(second.raw_chip(scene, 0, int(y), int(x)), expected)
    assert not np.array_equal(expected, first.raw_chip(first.scenes[s], 0, int(y), int(x)))


def test_uint8_needs_clip2sigma_and_says_so_in_the_input_spec() -> None:
    with pytest.raises(ConfigError, match="set normalize: clip2sigma, or quantize: none"):
        SSL4EOConfig(quantize="uint8", normalize="zscore").validate()
    dm = RSDataModule(SSL4EO, _config("temporal"), mode="temporal")
    dm.setup("fit")
    assert dm.input_spec()["normalisation"].startswith("floor(clip(")
