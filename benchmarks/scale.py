"""How the cost of a plugin grows with its corpus: setup (cold and with the index cache), peak RSS, loader and embed.

Usage (issue 27)::

    python benchmarks/scale.py --plugin croma|ssl4eo|tera|ssast|alice|contrastive3d|tjepa|graphmae --sizes 1,10,100 \
        --root /scratch/scale [--steps 50]

Writes a stand-in corpus in the paper corpus's own layout and format, at growing sizes, under ``--root`` (kept
out of git; reused by a later call), then measures each size in fresh processes and prints one JSON line per size:

- ``setup_cold_s`` / ``setup_warm_s``: ``datamodule.setup("fit")`` with an empty index cache, then with it warm;
- ``peak_rss_gb``: ``ssl-domains train`` at the paper's preset for ``--steps`` steps (setup included), in one
  process (``num_workers=0``, so that one process holds everything a worker would);
- ``loader_items_per_s_per_worker``: training items one process yields (``num_workers=0``, one thread, as a
  DataLoader worker runs; what a plugin leaves to ``on_after_batch_transfer`` runs on the GPU and is not counted);
  ``..._from_disk``: the same after dropping the data and the caches from the page cache (``POSIX_FADV_DONTNEED``),
  as for a corpus larger than RAM;
- ``loader_items_per_s_one_worker`` (and ``..._from_disk``): what one DataLoader worker process hands the main
  process, the batch's trip through shared memory included (for two 13-band 224² views it halved the in-process
  rate before batches were built in shared memory); the workers per H100 are computed from it;
- ``cache_gb``: what the run left under ``$SSL_DOMAINS_CACHE`` (indexes, preprocessed or decoded items; deleted
  after the size with ``--no-embed``, since a pixel cache is as large as the corpus);
- ``embed_peak_rss_gb`` / ``embed_rows_per_s``: ``ssl-domains embed`` of the trained run over the same corpus.

A last line extrapolates to the paper's full corpus: index time and RAM, disk, and the loader workers one H100
needs at the preset's FLOPs per item at 40 % MFU (989 dense bf16 TFLOP/s).

Stand-ins (``benchmarks/_scale_corpora.py``): ``croma`` and ``ssl4eo`` write SSL4EO-S12's own layout (per-band
GeoTIFFs of S1 GRD and S2 L1C, four seasons, 5.4 MB per location); ``tera`` and ``ssast`` write LibriSpeech's
(``speaker/chapter/*.flac``, 16 kHz FLAC of 10-15 s, 120 utterances and 28 MB per speaker); ``alice`` and
``contrastive3d`` write TotalSegmentator's (``<case>/ct.nii.gz``, int16 CT of 256 x 256 x 160 at 1.5 x 1.5 x 2 mm);
``tjepa`` writes HIGGS as hive-partitioned Parquet (110,000 rows of 28 float32 features per part); ``graphmae``
writes ogbn-products' extracted OGB layout (``raw/edge.csv.gz``, ``raw/node-feat.csv.gz``, ...; 25.3 undirected
edges and 100 features a node; 1x is 48,980 nodes, 100x twice products' 2.45M).
Sizes are multiples of ``--unit`` locations, speakers, volumes, parts or nodes; smaller sizes are hard links into
the largest, so the disk holds the largest once (a graph, one file set, is written whole at each size).
``--no-embed`` leaves out the embed measurement (on a CPU, embedding a paper-sized model over 100x takes hours).
"""

from __future__ import annotations

import argparse
import importlib
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

sys.path.insert(0, str(Path(__file__).parent))
from _scale_corpora import CORPORA, data_files, ensure, subset

