"""Embedding chips that cannot be paired: S2-only chips for a CROMA run (embed_modality optical) and single-date
chips for SSL4EO, read from EuroSAT MS files whose 13 bands are a superset of the model's 12 (selected by name)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from ssl_domains import DataError, registry
from ssl_domains_rs.bands import EUROSAT_ORDER, S2_L2A
from ssl_domains_rs.data import normalise
from ssl_domains_rs.evaluation import evaluate_retrieval, retrieval_embeddings
from ssl_domains_rs.formats import read_bands
from ssl_domains_rs.plugin import CROMAConfig, SSL4EOConfig

ROOT = Path(__file__).resolve().parents[3] / "datasets" / "sentinel_s1s2"
EUROSAT = ROOT / "eurosat_ms"


def _dm(name: str, cfg, data: Path, stage: str):
    dm = registry.load(name).datamodule(cfg, data)
    dm.setup(stage)
    return dm


def _expected_views(dm) -> list[np.ndarray]:
    """Every EuroSAT file's 12 L2A bands, picked by name from its 13 (B8A last), normalised as the module does."""
    out = []
    for path in sorted(EUROSAT.rglob("*.tif")):
        with rasterio.open(path) as src:
            image = src.read().astype(np.float32)
        picked = image[[EUROSAT_ORDER.index(b) for b in S2_L2A]]
        out.append(normalise(picked, S2_L2A, dm.fitted["stats"], dm.fitted["normalize"]))
    return out


def _pixels(dm, scene) -> np.ndarray:
    """The scene's one view, read whole and normalised (the module itself reads chips)."""
    image, _ = read_bands(scene.views[0], dm.s2_bands)
    return normalise(image, dm.s2_bands, dm.fitted["stats"], dm.fitted["normalize"])


def test_croma_optical_embeds_s2_chips_alone():
    cfg = CROMAConfig(chip=32, dim=32, depth=2, heads=2, decoder_dim=32, decoder_heads=2, embed_modality="optical")
    dm = _dm("croma", cfg, EUROSAT, "predict")
    assert dm.single_view == "optical"
    batch = next(iter(dm.predict_dataloader()))
    assert set(batch) == {"optical", "id", "split", "location"} and batch["optical"].shape[1:] == (12, 32, 32)
    expected = _expected_views(dm)
    for scene in dm.scenes:  # the superset's bands, by name and in the model's order
        assert any(np.array_equal(_pixels(dm, scene), e) for e in expected)
    model = registry.load("croma").model(cfg, dm).eval()
    with torch.no_grad():
        z = model.embed(batch)
    assert z.shape == (batch["optical"].shape[0], 32) and torch.isfinite(z).all()
    with pytest.raises(DataError, match="retrieval compares two views"):
        retrieval_embeddings(model, dm, "cpu")
    # evaluate: no retrieval task; the kNN probe needs two labelled locations per class (EuroSAT here: one each)
    assert evaluate_retrieval(model, dm, "cpu") == {"n_chips": float(len(dm.test_items))}


def test_croma_optical_embed_is_the_optical_head_of_the_full_forward():
    cfg = CROMAConfig(chip=32, dim=32, depth=2, heads=2, decoder_dim=32, decoder_heads=2, embed_modality="optical")
    dm = _dm("croma", cfg, ROOT / "bigearthnet_v1_mm", "predict")
    assert dm.single_view is None  # paired data: both views, as before
    batch = next(iter(dm.predict_dataloader()))
    model = registry.load("croma").model(cfg, dm).eval()
    with torch.no_grad():
        full = model(batch["radar"], batch["optical"], None, None)["optical"].mean(1)
        assert torch.allclose(model.embed(batch), model.gap_optical(full), atol=1e-6)


def test_unpaired_chips_still_refused_for_training_and_joint_embeddings():
    with pytest.raises(DataError, match="needs an S1"):
        _dm("croma", CROMAConfig(chip=32, embed_modality="optical"), EUROSAT, "fit")
    with pytest.raises(DataError, match="train with embed_modality: optical or radar"):
        _dm("croma", CROMAConfig(chip=32), EUROSAT, "predict")


def test_ssl4eo_embeds_single_date_chips_even_when_training_skips_them(caplog):
    cfg = SSL4EOConfig(chip=32, dim=32, depth=2, heads=2, proj_dim=16, hidden_dim=32, single_date="skip")
    with pytest.raises(DataError, match="no usable location"):
        _dm("ssl4eo", cfg, EUROSAT, "fit")
    caplog.clear()
    with caplog.at_level("WARNING", logger="ssl_domains_rs.data"):
        dm = _dm("ssl4eo", cfg, EUROSAT, "predict")
    notes = [r.getMessage() for r in caplog.records if "leaving out" in r.getMessage()]
    assert len(notes) == 1 and "holds 13 bands: using 12 by name, leaving out B10" in notes[0]
    batch = next(iter(dm.predict_dataloader()))
    assert set(batch) == {"view1", "id", "split", "location"} and batch["view1"].shape[1] == 12
    expected = _expected_views(dm)
    assert all(any(np.array_equal(_pixels(dm, scene), e) for e in expected) for scene in dm.scenes)
    model = registry.load("ssl4eo").model(cfg, dm).eval()
    with torch.no_grad():
        assert model.embed(batch).shape == (batch["view1"].shape[0], 32)


def test_provenance_gives_each_chip_its_crs_native_bounds_and_lon_lat_footprint():
    """``embed`` writes these beside each vector (GeoParquet geometry): checked against rasterio's own transform."""
    from rasterio.warp import transform as reproject

    cfg = CROMAConfig(chip=32, dim=32, depth=2, heads=2, decoder_dim=32, decoder_heads=2, embed_modality="optical")
    dm = _dm("croma", cfg, EUROSAT, "predict")
    where = dm.provenance(np.arange(len(dm.test_items)))
    assert set(where) == {"location", "row", "col", "crs", "bounds", "geometry"}
    assert where["geometry"].shape == (len(dm.test_items), 4, 2)
    for k, (scene, row, col, _split) in enumerate(dm.test_items):
        view = dm.scenes[scene].views[0]
        with rasterio.open(next(iter(view.bands.values()))) as src:
            assert where["crs"][k] == src.crs.to_string()
            left, top = src.transform @ (col, row)
            right, bottom = src.transform @ (col + 32, row + 32)
        np.testing.assert_allclose(where["bounds"][k], [left, bottom, right, top])
        lon, lat = reproject(src.crs, "EPSG:4326", [left, right], [top, bottom])
        np.testing.assert_allclose(where["geometry"][k][[0, 2]], np.stack([lon, lat], -1))
        west, south, east, north = view.bounds  # the ring lies in the file's lon/lat footprint
        ring = where["geometry"][k]
        assert (west - 1e-6 <= ring[:, 0]).all() and (ring[:, 0] <= east + 1e-6).all()
        assert (south - 1e-6 <= ring[:, 1]).all() and (ring[:, 1] <= north + 1e-6).all()
