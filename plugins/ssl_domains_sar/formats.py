"""Reading single-look complex (SLC) rasters and writing despeckled GeoTIFFs.

Accepted inputs: a complex GeoTIFF (CInt16, CInt32, CFloat32, CFloat64), a two-band GeoTIFF holding the real
and imaginary parts, a complex ``.npy``, or a ``[H, W, 2]`` real ``.npy`` (real, imaginary). Real-valued
amplitude or intensity images are refused: MERLIN's likelihood needs the two components of the complex pixel.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssl_domains import DataError

SLC_SUFFIXES = (".tif", ".tiff", ".npy")
_NEEDS_COMPLEX = (
    "MERLIN needs the single-look complex (SLC) image, i.e. both the real and the imaginary part of each pixel; "
    "despeckle detected amplitude or intensity products with another method, or export the SLC"
)


@dataclass
class SLCSource:
    """An SLC raster: its size, and georeferencing to copy to outputs (empty for ``.npy``)."""

    path: Path
    height: int
    width: int
    profile: dict[str, Any] = field(default_factory=dict)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as complex64 ``[rows, W]`` (windowed: the whole raster is never loaded)."""
        if self.path.suffix == ".npy":
            array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            block = _npy_to_complex(self.path, array[start:stop])
        else:
            import rasterio
            from rasterio.windows import Window

            try:
                with _quiet_geo_warnings(), rasterio.open(self.path) as ds:
                    raw = ds.read(window=Window(0, start, self.width, stop - start))
            except rasterio.errors.RasterioError as exc:
                raise DataError(
                    f"{self.path}: rows {start}-{stop} cannot be read ({exc}); the file is truncated or corrupt:"
                    " re-export it or remove it"
                ) from exc
            block = raw[0] if raw.shape[0] == 1 else raw[0] + 1j * raw[1]
            block = np.asarray(block, dtype=np.complex64)
        if not np.isfinite(block).all():
            bad = np.argwhere(~np.isfinite(block))[0]
            raise DataError(
                f"{self.path}: non-finite value (NaN or inf) at row {start + bad[0]}, column {bad[1]}; "
                "mask or fill invalid pixels (e.g. with 0) before despeckling"
            )
        return block

    def read(self) -> np.ndarray:
        """The whole image, complex64 ``[H, W]``."""
        return self.read_rows(0, self.height)


@contextlib.contextmanager
def _quiet_geo_warnings() -> Iterator[None]:
    """SLCs in radar geometry often have no geotransform; rasterio's warning about it is expected here."""
    import rasterio.errors

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        yield


def _npy_to_complex(path: Path, array: np.ndarray) -> np.ndarray:
    if np.iscomplexobj(array):
        return np.array(array, dtype=np.complex64)  # a writable copy, never a view of the memory map
    return (np.asarray(array[..., 0], dtype=np.float32) + 1j * np.asarray(array[..., 1], dtype=np.float32)).astype(
        np.complex64
    )


