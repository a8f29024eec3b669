"""The chip index holds the corpus compactly: acquisitions pickle as a folder and names, scenes are packed, and
the folders are walked in sorted order without holding the corpus's paths."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from ssl_domains import DataError
from ssl_domains.data import PackedList
from ssl_domains_rs.data import RSDataModule
from ssl_domains_rs.formats import Acquisition, _folders, find_acquisitions, iter_acquisitions, read_bands
from ssl_domains_rs.locations import group_locations
from ssl_domains_rs.plugin import SSL4EOConfig
from ssl_domains_rs.synthetic import write_tif

SHIPPED = Path(__file__).resolve().parents[3] / "datasets" / "sentinel_s1s2"


def _per_band(folder: str, cloud: str | None = None) -> Acquisition:
    bands = {b: f"{folder}{os.sep}{b}.tif" for b in ("B01", "B02", "B8A", "B12")}
    return Acquisition("x", "s2", "L1C", "20200915", bands, bounds=(1.0, 2.0, 3.0, 4.0), shape=(264, 264),
                       crs="EPSG:32643", transform=(10.0, 0.0, 5.0, 0.0, -10.0, 7.0), cloud_mask=cloud)  # fmt: skip


@pytest.mark.parametrize(
    "acq",
    [
        _per_band("/data/s2c/0000200/S2A_MSIL1C_20200915"),
        _per_band("/data/cell", cloud="/data/cell/cloud_mask.tif"),
        _per_band("/data/cell", cloud="/elsewhere/cloud_mask.tif"),  # a mask in another folder keeps its path
        _per_band("relative/folder"),
        _per_band("/d/c", cloud="cm.tif"),  # a bare name from elsewhere stays bare
        Acquisition("chip.tif", "s2", "", "", dict.fromkeys(("B02", "B03"), "chip.tif"), {"B02": 1, "B03": 2}),
        Acquisition("/d/c.tif", "s1", "GRD", "", dict.fromkeys(("VV", "VH"), "/d/c.tif"), {"VV": 2, "VH": 1},
                    label="SeaLake", labels=("Forest",)),
        Acquisition("mixed", "s2", "L2A", "", {"B02": "/a/B02.tif", "B03": "/b/B03.tif"}),  # two folders
    ],
)
def test_an_acquisition_pickles_to_itself(acq: Acquisition) -> None:
    again = pickle.loads(pickle.dumps(acq, protocol=pickle.HIGHEST_PROTOCOL))
    assert again == acq and list(again.bands) == list(acq.bands)


def test_the_shipped_acquisitions_pickle_to_themselves_and_compactly() -> None:
    acqs = find_acquisitions(SHIPPED)
    assert len(acqs) > 20
    for acq in acqs:
        assert pickle.loads(pickle.dumps(acq)) == acq
    s2 = next(a for a in acqs if a.sensor == "s2" and len(a.bands) == 13 and not a.band_index)  # per-band L1C
    full_paths = sum(len(p) for p in s2.bands.values())
    assert len(pickle.dumps(s2, protocol=pickle.HIGHEST_PROTOCOL)) < 0.6 * full_paths  # the folder once


def test_folders_are_walked_in_sorted_order_without_following_links(tmp_path: Path) -> None:
    for name in ("b/B02.tif", "a/B02.tif", "a-b/B01.tif", "a/x/B01.tif", "a/B01.tif", "A/VV.tif", "a/notes.txt",
                 "a/x/y/VH.tif", "a0/B03.tif"):  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    os.symlink(tmp_path / "a", tmp_path / "link")  # rglob does not follow it either
    expected: dict[Path, list[Path]] = {}
    for path in sorted(tmp_path.rglob("*")):
        if path.is_file() and path.suffix == ".tif":
            expected.setdefault(path.parent, []).append(path)
    walked = list(_folders(tmp_path))
    assert [(folder, files) for folder, files, _ in walked] == sorted(expected.items())
    assert dict((f, o) for f, _, o in walked)[tmp_path / "a"] == ["notes.txt"]


def test_a_cloud_mask_beside_the_bands_is_found_kept_and_applied(tmp_path: Path) -> None:
    cell = tmp_path / "cell"  # Major-TOM: per-band files and cloud_mask.tif in one folder
    for band in ("B02", "B03", "B04"):
        write_tif(cell / f"{band}.tif", np.full((16, 16), 1000, np.uint16), 10.0, 45.0, 1e-4)
    cloud = np.zeros((16, 16), np.uint8)
    cloud[:4] = 1
    write_tif(cell / "cloud_mask.tif", cloud, 10.0, 45.0, 1e-4)
    (acq,) = find_acquisitions(tmp_path)
    assert acq.cloud_mask == str(cell / "cloud_mask.tif") and sorted(acq.bands) == ["B02", "B03", "B04"]
    assert pickle.loads(pickle.dumps(acq)).cloud_mask == acq.cloud_mask
    _, valid = read_bands(acq, ("B02", "B03", "B04"))
    assert not valid[:4].any() and valid[4:].all()


def test_a_folder_that_cannot_be_listed_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "locked").mkdir()
    real = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=r"locked: the folder cannot be listed \(permission denied\)"):
        find_acquisitions(tmp_path)


def test_a_stray_jpeg_is_named_before_any_geotiff_is_opened(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "B02.tif").write_bytes(b"not a tiff")  # would be an error, but only once opened
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "preview.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"preview\.jpg is not a GeoTIFF"):
        next(iter_acquisitions(tmp_path))


def test_locations_group_overlapping_footprints_in_order_of_first_member() -> None:
    bounds = np.array([[0, 0, 0.02, 0.02], [5, 5, 5.02, 5.02], [0.001, 0, 0.021, 0.02], [5, 5, 5.02, 5.02],
                       [0.5, 0.5, 0.52, 0.52]])  # fmt: skip
    groups = group_locations(bounds)
    assert [g.tolist() for g in groups] == [[0, 2], [1, 3], [4]]
    assert group_locations(np.zeros((0, 4))) == []


def test_the_index_holds_its_scenes_packed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_DOMAINS_CACHE", str(tmp_path / "cache"))
    dm = RSDataModule(SHIPPED / "ssl4eo_s12", SSL4EOConfig(chip=64, s2_level="L1C"), mode="temporal")
    dm.setup("fit")
    assert isinstance(dm.scenes, PackedList) and len(dm.scenes) == 1
    scene = dm.scenes[0]
    assert len(scene.views) == len(scene.stored) == 2 and scene.kinds == ["s2"] * 2  # two L1C dates shipped
    assert scene.dates == sorted(scene.dates) and scene.name == scene.views[0].name
    assert dm.scenes.nbytes < 2_000  # two 13-band views and their cache offsets, a few hundred bytes each
