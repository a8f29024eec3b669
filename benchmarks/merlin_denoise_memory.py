"""Peak memory and time of despeckling a large SLC raster with ``ssl-domains run merlin denoise``.

    python benchmarks/merlin_denoise_memory.py [--size 4096] [--patch 256] [--stride 254]

Writes a simulated single-look SLC of ``size x size`` as a CFloat32 GeoTIFF, makes a run from the authors'
``sentinel_tops`` weights (``import-weights``; needs deepdespeckling), and despeckles the raster in a separate
process, whose peak resident memory (ru_maxrss of the child) and wall time are reported. Bar (issue 6): peak
under 3 GB for 4096 x 4096.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import emit, environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--stride", type=int, default=254)
    args = parser.parse_args()

    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    from ssl_domains_sar.formats import write_complex_geotiff
    from ssl_domains_sar.simulate import simulate_slc

    emit({"environment": environment()})
    work = Path(tempfile.mkdtemp(prefix="merlin_mem_"))
    yy, xx = np.mgrid[0 : args.size, 0 : args.size] / args.size
    reflectivity = (200.0 * (1 + 2 * (np.sin(12 * xx) * np.cos(9 * yy) > 0.3))) ** 2
    source = write_complex_geotiff(
        work / "slc.tif",
        simulate_slc(reflectivity, np.random.default_rng(0)),
        CRS.from_epsg(32631),
        from_origin(5e5, 5e6, 10, 10),
    )
    del reflectivity, yy, xx
    cli = [sys.executable, "-m", "ssl_domains", "run", "merlin"]
    subprocess.run([*cli, "import-weights", "--weights", "sentinel_tops", "--out", str(work / "run")], check=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(
        [
            *cli,
            "denoise",
            "--run",
            str(work / "run"),
            str(source),
            str(work / "out.tif"),
            "--patch",
            str(args.patch),
            "--stride",
            str(args.stride),
        ],
        check=True,
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    emit(
        {
            "size": args.size,
            "patch": args.patch,
            "stride": args.stride,
            "denoise_seconds": round(seconds, 1),
            "megapixels_per_second": round(args.size**2 / seconds / 1e6, 3),
            "peak_rss_gb": round(max(peak, before) / 1024**2, 3),
        }
    )


if __name__ == "__main__":
    main()