def open_slc(path: str | Path) -> SLCSource:
    """Inspect an SLC raster without reading its pixels; raise :class:`DataError` naming the fix if unusable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(f"{path} is not a readable .npy file ({exc}); re-save it with numpy.save") from None
        if np.iscomplexobj(array) and array.ndim == 2:
            return SLCSource(path, *array.shape)
        if array.ndim == 3 and array.shape[-1] == 2 and np.issubdtype(array.dtype, np.number):
            return SLCSource(path, array.shape[0], array.shape[1])
        if array.ndim == 2:
            raise DataError(f"{path}: real-valued image of shape {array.shape}. {_NEEDS_COMPLEX}")
        raise DataError(
            f"{path}: expected a complex [H, W] array or a real [H, W, 2] array (real, imaginary), "
            f"got {array.dtype} {array.shape}"
        )
    if suffix not in (".tif", ".tiff"):
        raise DataError(f"{path}: unsupported file type {suffix!r}; give a GeoTIFF (.tif) or a .npy SLC")
    try:
        import rasterio
    except ImportError:
        raise DataError('reading GeoTIFF needs rasterio: pip install "ssl-domains[sar]"') from None
    try:
        with _quiet_geo_warnings(), rasterio.open(path) as ds:
            dtypes, count, height, width = ds.dtypes, ds.count, ds.height, ds.width
            georeferenced = ds.crs is not None or not ds.transform.is_identity
            profile = {"crs": ds.crs, "transform": ds.transform} if georeferenced else {}
    except rasterio.errors.RasterioIOError as exc:
        raise DataError(f"{path} is not a readable GeoTIFF ({exc}); check the file or re-export it") from None
    if count == 1 and dtypes[0].startswith("complex"):
        return SLCSource(path, height, width, profile)
    if count == 2 and not any(d.startswith("complex") for d in dtypes):
        return SLCSource(path, height, width, profile)
    if count == 1:
        raise DataError(f"{path}: one real-valued band ({dtypes[0]}). {_NEEDS_COMPLEX}")
    raise DataError(
        f"{path}: {count} bands of {dtypes[0]}; expected one complex band, or two real bands (real, imaginary). "
        "For a multi-polarisation product, export one polarisation per file"
    )


def find_slc_files(data: str | Path) -> list[Path]:
    """The SLC files under ``data`` (a file, or a folder searched recursively), sorted."""
    data = Path(data)
    if data.is_file():
        return [data]
    if not data.is_dir():
        raise DataError(f"{data}: no such file or directory")
    files = sorted(p for p in data.rglob("*") if p.is_file() and p.suffix.lower() in SLC_SUFFIXES)
    if not files:
        raise DataError(f"{data}: no SLC files found (looked for {', '.join(SLC_SUFFIXES)})")
    return files


class RasterWriter:
    """Writes a float32 single-band raster row block by row block, atomically.

    Everything goes to a temporary file beside ``path`` that replaces ``path`` only in :meth:`close`, so a
    crash never leaves a half-written output. GeoTIFF outputs keep the source's CRS and transform.
    """

    def __init__(self, path: Path, height: int, width: int, profile: dict[str, Any]) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in (".tif", ".tiff", ".npy"):
            raise DataError(f"{self.path}: the output must be a .tif or a .npy file")
        self.tmp = self.path.with_name(f".{self.path.name}.partial{suffix}")
        if suffix == ".npy":
            self._array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32, shape=(height, width))
            self._ds = None
        else:
            import rasterio

            self._array = None
            self._ds = rasterio.open(
                self.tmp,
                "w",
                driver="GTiff",
                height=height,
                width=width,
                count=1,
                dtype="float32",
                tiled=True,
                blockxsize=256,
                blockysize=256,
                compress="deflate",
                BIGTIFF="IF_SAFER",
                **{k: v for k, v in profile.items() if v is not None},
            )

    def write_rows(self, start: int, block: np.ndarray) -> None:
        """Write ``block`` (``[rows, W]``) at row ``start``."""
        if self._ds is None:
            self._array[start : start + block.shape[0]] = block
            return
        from rasterio.windows import Window

        self._ds.write(block.astype(np.float32)[None], window=Window(0, start, block.shape[1], block.shape[0]))

    def close(self) -> None:
        """Finish the file and move it into place."""
        if self._ds is None:
            self._array.flush()
            del self._array
        else:
            self._ds.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop the partial file; ``path`` is left as it was."""
        if self._ds is not None:
            self._ds.close()
        self._array = None
        self.tmp.unlink(missing_ok=True)


def write_complex_geotiff(path: Path, slc: np.ndarray, crs: Any = None, transform: Any = None) -> Path:
    """Write a complex64 ``[H, W]`` array as a one-band CFloat32 GeoTIFF (used for examples and tests)."""
    import rasterio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "height": slc.shape[0], "width": slc.shape[1], "count": 1, "dtype": "complex64"}
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(slc.astype(np.complex64)[None])
    return path
