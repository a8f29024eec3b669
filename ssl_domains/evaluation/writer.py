"""Embedding export that streams: rows reach the disk batch by batch, so ``embed`` holds one batch and one Parquet
row group in memory whatever the size of the corpus, and each DDP rank writes its own shard.

Every row carries, besides ``id`` (the item's index in the plugin's sorted list), the columns the datamodule
gives through :meth:`ssl_domains.FittedDataModule.provenance`: what ties the embedding back to the user's data (the
source file, the ``node_id`` of ``nodes.csv``, the row of the table, a chip's bounds and CRS). A ``geometry``
column (lon/lat rings) is written as GeoParquet 1.1 (WKB polygons in OGC:CRS84), which GeoPandas and QGIS open.

Files are written under temporary names and renamed when the export ends, so an export that fails or is killed
leaves nothing half-written.
"""

from __future__ import annotations

import ast
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

__all__ = ["EmbeddingWriter", "shard_path", "wkb_polygons"]

ROW_GROUP_BYTES = 64 << 20  # Parquet row groups of ~64 MB of vectors: large enough to scan fast, small to hold
_NPY_HEADER = 256  # bytes reserved for a streamed .npy header: room for any shape's digits


def shard_path(out: Path, rank: int, world_size: int) -> Path:
    """Where rank ``rank`` of ``world_size`` writes ``out``: ``out`` itself for one process, else
    ``<stem>-00001-of-00004<suffix>`` beside it (the shards of a Parquet export read as one dataset:
    ``pyarrow.dataset.dataset(sorted(out.parent.glob(f"{out.stem}-*-of-*.parquet")))``)."""
    if world_size == 1:
        return out
    return out.with_name(f"{out.stem}-{rank:05d}-of-{world_size:05d}{out.suffix}")


def wkb_polygons(rings: np.ndarray) -> list[bytes | None]:
    """Little-endian WKB polygons from ``rings`` ``[N, K, 2]`` (x, y per vertex; the ring is closed here); a ring
    holding NaN (an item with no georeference) gives ``None``."""
    rings = np.asarray(rings, dtype="<f8")
    closed = np.concatenate([rings, rings[:, :1]], axis=1)
    head = struct.pack("<BIII", 1, 3, 1, closed.shape[1])  # byte order, type Polygon, one ring, its point count
    return [None if np.isnan(r).any() else head + r.tobytes() for r in closed]


class NpyStream:
    """A ``.npy`` file written in row blocks: the header, whose shape is known only at the end, is written last
    into space reserved for it (numpy pads headers with spaces, so the reserved length reads back normally).
    The blocks go through the page cache with plain writes, so an array larger than memory is written without the
    process holding it (a ``numpy.memmap`` being filled counts its dirty pages in the writer's RSS)."""

    def __init__(self, path: Path, dtype: str) -> None:
        self.path, self.dtype, self.rows, self.tail = path, np.dtype(dtype), 0, None
        self.fh = open(path, "wb")  # noqa: SIM115 (held open across write() calls; closed in close())
        self.fh.write(b"\0" * _NPY_HEADER)

    def write(self, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array, dtype=self.dtype)
        if self.tail is None:
            self.tail = array.shape[1:]
        elif array.shape[1:] != self.tail:
            raise RuntimeError(f"rows of shape {array.shape[1:]} after rows of shape {self.tail}")
        self.fh.write(array.tobytes())
        self.rows += len(array)

    def close(self) -> None:
        shape = (self.rows, *(self.tail or ()))
        header = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape})
        body = header.encode("latin1").ljust(_NPY_HEADER - 10 - 1) + b"\n"
        assert ast.literal_eval(header)["shape"] == shape and len(body) + 10 == _NPY_HEADER
        self.fh.seek(0)
        self.fh.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body)
        self.fh.close()


class _ParquetStream:
    """A Parquet file written in row groups; its schema is the first rows'. ``geometry`` becomes GeoParquet."""

    def __init__(self, path: Path, rows_per_group: int) -> None:
        self.path, self.rows_per_group = path, rows_per_group
        self.pending: list[dict[str, Any]] = []
        self.count, self.writer = 0, None

    def write(self, columns: dict[str, Any]) -> None:
        self.pending.append(columns)
        self.count += len(next(iter(columns.values())))
        if self.count >= self.rows_per_group:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.pending:
            return
        table = pa.concat_tables([self._table(c) for c in self.pending])
        self.pending, self.count = [], 0
        if self.writer is None:
            self.writer = pq.ParquetWriter(str(self.path), table.schema)
        self.writer.write_table(table.cast(self.writer.schema))

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()

    def _table(self, columns: dict[str, Any]) -> Any:
        import pyarrow as pa

        arrays = {}
        for name, values in columns.items():
            if name == "embedding":
                flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1), type=pa.float32())
                arrays[name] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
            elif name == "geometry":
                arrays[name] = pa.array(wkb_polygons(values), type=pa.binary())
            else:
                arrays[name] = pa.array(values)
        table = pa.table(arrays)
        if "geometry" in arrays:  # GeoParquet 1.1: no "crs" key means OGC:CRS84 (lon/lat)
            geo = {"version": "1.1.0", "primary_column": "geometry",
                   "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"]}}}  # fmt: skip
            table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode()})
        return table


