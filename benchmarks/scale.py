"""How the cost of a plugin grows with its corpus: setup (cold and with the index cache), peak RSS, loader and embed.

Usage (issue 27)::

    python benchmarks/scale.py --plugin croma --sizes 1,10,100 --root /scratch/scale [--steps 50]

Writes a stand-in corpus in the paper corpus's own layout and format, at growing sizes, under ``--root`` (kept
out of git; reused by a later call), then measures each size in fresh processes and prints one JSON line per size:

- ``setup_cold_s`` / ``setup_warm_s``: ``datamodule.setup("fit")`` with an empty index cache, then with it warm;
- ``peak_rss_gb``: ``ssl-domains train`` at the paper's preset for ``--steps`` steps (setup included), in one
  process (``num_workers=0``, so that one process holds everything a worker would);
- ``loader_items_per_s_per_worker``: training items one process yields (``num_workers=0``);
- ``embed_peak_rss_gb`` / ``embed_rows_per_s``: ``ssl-domains embed`` of the trained run over the same corpus.

A last line extrapolates to the paper's full corpus: index time and RAM, disk, and the loader workers one H100
needs at the preset's FLOPs per item at 40 % MFU (989 dense bf16 TFLOP/s).

Stand-ins (``--plugin croma`` or ``ssl4eo``): SSL4EO-S12's own layout, ``s1/<id>/<S1 product>/{VV,VH}.tif`` (float32
dB) and ``s2c/<id>/<S2 product>/B1..B12,B8A.tif`` (L1C, uint16, 10/20/60 m bands at 264/132/44 pixels), four
seasons per location, 5.4 MB per location. Sizes are multiples of ``--unit`` locations; smaller sizes are hard
links into the largest, so the disk holds the largest once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

H100_BF16_TFLOPS = 989.0
MFU = 0.40
# the paper's corpus: SSL4EO-S12 (Wang et al. 2022), 251,079 locations x 4 seasons of S1 GRD, S2 L1C and S2 L2A
FULL_CORPUS = {"croma": ("SSL4EO-S12", 251_079), "ssl4eo": ("SSL4EO-S12", 251_079)}
PRESETS = {"croma": "croma-base", "ssl4eo": "ssl4eo-small"}
STAND_IN = {"croma": ["croma.s2_level=L1C"], "ssl4eo": ["ssl4eo.s2_level=L1C"]}  # the stand-ins are L1C (s2c)
SEASONS = ("20200315", "20200615", "20200915", "20201215")
S2_RES = {"B1": 44, "B2": 264, "B3": 264, "B4": 264, "B5": 132, "B6": 132, "B7": 132, "B8": 264, "B8A": 132,
          "B9": 44, "B10": 44, "B11": 132, "B12": 132}  # fmt: skip


def _pool(rng: np.random.Generator) -> dict[int, list[np.ndarray]]:
    """A few random planes per resolution, reused across files (the files' size on disk is what matters)."""
    return {side: [rng.integers(300, 6000, (side, side), dtype=np.uint16) for _ in range(7)] for side in (44, 132, 264)}


def write_location(root: Path, index: int, pool: dict[int, list[np.ndarray]], s1: list[np.ndarray]) -> None:
    """One SSL4EO-S12 location: 4 S1 and 4 S2 L1C acquisitions on a 264 x 264 grid of 10 m, UTM 32N."""
    import rasterio
    from rasterio.transform import from_origin

    west, north = 300_000 + (index % 500) * 5_000, 5_600_000 - (index // 500) * 5_000  # 5 km apart: no overlap
    loc = f"{index:07d}"
    for s, date in enumerate(SEASONS):
        folder = root / "s1" / loc / f"S1A_IW_GRDH_1SDV_{date}T054639_{date}T054704_000000_000000_0000"
        folder.mkdir(parents=True, exist_ok=True)
        for b, band in enumerate(("VV", "VH")):
            profile = dict(driver="GTiff", height=264, width=264, count=1, dtype="float32", crs="EPSG:32632",
                           transform=from_origin(west, north, 10, 10))  # fmt: skip
            with rasterio.open(folder / f"{band}.tif", "w", **profile) as dst:
                dst.write(s1[(index + s + b) % len(s1)], 1)
        folder = root / "s2c" / loc / f"{date}T103021_{date}T103024_T32UNU"
        folder.mkdir(parents=True, exist_ok=True)
        for b, (band, side) in enumerate(S2_RES.items()):
            res = 10 * 264 // side
            profile = dict(driver="GTiff", height=side, width=side, count=1, dtype="uint16", crs="EPSG:32632",
                           transform=from_origin(west, north, res, res))  # fmt: skip
            with rasterio.open(folder / f"{band}.tif", "w", **profile) as dst:
                planes = pool[side]
                dst.write(planes[(index * 13 + s * 3 + b) % len(planes)], 1)


def _write_range(root: str, start: int, stop: int) -> None:
    rng = np.random.default_rng(start)
    pool = _pool(rng)
    s1 = [rng.uniform(-25, 0, (264, 264)).astype(np.float32) for _ in range(5)]
    for i in range(start, stop):
        write_location(Path(root), i, pool, s1)


def ensure_corpus(root: Path, locations: int, jobs: int = 2) -> Path:
    """``root/full`` with ``locations`` locations (written once; a later call with more adds the rest)."""
    full = root / "full"
    have = len(list((full / "s2c").iterdir())) if (full / "s2c").is_dir() else 0
    if have < locations:
        from concurrent.futures import ProcessPoolExecutor

        chunk = max((locations - have) // (jobs * 8), 1)
        starts = list(range(have, locations, chunk))
        with ProcessPoolExecutor(jobs) as pool:
            list(pool.map(_write_range, [str(full)] * len(starts), starts, [min(s + chunk, locations) for s in starts]))
    return full


def subset(root: Path, full: Path, locations: int) -> Path:
    """``root/n<locations>``: hard links to the first ``locations`` locations of ``full``."""
    out = root / f"n{locations}"
    if out.is_dir() and len(list((out / "s2c").iterdir())) == locations:
        return out
    shutil.rmtree(out, ignore_errors=True)
    for sensor in ("s1", "s2c"):
        for loc in sorted((full / sensor).iterdir())[:locations]:
            for src in loc.rglob("*.tif"):
                dst = out / src.relative_to(full)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.link(src, dst)
    return out


def du_gb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*.tif")) / 1e9


# ---- measurements, each in a fresh process ----------------------------------------------------------------------
def _config(plugin: str, data: Path, overrides: list[str]) -> Any:
    from ssl_domains import registry
    from ssl_domains.run import read_yaml, resolve_config

    plug = registry.load(plugin)
    return plug, resolve_config(plug, data, [read_yaml(PRESETS[plugin], plug)], overrides, {"seed": 0})


def measure_setup(plugin: str, data: Path, overrides: list[str], loader_batches: int) -> dict[str, Any]:
    """Setup time and RSS, and (warm only) the loader's items/s in this process and the preset's FLOPs per item."""
    import torch

    plug, cfg = _config(plugin, data, overrides)
    dm = plug.datamodule(cfg.method, cfg.data)
    import rasterio  # noqa: F401  (imports are not setup: time only the scan, or the cache read)

    start = time.perf_counter()
    dm.setup("fit")
    out: dict[str, Any] = {"setup_s": time.perf_counter() - start, "train_items": len(dm.train_items),
                           "locations": len(dm.scenes), "rss_after_setup_gb": _rss_gb()}  # fmt: skip
    if loader_batches:
        def batches():  # epochs after epochs: a small corpus may hold fewer than loader_batches batches
            while True:
                yield from dm.train_dataloader()

        loader = batches()
        next(loader)  # the first batch pays for imports and the sampler
        start, items = time.perf_counter(), 0
        for _ in range(loader_batches):
            batch = next(loader)
            items += len(batch["id"])
        out["loader_items_per_s_per_worker"] = items / (time.perf_counter() - start)
        from torch.utils.flop_counter import FlopCounterMode

        model = plug.model(cfg.method, dm).train()
        objective = plug.objective(cfg.method)
        with FlopCounterMode(display=False) as counter:
            objective(model, batch)["loss"].backward()
        out["gflop_per_item"] = counter.get_total_flops() / len(batch["id"]) / 1e9
        del model
        torch.cuda.empty_cache()
    return out


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def _child(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run a command in a fresh process: (wall seconds, its peak RSS in GB, stdout)."""
    code = (  # fmt: skip
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(json.dumps({'wall': time.perf_counter() - t, 'rc': p.returncode, 'out': p.stdout[-3000:], "
        "'err': p.stderr[-3000:], 'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6}))"
    )
    proc = subprocess.run([sys.executable, "-c", "import json; " + code, *args], capture_output=True, text=True,
                          env=env, check=True)  # fmt: skip
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["rc"]:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result['err']}")
    return result["wall"], result["rss"], result["out"]


def measure_size(args: argparse.Namespace, data: Path, locations: int, scratch: Path) -> dict[str, Any]:
    env = {**os.environ, "SSL_DOMAINS_CACHE": str(scratch / f"cache{locations}"), "PYTHONWARNINGS": "ignore"}
    shutil.rmtree(env["SSL_DOMAINS_CACHE"], ignore_errors=True)
    me = [sys.executable, __file__, "--plugin", args.plugin, "--measure-setup", str(data)]
    sets = [*STAND_IN[args.plugin], *args.set, f"{args.plugin}.num_workers=0"]
    for s in sets:
        me += ["--set", s]
    cold = json.loads(_child([*me, "--loader-batches", "0"], env)[2].strip().splitlines()[-1])
    warm = json.loads(_child([*me, "--loader-batches", str(args.loader_batches)], env)[2].strip().splitlines()[-1])
    run = scratch / f"run{locations}"
    shutil.rmtree(run, ignore_errors=True)
    train_sets = [f"trainer.max_steps={args.steps}", "trainer.max_epochs=-1", "trainer.precision=32-true",
                  "trainer.accelerator=cpu", "monitor.every_n_steps=0", *sets]  # fmt: skip
    train = [sys.executable, "-m", "ssl_domains", "train", "--plugin", args.plugin, "--config", PRESETS[args.plugin],
             "--data", str(data), "--output", str(run)]  # fmt: skip
    for s in train_sets:
        train += ["--set", s]
    train_s, train_rss, _ = _child(train, env)
    out = scratch / f"emb{locations}.parquet"
    embed_s, embed_rss, _ = _child([sys.executable, "-m", "ssl_domains", "embed", "--run", str(run), "--data",
                                    str(data), "--out", str(out), "--device", "cpu"], env)  # fmt: skip
    import pyarrow.parquet as pq

    rows = pq.read_metadata(out).num_rows
    return {
        "benchmark": "scale", "plugin": args.plugin, "preset": PRESETS[args.plugin], "locations": locations,
        "files": sum(1 for _ in data.rglob("*.tif")), "data_gb": round(du_gb(data), 2),
        "train_items": cold["train_items"], "setup_cold_s": round(cold["setup_s"], 2),
        "setup_warm_s": round(warm["setup_s"], 2), "warm_over_cold": round(warm["setup_s"] / cold["setup_s"], 3),
        "setup_rss_gb": round(cold["rss_after_setup_gb"], 3), "steps": args.steps, "train_wall_s": round(train_s, 1),
        "peak_rss_gb": round(train_rss, 3),
        "loader_items_per_s_per_worker": round(warm["loader_items_per_s_per_worker"], 1),
        "gflop_per_item": round(warm["gflop_per_item"], 2), "embed_rows": rows, "embed_s": round(embed_s, 1),
        "embed_rows_per_s": round(rows / embed_s, 1), "embed_peak_rss_gb": round(embed_rss, 3),
    }  # fmt: skip


def extrapolate(plugin: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The paper's full corpus, from the largest size measured (cost per location is flat, see the rows)."""
    name, locations = FULL_CORPUS[plugin]
    big, small = rows[-1], rows[0]
    per_loc_ram = max(big["setup_rss_gb"] - small["setup_rss_gb"], 0.0) / max(big["locations"] - small["locations"], 1)
    gpu_items_per_s = MFU * H100_BF16_TFLOPS * 1e3 / big["gflop_per_item"]
    items_per_location = big["train_items"] / big["locations"]
    return {
        "benchmark": "scale-extrapolation", "plugin": plugin, "corpus": name, "locations": locations,
        "index_hours_one_process": round(big["setup_cold_s"] / big["locations"] * locations / 3600, 2),
        "index_ram_gb": round(per_loc_ram * locations, 2),
        "data_tb_this_layout": round(big["data_gb"] / big["locations"] * locations / 1e3, 2),
        "train_items": int(items_per_location * locations),
        "h100_items_per_s_at_40pct_mfu": round(gpu_items_per_s),
        "workers_per_h100": math.ceil(gpu_items_per_s / big["loader_items_per_s_per_worker"]),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plugin", required=True, choices=sorted(PRESETS))
    parser.add_argument("--sizes", default="1,10,100", help="multiples of --unit locations")
    parser.add_argument("--unit", type=int, default=37, help="locations at size 1 (37: 20 GB at size 100)")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "ssl-domains-scale")
    parser.add_argument("--steps", type=int, default=50, help="training steps in the RSS measurement")
    parser.add_argument("--loader-batches", type=int, default=8, help="batches timed for the loader rate")
    parser.add_argument("--set", action="append", default=[], help="extra overrides, key=value")
    parser.add_argument("--measure-setup", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_setup:  # the child process of measure_size
        print(json.dumps(measure_setup(args.plugin, args.measure_setup, args.set, args.loader_batches)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    full = ensure_corpus(args.root, max(sizes) * args.unit)
    rows = []
    scratch = args.root / f"scratch-{args.plugin}"
    scratch.mkdir(parents=True, exist_ok=True)
    for size in sizes:
        data = full if size == max(sizes) else subset(args.root, full, size * args.unit)
        rows.append({"size": size, **measure_size(args, data, size * args.unit, scratch)})
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) > 1:
        last = {**extrapolate(args.plugin, rows), "rss_ratio_largest_over_smallest": round(
            rows[-1]["peak_rss_gb"] / rows[0]["peak_rss_gb"], 3)}  # fmt: skip
        print(json.dumps(last), flush=True)


if __name__ == "__main__":
    main()
