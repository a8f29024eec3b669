"""3-D medical data: inputs (folder, glob, manifest, DICOM), MONAI preprocessing, crops, correspondence, bad input."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ssl_domains import ConfigError, DataError, registry
from ssl_domains_medical.correspondence import corresponding_point, foreground_box, inside
from ssl_domains_medical.data import MedicalDataModule
from ssl_domains_medical.formats import find_volumes
from ssl_domains_medical.plugin import AliceConfig, Contrastive3DConfig
from ssl_domains_medical.synthetic import phantom, write_dicom_series, write_nifti
from ssl_domains_medical.transforms import crop_around, crop_batch, preprocessing

SHIPPED = Path(__file__).resolve().parents[3] / "datasets" / "medical3d"


def _cfg(cls=Contrastive3DConfig, **kw):
    base = {"roi": 32, "spacing": (2.0, 2.0, 2.0), "samples_per_volume": 2, "batch_size": 2}
    cfg = cls(**{**base, **kw})
    cfg.validate()
    return cfg


def _train_batch(dm: MedicalDataModule) -> dict:
    """A training batch as the objective sees it: the views are corrupted after the transfer."""
    return dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)


def _volumes(root: Path, count: int = 3, shape=(40, 44, 36)) -> Path:
    for i in range(count):
        write_nifti(root / f"v{i}.nii.gz", phantom(shape, seed=i)[0], spacing=(1.5, 1.5, 1.5))
    return root


def test_inputs_folder_glob_file_manifest_and_dicom_series(tmp_path):
    _volumes(tmp_path / "data" / "nested", 2)
    write_dicom_series(tmp_path / "data" / "series", phantom((20, 24, 16), 0)[0])
    (tmp_path / "data" / "notes.txt").write_text("ignored")
    records = find_volumes(tmp_path / "data")
    assert [r.image.name for r in records] == ["v0.nii.gz", "v1.nii.gz", "series"]
    assert [r.name for r in records] == ["v0", "v1", "series"]
    assert len(find_volumes(f"{tmp_path}/data/nested/*.nii.gz")) == 2
    assert len(find_volumes(tmp_path / "data" / "nested" / "v1.nii.gz")) == 1
    write_nifti(tmp_path / "seg.nii.gz", np.zeros((40, 44, 36), np.uint8))
    (tmp_path / "m.csv").write_text("image,label\ndata/nested/v0.nii.gz,seg.nii.gz\n")
    (record,) = find_volumes(tmp_path / "m.csv")
    assert record.image == (tmp_path / "data/nested/v0.nii.gz").resolve() and record.label.name == "seg.nii.gz"

    # a glob reads what a folder scan reads: DICOM slices as their series, a known foreign format as an error
    assert [r.image.name for r in find_volumes(f"{tmp_path}/data/series/*")] == ["series"]
    assert [
        r.name
        for r in find_volumes(
            f"{tmp_path}/data/**/*",
        )
    ] == ["v0", "v1", "series"]
    (tmp_path / "data" / "nested" / "v2.mha").write_bytes(b"ObjectType = Image")
    with pytest.raises(DataError, match=r"v2\.mha.*convert it to NIfTI"):
        find_volumes(f"{tmp_path}/data/nested/v*")


def test_manifest_with_labels_on_only_some_lines_is_an_error(tmp_path):
    _volumes(tmp_path, 3)
    write_nifti(tmp_path / "seg.nii.gz", np.zeros((40, 44, 36), np.uint8))
    (tmp_path / "m.csv").write_text("image,label\nv0.nii.gz,seg.nii.gz\nv1.nii.gz,\nv2.nii.gz,seg.nii.gz\n")
    with pytest.raises(DataError, match=r"m\.csv: line 3 has no 'label' while other lines do"):
        find_volumes(tmp_path / "m.csv")
    (tmp_path / "none.csv").write_text("image,label\nv0.nii.gz,\nv1.nii.gz,\n")
    assert [r.label for r in find_volumes(tmp_path / "none.csv")] == [None, None]


def test_shipped_volumes_and_manifest():
    records = find_volumes(SHIPPED / "images")
    assert {r.name for r in records} == {"mni152_t1_2mm", "sct_t1w", "totalseg_ct_sm"}
    (labelled,) = find_volumes(SHIPPED / "manifest.csv")
    assert labelled.label.name == "mni152_tissue_2mm.nii.gz"
    label = np.asarray(nib.load(labelled.label).dataobj)
    assert set(np.unique(label)) == {0, 1, 2}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: (d / "a.mha").write_bytes(b"x"), "convert it to NIfTI"),
        (lambda d: (d / "m.csv").write_text("path\nx.nii.gz\n"), "'image' column"),
        (lambda d: (d / "m.csv").write_text("image\nmissing.nii.gz\n"), "does not exist"),
        (lambda d: None, "holds no NIfTI"),
    ],
)
def test_inputs_that_are_not_volumes_are_named(tmp_path, make, message):
    make(tmp_path)
    target = tmp_path / "m.csv" if (tmp_path / "m.csv").exists() else tmp_path
    with pytest.raises(DataError, match=message):
        find_volumes(target)


def _prepared(cfg, path: Path) -> torch.Tensor:
    return preprocessing(cfg, ("image",))({"image": str(path)})["image"]


def test_reorientation_and_dicom_series_give_the_same_ras_volume(tmp_path):
    image, _ = phantom((20, 24, 16), 0)
    image = np.round(image)
    write_nifti(tmp_path / "ras.nii.gz", image, spacing=(1.5, 1.5, 1.5))
    las = np.diag([-1.5, 1.5, 1.5, 1.0])  # the same voxels stored with x running right-to-left
    las[0, 3] = 19 * 1.5
    nib.save(nib.Nifti1Image(image[::-1].copy(), las), str(tmp_path / "las.nii.gz"))
    cfg = _cfg(spacing=(1.5, 1.5, 1.5), foreground_threshold=-1.0)
    ras = _prepared(cfg, tmp_path / "ras.nii.gz")
    assert torch.allclose(ras, _prepared(cfg, tmp_path / "las.nii.gz"), atol=1e-5)
    # a DICOM series lives in LPS: read back in RAS it is the volume flipped in x and y
    write_dicom_series(tmp_path / "series", image, spacing=(1.5, 1.5, 1.5))
    flipped = write_nifti(tmp_path / "flipped.nii.gz", image[::-1, ::-1].copy(), (1.5, 1.5, 1.5))
    assert torch.allclose(_prepared(cfg, tmp_path / "series"), _prepared(cfg, flipped), atol=1e-4)


def test_spacing_intensity_foreground_crop_and_padding(tmp_path):
    image, _ = phantom((40, 44, 36), 0)
    path = write_nifti(tmp_path / "v.nii.gz", image, spacing=(1.5, 1.5, 1.5))
    volume = _prepared(_cfg(roi=32), path)
    assert np.allclose(volume.pixdim, 2.0)
    # 60 x 66 x 54 mm at 2 mm is 30 x 33 x 27 voxels; the phantom's foreground box (+2 margin) is smaller than
    # that on every side and is zero-padded to the 32^3 ROI
    assert tuple(volume.shape[1:]) == (32, 32, 32) and volume.min() >= 0 and volume.max() <= 1
    hu = np.full((40, 40, 40), -1000.0, np.float32)  # air around a 40 HU body with a -200..300 HU ramp inside
    hu[5:35, 5:35, 5:35] = 40.0
    hu[10:30, 10:30, 10:30] = np.linspace(-200, 300, 20)[None, None, :]
    ct = _prepared(_cfg(intensity="ct", ct_window=(-125.0, 225.0), spacing=(1.0, 1.0, 1.0)),
                   write_nifti(tmp_path / "ct.nii.gz", hu))  # fmt: skip
    assert tuple(ct.shape[1:]) == (34, 34, 34)  # the body (30^3) and a 2-voxel margin; the air is cropped
    ramp = ct[0, 20, 20, 7:27]  # body starts at 3 (margin 2): the ramp at 8..27
    assert float(ramp[1]) == 0.0 and float(ramp[-1]) == 1.0  # -200 and 300 HU are clipped to the window
    assert float(ct[0, 20, 20, 2 + 3]) == pytest.approx((40 + 125) / 350, abs=1e-5)


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: write_nifti(p, np.ones((30, 30), np.float32)), "2-D image"),
        (lambda p: write_nifti(p, np.ones((30, 30, 1), np.float32)), "2-D image"),
        (lambda p: write_nifti(p, np.random.rand(20, 20, 20, 3).astype(np.float32)), "holds 3 volumes"),
        (lambda p: p.write_bytes(gzip.compress(b"not a nifti header at all" * 20)), "cannot be read as a volume"),
        (lambda p: write_nifti(p, np.where(np.arange(8000).reshape(20, 20, 20) == 5, np.nan, 1.0)), "NaN or inf"),
        (lambda p: write_nifti(p, np.zeros((20, 20, 20), np.float32)), "same value"),
    ],
)
def test_bad_volumes_raise_one_error_naming_the_file(tmp_path, write, message):
    _volumes(tmp_path, 2)
    write(tmp_path / "bad.nii.gz")
    dm = MedicalDataModule(tmp_path, _cfg(), mode="views")
    with pytest.raises(DataError, match=message) as info:
        dm.setup("fit")
    assert "bad.nii.gz" in str(info.value)


def test_label_map_on_another_grid_is_an_error_naming_both_files(tmp_path):
    _volumes(tmp_path, 2)
    write_nifti(tmp_path / "seg.nii.gz", np.zeros((40, 44, 36), np.uint8), spacing=(1.0, 1.0, 1.0))
    (tmp_path / "m.csv").write_text("image,label\nv0.nii.gz,seg.nii.gz\nv1.nii.gz,seg.nii.gz\n")
    with pytest.raises(DataError, match=r"seg\.nii\.gz: the label map's grid .* differs from that of its image "
                                        r".*v0\.nii\.gz.*resample_from_to"):  # fmt: skip
        MedicalDataModule(tmp_path / "m.csv", _cfg(), mode="views").setup("fit")
    write_nifti(tmp_path / "seg.nii.gz", np.zeros((40, 44, 36), np.uint8), spacing=(1.5, 1.5, 1.5))
    dm = MedicalDataModule(tmp_path / "m.csv", _cfg(), mode="views")
    dm.setup("fit")
    assert dm.volume(0)["label"].shape == dm.volume(0)["image"].shape


def test_volume_smaller_than_the_roi_is_an_error_only_without_padding(tmp_path):
    write_nifti(tmp_path / "small.nii.gz", phantom((40, 44, 36), 0)[0], spacing=(1.5, 1.5, 1.5))
    with pytest.raises(DataError, match=r"small\.nii\.gz.*smaller than the ROI 32.*pad: true"):
        MedicalDataModule(tmp_path, _cfg(pad=False), mode="views").setup("fit")
    dm = MedicalDataModule(tmp_path, _cfg(pad=True), mode="views")
    dm.setup("fit")
    assert min(dm.volume(0)["image"].shape[1:]) == 32


def test_config_rejects_sizes_the_backbones_cannot_take():
    with pytest.raises(ConfigError, match="multiple of 32"):
        Contrastive3DConfig(roi=48).validate()
    with pytest.raises(ConfigError, match="swin"):
        Contrastive3DConfig(backbone="swin", feature_size=8).validate()
    with pytest.raises(ConfigError, match="mask_patch"):
        AliceConfig(mask_patch=8).validate()  # ViT patches are 16 voxels


def test_view_batches_are_a_clean_crop_and_two_corrupted_copies(tmp_path):
    dm = MedicalDataModule(_volumes(tmp_path, 3), _cfg(), mode="views")
    dm.setup("fit")
    torch.manual_seed(0)
    batch = _train_batch(dm)
    assert batch["image"].shape == batch["view1"].shape == (2, 1, 32, 32, 32)
    assert batch["volume"].tolist() == [i % 3 for i in batch["id"].tolist()]
    changed = [(batch[v] != batch["image"]).float().mean().item() for v in ("view1", "view2")]
    assert sum(changed) > 0.0 and max(changed) < 0.9, f"views are partly corrupted copies of the crop: {changed}"
    assert not torch.equal(batch["view1"], batch["view2"])
    torch.manual_seed(0)
    again = _train_batch(dm)
    assert all(torch.equal(batch[k], again[k]) for k in batch), "crops and corruption follow torch's seed"


def test_several_crops_per_volume_sit_side_by_side_at_different_places(tmp_path):
    dm = MedicalDataModule(_volumes(tmp_path, 3, shape=(60, 64, 56)), _cfg(crops_per_volume=3), mode="views")
    dm.setup("fit")
    torch.manual_seed(0)
    batch = _train_batch(dm)
    assert batch["image"].shape == batch["view2"].shape == (6, 1, 32, 32, 32)  # 2 volumes x 3 crops
    volumes = batch["volume"].tolist()
    assert volumes[:3] == [volumes[0]] * 3 and volumes[3:] == [volumes[3]] * 3
    crops = batch["image"].flatten(1)
    for first in (0, 3):  # the crops of one volume are different windows of it
        assert not torch.equal(crops[first], crops[first + 1]) and not torch.equal(crops[first], crops[first + 2])
    for view in ("view1", "view2"):  # each view is a corrupted copy of its own crop, not of a sibling
        assert ((batch[view] != batch["image"]).flatten(1).float().mean(1) < 0.9).all()


def test_disk_and_no_cache_give_the_cached_volumes(tmp_path):
    data = _volumes(tmp_path / "data", 2)
    volumes = {}
    for cache in ("memory", "disk", "none"):
        dm = MedicalDataModule(
            data, _cfg(cache=cache, cache_dir=str(tmp_path / "cache") if cache == "disk" else ""), "views"
        )
        dm.setup("fit")
        volumes[cache] = [dm.volume(i)["image"] for i in range(2)]
    assert any((tmp_path / "cache").iterdir())
    for cache in ("disk", "none"):
        assert all(torch.equal(a, b) for a, b in zip(volumes["memory"], volumes[cache], strict=True))
    # without cache_dir: one folder per preprocessing setup under $SSL_DOMAINS_CACHE/medical, kept for the next
    # run; the config itself is left as written
    cfg = _cfg(cache="disk")
    dm = MedicalDataModule(data, cfg, "views")
    dm.setup("fit")
    folder = dm.cache_folder()
    assert folder.parent.name == "medical" and cfg.cache_dir == ""
    assert torch.equal(dm.volume(0)["image"], volumes["memory"][0])
    # the foreground index was measured by the runs above, so this one preprocesses a volume when it is read
    assert len(list(folder.glob("*.pt"))) == 1
    again = dm.volume(0)["image"]  # a cache hit comes back memory-mapped: a crop reads only its own pages
    assert torch.equal(again, volumes["memory"][0])
    assert any(str(folder) in line for line in Path("/proc/self/maps").read_text().splitlines())
    assert MedicalDataModule(data, _cfg(cache="disk", spacing=(3.0, 3.0, 3.0)), "views").cache_folder() != folder


def test_auto_cache_weighs_the_headers_against_the_memory_budget(tmp_path, monkeypatch):
    data = _volumes(tmp_path / "data", 2, shape=(40, 44, 36))  # 1.5 mm voxels -> 30 x 33 x 27 at 2 mm
    dm = MedicalDataModule(data, _cfg(), "views")
    assert dm.cfg.cache == "auto"
    dm.records = find_volumes(data)
    assert dm.preprocessed_size() == 2 * 30 * 33 * 27 * 4  # float32, before the foreground crop
    monkeypatch.setenv("SSL_DOMAINS_MEMORY_BUDGET", "1M")
    dm.setup("fit")
    assert dm.cache == "memory"
    monkeypatch.setenv("SSL_DOMAINS_MEMORY_BUDGET", "100K")
    small = MedicalDataModule(data, _cfg(), "views")
    small.setup("fit")
    assert small.cache == "disk"
    before = set(small.cache_folder().glob("*.pt"))
    assert torch.equal(small.volume(1)["image"], dm.volume(1)["image"])
    assert len(set(small.cache_folder().glob("*.pt")) - before) == 1


def test_a_disk_cache_the_filesystem_cannot_hold_is_refused_before_any_work(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    data = _volumes(tmp_path / "data", 2)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 1000, 1000))
    dm = MedicalDataModule(data, _cfg(cache="disk", cache_dir=str(tmp_path / "cache")), "views")
    with pytest.raises(DataError, match=r"need up to 0\.0 GB and the disk has 0\.0 GB free; point cache_dir"):
        dm.setup("fit")
    assert not list((tmp_path / "cache").iterdir())


def test_a_second_setup_reads_the_foreground_index_and_no_volume(tmp_path, monkeypatch):
    data = _volumes(tmp_path / "data", 3)
    first = MedicalDataModule(data, _cfg(cls=AliceConfig, cache="disk", cache_dir=str(tmp_path / "c")), "pairs")
    first.setup("fit")
    monkeypatch.setattr(MedicalDataModule, "volume", lambda self, i: pytest.fail("setup read a volume"))
    again = MedicalDataModule(data, _cfg(cls=AliceConfig, cache="disk", cache_dir=str(tmp_path / "c")), "pairs")
    again.setup("fit")
    assert isinstance(again.foreground_points.points, np.memmap)
    for i in range(3):
        np.testing.assert_array_equal(again.foreground_points[i], first.foreground_points[i])
        for key, value in first.geometry[i].items():
            np.testing.assert_array_equal(again.geometry[i][key], value)
    (data / "v1.nii.gz").touch()  # a changed file: measured again
    with pytest.raises(pytest.fail.Exception, match="setup read a volume"):
        MedicalDataModule(data, _cfg(cls=AliceConfig, cache="disk", cache_dir=str(tmp_path / "c")), "pairs").setup()


def test_box_and_world_correspondence():
    a = {"lo": np.array([10.0, 20.0, 0.0]), "hi": np.array([49.0, 59.0, 19.0]), "shape": np.array([60.0, 80.0, 20.0]),
         "affine": np.diag([2.0, 2.0, 2.0, 1.0])}  # fmt: skip
    b = {"lo": np.array([0.0, 0.0, 0.0]), "hi": np.array([79.0, 39.0, 39.0]), "shape": np.array([80.0, 40.0, 40.0]),
         "affine": np.array([[1.0, 0, 0, -10], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])}  # fmt: skip
    # the boxes' corners and centres map onto each other (per-axis scale 2, 1, 2)
    assert np.allclose(corresponding_point(np.array([10.0, 20.0, 0.0]), a, b), [0.5, 0.0, 0.5])
    assert np.allclose(corresponding_point(np.array([29.5, 39.5, 9.5]), a, b), [39.5, 19.5, 19.5])
    # world: voxel (10, 5, 3) of A is (20, 10, 6) mm, voxel (30, 10, 6) of B
    assert np.allclose(corresponding_point(np.array([10.0, 5.0, 3.0]), a, b, "world"), [30.0, 10.0, 6.0])
    box = foreground_box(np.pad(np.ones((3, 4, 5), bool), 2))
    assert box["lo"].tolist() == [2, 2, 2] and box["hi"].tolist() == [4, 5, 6]


def test_crop_around_keeps_the_point_at_the_centre_at_the_border():
    volume = torch.arange(20**3, dtype=torch.float32).reshape(1, 20, 20, 20)
    crop = crop_around(volume, np.array([1, 10, 18]), 8)
    assert crop.shape == (1, 8, 8, 8)
    assert float(crop[0, 4, 4, 4]) == float(volume[0, 1, 10, 18])
    assert float(crop[0, 0, 4, 4]) == 0.0  # padded outside the volume


def test_crop_batch_is_monais_crop_and_pad_wherever_the_crop_lies():
    volume = torch.rand(1, 20, 24, 18)
    out = torch.full((1, 8, 8, 8), 7.0)  # stale values from a previous batch are overwritten
    for centre in ([10, 12, 9], [0, 0, 0], [19, 23, 17], [1, 23, 0], [19.4, 2.6, 9]):  # inside, as points are
        corner = np.round(np.asarray(centre)).astype(int) - 4
        crop_batch([(out, volume, corner)])
        assert torch.equal(out, torch.as_tensor(crop_around(volume, np.asarray(centre), 8))), centre
    crop_batch([(out, volume, np.array([-20, 12, 9]))])  # wholly outside (MONAI's pad would be negative): zeros
    assert not out.any()


def test_device_view_crops_are_windows_at_uniform_corners(tmp_path):
    dm = MedicalDataModule(_volumes(tmp_path, 3), _cfg(crops_per_volume=2), mode="views")
    dm.setup("fit")
    shape = (40, 44, 36)
    numbered = torch.arange(np.prod(shape), dtype=torch.float32).reshape(1, *shape)  # a voxel's value is its index
    dm._volumes = [{"image": numbered}] * 3
    torch.manual_seed(0)
    crops = torch.cat([dm.train_dataloader().dataset.__getitems__([0, 1, 2])["image"] for _ in range(300)])
    corners = np.stack(np.unravel_index(crops[:, 0, 0, 0, 0].long().numpy(), shape), axis=1)
    for crop, (d, h, w) in zip(crops, corners, strict=True):
        assert torch.equal(crop, numbered[:, d : d + 32, h : h + 32, w : w + 32])
    room = np.asarray(shape) - 32  # corners 0..room, uniform, as RandSpatialCropSamplesd draws them
    assert corners.min(0).tolist() == [0, 0, 0] and corners.max(0).tolist() == room.tolist()
    assert np.allclose(corners.mean(0), room / 2, atol=0.4)


def test_pairs_are_crops_of_two_volumes_at_corresponding_points(tmp_path):
    dm = MedicalDataModule(_volumes(tmp_path, 3), _cfg(AliceConfig), mode="pairs")
    dm.setup("fit")
    torch.manual_seed(0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["query"].shape == batch["anchor"].shape == (2, 1, 32, 32, 32)
    assert (batch["volume"] != batch["partner"]).all(), "Alice's positives come from different volumes"
    # the crops are centred on foreground: the centre voxel of each is inside the phantom
    assert (batch["query"][:, 0, 16, 16, 16] > dm.cfg.foreground_threshold).all()
    for i in range(2):
        a, b = int(batch["volume"][i]), int(batch["partner"][i])
        query_point, anchor_point = batch["query_point"][i].numpy(), batch["anchor_point"][i].numpy()
        expected = corresponding_point(query_point, dm.geometry[a], dm.geometry[b], dm.cfg.correspondence)
        assert np.allclose(anchor_point, expected, atol=1e-4), "the anchor's point corresponds to the query's"
        assert torch.equal(batch["query"][i], crop_around(dm.volume(a)["image"], query_point, 32).float())
        assert torch.equal(batch["anchor"][i], crop_around(dm.volume(b)["image"], anchor_point, 32).float())


def test_corresponding_positives_are_corrupted_crops_of_two_volumes_at_one_point(tmp_path):
    cfg = _cfg(positives="corresponding")
    assert registry.load("contrastive3d").datamodule(cfg, tmp_path).mode == "corresponding_views"
    dm = MedicalDataModule(_volumes(tmp_path, 3), cfg, mode="corresponding_views")
    dm.setup("fit")
    torch.manual_seed(0)
    batch = _train_batch(dm)
    assert batch["image"].shape == batch["image2"].shape == batch["view2"].shape == (2, 1, 32, 32, 32)
    assert (batch["volume"] != batch["partner"]).all(), "the positive comes from another volume"
    for first, second in (("view1", "image"), ("view2", "image2")):  # each view corrupts its own crop
        changed = (batch[first] != batch[second]).flatten(1).float().mean(1)
        assert (changed > 0).any() and (changed < 0.9).all()
    assert not torch.equal(batch["image"], batch["image2"])
    with pytest.raises(ConfigError, match="crops_per_volume: 1"):
        _cfg(positives="corresponding", crops_per_volume=2)
    with pytest.raises(DataError, match="positives: corresponding pairs a point"):
        MedicalDataModule(_volumes(tmp_path / "one", 1), cfg, mode="corresponding_views").setup("fit")


def test_world_pairs_redraw_points_outside_the_partners_field_of_view(tmp_path):
    full = phantom((120, 44, 36), seed=0)[0]
    write_nifti(tmp_path / "a_full.nii.gz", full)
    write_nifti(tmp_path / "b_part.nii.gz", full[:50].copy())  # the same world grid, part of it scanned
    dm = MedicalDataModule(tmp_path, _cfg(AliceConfig, correspondence="world", samples_per_volume=20), mode="pairs")
    dm.setup("fit")
    full_index = [r.name for r in dm.records].index("a_full")
    dataset = dm.train_dataloader().dataset
    torch.manual_seed(0)
    items = [dataset[i] for i in range(len(dataset)) if i % 2 == full_index]
    half = 1 - full_index
    outside_share = np.mean([not inside(corresponding_point(p, dm.geometry[full_index], dm.geometry[half], "world",
                                                            clip=False), dm.geometry[half])
                             for p in dm.foreground_points[full_index]])  # fmt: skip
    assert outside_share > 0.3, "the test needs many points of A outside B"
    for item in items:
        unclipped = corresponding_point(item["query_point"].numpy(), dm.geometry[full_index], dm.geometry[half],
                                        "world", clip=False)  # fmt: skip
        assert inside(unclipped, dm.geometry[half]), "a positive never pairs a point with B's border"


def test_pairs_need_two_volumes(tmp_path):
    folder = _volumes(tmp_path, 1)
    with pytest.raises(DataError, match=r"(?s)only 1 volume.*at least 2 volumes") as error:
        MedicalDataModule(folder, _cfg(AliceConfig), mode="pairs").setup("fit")
    assert str(folder) in str(error.value)


def test_a_volume_with_nothing_above_the_foreground_threshold_names_the_window(tmp_path):
    air = np.full((24, 24, 24), -1000.0, np.float32)
    air[8:16, 8:16, 8:16] = -900.0  # lung-like values, all below a soft-tissue CT window
    write_nifti(tmp_path / "air.nii.gz", air)
    cfg = _cfg(intensity="ct", ct_window=(-125.0, 225.0), roi=32)
    with pytest.raises(DataError, match=r"air\.nii\.gz: no voxel above foreground_threshold.*ct_window"):
        MedicalDataModule(tmp_path, cfg, mode="views").setup("fit")


def test_a_decathlon_task_folder_reads_its_training_list_with_labels(tmp_path):
    import json

    task = tmp_path / "Task09_Spleen"
    for i in range(2):
        image, label = phantom((24, 28, 20), seed=i)
        write_nifti(task / "imagesTr" / f"spleen_{i}.nii.gz", image)
        write_nifti(task / "labelsTr" / f"spleen_{i}.nii.gz", label)
    write_nifti(task / "imagesTs" / "spleen_9.nii.gz", phantom((24, 28, 20), seed=9)[0])
    listing = {
        "name": "Spleen", "modality": {"0": "CT"}, "numTraining": 2, "test": ["./imagesTs/spleen_9.nii.gz"],
        "training": [{"image": f"./imagesTr/spleen_{i}.nii.gz", "label": f"./labelsTr/spleen_{i}.nii.gz"}
                     for i in range(2)],
    }  # fmt: skip
    (task / "dataset.json").write_text(json.dumps(listing))
    for data in (task, task / "dataset.json"):  # the folder (not scanned: labelsTr is no image) or the file
        records = find_volumes(data)
        assert [(r.image.name, r.image.parent.name, r.label.parent.name) for r in records] == [
            ("spleen_0.nii.gz", "imagesTr", "labelsTr"), ("spleen_1.nii.gz", "imagesTr", "labelsTr")]  # fmt: skip
    dm = MedicalDataModule(task, _cfg(), "views")
    dm.setup("fit")
    assert set(dm.volume(0)) >= {"image", "label"}
    listing["training"][1]["label"] = "./labelsTr/missing.nii.gz"
    (task / "dataset.json").write_text(json.dumps(listing))
    with pytest.raises(DataError, match=r"dataset.json: training entry 1 names .*missing.nii.gz, which does not exist"):
        find_volumes(task)
    (task / "dataset.json").write_text('{"name": "Spleen"}')
    with pytest.raises(DataError, match=r"not a Decathlon dataset\.json"):
        find_volumes(task)


def test_mgz_and_nrrd_read_as_the_same_volume_as_nifti(tmp_path):
    """FreeSurfer's MGZ (nibabel) and NRRD (MONAI's NrrdReader; LPS, so its x and y run the other way) give the
    NIfTI file's preprocessed voxels, and their headers bound the cache size as NIfTI's do."""
    import nrrd

    image = phantom((40, 44, 36), seed=0)[0]
    write_nifti(tmp_path / "v.nii.gz", image, spacing=(1.5, 1.5, 1.5))
    nib.save(nib.MGHImage(image, np.diag([1.5, 1.5, 1.5, 1.0])), str(tmp_path / "v.mgz"))
    lps = {
        "space": "left-posterior-superior",
        "space directions": np.diag([1.5] * 3),
        "space origin": [-58.5, -64.5, 0],
    }
    nrrd.write(str(tmp_path / "v.nrrd"), np.ascontiguousarray(image[::-1, ::-1]), lps)
    dm = MedicalDataModule(tmp_path, _cfg(cache="memory"), "views")
    dm.setup("fit")
    assert [r.name for r in dm.records] == ["v", "v", "v"]
    assert [r.image.suffix for r in dm.records] == [".mgz", ".gz", ".nrrd"]
    reference = dm.volume(1)["image"]
    for i in (0, 2):
        assert torch.equal(dm.volume(i)["image"], reference)
    assert dm.preprocessed_size() == 3 * 30 * 33 * 27 * 4


def test_batched_jitter_is_monais_bias_field_gamma_and_noise():
    """``apply_jitter`` with MONAI's drawn parameters gives MONAI's output, crop by crop, for the whole batch."""
    from monai.transforms import AdjustContrast, RandBiasField

    from ssl_domains_medical.transforms import apply_jitter, jitter_batch

    gen = np.random.default_rng(0)
    crops = torch.as_tensor(gen.uniform(0.0, 1.0, (3, 1, 12, 10, 8)), dtype=torch.float32)
    coeff = torch.as_tensor(gen.uniform(0.1, 0.3, (3, 20)), dtype=torch.float32)
    gamma, noise = torch.tensor([0.7, 1.0, 1.5]), 0.01 * torch.randn(crops.shape)
    ours = apply_jitter(crops, coeff, gamma, noise)
    field = RandBiasField(prob=1.0, coeff_range=(0.1, 0.3))
    for n in range(3):
        biased = crops[n].numpy() * np.exp(field._generate_random_field((12, 10, 8), 3, coeff[n].tolist()))
        expected = AdjustContrast(float(gamma[n]))(torch.as_tensor(biased, dtype=torch.float32)) + noise[n]
        np.testing.assert_allclose(ours[n].numpy(), np.asarray(expected), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(apply_jitter(crops, 0 * coeff, torch.ones(3), 0 * noise), crops, atol=1e-6)
    many = torch.rand(400, 1, 6, 6, 6)
    out = jitter_batch(many, torch.Generator().manual_seed(0))
    unchanged = (out - many).abs().flatten(1).amax(1) < 1e-5  # all three skipped: 0.2 * 0.2 * 0.5 of the crops
    assert out.shape == many.shape and 0.0 < unchanged.float().mean() < 0.06
    assert jitter_batch(many.bfloat16()).dtype == torch.bfloat16


def test_views_are_jittered_on_the_device_after_transfer_and_targets_stay_clean(tmp_path):
    data = _volumes(tmp_path / "data", 3)
    dm = MedicalDataModule(data, _cfg(cls=AliceConfig), "pairs")
    dm.setup("fit")
    assert dm.cfg.intensity_aug
    batch = next(iter(dm.train_dataloader()))
    assert "query_view" not in batch  # the loader sends each crop once and does no intensity work
    query = batch["query"].clone()
    moved = dm.on_after_batch_transfer(batch, 0)
    assert torch.equal(moved["query"], query) and not torch.equal(moved["query_view"], query)
    assert moved["anchor_view"].shape == moved["anchor"].shape
    plain = MedicalDataModule(data, _cfg(cls=AliceConfig, intensity_aug=False), "pairs")
    plain.setup("fit")
    batch = next(iter(plain.train_dataloader()))
    assert torch.equal(plain.on_after_batch_transfer(batch, 0)["query_view"], batch["query"])


def _monai_share(transform, shape, draws: int, fill: float | None = 0.0) -> np.ndarray:
    """The share of voxels a MONAI coarse transform changes in a fresh image of ones (or of distinct values)."""
    transform.set_random_state(0)
    image = np.arange(np.prod(shape), dtype=np.float32).reshape((1, *shape)) if fill is None else None
    shares = []
    for _ in range(draws):
        fresh = image.copy() if fill is None else np.ones((1, *shape), np.float32)  # MONAI writes into its input
        shares.append(float((np.asarray(transform(fresh)) != (image if fill is None else 1.0)).mean()))
    return np.array(shares)


def test_device_corruptions_draw_as_monai_draws():
    from monai.transforms import RandCoarseDropout, RandCoarseShuffle

    from ssl_domains_medical.transforms import boxes_mask, coarse_boxes, coarse_shuffle

    shape, gen = (20, 24, 28), torch.Generator().manual_seed(1)
    boxes = coarse_boxes(4, shape, 6, 3, 12, gen, "cpu")
    painted = torch.zeros(4, *shape, dtype=torch.bool)  # the union of the boxes, painted one crop at a time
    for corner, side in boxes:
        for n in range(4):
            (z, y, x), (d, h, w) = corner[n].tolist(), side[n].tolist()
            painted[n, z : z + d, y : y + h, x : x + w] = True
    assert torch.equal(boxes_mask(boxes, shape), painted)
    assert all(bool((b[1] >= a[1]).all()) for a, b in itertools.pairwise(boxes))  # MONAI's growing sides
    shape = (32, 32, 32)
    for holes, size, largest, holes_out in ((6, 2, 11, True), (6, 7, 21, False), (6, 7, None, True)):
        monai = _monai_share(RandCoarseDropout(holes, size, dropout_holes=holes_out, fill_value=0.0,
                                               max_spatial_size=largest, prob=1.0), shape, 400)  # fmt: skip
        ours = boxes_mask(coarse_boxes(2000, shape, holes, size, largest, gen, "cpu"), shape).float().mean((1, 2, 3))
        ours = (ours if holes_out else 1 - ours).numpy()
        error = np.hypot(monai.std() / np.sqrt(len(monai)), ours.std() / np.sqrt(len(ours)))
        assert abs(monai.mean() - ours.mean()) < 4 * error + 1e-4, (holes, size, largest, monai.mean(), ours.mean())
    monai = _monai_share(RandCoarseShuffle(holes=10, spatial_size=3, prob=0.8), shape, 400, fill=None)
    crops = torch.arange(32**3, dtype=torch.float32).reshape(1, 1, *shape).repeat(600, 1, 1, 1, 1)
    shuffled = coarse_shuffle(crops, 10, 3, 0.8, gen)
    ours = (shuffled != crops).float().mean((1, 2, 3, 4)).numpy()
    assert abs(monai.mean() - ours.mean()) < 4 * np.hypot(monai.std() / 20, ours.std() / np.sqrt(600))
    assert torch.equal(shuffled.flatten(1).sort(1).values, crops.flatten(1))  # a permutation: no value lost


def test_views_are_corrupted_on_the_device_unless_asked_of_the_loader(tmp_path):
    data = _volumes(tmp_path, 3)
    dm = MedicalDataModule(data, _cfg(), mode="views")
    dm.setup("fit")
    raw = next(iter(dm.train_dataloader()))
    assert "view1" not in raw and dm.corrupts_on_device  # the workers only crop
    batch = dm.on_after_batch_transfer(raw, 0)
    low, high = raw["image"].flatten(1).amin(1), raw["image"].flatten(1).amax(1)
    for view in ("view1", "view2"):
        values = batch[view].flatten(1)
        assert ((values >= low[:, None] - 1e-6) & (values <= high[:, None] + 1e-6)).all()  # MONAI's fill range
    assert dm.on_after_batch_transfer(batch, 0) is batch  # views made once
    predicting = MedicalDataModule(data, _cfg(), mode="views")
    predicting.setup("fit")
    predicting.trainer = type("Trainer", (), {"predicting": True})()  # embed's whole volumes need no views
    assert "view1" not in predicting.on_after_batch_transfer(next(iter(predicting.predict_dataloader())), 0)
    loader = MedicalDataModule(data, _cfg(corruptions_on="loader"), mode="views")
    loader.setup("fit")
    ready = next(iter(loader.train_dataloader()))
    assert "view1" in ready and loader.on_after_batch_transfer(ready, 0)["view1"] is ready["view1"]


def test_loader_corruptions_leave_the_clean_targets_clean(tmp_path):
    cfg = _cfg(positives="corresponding", corruptions_on="loader")
    dm = MedicalDataModule(_volumes(tmp_path, 3), cfg, mode="corresponding_views")
    dm.setup("fit")
    views = dm.train_dataloader().dataset.dataset
    for index in range(4):
        torch.manual_seed(index)
        pair = views.pairs[index]
        torch.manual_seed(index)
        item = views[index]  # the same pair, then MONAI's holes and shuffles on the views
        assert torch.equal(item["image"], pair["query"]) and torch.equal(item["image2"], pair["anchor"])
        assert not torch.equal(item["view1"], item["image"])


@pytest.mark.parametrize("mode", ["views", "pairs", "corresponding_views"])
def test_a_batch_with_an_unreadable_volume_is_read_again_item_by_item_in_the_same_layout(tmp_path, mode):
    cls = AliceConfig if mode == "pairs" else Contrastive3DConfig
    dm = MedicalDataModule(_volumes(tmp_path, 3), _cfg(cls=cls), mode=mode)
    dm.setup("fit")
    loader = dm.train_dataloader()
    whole = loader.collate_fn(loader.dataset.__getitems__([0, 1])).batch  # built in place
    read = dm.volume

    def volume(index):
        if index == 1:
            raise DataError("v1.nii.gz: unreadable")
        return read(index)

    dm.volume = volume
    torch.manual_seed(0)  # the partners drawn: a pair is unreadable when either of its volumes is
    fallback = loader.collate_fn(loader.dataset.__getitems__([0, 1]))
    assert fallback.skipped and set(fallback.skipped) == {"v1.nii.gz: unreadable"}  # item 1, maybe a partner too
    assert sorted(fallback.batch) == sorted(whole)
    for key, value in whole.items():
        assert fallback.batch[key].shape == value.shape and fallback.batch[key].dtype == value.dtype, key
