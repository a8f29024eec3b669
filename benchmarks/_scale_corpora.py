"""Stand-in corpora for ``benchmarks/scale.py``: each in its paper corpus's own layout, file format and file sizes.

A :class:`Corpus` writes ``root/full`` once (a later, larger call adds the rest), makes smaller sizes as hard links
into it (the disk holds the largest once), and says how to read a set-up datamodule's size. The file contents come
from a small pool of random planes or clips: what the benchmark measures (files opened, bytes read and decoded,
index size) depends on the files' number, sizes and layout, not on what they depict.
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Corpus:
    """How to write, subset and count one plugin's stand-in corpus."""

    presets: list[str]  # the paper's configuration, as --config presets
    overrides: list[str]  # what the stand-in needs besides (its product level, ...)
    full_name: str  # the paper's corpus
    full_units: int  # its size, in units (locations, utterances)
    unit_name: str
    suffixes: tuple[str, ...]  # the data files
    write: Callable[[Path, int, int], None]  # (root, start, stop): units start..stop-1
    top: str  # the folder whose children are the units (for counting and subsets)
    count: Callable[[Any], dict[str, int]]  # set-up datamodule -> {"units": ..., "train_items": ...}
    preimport: tuple[str, ...] = field(default=())  # imported before the setup clock starts
    make: Callable[[Path, int], Path] | None = None  # (root, units) -> the corpus at that size, written whole
    per_item_batch: bool = True  # a batch's tensors have one row per item (not so for a sampled subgraph)


