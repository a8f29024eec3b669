"""A tiny generated dataset in the SSL4EO-S12 per-band layout, for tests and the conformance kit.

Two locations, each with S1 (VV, VH in dB) and S2 L2A (12 bands, 20 m and 60 m bands at their native
resolution) at two dates. The scenes share one smooth random land-cover field, so radar and optical agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .bands import S2_L2A

_COARSE = {"B01": 6, "B09": 6, "B10": 6, "B05": 2, "B06": 2, "B07": 2, "B8A": 2, "B11": 2, "B12": 2}


def _field(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = rng.random((size // 8 + 2, size // 8 + 2))
    return np.kron(coarse, np.ones((8, 8)))[:size, :size]


def write_tif(path: Path, array: np.ndarray, lon: float, lat: float, res_deg: float) -> None:
    """Write ``[H, W]`` as a one-band GeoTIFF in EPSG:4326 at (``lon``, ``lat``) top-left."""
    import rasterio
    from rasterio.transform import Affine

    path.parent.mkdir(parents=True, exist_ok=True)
    transform = Affine(res_deg, 0, lon, 0, -res_deg, lat)
    profile = {"driver": "GTiff", "height": array.shape[0], "width": array.shape[1], "count": 1,
               "dtype": array.dtype.name, "crs": "EPSG:4326", "transform": transform}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array, 1)


def write_example_pairs(root: Path, size: int = 48, locations: int = 2, seed: int = 0) -> Path:
    """Write the dataset under ``root / "sentinel"`` and return that folder."""
    rng = np.random.default_rng(seed)
    out = root / "sentinel"
    res = 1e-4
    for loc in range(locations):
        lon, lat = 10.0 + loc, 45.0
        land = _field(rng, size)
        for d, date in enumerate(("20200604T054639", "20200813T054639")):
            season = 1.0 + 0.2 * d
            for band, value in zip(("VV", "VH"), (-10.0, -17.0), strict=True):
                db = value + 6 * (land - 0.5) + rng.normal(0, 1.0, land.shape)
                write_tif(out / "s1" / f"{loc:07d}" / f"S1A_IW_GRDH_1SDV_{date}" / f"{band}.tif",
                          db.astype(np.float32), lon, lat, res)  # fmt: skip
            for i, band in enumerate(S2_L2A):
                factor = _COARSE.get(band, 1)
                small = land[::factor, ::factor]
                refl = 800 + 3000 * small * season * (0.5 + i / 24) + rng.normal(0, 50, small.shape)
                name = f"B{int(band[1:])}" if band[1:].isdigit() else band
                write_tif(out / "s2a" / f"{loc:07d}" / f"{date}_T43RCP" / f"{name}.tif",
                          np.clip(refl, 1, 10000).astype(np.uint16), lon, lat, res * factor)  # fmt: skip
    return out
