"""The graph store of an extracted OGB node dataset, built in bounded memory: the CSVs are read a block at a time
and the undirected CSR is built by an external bucket sort, so the cold build of ogbn-papers100M (111M nodes, 1.6B
edges) holds a few hundred MB of edges at a time, not the graph.

The arrays are the ones :func:`.store.cached_graph` stores, equal to parsing the graph whole
(:func:`.formats.read_graph_source`: ``to_undirected`` of ``raw/edge.csv.gz``, then its CSR without self-loops):

1. ``raw/node-feat.csv.gz`` is streamed into ``x.npy`` (float32), checked for NaN and inf on the way;
2. ``raw/edge.csv.gz`` is streamed once into a flat file of int64 pairs, counting each node's entries in both
   directions (an upper bound of its degree: duplicates are not yet removed);
3. the pairs, in both directions, go to buckets: node ranges of at most :data:`BUCKET_ENTRIES` entries each;
4. each bucket is sorted by (target, source) and made unique, which is ``to_undirected``'s coalesce for its nodes:
   neighbour lists in ascending order, as :meth:`.sampling.NeighborSampler.csr` of the coalesced edges lists them;
5. ``edge_index`` (with self-loops, coalesced), ``col`` and ``rowptr`` (without), and ``degree`` are written from
   the buckets' results in order.

Labels, the split and the node mapping are streamed too; what stays in memory is O(nodes): the degree counts, the
split, the bucket bounds.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import numpy as np

from ssl_domains import DataError
from ssl_domains.arrayfile import NpyWriter

from .formats import ogb_file, ogb_mapping, ogb_split_scheme, refuse_heterogeneous_ogb

BUCKET_ENTRIES = 1 << 24  # directed entries sorted at a time: 128 MB of int64 keys
READ_BLOCK = 1 << 24  # bytes of CSV text parsed at a time (64 MB blocks: peak 2.6 GB at 4.9M nodes, 16 MB: 0.8)
_PAIRS = 1 << 22  # edge pairs moved from the flat file to the buckets at a time


def _blocks(path: Path, types: dict[int, str] | None = None, header: bool = False) -> Iterator[list]:
    """The columns of ``path`` a block of rows at a time (pyarrow's streaming reader, ``.gz`` decompressed), as
    NumPy arrays, or pyarrow arrays for the columns ``types`` reads as ``"string"``; ``types`` maps a column's
    position to the type it is parsed as (the rest are inferred). ``header``: skip the first line."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    read = pcsv.ReadOptions(block_size=READ_BLOCK, autogenerate_column_names=True, skip_rows=int(header))
    kinds = {i: pa.string() if k == "string" else pa.from_numpy_dtype(np.dtype(k)) for i, k in (types or {}).items()}
    convert = pcsv.ConvertOptions(column_types={f"f{i}": kind for i, kind in kinds.items()})
    try:
        for batch in pcsv.open_csv(path, read_options=read, convert_options=convert):
            yield [c if (types or {}).get(i) == "string" else c.to_numpy(zero_copy_only=False)
                   for i, c in enumerate(batch.columns)]  # fmt: skip
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"{path}: cannot be read as OGB's CSV ({type(exc).__name__}: {exc})") from None


def _add_counts(counts: np.ndarray, ids: np.ndarray) -> np.ndarray:
    add = np.bincount(ids)
    if len(add) > len(counts):
        counts = np.concatenate([counts, np.zeros(len(add) - len(counts), counts.dtype)])
    counts[: len(add)] += add
    return counts


def write_ogb_store(root: Path, folder: Path) -> None:
    """Write the store of the OGB dataset at ``root`` into ``folder`` (``<name>.npy`` files). A bad file raises a
    :class:`DataError` naming it, and the caller keeps nothing (the store is written beside its place and renamed
    into it whole)."""
    raw = root / "raw"
    refuse_heterogeneous_ogb(root)
    work = folder / "build"
    work.mkdir()
    counts_file = ogb_file(raw, "num-node-list")
    n = int(next(_blocks(counts_file))[0][0]) if counts_file is not None else None
    features = _write_features(ogb_file(raw, "node-feat"), folder / "x.npy", n)
    n = n if n is not None else features
    edges_path = ogb_file(raw, "edge")
    n, counts = _read_edges(edges_path, work / "pairs.bin", n)
    bounds = _bucket_bounds(counts)
    _fill_buckets(work / "pairs.bin", work, bounds, n)
    degree, self_loop = _sort_buckets(work, bounds, n)
    _write_csr(folder, work, bounds, degree, self_loop)
    _write_labels(ogb_file(raw, "node-label"), folder / "y.npy", n)
    _write_split(root, folder / "split.npy", n)
    _write_node_ids(root, folder / "node_ids.npy", n)
    shutil.rmtree(work)