CACHE_ENV = "SSL_DOMAINS_CACHE"
H100_BF16_TFLOPS = 989.0
MFU = 0.40
UNITS = {
    "croma": 37,
    "ssl4eo": 37,
    "tera": 8,
    "ssast": 8,
    "alice": 2,
    "contrastive3d": 2,
    "tjepa": 1,
    # nodes: 1x above what one batch reaches (32 seeds, fanouts 10/10/10: up to ~32,000 nodes), 100x twice products
    "graphmae": 48_980,
}  # RS, audio: 20 GB at 100x


# ---- measurements, each in a fresh process ----------------------------------------------------------------------
def _config(plugin: str, data: Path, overrides: list[str]) -> Any:
    from ssl_domains import registry
    from ssl_domains.run import read_yaml, resolve_config

    plug = registry.load(plugin)
    presets = [read_yaml(p, plug) for p in CORPORA[plugin].presets]
    return plug, resolve_config(plug, data, presets, overrides, {"seed": 0})


def measure_setup(plugin: str, data: Path, overrides: list[str], loader_batches: int) -> dict[str, Any]:
    """Setup time and RSS, and (warm only) the loader's items/s in this process and the preset's FLOPs per item."""
    import torch

    plug, cfg = _config(plugin, data, overrides)
    dm = plug.datamodule(cfg.method, cfg.data)
    for module in CORPORA[plugin].preimport:  # imports are not setup: time only the scan, or the cache read
        importlib.import_module(module)

    start = time.perf_counter()
    dm.setup("fit")
    out: dict[str, Any] = {"setup_s": time.perf_counter() - start, **CORPORA[plugin].count(dm),
                           "rss_after_setup_gb": _rss_gb(), "in_memory": getattr(dm, "in_memory", False)}  # fmt: skip
    if loader_batches:
        loader = _epochs(dm)  # epochs after epochs: a small corpus may hold fewer than loader_batches batches
        next(loader)  # the first batch pays for imports and the sampler
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in a DataLoader worker, which PyTorch runs on one thread
        start, items = time.perf_counter(), 0
        for _ in range(loader_batches):
            batch = next(loader)
            items += len(batch["id"])
        out["loader_items_per_s_per_worker"] = items / (time.perf_counter() - start)
        torch.set_num_threads(threads)
        dm.cfg.num_workers = 1  # one worker process, its batches handed on as in training
        worker = _epochs(dm)
        for _ in range(2):  # the worker's start, its imports and first batches
            next(worker)
        out["loader_items_per_s_one_worker"] = _rate(worker, loader_batches)
        # again with the caches and the data out of the page cache: a corpus larger than RAM is read from disk
        folders = [Path(os.environ[CACHE_ENV]), data]
        out["evicted_gb"] = _evict(folders) / 1e9
        out["loader_items_per_s_one_worker_from_disk"] = _rate(worker, loader_batches)
        del worker
        dm.cfg.num_workers = 0
        _evict(folders)
        torch.set_num_threads(1)
        out["loader_items_per_s_per_worker_from_disk"] = _rate(loader, loader_batches)
        torch.set_num_threads(threads)
        from torch.utils.flop_counter import FlopCounterMode

        model = plug.model(cfg.method, dm).train()
        objective = plug.objective(cfg.method)
        rows = len(batch["id"])  # a few rows of the batch: FLOPs per item are the same, the memory is not
        few = {k: v[:4] if torch.is_tensor(v) and v.ndim and len(v) == rows else v for k, v in batch.items()}
        if not CORPORA[plugin].per_item_batch:  # a subgraph's seeds share their neighbourhood: the whole batch
            few = batch
        few = dm.on_after_batch_transfer(few, 0)  # the batch as the training step sees it
        with FlopCounterMode(display=False) as counter:
            objective(model, few)["loss"].backward()
        out["gflop_per_item"] = counter.get_total_flops() / len(few["id"]) / 1e9
        del model
        torch.cuda.empty_cache()
    return out


def _rate(loader: Any, batches: int) -> float:
    """Items/s over the next ``batches`` batches of ``loader``."""
    start, items = time.perf_counter(), 0
    for _ in range(batches):
        items += len(next(loader)["id"])
    return items / (time.perf_counter() - start)


