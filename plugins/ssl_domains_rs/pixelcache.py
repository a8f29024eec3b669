"""The decoded-pixel cache of the RS data module (``cache: auto|disk|none``).

A chip read from SSL4EO-S12's own layout opens 15 GeoTIFFs (13 S2 bands, VV, VH) and resamples the 20 m and 60 m
bands: about 12 ms, 80 chips/s per loader worker, where CROMA-B on an H100 takes about 5,850 chips/s
(``docs/plugins/croma.md``, "Scale"). The index's scan already reads every view whole, once, to find the chips
without nodata or cloud; with the cache on it also appends each view, as :func:`~.formats.read_bands` returns it
on the 10 m grid, to one file (:class:`ssl_domains.arrayfile.ArrayFileWriter`). A chip is then ``C`` reads of
its rows from that file, with no decoding and no resampling, and equals the chip read from the GeoTIFFs exactly
(``tests/plugins/rs/test_rs_lazy_index.py``).

Storage: an S2 view whose values are whole numbers in ``[0, 65535]`` (the DN of every Sentinel-2 product; GDAL's
bilinear resampling of a uint16 band returns uint16) is kept as uint16, anything else as float32 (S1 in dB).
SSL4EO-S12's 264² locations take 9.4 MB each (4 seasons of 13 S2 and 2 S1 bands), about 1.75x its GeoTIFFs. With
``quantize: uint8`` every view is kept as the uint8 SSL4EO-S12's LMDB holds (:func:`.normalisation.quantise`), one
byte a value: 4.2 MB a location, and its chips are read in half the bytes.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ssl_domains import DataError
from ssl_domains.indexcache import cache_root

if TYPE_CHECKING:
    from .locations import Scene

PIXELS = "pixels.bin"
INDEX = "index.pkl"
AUTO_SHARE = 0.8  # cache: auto writes the cache when it takes at most this share of the free space: the rest
# is left for checkpoints and logs (medical's PersistentDataset cache, by comparison, may take all of it)


def stored_form(image: np.ndarray, sensor: str) -> np.ndarray:
    """The array the cache keeps for one view: uint16 when that is lossless (S2 DN), else float32."""
    if sensor == "s2":
        whole = image.astype(np.uint16)
        if np.array_equal(whole, image):
            return whole
    return image.astype(np.float32, copy=False)


def pixel_bytes(scenes: Sequence[Scene], bands: dict[str, int], quantised: bool = False) -> int:
    """The cache's size, counting 2 bytes per S2 value and 4 per S1 value, or 1 for both when ``quantised``
    (``quantize: uint8``; ``bands``: sensor -> band count)."""
    per_value = {"s2": 1, "s1": 1} if quantised else {"s2": 2, "s1": 4}
    # a scene's views share its grid (the data module checks it), so its kinds and shape are enough: reading
    # ``views`` would rebuild every acquisition of a packed index
    return sum(bands[k] * per_value[k] * s.shape[0] * s.shape[1] for s in scenes for k in s.kinds)


def decide(choice: str, need: int) -> tuple[bool, str | None]:
    """``(write the cache?, a note said on every run)`` for ``cache: auto|disk`` and a cache of ``need`` bytes."""
    folder = cache_root()
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if choice == "disk" and need > free:
        raise DataError(
            f"{folder}: the decoded pixels need {need / 1e9:.1f} GB and the disk has {free / 1e9:.1f} GB free; point "
            "$SSL_DOMAINS_CACHE at a larger disk, or set cache: none to read every chip from its GeoTIFFs"
        )
    if choice == "auto" and need > AUTO_SHARE * free:
        return False, (
            f"chips are read from their GeoTIFFs (slow: about 80 chips/s per loader worker): the pixel cache would "
            f"take {need / 1e9:.1f} GB of the {free / 1e9:.1f} GB free under {folder} (it is written by the first run "
            "that finds the room); point $SSL_DOMAINS_CACHE at a larger disk, or set cache: disk"
        )
    return True, None