def _write_features(path: Path | None, out: Path, n: int | None) -> int | None:
    """``x.npy`` from ``node-feat.csv``, float32 rows; the number of rows (None without the file)."""
    if path is None:
        return None
    bad, first, writer = 0, -1, None
    try:
        for columns in _blocks(path, dict.fromkeys(range(_columns(path)), "float32")):
            block = np.stack(columns, 1)
            writer = writer or NpyWriter(out, np.float32, block.shape[1:])
            rows = ~np.isfinite(block).all(1)
            if rows.any():
                first = writer.rows + int(rows.argmax()) if bad == 0 else first
                bad += int(rows.sum())
            writer.append(block)
    finally:
        if writer is not None:
            writer.close()
    rows = writer.rows if writer is not None else 0
    if bad:
        raise DataError(
            f"{path}: the graph has NaN or inf features in {bad} nodes (first: node {first}); impute or remove them"
        )
    if n is not None and rows != n:
        raise DataError(f"{path}: {rows} rows for {n} nodes")
    return rows


def _columns(path: Path) -> int:
    """The number of columns of a headerless CSV, from its first line."""
    import gzip

    with gzip.open(path, "rt") if path.suffix == ".gz" else path.open() as f:
        return len(f.readline().split(","))


def _read_edges(path: Path | None, pairs: Path, n: int | None) -> tuple[int, np.ndarray]:
    """Stream ``edge.csv`` into a flat file of int64 ``(source, target)`` pairs; the number of nodes and each
    node's entries in both directions (duplicates counted: an upper bound)."""
    counts, total, low, high = np.zeros(0, np.int64), 0, 0, -1
    with pairs.open("wb") as out:
        for columns in _blocks(path, {0: "int64", 1: "int64"}) if path is not None else ():
            if len(columns) != 2:
                raise DataError(f"{path}: needs one 'source,target' pair of node indices per line")
            src, dst = columns
            if len(src):
                low, high = min(low, int(src.min()), int(dst.min())), max(high, int(src.max()), int(dst.max()))
            if low < 0 or (n is not None and high >= n):
                raise DataError(f"{path}: edges name nodes outside 0..{(n if n is not None else high + 1) - 1}")
            out.write(memoryview(np.stack([src, dst], 1)).cast("B"))
            counts = _add_counts(_add_counts(counts, src), dst)
            total += len(src)
    if total == 0:
        raise DataError(f"{path or 'raw/edge.csv.gz'}: needs one 'source,target' pair of node indices per line")
    n = n if n is not None else high + 1
    return n, np.concatenate([counts, np.zeros(n - len(counts), np.int64)])


