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
    assert quantise(dn, ("B02",), stats).ravel().tolist() == [0, 0, 0, 127, 128, 255, 255, 255]
    db = np.array([-40.0, -22.0, -12.0, -2.0, 0.0], dtype=np.float32).reshape(1, 1, -1)
    assert quantise(db, ("VV",), stats).ravel().tolist() == [0, 0, 127, 255, 255]
    assert quantise(dn, ("B02",), stats).dtype == np.uint8
    # u8 / 255 is clip2sigma floored to a 1/255 step: never above it, never a step below
    x = np.linspace(0, 3000, 10_001, dtype=np.float32).reshape(1, 1, -1)
    exact = normalise(x, ("B02",), stats, "clip2sigma")
    steps = dequantise(quantise(x, ("B02",), stats))
    assert np.all(steps <= exact + 1e-6) and np.all(exact - steps < 1 / 255 + 1e-6)


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
            whole = quantise(read_bands(acq, bands)[0], bands, dm.fitted["stats"])[:, y : y + 64, x : x + 64]
            raw = dm.raw_chip(scene, v, int(y), int(x))
            assert raw.dtype == np.uint8
            np.testing.assert_array_equal(raw, whole)
            np.testing.assert_array_equal(dm.chip(scene, v, int(y), int(x)).numpy(), whole / np.float32(255))


@pytest.mark.parametrize("mode", ["s1s2", "temporal"])
def test_a_uint8_training_batch_is_read_in_place_and_dequantised_on_the_device(mode: str) -> None:
    """``read_batch`` fills uint8 tensors equal to ``collate`` of ``sample``'s items; after the transfer they are
    ``u8 / 255``, what an evaluation chip is."""
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
        torch.testing.assert_close(view, whole[key].float() / 255, rtol=0, atol=0)


def test_the_uint8_cache_takes_a_byte_a_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """S2 DN in one byte instead of two, S1 dB in one instead of four: the file is what ``pixel_bytes`` counts."""
    sizes = {}
    for quantize in ("none", "uint8"):
        monkeypatch.setenv("SSL_DOMAINS_CACHE", str(tmp_path / quantize))
        dm = RSDataModule(SSL4EO, CROMAConfig(chip=64, holdout_quadrant=3, quantize=quantize), mode="s1s2")
        dm.setup("fit")
        assert dm.pixels is not None
        sizes[quantize] = dm.pixels.path.stat().st_size
        assert sizes[quantize] == pytest.approx(dm._pixel_bytes(dm.scenes), rel=0.01)
    s1, s2 = 2, 12  # bands: S2 uint16 -> uint8 halves, S1 float32 -> uint8 quarters
    assert sizes["uint8"] / sizes["none"] == pytest.approx((s1 + s2) / (4 * s1 + 2 * s2), rel=0.01)


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
    expected = quantise(read_bands(scene.views[0], bands)[0], bands, second.fitted["stats"])[:, y : y + 64, x : x + 64]
    np.testing.assert_array_equal(second.raw_chip(scene, 0, int(y), int(x)), expected)
    assert not np.array_equal(expected, first.raw_chip(first.scenes[s], 0, int(y), int(x)))


def test_uint8_needs_clip2sigma_and_says_so_in_the_input_spec() -> None:
    with pytest.raises(ConfigError, match="set normalize: clip2sigma, or quantize: none"):
        SSL4EOConfig(quantize="uint8", normalize="zscore").validate()
    dm = RSDataModule(SSL4EO, _config("temporal"), mode="temporal")
    dm.setup("fit")
    assert dm.input_spec()["normalisation"].startswith("floor(clip(")