def ensure(corpus: Corpus, root: Path, units: int, jobs: int = 2) -> Path:
    """``root/full`` holding ``units`` units, written in parallel chunks."""
    full = root / "full"
    top = full / corpus.top
    have = len(list(top.iterdir())) if top.is_dir() else 0
    if have < units:
        chunk = max((units - have) // (jobs * 8), 1)
        starts = list(range(have, units, chunk))
        with ProcessPoolExecutor(jobs) as pool:
            list(pool.map(corpus.write, [full] * len(starts), starts, [min(s + chunk, units) for s in starts]))
    return full


def subset(corpus: Corpus, root: Path, full: Path, units: int) -> Path:
    """``root/n<units>``: hard links to the first ``units`` units of ``full`` (every sensor folder alike)."""
    out = root / f"n{units}"
    if (out / corpus.top).is_dir() and len(list((out / corpus.top).iterdir())) == units:
        return out
    shutil.rmtree(out, ignore_errors=True)
    names = sorted(p.name for p in (full / corpus.top).iterdir())[:units]
    for sensor in {p.parent for p in full.glob(f"*/{names[0]}")} or {full / corpus.top}:
        for name in names:
            for src in (sensor / name).rglob("*"):
                if src.is_file():
                    dst = out / src.relative_to(full)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.link(src, dst)
    return out


def data_files(corpus: Corpus, path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.suffix in corpus.suffixes]


# ---- remote sensing: SSL4EO-S12 ---------------------------------------------------------------------------------
SEASONS = ("20200315", "20200615", "20200915", "20201215")
S2_RES = {"B1": 44, "B2": 264, "B3": 264, "B4": 264, "B5": 132, "B6": 132, "B7": 132, "B8": 264, "B8A": 132,
          "B9": 44, "B10": 44, "B11": 132, "B12": 132}  # fmt: skip


def _write_ssl4eo(root: Path, start: int, stop: int) -> None:
    """SSL4EO-S12 locations: ``s1/<id>/<product>/{VV,VH}.tif`` (float32 dB) and ``s2c/<id>/<product>/B*.tif``
    (L1C uint16 at 264/132/44 pixels for 10/20/60 m), four seasons, 264 x 264 at 10 m, UTM 32N: 5.4 MB each."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(start)
    pool = {side: [rng.integers(300, 6000, (side, side), dtype=np.uint16) for _ in range(7)] for side in (44, 132, 264)}
    s1 = [rng.uniform(-25, 0, (264, 264)).astype(np.float32) for _ in range(5)]
    for index in range(start, stop):
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
                    dst.write(pool[side][(index * 13 + s * 3 + b) % len(pool[side])], 1)


def _count_rs(dm: Any) -> dict[str, int]:
    return {"units": len(dm.scenes), "train_items": len(dm.train_items)}


def _rs(preset: str, plugin: str) -> Corpus:
    # the paper's corpus: SSL4EO-S12 (Wang et al. 2022), 251,079 locations x 4 seasons of S1 GRD, S2 L1C and L2A
    return Corpus([preset], [f"{plugin}.s2_level=L1C"], "SSL4EO-S12", 251_079, "locations", (".tif",),
                  _write_ssl4eo, "s2c", _count_rs, ("rasterio",))  # fmt: skip


# ---- audio: LibriSpeech -----------------------------------------------------------------------------------------
def _speechlike(rng: np.random.Generator, seconds: float, rate: int = 16_000) -> np.ndarray:
    """Voiced segments (a gliding pitch's harmonics under an envelope) and pauses, plus a little noise."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = 110 + 40 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * rng.uniform(2.5, 4.0) * t), 0, None) ** 2
    wave = voiced * syllables + 0.01 * rng.normal(size=t.shape)
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def _write_librispeech(root: Path, start: int, stop: int, chapters: int = 2, per_chapter: int = 60) -> None:
    """LibriSpeech speakers start..stop-1, as ``<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac``: 16 kHz 16-bit
    FLAC utterances of 10-15 s (LibriSpeech's training utterances average 12.3 s), 120 to a speaker (its 281,241
    utterances come from 2,338 speakers)."""
    import soundfile

    rng = np.random.default_rng(start)
    pool = []
    for _ in range(16):  # 16 encoded clips, copied (distinct files, as a corpus has)
        tmp = root / f".pool-{start}-{len(pool)}.flac"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(tmp), _speechlike(rng, rng.uniform(10, 15)), 16_000, subtype="PCM_16")
        pool.append(tmp.read_bytes())
        tmp.unlink()
    for speaker in range(start, stop):
        for c in range(chapters):
            chapter = 100 * speaker + c
            folder = root / "LibriSpeech" / "train-960" / f"{speaker}" / f"{chapter}"
            folder.mkdir(parents=True, exist_ok=True)
            for utt in range(per_chapter):
                data = pool[(speaker * 7 + c * 3 + utt) % len(pool)]
                (folder / f"{speaker}-{chapter}-{utt:04d}.flac").write_bytes(data)


def _count_audio(dm: Any) -> dict[str, int]:
    return {"units": len(set(dm.speakers)), "train_items": len(dm.train_indices)}


def _audio(presets: list[str]) -> Corpus:
    # LibriSpeech 960 h (Panayotov et al. 2015): 281,241 training utterances of 2,338 speakers
    return Corpus(presets, [], "LibriSpeech-960", 2_338, "speakers", (".flac",), _write_librispeech,
                  "LibriSpeech/train-960", _count_audio, ("soundfile", "torchaudio"))  # fmt: skip


# ---- 3-D medical: CT volumes ---------------------------------------------------------------------------------
def _write_ct(root: Path, start: int, stop: int, shape: tuple[int, int, int] = (256, 256, 160)) -> None:
    """CT cases start..stop-1 in TotalSegmentator's layout, ``<case>/ct.nii.gz``: int16 HU, 256 x 256 x 160 at
    1.5 x 1.5 x 2 mm (a body ellipse of soft tissue with organs and bone in air), gzipped as nibabel writes it."""
    import nibabel as nib

    rng = np.random.default_rng(start)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)
    pool = []
    for k in range(4):  # 4 encoded volumes, copied (distinct files, as a corpus has)
        body = np.broadcast_to((x / 0.8) ** 2 + (y / 0.6) ** 2 < 1, shape)
        hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, shape).astype(np.float32)
        for _ in range(6):  # organs of -100..200 HU, and a spine of bone
            c = rng.uniform(-0.4, 0.4, 3)
            hu[(x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < rng.uniform(0.02, 0.08)] = rng.uniform(-100, 200)
        hu[np.broadcast_to(x**2 + (y + 0.45) ** 2 < 0.01, shape) & body] = 700.0 + 100 * k
        tmp = root / f".pool-{start}-{k}.nii.gz"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(hu.astype(np.int16), np.diag([1.5, 1.5, 2.0, 1.0])), str(tmp))
        pool.append(tmp.read_bytes())
        tmp.unlink()
    for case in range(start, stop):
        folder = root / "Totalsegmentator_dataset" / f"s{case:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ct.nii.gz").write_bytes(pool[case % len(pool)])