def _epochs(dm: Any) -> Any:
    """Batches of epoch after epoch, from one loader (its workers persist)."""
    loader = dm.train_dataloader()
    while True:
        yield from loader


def _evict(folders: list[Path]) -> int:
    """Drop every file under ``folders`` from the page cache (``POSIX_FADV_DONTNEED``; no root needed): the
    next reads come from the disk. Returns the bytes of the files."""
    total = 0
    for folder in folders:
        for path in [folder] if folder.is_file() else folder.rglob("*"):
            if path.is_file() and not path.is_symlink():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
                total += path.stat().st_size
    return total


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


def measure_size(args: argparse.Namespace, data: Path, units: int, scratch: Path) -> dict[str, Any]:
    corpus = CORPORA[args.plugin]
    env = {**os.environ, CACHE_ENV: str(scratch / f"cache{units}"), "PYTHONWARNINGS": "ignore"}
    shutil.rmtree(env["SSL_DOMAINS_CACHE"], ignore_errors=True)
    me = [sys.executable, __file__, "--plugin", args.plugin, "--measure-setup", str(data)]
    sets = [*corpus.overrides, *args.set, f"{args.plugin}.num_workers=0"]
    for s in sets:
        me += ["--set", s]
    cold = json.loads(_child([*me, "--loader-batches", "0"], env)[2].strip().splitlines()[-1])
    warm = json.loads(_child([*me, "--loader-batches", str(args.loader_batches)], env)[2].strip().splitlines()[-1])
    run = scratch / f"run{units}"
    shutil.rmtree(run, ignore_errors=True)
    train_sets = [f"trainer.max_steps={args.steps}", "trainer.max_epochs=-1", "trainer.precision=32-true",
                  "trainer.accelerator=cpu", "monitor.every_n_steps=0", *sets]  # fmt: skip
    train = [sys.executable, "-m", "ssl_domains", "train", "--plugin", args.plugin, "--data", str(data),
             "--output", str(run)]  # fmt: skip
    for preset in corpus.presets:
        train += ["--config", preset]
    for s in train_sets:
        train += ["--set", s]
    train_s, train_rss, _ = _child(train, env)
    files = data_files(corpus, data)
    row = {
        "benchmark": "scale", "plugin": args.plugin, "presets": corpus.presets, corpus.unit_name: units,
        "files": len(files), "data_gb": round(sum(p.stat().st_size for p in files) / 1e9, 2),
        "train_items": cold["train_items"], "in_memory": cold["in_memory"], "setup_cold_s": round(cold["setup_s"], 2),
        "setup_warm_s": round(warm["setup_s"], 2), "warm_over_cold": round(warm["setup_s"] / cold["setup_s"], 3),
        "setup_rss_gb": round(cold["rss_after_setup_gb"], 3), "steps": args.steps, "train_wall_s": round(train_s, 1),
        "peak_rss_gb": round(train_rss, 3),
        "loader_items_per_s_per_worker": round(warm["loader_items_per_s_per_worker"], 1),
        "loader_items_per_s_per_worker_from_disk": round(warm["loader_items_per_s_per_worker_from_disk"], 1),
        "loader_items_per_s_one_worker": round(warm["loader_items_per_s_one_worker"], 1),
        "loader_items_per_s_one_worker_from_disk": round(warm["loader_items_per_s_one_worker_from_disk"], 1),
        "gflop_per_item": round(warm["gflop_per_item"], 2),
    }  # fmt: skip
    cache_gb = sum(p.stat().st_size for p in Path(env[CACHE_ENV]).rglob("*") if p.is_file()) / 1e9
    row["cache_gb"] = round(cache_gb, 2)
    if args.no_embed:  # a pixel cache is as large as the corpus, and a paper-sized run's checkpoints are GBs
        shutil.rmtree(env[CACHE_ENV], ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)
        return row
    out = scratch / f"emb{units}.parquet"
    embed_s, embed_rss, _ = _child([sys.executable, "-m", "ssl_domains", "embed", "--run", str(run), "--data",
                                    str(data), "--out", str(out), "--device", "cpu"], env)  # fmt: skip
    import pyarrow.parquet as pq

    rows = pq.read_metadata(out).num_rows
    return {**row, "embed_rows": rows, "embed_s": round(embed_s, 1), "embed_rows_per_s": round(rows / embed_s, 1),
            "embed_peak_rss_gb": round(embed_rss, 3)}  # fmt: skip


