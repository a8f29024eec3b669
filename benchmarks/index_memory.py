"""What a plugin's index costs in RAM per item, in the main process and in each forked loader worker.

Usage (issue 27)::

    python benchmarks/index_memory.py --plugin ssl4eo|croma --data /tmp/ssl-scale-rs/{n37,n370,full} [--set K=V]
    python benchmarks/index_memory.py --plugin tera --librispeech /tmp/ssl-index-audio --speakers 24,234,2338

For each data folder (a size of ``benchmarks/scale.py``'s SSL4EO-S12-layout stand-in; or, for audio, a LibriSpeech
layout of 120 one-second FLAC utterances per speaker, written once: the index holds a clip's path, speaker and
length, whatever its duration, and 2,338 speakers give LibriSpeech-960's 281k clips), builds the index (and the
pixel cache) once into a scratch ``$SSL_DOMAINS_CACHE``, then, in a fresh process, reads it warm and reports one
JSON line (items: RS locations or audio clips):

- ``index_rss_mb``: the main process's resident memory added by ``setup("fit")`` with the index cache warm (the
  index as the run holds it; the pixel cache is read with ``preadv`` and is not resident; audio runs with
  ``cache=none``, so no features are kept);
- ``worker_dirty_mb`` / ``worker_dirty_after_gc_mb``: the private memory a forked worker (as a ``DataLoader``
  worker is) copies while it visits every training chip's scene the way :meth:`RSDataModule.read_batch` does
  (audio: every training clip, as ``crop_window`` does),
  then after a full garbage collection (less what a collection copies in a worker forked before setup). A
  Python object's reference count is written whenever it is touched, so pages of Python objects are copied
  into every worker (PyTorch issue 13246); arrays are not;
- ``*_kb_per_item``: the same, divided by the items (an upper bound: it includes what does not grow).

A last line gives the growth from the smallest folder to the largest, in kB per added item, and that growth at
the paper's corpus (SSL4EO-S12's 251,079 locations, LibriSpeech-960's 281,241 clips), for the main process alone
and with 8 workers.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from scale import CACHE_ENV, CORPORA, _config

FULL_ITEMS = {"ssl4eo": 251_079, "croma": 251_079, "tera": 281_241, "ssast": 281_241}  # SSL4EO-S12, LibriSpeech
WORKERS = 8  # the bar
UTTERANCES = 120  # per speaker, in 2 chapters


def _resident_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _private_dirty_mb() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1]) / 1e3
    raise RuntimeError("no Private_Dirty in /proc/self/smaps_rollup")


def _items(dm: Any) -> int:
    return len(dm.clips) if hasattr(dm, "clips") else len(dm.scenes)


def _visit(dm: Any) -> None:
    """What a worker's batches touch of the index (no pixels or samples are read): each chip's scene, its views'
    kinds and the cache offsets of the pair it draws; or each training clip's path."""
    if hasattr(dm, "clips"):
        for i in dm.train_indices:
            _ = dm.clips[int(i)].path
        return
    for s in dm.train_items[:, 0]:
        scene = dm.scenes[int(s)]
        pair = dm._train_pair(scene)
        if dm.pixels is not None:
            _ = [scene.stored[k] for k in pair]