def _count_medical(dm: Any) -> dict[str, int]:
    return {"units": len(dm.records), "train_items": len(dm.records) * dm.cfg.samples_per_volume}


def _medical(preset: str, plugin: str) -> Corpus:
    # Swin UNETR's self-supervised pretraining set (Tang et al., CVPR 2022): 5,050 CTs; Alice's are of that kind.
    # The disk cache at every size: the path auto takes for a corpus beyond the memory budget
    return Corpus([preset], [f"{plugin}.cache=disk"], "5,050 CTs (Swin UNETR pretraining)", 5_050, "volumes",
                  (".gz",), _write_ct, "Totalsegmentator_dataset", _count_medical, ("monai", "nibabel"))  # fmt: skip


# ---- tabular: HIGGS ---------------------------------------------------------------------------------------------
HIGGS_PART_ROWS = 110_000  # HIGGS's 11,000,000 rows are 100 parts


def _write_higgs(root: Path, start: int, stop: int) -> None:
    """HIGGS-like parts start..stop-1 as a hive-partitioned Parquet folder, ``higgs/part=<k>/part-0.parquet``:
    110,000 rows of 28 float32 features (21 kinematic, 7 derived, as HIGGS) and a 0/1 label, 12 MB each."""
    import pandas as pd

    for part in range(start, stop):
        rng = np.random.default_rng(part)
        low = rng.normal(size=(HIGGS_PART_ROWS, 21)).astype(np.float32)
        high = (np.abs(low[:, :7]) * low[:, 7:14] + rng.normal(0, 0.1, (HIGGS_PART_ROWS, 7))).astype(np.float32)
        label = (high.sum(1) + 0.5 * low[:, 0] + rng.logistic(size=HIGGS_PART_ROWS) > 0).astype(np.float32)
        frame = pd.DataFrame(np.column_stack([label, low, high]), columns=["label", *[f"f{j}" for j in range(28)]])
        folder = root / "higgs" / f"part={part:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(folder / "part-0.parquet", index=False)