def extrapolate(plugin: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The paper's full corpus, from the largest size measured (cost per unit is flat, see the rows)."""
    corpus = CORPORA[plugin]
    name, full, unit = corpus.full_name, corpus.full_units, corpus.unit_name
    big, small = rows[-1], rows[0]
    per_unit_ram = max(big["setup_rss_gb"] - small["setup_rss_gb"], 0.0) / max(big[unit] - small[unit], 1)
    gpu_items_per_s = MFU * H100_BF16_TFLOPS * 1e3 / big["gflop_per_item"]
    return {
        "benchmark": "scale-extrapolation", "plugin": plugin, "corpus": name, unit: full,
        "index_hours_one_process": round(big["setup_cold_s"] / big[unit] * full / 3600, 2),
        "index_ram_gb": round(per_unit_ram * full, 2),
        "data_tb_this_layout": round(big["data_gb"] / big[unit] * full / 1e3, 2),
        "train_items": int(big["train_items"] / big[unit] * full),
        "h100_items_per_s_at_40pct_mfu": round(gpu_items_per_s),
        "workers_per_h100": math.ceil(gpu_items_per_s / big["loader_items_per_s_one_worker"]),
        "workers_per_h100_from_disk": math.ceil(gpu_items_per_s / big["loader_items_per_s_one_worker_from_disk"]),
        "workers_per_h100_in_process_rate": math.ceil(gpu_items_per_s / big["loader_items_per_s_per_worker"]),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plugin", required=True, choices=sorted(CORPORA))
    parser.add_argument("--sizes", default="1,10,100", help="multiples of --unit locations or speakers")
    parser.add_argument("--unit", type=int, help="units at size 1 (default: 20 GB at size 100)")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "ssl-domains-scale")
    parser.add_argument("--steps", type=int, default=50, help="training steps in the RSS measurement")
    parser.add_argument("--loader-batches", type=int, default=8, help="batches timed for the loader rate")
    parser.add_argument("--set", action="append", default=[], help="extra overrides, key=value")
    parser.add_argument("--no-embed", action="store_true", help="leave out the embed measurement")
    parser.add_argument("--measure-setup", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_setup:  # the child process of measure_size
        print(json.dumps(measure_setup(args.plugin, args.measure_setup, args.set, args.loader_batches)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    corpus, unit = CORPORA[args.plugin], args.unit or UNITS[args.plugin]
    full = ensure(corpus, args.root, max(sizes) * unit) if corpus.make is None else None
    rows = []
    scratch = args.root / f"scratch-{args.plugin}"
    scratch.mkdir(parents=True, exist_ok=True)
    for size in sizes:
        if corpus.make is not None:  # a corpus that is one file set (a graph) is written whole at each size
            data = corpus.make(args.root, size * unit)
        else:
            data = full if size == max(sizes) else subset(corpus, args.root, full, size * unit)
        rows.append({"size": size, **measure_size(args, data, size * unit, scratch)})
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) > 1:
        last = {**extrapolate(args.plugin, rows), "rss_ratio_largest_over_smallest": round(
            rows[-1]["peak_rss_gb"] / rows[0]["peak_rss_gb"], 3)}  # fmt: skip
        print(json.dumps(last), flush=True)


if __name__ == "__main__":
    main()
