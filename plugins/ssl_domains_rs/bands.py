"""Sentinel band names, orders and the published SSL4EO-S12 statistics.

Band order everywhere in this package is the SSL4EO-S12 / BigEarthNet order: B8A right after B08 (L2A has no
B10). EuroSAT's multi-band files put B8A last; :func:`multiband_order` says which order a file is read in.
"""

from __future__ import annotations

import re

S2_L1C = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
S2_L2A = tuple(b for b in S2_L1C if b != "B10")
S1_GRD = ("VV", "VH")
RGB = ("B04", "B03", "B02")
EUROSAT_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A")

# SSL4EO-S12 statistics over 50k samples (zhu-xlab/SSL4EO-S12,
# src/benchmark/pretrain_ssl/datasets/SSL4EO/ssl4eo_dataset.py, commit 1dc0c83): S2 in reflectance x 10000,
# S1 in dB. Keyed by band so that any band subset or order is normalised correctly.
_S2C_MEAN = (
    1605.57504906,
    1390.78157673,
    1314.8729939,
    1363.52445545,
    1549.44374991,
    2091.74883118,
    2371.7172463,
    2299.90463006,
    2560.29504086,
    830.06605044,
    22.10351321,
    2177.07172323,
    1524.06546312,
)
_S2C_STD = (
    786.78685367,
    850.34818441,
    875.06484736,
    1138.84957046,
    1122.17775652,
    1161.59187054,
    1274.39184232,
    1248.42891965,
    1345.52684884,
    577.31607053,
    51.15431158,
    1336.09932639,
    1136.53823676,
)
_S2A_MEAN = (
    752.40087073,
    884.29673756,
    1144.16202635,
    1297.47289228,
    1624.90992062,
    2194.6423161,
    2422.21248945,
    2517.76053101,
    2581.64687018,
    2645.51888987,
    2368.51236873,
    1805.06846033,
)
_S2A_STD = (1108.02887453, 1155.15170768, 1183.6292542, 1368.11351514, 1370.265037, 1355.55390699,
            1416.51487101, 1474.78900051, 1439.3086061, 1582.28010962, 1455.52084939, 1343.48379601)  # fmt: skip

SSL4EO_STATS: dict[str, dict[str, tuple[float, float]]] = {
    "L1C": {b: (m, s) for b, m, s in zip(S2_L1C, _S2C_MEAN, _S2C_STD, strict=True)},
    "L2A": {b: (m, s) for b, m, s in zip(S2_L2A, _S2A_MEAN, _S2A_STD, strict=True)},
    "GRD": {"VV": (-12.54847273, 5.25697717), "VH": (-20.19237134, 5.91150917)},
}

_BAND = re.compile(r"(?:^|[_\-])(B\d{1,2}A?|VV|VH)$", re.IGNORECASE)


def band_name(stem: str) -> str | None:
    """The canonical band name a file stem ends with (``B1``/``..._B01`` -> ``B01``, ``..._VV`` -> ``VV``)."""
    match = _BAND.search(stem)
    if match is None:
        return None
    name = match.group(1).upper()
    if name.startswith("B") and name[1:].isdigit():
        name = f"B{int(name[1:]):02d}"
    return name


def bands_for(level: str) -> tuple[str, ...]:
    """The full band list of a product level: ``L1C`` (13), ``L2A`` (12) or ``GRD`` (VV, VH)."""
    return {"L1C": S2_L1C, "L2A": S2_L2A, "GRD": S1_GRD}[level]


def multiband_order(count: int, descriptions: tuple[str | None, ...], eurosat_13: bool = True) -> tuple[str, ...]:
    """The band names of a multi-band GeoTIFF's bands, in file order.

    Band descriptions that name bands win. Otherwise 2 bands are (VV, VH), 12 the L2A order, and 13 EuroSAT's
    order (B8A last) when ``eurosat_13`` else the L1C order.
    """
    named = [band_name(d.replace(" ", "")) if d else None for d in descriptions]
    if all(named) and len(set(named)) == count:
        return tuple(named)  # type: ignore[arg-type]
    by_count = {2: S1_GRD, 12: S2_L2A, 13: EUROSAT_ORDER if eurosat_13 else S2_L1C}
    if count not in by_count:
        return ()
    return by_count[count]
