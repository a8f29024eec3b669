"""Finding and reading Sentinel-1/2 acquisitions with rasterio.

Accepted layouts (searched recursively, mixed freely):

- **per-band folders**: one GeoTIFF per band in a folder, named ``B1.tif``/``B01.tif``/``<id>_B01.tif``/``VV.tif``
  (SSL4EO-S12 ``{s1,s2a,s2c}/{id}/{product}/``, BigEarthNet v1/v2, Major-TOM cells with ``cloud_mask.tif``);
  20 m and 60 m bands are resampled to the 10 m grid (bilinear, as SSL4EO-S12's loader does);
- **multi-band GeoTIFF chips** (EuroSAT MS, Hydro, torchgeo exports): bands named by their descriptions, or by
  count (2: VV, VH; 12: L2A order; 13: EuroSAT order with B8A last).

One acquisition is one sensor at one date over one footprint. Footprints (in lon/lat) decide which acquisitions
show the same location: S1 and S2 pair up, and dates of one location form SSL4EO's temporal positives.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssl_domains import DataError

from .bands import S1_GRD, band_name, multiband_order

TIFF = (".tif", ".tiff")
NOT_GEOTIFF = (".png", ".jpg", ".jpeg", ".npy", ".npz", ".h5", ".bmp", ".gif")
_DATE = re.compile(r"(20\d{2})(\d{2})(\d{2})T?")
_INSTALL = 'reading GeoTIFFs needs rasterio: pip install "ssl-domains[remote-sensing]"'


@dataclass
class Acquisition:
    """One sensor, one date, one footprint: per-band files or one multi-band file.

    It pickles compactly (the folder once, then the files' names; see :meth:`__reduce__`): the chip index keeps
    every acquisition of the corpus as pickles (:class:`ssl_domains.data.PackedList`), about 8 a location.
    """

    name: str
    sensor: str  # "s1" or "s2"
    level: str  # "GRD", "L1C", "L2A", or "" (multi-band file: decided by the config's band list)
    date: str  # YYYYMMDD, or "" when the names carry none
    bands: dict[str, str]  # band -> file path (a multi-band file appears once per band it holds)
    band_index: dict[str, int] = field(default_factory=dict)  # band -> 1-based index in a multi-band file
    bounds: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # lon/lat footprint
    shape: tuple[int, int] = (0, 0)  # at 10 m
    crs: str = ""  # the 10 m grid's CRS (e.g. "EPSG:32633"), "" when the file has none
    transform: tuple[float, ...] = ()  # the 10 m grid's affine (a, b, c, d, e, f): x = a*col + b*row + c, ...
    cloud_mask: str | None = None
    labels: tuple[str, ...] = ()  # BigEarthNet CORINE labels
    label: str | None = None  # a class named by the parent folder (EuroSAT layout)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # the paths as one folder and the files' names: 13 full paths took 1.4 kB a view, 24 kB a location
        folder = os.path.dirname(next(iter(self.bands.values()), ""))
        names = {b: os.path.basename(p) for b, p in self.bands.items()}
        if not folder or any(_join(folder, names[b]) != p for b, p in self.bands.items()):
            folder, names = "", dict(self.bands)
        cloud: tuple[bool, str] | None = None  # (in the bands' folder, its name there or its path)
        if self.cloud_mask is not None:
            name = os.path.basename(self.cloud_mask)
            inside = bool(folder) and _join(folder, name) == self.cloud_mask
            cloud = (True, name) if inside else (False, self.cloud_mask)
        same = {n: n for n in names.values()}  # one string per distinct name: a multi-band file's is pickled once
        indices = tuple(self.band_index[b] for b in self.bands) if self.band_index else ()
        fields = (self.name, self.sensor, self.level, self.date, folder, tuple(self.bands),
                  tuple(same[n] for n in names.values()), indices, self.bounds, self.shape, self.crs,
                  self.transform, cloud, self.labels, self.label)  # fmt: skip
        return acquisition_from_state, fields


def _join(folder: str, name: str) -> str:
    return folder + os.sep + name  # not os.path.join: 5x faster, and a chip's scene is unpickled per read


def acquisition_from_state(name: str, sensor: str, level: str, date: str, folder: str, bands: tuple[str, ...],
                 names: tuple[str, ...], indices: tuple[int, ...], *rest: Any) -> Acquisition:  # fmt: skip
    """An :class:`Acquisition` from what its ``__reduce__`` kept."""
    bounds, shape, crs, transform, cloud, labels, label = rest
    paths = [_join(folder, n) for n in names] if folder else names
    mask = None if cloud is None else (_join(folder, cloud[1]) if cloud[0] else cloud[1])
    return Acquisition(
        name, sensor, level, date, dict(zip(bands, paths, strict=True)),
        dict(zip(bands, indices, strict=True)) if indices else {}, bounds, shape, crs, transform, mask, labels,
        label,
    )  # fmt: skip


def _rasterio():
    try:
        import rasterio
    except ImportError:
        raise DataError(_INSTALL) from None
    return rasterio


def _open(path: Path):
    rasterio = _rasterio()
    try:
        src = rasterio.open(path)
    except Exception as exc:  # rasterio raises RasterioIOError and friends
        raise DataError(f"{path} is not a readable GeoTIFF ({exc}); re-export it as GeoTIFF (gdal_translate)") from None
    if src.driver not in ("GTiff", "COG"):
        src.close()
        raise DataError(f"{path} is a {src.driver} file, not a GeoTIFF; convert it with gdal_translate -of GTiff")
    return src


def _footprint(src) -> tuple[float, float, float, float]:
    from rasterio.warp import transform_bounds

    if src.crs is None:
        return tuple(float(v) for v in src.bounds)  # type: ignore[return-value]
    return tuple(transform_bounds(src.crs, "EPSG:4326", *src.bounds))  # type: ignore[return-value]


def _crs(src) -> str:
    return "" if src.crs is None else src.crs.to_string()


def chip_footprints(acqs: list[Acquisition], rows: np.ndarray, cols: np.ndarray, size: int) -> dict[str, Any]:
    """Where the ``size``-pixel chips at ``(rows, cols)`` of ``acqs`` (one per chip) lie: ``crs``, native
    ``bounds`` (minx, miny, maxx, maxy) and ``geometry``, the corners as lon/lat rings ``[N, 4, 2]`` (NaN for a
    file with no CRS), reprojected per CRS in one call (a corpus spans UTM zones: SSL4EO-S12 is global)."""
    from rasterio.warp import transform as reproject

    n = len(acqs)
    affine = np.array([a.transform if len(a.transform) == 6 else (1, 0, 0, 0, 1, 0) for a in acqs], dtype=np.float64)
    corner_cols = cols[:, None] + np.array([0, size, size, 0])[None, :]
    corner_rows = rows[:, None] + np.array([0, 0, size, size])[None, :]
    xs = affine[:, 0:1] * corner_cols + affine[:, 1:2] * corner_rows + affine[:, 2:3]
    ys = affine[:, 3:4] * corner_cols + affine[:, 4:5] * corner_rows + affine[:, 5:6]
    crs = np.array([a.crs for a in acqs], dtype=object)
    rings = np.full((n, 4, 2), np.nan)
    for code in {c for c in crs if c}:
        pick = crs == code
        lon, lat = reproject(code, "EPSG:4326", xs[pick].ravel().tolist(), ys[pick].ravel().tolist())
        rings[pick] = np.stack([lon, lat], -1).reshape(-1, 4, 2)
    bounds = np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], -1)
    return {"crs": crs.tolist(), "bounds": bounds.tolist(), "geometry": rings}


def _date_of(*names: str) -> str:
    for name in names:
        match = _DATE.search(name)
        if match:
            return "".join(match.groups())
    return ""


def _level_of(path: Path, bands: set[str]) -> str:
    text = str(path).replace("\\", "/")
    if bands <= set(S1_GRD):
        return "GRD"
    if "B10" in bands or "MSIL1C" in text or "/s2c/" in text or "L1C" in text:
        return "L1C"
    return "L2A"


def _metadata(folder: Path, others: list[str]) -> dict:
    for name in sorted(n for n in others if n.endswith("labels_metadata.json")):
        meta = folder / name
        try:
            return json.loads(meta.read_text())
        except (OSError, ValueError):
            raise DataError(f"{meta} is not valid JSON; restore it from the dataset archive") from None
    return {}


def _per_band(folder: Path, files: list[Path], others: list[str]) -> Acquisition:
    """The acquisition of one product folder: ``files`` are its GeoTIFFs (bands, and maybe ``cloud_mask.tif``),
    ``others`` the names of its other files (a BigEarthNet ``*labels_metadata.json``)."""
    bands: dict[str, Path] = {}
    for path in files:
        name = band_name(path.stem)
        if name is None:
            continue
        if name in bands:
            raise DataError(f"{folder} holds band {name} twice ({bands[name].name}, {path.name}); keep one")
        bands[name] = path
    sensor = "s1" if set(bands) <= set(S1_GRD) else "s2"
    finest = "VV" if sensor == "s1" else next((b for b in ("B02", "B03", "B04", "B08") if b in bands), None)
    reference = bands[finest] if finest in bands else next(iter(bands.values()))
    # one header per product: the index's scan then opens and reads every band, so a band that rasterio cannot
    # open is an error of setup, naming the file, before training and before anything is cached (opening each
    # band here too made the cold setup of 3,700 SSL4EO-S12 locations 835 s instead of 450 s)
    with _open(reference) as src:  # the folder listed: a .aux.xml sidecar may carry the CRS
        bounds, shape, crs, transform = _footprint(src), (src.height, src.width), _crs(src), tuple(src.transform)[:6]
    meta = _metadata(folder, others)
    cloud = folder / "cloud_mask.tif"
    return Acquisition(
        name=str(folder),
        sensor=sensor,
        level=_level_of(folder, set(bands)),
        date=_date_of(folder.name, str(folder), str(meta.get("acquisition_time", meta.get("acquisition_date", "")))),
        bands={b: str(p) for b, p in bands.items()},
        bounds=bounds,
        shape=shape,
        crs=crs,
        transform=transform,
        cloud_mask=str(cloud) if cloud in files else None,
        labels=tuple(meta.get("labels", ())),
    )


def _multiband(path: Path, root: Path, eurosat_13: bool) -> Acquisition:
    with _open(path) as src:
        order = multiband_order(src.count, src.descriptions, eurosat_13)
        if not order:
            raise DataError(
                f"{path} has {src.count} bands; a multi-band chip needs 2 (VV, VH), 12 (L2A) or 13 (L1C) bands, or "
                "band descriptions naming them (B01..B12, B8A, VV, VH)"
            )
        bounds, shape, crs, transform = _footprint(src), (src.height, src.width), _crs(src), tuple(src.transform)[:6]
    sensor = "s1" if set(order) <= set(S1_GRD) else "s2"
    parent = path.parent.name if path.parent != root else None
    return Acquisition(
        name=str(path),
        sensor=sensor,
        level="GRD" if sensor == "s1" else ("L1C" if "B10" in order else "L2A"),
        date=_date_of(path.stem, path.parent.name),
        bands=dict.fromkeys(order, str(path)),
        band_index={b: i + 1 for i, b in enumerate(order)},
        bounds=bounds,
        shape=shape,
        crs=crs,
        transform=transform,
        label=parent,
    )


def _folders(root: Path) -> Iterator[tuple[Path, list[Path], list[str]]]:
    """``(folder, its GeoTIFFs, its other files' names)`` for every folder under ``root`` holding a GeoTIFF, in
    sorted order (``sorted(root.rglob("*"))``'s, without holding the corpus's paths: SSL4EO-S12 has millions of
    band files).
    Symbolic links to folders are not followed, as ``rglob`` does not; a non-GeoTIFF image is an error."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except PermissionError:
            raise DataError(f"{folder}: the folder cannot be listed (permission denied); fix its permissions "
                            "(chmod a+rx) or move it out of the data folder") from None  # fmt: skip
        tiffs, others, below = [], [], []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                below.append(Path(entry.path))
            elif entry.is_file():
                suffix = os.path.splitext(entry.name)[1].lower()
                if suffix in NOT_GEOTIFF:
                    raise DataError(
                        f"{entry.path} is not a GeoTIFF; this plugin reads Sentinel GeoTIFFs (the 8-bit JPEG/PNG "
                        "exports lose radiometry). Convert it with gdal_translate -of GTiff, or move it out of the "
                        "data folder"
                    )
                if suffix in TIFF:
                    tiffs.append(Path(entry.path))
                else:
                    others.append(entry.name)
        if tiffs:
            yield folder, tiffs, others
        stack.extend(reversed(below))


def iter_acquisitions(root: Path, eurosat_13: bool = True) -> Iterator[Acquisition]:
    """Every acquisition under ``root`` (a folder, searched recursively, or one GeoTIFF), in name order, one at a
    time: a corpus's acquisitions are never held together (the chip index packs them as they come). The folders
    are listed once beforehand, so a stray JPEG is an error before any GeoTIFF is opened."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    if root.is_file():
        if root.suffix.lower() not in TIFF:
            raise DataError(f"{root} is not a GeoTIFF (.tif); give a GeoTIFF chip or a folder of them")
        yield _multiband(root, root.parent, eurosat_13)
        return
    for _ in _folders(root):  # names only: the bad file is found before the long scan starts
        pass
    found = False
    for folder, files, others in _folders(root):
        banded = [p for p in files if band_name(p.stem)]
        if banded:
            found = True
            yield _per_band(folder, files, others)  # all the folder's GeoTIFFs: cloud_mask.tif is one
            continue
        for path in files:
            if path.name == "cloud_mask.tif" or path.stem.endswith("reference_map"):
                continue
            with _open(path) as src:
                count = src.count
            if count > 1:
                found = True
                yield _multiband(path, root, eurosat_13)
    if not found:
        raise DataError(
            f"{root}: no Sentinel GeoTIFFs found (per-band files named B01.tif/..._B8A.tif/VV.tif, or multi-band "
            "chips); see docs/plugins/croma.md for the layouts"
        )


def find_acquisitions(root: Path, eurosat_13: bool = True) -> list[Acquisition]:
    """Every acquisition under ``root`` as a list (:func:`iter_acquisitions`; for small folders and tools)."""
    return list(iter_acquisitions(root, eurosat_13))


def _read(src: Any, path: Path, index: int, shape: tuple[int, int], resampling: Any, window: Any = None) -> np.ndarray:
    """One band resampled to ``shape``; a header that opens over truncated or corrupt pixel data is a DataError."""
    import rasterio

    try:
        return src.read(index, out_shape=shape, resampling=resampling, masked=False, window=window)
    except rasterio.errors.RasterioError as exc:
        raise DataError(
            f"{path}: the pixel data cannot be read ({exc}); the file is truncated or corrupt: re-export it"
            " (gdal_translate) or remove it"
        ) from exc


def _source_window(src: Any, shape: tuple[int, int], window: tuple[int, int, int] | None) -> Any:
    """The window ``(row, col, size)`` of the 10 m grid in this file's own pixels (fractional for 20 m / 60 m
    bands: GDAL resamples a fractional window exactly as it resamples the whole band, so a chip read alone equals
    the same pixels of the whole scene read and resampled; ``tests/plugins/rs`` checks it)."""
    if window is None:
        return None
    from rasterio.windows import Window

    row, col, size = window
    sy, sx = src.height / shape[0], src.width / shape[1]
    return Window(col * sx, row * sy, size * sx, size * sy)


def read_bands(
    acq: Acquisition, bands: tuple[str, ...], window: tuple[int, int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(image, valid)``: float32 ``[C, H, W]`` on the 10 m grid in ``bands`` order, and a bool ``[H, W]`` mask.

    A pixel is invalid where any band is non-finite or equals the file's nodata value, where every S2 band is 0
    (the SSL4EO/Sentinel fill value), or where ``cloud_mask.tif`` is non-zero. ``window=(row, col, size)`` reads
    only that square of the 10 m grid (``rasterio.windows``): a training chip costs its own pixels, not its scene's.
    """
    missing = [b for b in bands if b not in acq.bands]
    if missing:
        raise DataError(
            f"{acq.name}: bands {missing} are missing (found {sorted(acq.bands)}, the config expects {list(bands)}); "
            "restore the files, or choose the bands with s2_bands / the product with s2_level"
        )
    # GDAL lists a file's folder on open to look for sidecars (.aux.xml, .ovr, .msk); a Sentinel product holds
    # its bands as separate files and none of those, so the listing is pure cost: half of each open, measured
    # 1.19 -> 0.60 ms on a 15-file SSL4EO-S12 location (benchmarks/scale.py).
    with _rasterio().Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        return _read_bands(acq, bands, window)


def _read_bands(
    acq: Acquisition, bands: tuple[str, ...], window: tuple[int, int, int] | None
) -> tuple[np.ndarray, np.ndarray]:
    from rasterio.enums import Resampling

    height, width = acq.shape if window is None else (window[2], window[2])
    image = np.empty((len(bands), height, width), dtype=np.float32)
    invalid = np.zeros((height, width), dtype=bool)
    for i, band in enumerate(bands):
        path = acq.bands[band]
        with _open(path) as src:
            index = acq.band_index.get(band, 1)
            source = _source_window(src, acq.shape, window)
            data = _read(src, path, index, (height, width), Resampling.bilinear, source)
            nodata = src.nodatavals[index - 1]
        data = data.astype(np.float32)
        bad = ~np.isfinite(data)
        if nodata is not None and np.isfinite(nodata) and acq.sensor == "s1":
            bad |= data == nodata
        invalid |= bad
        image[i] = np.where(bad, 0.0, data)
    if acq.sensor == "s2":
        invalid |= (image == 0).all(axis=0)
    if acq.cloud_mask is not None:
        with _open(acq.cloud_mask) as src:
            source = _source_window(src, acq.shape, window)
            cloud = _read(src, acq.cloud_mask, 1, (height, width), Resampling.nearest, source)
        invalid |= cloud != 0
    return image, ~invalid