def _bucket_bounds(counts: np.ndarray) -> np.ndarray:
    """Node ranges ``[bounds[i], bounds[i + 1])`` of at most :data:`BUCKET_ENTRIES` entries each (a node with
    more has a bucket of its own)."""
    cum = np.cumsum(counts)
    cuts = np.searchsorted(cum, np.arange(BUCKET_ENTRIES, int(cum[-1]), BUCKET_ENTRIES), side="right")
    bounds = np.unique(np.concatenate([[0], cuts, [len(counts)]]))
    while True:  # a cut after a heavy node can leave a range above the budget: cut it again
        sizes = cum[bounds[1:] - 1] - np.concatenate([[0], cum[bounds[1:-1] - 1]])
        over = np.flatnonzero((sizes > BUCKET_ENTRIES) & (np.diff(bounds) > 1))
        if not len(over):
            return bounds
        bounds = np.unique(np.concatenate([bounds, (bounds[over] + bounds[over + 1]) // 2]))


def _fill_buckets(pairs: Path, work: Path, bounds: np.ndarray, n: int) -> None:
    """Both directions of every pair, as keys ``(target - bucket start) * n + source`` appended to the target's
    bucket file (``bucket<i>.bin``); the pairs file is deleted after."""
    files = [(work / f"bucket{i}.bin").open("wb") for i in range(len(bounds) - 1)]
    try:
        with pairs.open("rb") as f:
            while True:
                block = np.fromfile(f, np.int64, 2 * _PAIRS).reshape(-1, 2)
                if not len(block):
                    break
                dst, src = np.concatenate([block[:, 1], block[:, 0]]), np.concatenate([block[:, 0], block[:, 1]])
                bucket = np.searchsorted(bounds, dst, side="right") - 1
                order = np.argsort(bucket, kind="stable")
                keys = ((dst - bounds[bucket]) * n + src)[order]
                ends = np.cumsum(np.bincount(bucket, minlength=len(files)))
                for i, (a, b) in enumerate(zip(np.concatenate([[0], ends[:-1]]), ends, strict=True)):
                    if b > a:
                        files[i].write(memoryview(keys[a:b]).cast("B"))
    finally:
        for f in files:
            f.close()
    pairs.unlink()


def _sort_buckets(work: Path, bounds: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort and deduplicate each bucket into ``neighbours<i>.bin`` (each node's neighbours ascending, self-loop
    included); returns each node's entries (``degree`` of the coalesced ``edge_index``) and its self-loop flag."""
    degree, self_loop = np.zeros(n, np.int64), np.zeros(n, bool)
    for i, (a, b) in enumerate(pairwise(bounds)):
        path = work / f"bucket{i}.bin"
        keys = np.fromfile(path, np.int64)
        path.unlink()
        keys.sort()
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys
        target, source = np.divmod(keys, n)
        degree[a:b] = np.bincount(target, minlength=b - a)
        self_loop[a + target[source == target + a]] = True
        source.tofile(work / f"neighbours{i}.bin")
    return degree, self_loop


def _write_csr(folder: Path, work: Path, bounds: np.ndarray, degree: np.ndarray, self_loop: np.ndarray) -> None:
    """``edge_index`` ([2, E], coalesced, with self-loops), ``col`` and ``rowptr`` (without), ``degree``."""
    parts = [work / f"neighbours{i}.bin" for i in range(len(bounds) - 1)]
    with NpyWriter(folder / "edge_index.npy", np.int64) as edge_index:
        for a, b in pairwise(bounds):
            edge_index.append(np.repeat(np.arange(a, b), degree[a:b]))
        for part in parts:
            edge_index.append(np.fromfile(part, np.int64))
        edge_index.close(shape=(2, edge_index.rows // 2))
    with NpyWriter(folder / "col.npy", np.int64) as col:
        for (a, b), part in zip(pairwise(bounds), parts, strict=True):
            neighbours = np.fromfile(part, np.int64)
            col.append(neighbours[neighbours != np.repeat(np.arange(a, b), degree[a:b])])
            part.unlink()
    rowptr = np.zeros(len(degree) + 1, np.int64)
    np.cumsum(degree - self_loop, out=rowptr[1:])
    np.save(folder / "rowptr.npy", rowptr)
    np.save(folder / "degree.npy", degree)


def _write_labels(path: Path | None, out: Path, n: int) -> None:
    """``y.npy``: one class per node, missing labels (papers100M's unlabelled nodes) as -1."""
    if path is None:
        return
    with NpyWriter(out, np.int64) as writer:
        for columns in _blocks(path, {0: "float64"}):
            if len(columns) != 1:
                raise DataError(
                    f"{path}: {len(columns)} labels per node (multi-label, as ogbn-proteins); "
                    "the node probe needs one class per node"
                )
            writer.append(np.nan_to_num(columns[0], nan=-1).astype(np.int64))
    if writer.rows not in (n, 1):
        raise DataError(f"{path}: the graph has {writer.rows} labels for {n} nodes; give one label per node")


def _write_split(root: Path, out: Path, n: int) -> None:
    """``split.npy`` from the one ``split/<scheme>/`` folder: 0 train, 1 valid, 2 test, -1 none."""
    scheme = ogb_split_scheme(root)
    if scheme is None:
        return
    split = np.full(n, -1, np.int64)
    for name, code in (("train", 0), ("valid", 1), ("test", 2)):
        path = ogb_file(scheme, name)
        for columns in _blocks(path, {0: "int64"}) if path is not None else ():
            nodes = columns[0]
            if len(nodes) and (int(nodes.min()) < 0 or int(nodes.max()) >= n):
                raise DataError(f"{path}: names nodes outside 0..{n - 1}")
            split[nodes] = code
    np.save(out, split)


def _write_node_ids(root: Path, out: Path, n: int) -> None:
    """``node_ids.npy`` from ``mapping/nodeidx2*.csv.gz``'s second column: int64 when every id is an integer (as
    pandas reads MAG's paper ids), else fixed-width strings (missing ids read "nan"); none unless one per node."""
    import pyarrow.compute as pc

    mapping = ogb_mapping(root)
    if mapping is None:
        return
    rows, width, integers = 0, 1, True
    for columns in _blocks(mapping, {1: "string"}, header=True):
        ids = pc.fill_null(columns[1], "nan")
        rows += len(ids)
        if len(ids):
            width = max(width, pc.max(pc.utf8_length(ids)).as_py())
            integers = integers and pc.all(pc.match_substring_regex(ids, r"^-?[0-9]+$")).as_py()
    if rows != n:
        return
    with NpyWriter(out, np.int64 if integers else f"<U{width}") as writer:
        for columns in _blocks(mapping, {1: "string"}, header=True):
            ids = pc.fill_null(columns[1], "nan").to_numpy(zero_copy_only=False)
            writer.append(ids.astype(np.int64) if integers else ids.astype(str))
