"""``ssl-domains run croma|ssl4eo stats``: per-band mean and std of your own data, for ``--set <plugin>.stats=FILE``.

Statistics are computed over the valid pixels (no nodata, no cloud) of every acquisition, on the 10 m grid, in
float64, and written atomically as ``{band: [mean, std]}``. Use them when your data differ from SSL4EO-S12's
(another product, another region, another sensor calibration); they are saved with every run that uses them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ssl_domains import DataError

from .bands import S1_GRD, bands_for
from .formats import find_acquisitions, read_bands


def band_statistics(root: Path, s2_level: str = "L2A") -> dict[str, list[float]]:
    """``{band: [mean, std]}`` over the valid pixels of every S2 acquisition of ``s2_level`` and every S1 one."""
    sums: dict[str, list[float]] = {}
    for acq in find_acquisitions(root):
        if acq.sensor == "s2" and acq.level and acq.level != s2_level and not acq.band_index:
            continue
        wanted = S1_GRD if acq.sensor == "s1" else tuple(b for b in bands_for(s2_level) if b in acq.bands)
        image, valid = read_bands(acq, wanted)
        for band, plane in zip(wanted, image, strict=True):
            values = plane[valid].astype(np.float64)
            total = sums.setdefault(band, [0.0, 0.0, 0.0])
            total[0] += values.size
            total[1] += values.sum()
            total[2] += np.square(values).sum()
    if not sums:
        raise DataError(f"{root}: no valid pixels to compute statistics from")
    out = {}
    for band, (n, s, ss) in sums.items():
        mean = s / n
        out[band] = [mean, float(np.sqrt(max(ss / n - mean * mean, 0.0)))]
    return out


def stats_command(argv: list[str]) -> int:
    """Entry point of ``ssl-domains run croma stats``."""
    parser = argparse.ArgumentParser(prog="ssl-domains run croma stats", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="folder of Sentinel GeoTIFFs")
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--s2-level", default="L2A", choices=["L2A", "L1C"])
    args = parser.parse_args(argv)
    stats = band_statistics(args.data, args.s2_level)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(stats, f, indent=1)
    os.replace(tmp, args.out)  # atomic: a failed run never leaves a half-written file
    for band, (mean, std) in stats.items():
        print(f"{band:>4}  mean {mean:10.2f}  std {std:9.2f}")
    print(f"wrote {args.out}; use it with --set <plugin>.stats={args.out}")
    return 0