class EmbeddingWriter:
    """Stream embedding rows to ``out``: ``.parquet`` (columns ``id``, ``position`` per position, ``embedding``,
    ``label`` where known, then the provenance columns) or ``.npy`` (the vectors, ``<stem>.ids.npy``,
    ``<stem>.positions.npy`` per position, and the other columns in ``<stem>.rows.parquet``).

    Use it as a context manager: on an exception nothing is left behind; on success :meth:`close` renames every
    file into place (the vectors last) and returns the paths. ``rank``/``world_size`` name the shard
    (:func:`shard_path`).
    """

    def __init__(self, out: Path, rank: int = 0, world_size: int = 1) -> None:
        out = Path(out)
        if out.suffix not in (".npy", ".parquet"):
            raise UserError(f"--out must end in .npy or .parquet, got {out.name}")
        self.out, self.world_size = shard_path(out, rank, world_size), world_size
        self.rows = 0
        self.dim: int | None = None
        self._npy: dict[Path, NpyStream] = {}
        self._table: _ParquetStream | None = None
        self._table_path: Path | None = None
        self._temps: dict[Path, Path] = {}  # final path -> temporary path

    def _temp(self, final: Path) -> Path:
        temp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        self._temps[final] = temp
        return temp

    def write(
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        labels: np.ndarray | None = None,
        positions: np.ndarray | None = None,
        columns: Mapping[str, Any] | None = None,
    ) -> None:
        """Append rows: ``vectors`` ``[R, D]`` with their ``ids`` ``[R]`` and, row-aligned, ``labels``,
        ``positions`` and provenance ``columns``."""
        if self.dim is None:
            self.dim = int(vectors.shape[1])
            group = max(1, ROW_GROUP_BYTES // (4 * self.dim))
            if self.out.suffix == ".parquet":
                self._table_path = self.out
            elif columns or labels is not None:
                self._table_path = self.out.with_name(self.out.stem + ".rows.parquet")
            if self._table_path is not None:
                self._table = _ParquetStream(self._temp(self._table_path), group)
        # copies: a view would keep the whole batch buffer alive (ssl_domains.data.batch_tensors) until the flush
        rows: dict[str, Any] = {"id": np.array(ids)}
        if positions is not None:
            rows["position"] = np.asarray(positions, dtype=np.int64)
        if self.out.suffix == ".npy":
            for suffix, values, dtype in (("", vectors, "<f4"), (".ids", ids, "<i8"), (".positions", positions, "<i8")):
                if values is not None:
                    final = self.out.with_name(self.out.stem + suffix + ".npy")
                    if final not in self._npy:
                        self._npy[final] = NpyStream(self._temp(final), dtype)
                    self._npy[final].write(np.asarray(values))
        else:
            rows["embedding"] = np.asarray(vectors, dtype=np.float32)
        if labels is not None:
            rows["label"] = np.array(labels)
        clash = set(columns or {}) & {"id", "position", "embedding", "label"}
        if clash:
            raise RuntimeError(f"provenance columns may not be named {sorted(clash)}")
        rows.update(columns or {})
        if self._table is not None:
            self._table.write(rows)
        self.rows += len(ids)

    def close(self) -> list[Path]:
        """Finish every file and move it into place; returns the final paths (the vectors' last)."""
        if self.dim is None:
            if self.world_size > 1:  # a rank whose share of the items is empty writes no shard
                return []
            raise UserError("the data yielded no items to embed")
        for stream in self._npy.values():
            stream.close()
        if self._table is not None:
            self._table.close()
        finals = sorted(self._temps, key=lambda p: p == self.out)  # the vectors last: they mark a finished export
        for final in finals:
            os.replace(self._temps[final], final)
        self._temps.clear()
        return finals

    def abort(self) -> None:
        """Close and delete every temporary file."""
        for stream in self._npy.values():
            stream.fh.close()
        if self._table is not None and self._table.writer is not None:
            self._table.writer.close()
        for temp in self._temps.values():
            temp.unlink(missing_ok=True)
        self._temps.clear()

    def __enter__(self) -> EmbeddingWriter:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is not None:
            self.abort()
