"""MERLIN plugin: SLC formats, bad input, speckle simulation, spectrum centring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.transform import from_origin

from ssl_domains import DataError
from ssl_domains_sar.formats import open_slc, write_complex_geotiff
from ssl_domains_sar.simulate import lag1_intensity_correlation, simulate_slc
from ssl_domains_sar.spectrum import centre_spectrum


def _slc(shape=(64, 96), seed=0) -> np.ndarray:
    return simulate_slc(np.full(shape, 100.0**2), np.random.default_rng(seed))


def test_every_accepted_format_reads_the_same_pixels(tmp_path: Path):
    z = _slc()
    write_complex_geotiff(tmp_path / "c.tif", z, CRS.from_epsg(32631), from_origin(0, 0, 10, 10))
    with rasterio.open(tmp_path / "ri.tif", "w", driver="GTiff", height=64, width=96, count=2, dtype="float32") as ds:
        ds.write(np.stack([z.real, z.imag]))
    np.save(tmp_path / "c.npy", z)
    np.save(tmp_path / "ri.npy", np.stack([z.real, z.imag], -1))
    for name in ("c.tif", "ri.tif", "c.npy", "ri.npy"):
        source = open_slc(tmp_path / name)
        assert (source.height, source.width) == (64, 96)
        np.testing.assert_array_equal(source.read(), z)
        np.testing.assert_array_equal(source.read_rows(10, 20), z[10:20])
    assert open_slc(tmp_path / "c.tif").profile["crs"] == CRS.from_epsg(32631)


def test_cint16_geotiff_is_read_as_complex(tmp_path: Path):
    with rasterio.open(
        tmp_path / "i16.tif", "w", driver="GTiff", height=8, width=8, count=1, dtype="complex_int16"
    ) as ds:
        ds.write((np.arange(64).reshape(1, 8, 8) * (1 + 2j)).astype(np.complex64))
    z = open_slc(tmp_path / "i16.tif").read()
    assert z.dtype == np.complex64 and z[0, 3] == 3 + 6j


@pytest.mark.parametrize("kind", ["tif", "npy"])
def test_real_valued_amplitude_is_refused_with_the_reason(tmp_path: Path, kind: str):
    amplitude = np.abs(_slc())
    path = tmp_path / f"amplitude.{kind}"
    if kind == "npy":
        np.save(path, amplitude)
    else:
        with rasterio.open(path, "w", driver="GTiff", height=64, width=96, count=1, dtype="float32") as ds:
            ds.write(amplitude[None])
    with pytest.raises(DataError, match=r"amplitude\.(tif|npy).*real-valued.*single-look complex"):
        open_slc(path)


def test_non_finite_pixels_are_reported_with_their_position(tmp_path: Path):
    z = _slc()
    z[5, 7] = np.nan
    np.save(tmp_path / "nan.npy", z)
    with pytest.raises(DataError, match=r"nan\.npy.*row 5, column 7"):
        open_slc(tmp_path / "nan.npy").read()


def test_corrupt_and_wrong_shaped_files_get_one_clear_error(tmp_path: Path):
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    with pytest.raises(DataError, match=r"broken\.tif is not a readable GeoTIFF"):
        open_slc(tmp_path / "broken.tif")
    np.save(tmp_path / "cube.npy", np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(DataError, match=r"cube\.npy.*\[H, W, 2\]"):
        open_slc(tmp_path / "cube.npy")
    with rasterio.open(tmp_path / "rgb.tif", "w", driver="GTiff", height=4, width=4, count=3, dtype="uint8") as ds:
        ds.write(np.zeros((3, 4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match=r"rgb\.tif: 3 bands"):
        open_slc(tmp_path / "rgb.tif")


def test_a_truncated_geotiff_and_a_constant_image_are_named(tmp_path: Path):
    write_complex_geotiff(tmp_path / "cut.tif", _slc((256, 256)), CRS.from_epsg(32631), from_origin(0, 0, 10, 10))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # the header opens, the rows are gone
    with pytest.raises(DataError, match=r"cut\.tif: rows .* cannot be read .*truncated or corrupt"):
        open_slc(cut).read()
    from ssl_domains_sar.data import SLCDataModule
    from ssl_domains_sar.plugin import MerlinConfig

    flat = tmp_path / "flat"
    flat.mkdir()
    np.save(flat / "flat.npy", np.zeros((64, 64), dtype=np.complex64))  # an all-zero (empty) acquisition
    with pytest.raises(DataError, match=r"flat: every pixel has the same amplitude"):
        SLCDataModule(flat, MerlinConfig(patch_size=32)).setup("fit")


def test_simulated_speckle_is_single_look_correlated_and_unbiased():
    reflectivity = np.full((256, 256), 50.0)
    z = simulate_slc(reflectivity, np.random.default_rng(1))
    ratio = np.abs(z).astype(np.float64) ** 2 / reflectivity
    assert ratio.mean() == pytest.approx(1.0, abs=0.03)
    assert ratio.mean() ** 2 / ratio.var() == pytest.approx(1.0, abs=0.06)  # ENL 1: single look
    assert 0.25 < lag1_intensity_correlation(z) < 0.38  # like Sentinel-1 (card: 0.2-0.35)
    assert abs(np.corrcoef(z.real.ravel(), z.imag.ravel())[0, 1]) < 0.02  # independent components


def test_centring_removes_a_doppler_shift_and_leaves_centred_data_alone():
    z = _slc((128, 128), seed=3)
    shifted = z * np.exp(2j * np.pi * 17 * np.arange(128)[:, None] / 128)  # Doppler centroid 17 bins off

    def cross(v: np.ndarray) -> float:  # a(y+1) against b(y): zero only for a real point-spread function
        return float(np.corrcoef(v.real[1:].ravel(), v.imag[:-1].ravel())[0, 1])

    assert abs(cross(shifted)) > 0.15
    restored = centre_spectrum(torch.from_numpy(np.stack([shifted, z]))).numpy()  # batched
    assert abs(cross(restored[0])) < 0.03
    np.testing.assert_allclose(restored[0], z, atol=1e-3 * np.abs(z).max())
    np.testing.assert_allclose(restored[1], z, atol=1e-3 * np.abs(z).max())


def test_provenance_names_each_embedded_tile_by_file_and_top_left_pixel(tmp_path: Path):
    from ssl_domains import registry
    from ssl_domains_sar.data import Tiles

    plugin = registry.load("merlin")
    data = plugin.make_example_data(tmp_path / "data")
    dm = plugin.datamodule(plugin.config(patch_size=32), data)
    dm.setup("predict")
    ids = np.arange(len(Tiles(dm.images, 32)))
    where = dm.provenance(ids[::-1])  # any order: the columns follow the ids asked for
    assert [z.shape for z in dm.images] == [(128, 128)] * 2 and len(ids) == 2 * (128 // 32) ** 2
    assert where["path"][-1] == str(dm.files[0]) and where["path"][0] == str(dm.files[1])
    assert (where["row"][::-1][:4] == 0).all() and where["col"][::-1][:4].tolist() == [0, 32, 64, 96]