def _worker_dirty(dm: Any, visit: bool = True) -> tuple[float, float]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        os.close(read)
        start = _private_dirty_mb()
        if visit:
            _visit(dm)
        touched = _private_dirty_mb() - start
        gc.collect()
        collected = _private_dirty_mb() - start
        os.write(write, json.dumps([touched, collected]).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        touched, collected = json.loads(pipe.read())
    os.waitpid(pid, 0)
    return touched, collected


def measure(plugin: str, data: Path, overrides: list[str]) -> dict[str, Any]:
    plug, cfg = _config(plugin, data, overrides)
    dm = plug.datamodule(cfg.method, cfg.data)
    for module in CORPORA[plugin].preimport:
        __import__(module)
    gc.collect()
    _, baseline_gc = _worker_dirty(dm, visit=False)  # what a collection copies of everything else (torch, ...)
    before = _resident_mb()
    start = time.perf_counter()
    dm.setup("fit")
    seconds = time.perf_counter() - start
    gc.collect()
    index_mb = _resident_mb() - before
    items = _items(dm)
    held = (dm.clips, dm.lengths) if hasattr(dm, "clips") else (dm.scenes, dm.train_items, dm.test_items)
    pickled = len(pickle.dumps(held, protocol=pickle.HIGHEST_PROTOCOL))
    touched, collected = _worker_dirty(dm)
    collected -= baseline_gc
    per = lambda mb: round(mb * 1e3 / items, 2)  # noqa: E731
    worst = max(touched, collected)
    return {
        "plugin": plugin, "items": items, "setup_warm_s": round(seconds, 3),
        "index_rss_mb": round(index_mb, 1), "index_pickle_mb": round(pickled / 1e6, 2),
        "worker_dirty_mb": round(touched, 1), "worker_dirty_after_gc_mb": round(collected, 1),
        "index_kb_per_item": per(index_mb), "worker_kb_per_item": per(worst), "worker_mb": round(worst, 1),
    }  # fmt: skip


def growth(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """kB per added item from the smallest size to the largest, and that at the paper's corpus."""
    small, large = min(rows, key=lambda r: r["items"]), max(rows, key=lambda r: r["items"])
    added = large["items"] - small["items"]
    full = FULL_ITEMS[large["plugin"]]
    index_kb = (large["index_rss_mb"] - small["index_rss_mb"]) * 1e3 / added
    worker_kb = (large["worker_mb"] - small["worker_mb"]) * 1e3 / added
    return {
        "plugin": large["plugin"], "growth_from_items": [small["items"], large["items"]],
        "index_kb_per_added_item": round(index_kb, 2), "worker_kb_per_added_item": round(worker_kb, 2),
        "full_corpus_items": full, "full_corpus_index_gb": round(index_kb * full / 1e6, 2),
        "full_corpus_index_and_8_workers_gb": round((index_kb + WORKERS * worker_kb) * full / 1e6, 2),
    }  # fmt: skip


def write_librispeech(root: Path, speakers: list[int]) -> list[Path]:
    """``root/<n>`` for each count of speakers: ``<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac``, 16 kHz
    FLAC of 1 s, 120 a speaker; the smaller sizes are hard links into the largest. Kept for a later call."""
    import soundfile

    largest = root / str(max(speakers))
    if not (largest / ".complete").exists():
        rng = np.random.default_rng(0)
        pool = []
        for k in range(8):
            tmp = root / f".pool{k}.flac"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(str(tmp), (0.1 * rng.standard_normal(16_000)).astype(np.float32), 16_000, "PCM_16")
            pool.append(tmp.read_bytes())
            tmp.unlink()
        for speaker in range(max(speakers)):
            for c in range(2):
                folder = largest / str(speaker) / str(100 * speaker + c)
                folder.mkdir(parents=True, exist_ok=True)
                for utt in range(UTTERANCES // 2):
                    (folder / f"{speaker}-{100 * speaker + c}-{utt:04d}.flac").write_bytes(pool[(speaker + utt) % 8])
        (largest / ".complete").touch()
    for n in speakers:
        folder = root / str(n)
        if n != max(speakers) and not (folder / ".complete").exists():
            for speaker in range(n):
                shutil.copytree(largest / str(speaker), folder / str(speaker), copy_function=os.link,
                                dirs_exist_ok=True)  # fmt: skip
            (folder / ".complete").touch()
    return [root / str(n) for n in speakers]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plugin", choices=sorted(FULL_ITEMS), required=True)
    parser.add_argument("--data", type=Path, nargs="+", default=[], help="one folder per size")
    parser.add_argument("--librispeech", type=Path, help="audio: write (or reuse) LibriSpeech layouts here")
    parser.add_argument("--speakers", default="24,234,2338", help="audio: speakers of each size, 120 clips each")
    parser.add_argument("--set", action="append", default=[], help="a config override, as for ssl-domains train")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sets = [*CORPORA[args.plugin].overrides, *args.set, f"{args.plugin}.num_workers=0"]
    if args.plugin in ("tera", "ssast"):
        sets.append(f"{args.plugin}.cache=none")  # the index alone: no features in memory
    if args.measure:
        print(json.dumps(measure(args.plugin, args.data[0], sets)))
        return
    if args.librispeech is not None:
        args.data = write_librispeech(args.librispeech, [int(n) for n in args.speakers.split(",")])
    rows = []
    for data in args.data:
        scratch = Path(tempfile.mkdtemp(prefix="rs-index-memory-"))
        env = {**os.environ, CACHE_ENV: str(scratch), "PYTHONWARNINGS": "ignore"}
        me = [sys.executable, __file__, "--plugin", args.plugin, "--data", str(data), "--measure"]
        me += [x for s in args.set for x in ("--set", s)]
        try:
            start = time.perf_counter()
            subprocess.run(me, env=env, check=True, capture_output=True)  # cold: builds the index and the cache
            cold = time.perf_counter() - start
            warm = subprocess.run(me, env=env, check=True, capture_output=True, text=True)
            rows.append({**json.loads(warm.stdout.strip().splitlines()[-1]), "cold_process_s": round(cold, 1),
                         "data": str(data)})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # a pixel cache is as large as the corpus
    if len(rows) > 1:
        print(json.dumps(growth(rows)))


if __name__ == "__main__":
    main()