def _count_tabular(dm: Any) -> dict[str, int]:
    return {"units": len(dm.split) // HIGGS_PART_ROWS, "train_items": len(dm.train_rows)}


def _tabular() -> Corpus:
    # HIGGS (Baldi et al. 2014), one of T-JEPA's benchmarks: 11,000,000 rows. The streaming path at every size:
    # the one auto takes beyond the memory budget
    overrides = ["tjepa.target=label", "tjepa.task=classification", "tjepa.drop=[part]", "tjepa.storage=stream"]
    return Corpus(["paper"], overrides, "HIGGS", 100, "parts", (".parquet",), _write_higgs, "higgs",
                  _count_tabular, ("pyarrow", "pandas"))  # fmt: skip


# ---- graph: ogbn-products ---------------------------------------------------------------------------------------
PRODUCTS = {"nodes": 2_449_029, "edges": 61_859_140, "features": 100, "classes": 47}  # OGB's ogbn-products
GRAPH_BLOCK = 100_000  # nodes written at a time


def _write_products(root: Path, nodes: int) -> Path:
    """An ogbn-products-like graph of ``nodes`` nodes in OGB's extracted layout, as ``ogbn_products/`` unpacks:
    ``raw/edge.csv.gz`` (each undirected edge once, 25.3 a node as in products, heavy-tailed degrees: the targets
    drawn towards popular nodes), ``raw/node-feat.csv.gz`` (100 float32 features), ``raw/node-label.csv.gz`` (47
    classes), ``raw/num-{node,edge}-list.csv.gz``, ``split/sales_ranking/{train,valid,test}.csv.gz`` (8 / 2 / 90 %,
    as products) and ``mapping/nodeidx2asin.csv.gz``. A graph is not cut into files, so each size is its own."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    out = root / f"graph{nodes}" / "ogbn_products"
    if (out / "DONE").is_file():
        return out
    rng = np.random.default_rng(nodes)
    per_node = PRODUCTS["edges"] / PRODUCTS["nodes"]
    for sub in ("raw", "split/sales_ranking", "mapping"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    options = pcsv.WriteOptions(include_header=False)
    # gzip level 1: level 6 (OGB's zips hold the same CSV text) takes 8x as long to write and saves 10 %
    with (gzip.open(out / "raw/edge.csv.gz", "wb", compresslevel=1) as edges,
          gzip.open(out / "raw/node-feat.csv.gz", "wb", compresslevel=1) as feats):  # fmt: skip
        total = 0
        for start in range(0, nodes, GRAPH_BLOCK):
            block = np.arange(start, min(start + GRAPH_BLOCK, nodes))
            degree = rng.geometric(1 / per_node, len(block))
            src = np.repeat(block, degree)
            dst = (nodes * rng.random(len(src)) ** 2).astype(np.int64)  # popular (low) ids drawn more
            keep = src != dst
            total += int(keep.sum())
            pcsv.write_csv(pa.table({"s": src[keep], "t": dst[keep]}), edges, options)
            x = rng.normal(size=(len(block), PRODUCTS["features"])).astype(np.float32)
            pcsv.write_csv(pa.table({f"f{j}": x[:, j] for j in range(x.shape[1])}), feats, options)
    import pandas as pd

    def table(path: str, frame: pd.DataFrame, header: bool = False) -> None:
        frame.to_csv(out / path, index=False, header=header, compression="gzip")

    table("raw/node-label.csv.gz", pd.DataFrame(rng.integers(0, PRODUCTS["classes"], nodes)))
    table("raw/num-node-list.csv.gz", pd.DataFrame([nodes]))
    table("raw/num-edge-list.csv.gz", pd.DataFrame([total]))
    order = rng.permutation(nodes)
    cuts = [0, int(0.08 * nodes), int(0.10 * nodes), nodes]
    for name, a, b in zip(("train", "valid", "test"), cuts[:-1], cuts[1:], strict=True):
        table(f"split/sales_ranking/{name}.csv.gz", pd.DataFrame(np.sort(order[a:b])))
    asin = pd.DataFrame({"node idx": np.arange(nodes), "asin": [f"B{i:09d}" for i in range(nodes)]})
    table("mapping/nodeidx2asin.csv.gz", asin, header=True)
    (out / "DONE").write_text("")
    return out


def _count_graph(dm: Any) -> dict[str, int]:
    return {"units": int(dm.graphs[0].num_nodes), "train_items": int(dm.graphs[0].num_nodes)}


def _graph() -> Corpus:
    # GraphMAE's largest preset (ogbn-arxiv: GAT 1024 x 4 heads, 3 layers) on products-sized graphs, neighbour-
    # sampled at every size (what node_batching auto does beyond 500,000 nodes)
    overrides = ["graphmae.node_batching=neighbor"]
    return Corpus(["ogbn-arxiv"], overrides, "ogbn-products", PRODUCTS["nodes"], "nodes", (".gz",),
                  lambda root, start, stop: None, "ogbn_products", _count_graph, ("pandas", "torch_geometric"),
                  make=_write_products, per_item_batch=False)  # fmt: skip


CORPORA: dict[str, Corpus] = {
    "croma": _rs("croma-base", "croma"),
    "ssl4eo": _rs("ssl4eo-small", "ssl4eo"),
    "tera": _audio(["tera-base", "tera-librispeech"]),
    "ssast": _audio(["ssast-base"]),
    "alice": _medical("alice-paper", "alice"),
    "contrastive3d": _medical("contrastive3d-vit", "contrastive3d"),
    "tjepa": _tabular(),
    "graphmae": _graph(),
}
