"""``volume_dtype: float16``: the preprocessed volumes (in memory, on disk, or not cached) are the float32 chain's
result rounded once to float16, half the bytes; crops and embeddings reach the network as float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_domains_medical.data import MedicalDataModule
from ssl_domains_medical.formats import find_volumes
from ssl_domains_medical.plugin import AliceConfig, Contrastive3DConfig
from ssl_domains_medical.synthetic import phantom, write_nifti
from ssl_domains_medical.transforms import crop_around


def _cfg(cls=AliceConfig, **kw):
    cfg = cls(**{"roi": 32, "spacing": (2.0, 2.0, 2.0), "samples_per_volume": 2, "batch_size": 2, **kw})
    cfg.validate()
    return cfg


def _volumes(root: Path, count: int = 3, shape=(40, 44, 36)) -> Path:
    for i in range(count):
        write_nifti(root / f"v{i}.nii.gz", phantom(shape, seed=i)[0], spacing=(1.5, 1.5, 1.5))
    return root


def test_float16_volumes_are_the_float32_ones_rounded_once_in_every_cache(tmp_path: Path) -> None:
    data = _volumes(tmp_path / "data", 2)
    exact = MedicalDataModule(data, _cfg(cache="memory"), "pairs")
    exact.setup("fit")
    for cache in ("memory", "disk", "none"):
        folder = str(tmp_path / "c16") if cache == "disk" else ""
        dm = MedicalDataModule(data, _cfg(cache=cache, volume_dtype="float16", cache_dir=folder), "pairs")
        dm.setup("fit")
        for i in range(2):
            image, reference = dm.volume(i)["image"], exact.volume(i)["image"]
            assert image.dtype == torch.float16 and image.shape == reference.shape
            assert torch.equal(image.as_tensor(), reference.as_tensor().half())
            assert np.array_equal(np.asarray(image.affine), np.asarray(reference.affine))
    assert dm.input_spec()["stored_as"].startswith("float16")


def test_the_float16_disk_cache_is_half_and_is_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_DOMAINS_CACHE", str(tmp_path / "cache"))  # this test's volumes alone in each folder
    data = _volumes(tmp_path / "data", 2)
    sizes, folders = {}, {}
    for dtype in ("float32", "float16"):
        dm = MedicalDataModule(data, _cfg(cache="disk", volume_dtype=dtype), "pairs")
        dm.setup("fit")
        dm.volume(0), dm.volume(1)
        folders[dtype] = dm.cache_folder()
        sizes[dtype] = sum(p.stat().st_size for p in folders[dtype].glob("*.pt"))
        dm.records = find_volumes(data)
        assert dm.preprocessed_size() == 2 * 30 * 33 * 27 * (4 if dtype == "float32" else 2)
    assert folders["float32"] != folders["float16"]
    assert 0.45 < sizes["float16"] / sizes["float32"] < 0.55


def test_float16_crops_reach_the_network_as_float32(tmp_path: Path) -> None:
    """Alice's pairs and contrastive3d's crops: float32 batches holding the float16 volume's values; embed's whole
    volumes likewise."""
    dm = MedicalDataModule(_volumes(tmp_path, 3), _cfg(volume_dtype="float16", cache="disk"), mode="pairs")
    dm.setup("fit")
    torch.manual_seed(0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["query"].dtype == batch["anchor"].dtype == torch.float32
    for i in range(2):
        a, point = int(batch["volume"][i]), batch["query_point"][i].numpy()
        expected = crop_around(dm.volume(a)["image"], point, 32)
        assert expected.dtype == torch.float16
        assert torch.equal(batch["query"][i], expected.float())
    views = MedicalDataModule(tmp_path, _cfg(Contrastive3DConfig, volume_dtype="float16"), mode="views")
    views.setup("fit")
    crops = views.on_after_batch_transfer(next(iter(views.train_dataloader())), 0)
    assert all(crops[k].dtype == torch.float32 for k in ("image", "view1", "view2"))
    views.setup("predict")
    whole = next(iter(views.predict_dataloader()))["image"]
    assert whole.dtype == torch.float32


def test_a_cropped_volume_is_saved_without_the_storage_it_was_cropped_from() -> None:
    """``CropForegroundd`` returns a view; ``torch.save`` writes a view's whole storage. ``Compactd`` copies such a
    tensor into storage of its own size (metadata kept) and leaves a compact one as it is."""
    import io

    from monai.data import MetaTensor

    from ssl_domains_medical.transforms import Compactd

    whole = MetaTensor(torch.rand(1, 40, 40, 40), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    view = whole[:, 5:25, 5:25, 5:25]
    out = Compactd("image")({"image": view, "id": 3})
    saved = io.BytesIO()
    torch.save(out["image"], saved)
    assert out["image"].untyped_storage().nbytes() == 20**3 * 4 and saved.tell() < 20**3 * 4 + 20_000
    assert torch.equal(out["image"], view) and torch.equal(out["image"].affine, view.affine) and out["id"] == 3
    compact = MetaTensor(torch.rand(1, 8, 8, 8))
    assert Compactd("image")({"image": compact})["image"] is compact
