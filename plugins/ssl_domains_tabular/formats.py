"""Reading tables: CSV, TSV, Parquet and Feather files, partitioned Parquet folders, or a folder holding ``train`` /
``val`` / ``test`` tables (files or partitioned folders).

Each table is also a ``pyarrow.dataset`` (:func:`table_dataset`), read a record batch at a time
(:func:`iter_frames`) by the streaming path of a table larger than memory.

Every failure is a :class:`~ssl_domains.DataError` that names the file and what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ssl_domains import DataError

PARQUET_SUFFIXES = (".parquet", ".pq")
FEATHER_SUFFIXES = (".feather", ".arrow", ".ipc")  # Arrow IPC files (pandas' to_feather)
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", *PARQUET_SUFFIXES, *FEATHER_SUFFIXES)
SPLIT_STEMS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test",)}


@dataclass
class TableFiles:
    """The tables of a dataset: ``train`` always, ``val`` and ``test`` when the user ships them."""

    train: Path
    val: Path | None = None
    test: Path | None = None


def is_parquet_folder(path: Path) -> bool:
    """A folder of Parquet parts, flat or hive-partitioned (``year=2020/part-0.parquet``), read as one table."""
    return path.is_dir() and any(p.suffix.lower() in PARQUET_SUFFIXES for p in path.rglob("*") if p.is_file())


def find_tables(path: Path) -> TableFiles:
    """Resolve ``--data``: one table file, a partitioned Parquet folder, or a folder with ``train.*`` (and optional
    ``val.*``, ``test.*``), each a file or a partitioned folder.

    A folder holding a single table is read as that table.
    """
    path = Path(path)
    if path.is_file():
        return TableFiles(train=path)
    if not path.is_dir():
        raise DataError(f"{path} does not exist; pass a CSV/Parquet file or a folder with train.csv (or .parquet)")
    tables = sorted(
        p
        for p in path.iterdir()
        if (p.is_file() and p.suffix.lower() in TABLE_SUFFIXES) or (p.is_dir() and is_parquet_folder(p))
    )
    found: dict[str, Path] = {}
    for split, stems in SPLIT_STEMS.items():
        matches = [p for p in tables if p.stem.lower() in stems]
        if len(matches) > 1:
            raise DataError(f"{path} holds several {split} tables ({', '.join(p.name for p in matches)}); keep one")
        if matches:
            found[split] = matches[0]
    if "train" in found:
        return TableFiles(found["train"], found.get("val"), found.get("test"))
    if len(tables) == 1:
        return TableFiles(train=tables[0])
    if not tables and is_parquet_folder(path):  # the parts of one table, perhaps under key=value folders
        return TableFiles(train=path)
    listing = ", ".join(p.name for p in tables) or "no .csv/.tsv/.parquet files"
    raise DataError(f"{path}: cannot tell the training table ({listing}); name it train.csv or train.parquet")


def read_table(path: Path, sep: str | None = None, na_values: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read one CSV/TSV/Parquet file into a DataFrame; empty or unreadable files raise ``DataError``."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in PARQUET_SUFFIXES or path.is_dir():
            frame = pd.read_parquet(path)
        elif suffix in FEATHER_SUFFIXES:
            frame = pd.read_feather(path)
        else:
            frame = pd.read_csv(path, **_csv_options(path, sep, na_values), low_memory=False)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path} is empty; a table needs a header row and at least one data row") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        kind = _kind(path)
        raise DataError(f"{path} is not a readable {kind} file ({exc}); check the file and its delimiter") from exc
    if frame.shape[0] == 0:
        raise DataError(f"{path} has a header but no rows; a table needs at least one data row")
    if frame.shape[1] == 0:
        raise DataError(f"{path} has no columns")
    duplicated = frame.columns[frame.columns.duplicated()].tolist()
    if duplicated:
        raise DataError(f"{path} repeats the column(s) {duplicated}; give every column a unique name")
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in PARQUET_SUFFIXES:
        return "Parquet"
    return "Feather" if suffix in FEATHER_SUFFIXES else "CSV"


def _csv_options(path: Path, sep: str | None, na_values: tuple[str, ...]) -> dict[str, Any]:
    delimiter = sep if sep is not None else ("\t" if path.suffix.lower() == ".tsv" else ",")
    return {"sep": delimiter, "skipinitialspace": True, "na_values": list(na_values) or None}


def table_dataset(path: Path) -> Any:
    """A Parquet (a file, or a folder of parts with hive partitions) or Feather / Arrow IPC table as a
    ``pyarrow.dataset.Dataset``, opened without reading it."""
    import pyarrow.dataset as pads

    kind = _kind(path)
    try:
        if kind == "Parquet":
            return pads.dataset(path, format="parquet", partitioning="hive")
        return pads.dataset(path, format="ipc")
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path} is not a readable {kind} file ({exc})") from exc


def table_rows(path: Path) -> int | None:
    """Rows of a Parquet or Feather table, from its metadata; None for CSV (it would take a scan)."""
    return None if _kind(path) == "CSV" else int(table_dataset(path).count_rows())


def iter_frames(
    path: Path, batch_rows: int, sep: str | None = None, na_values: tuple[str, ...] = ()
) -> Iterator[pd.DataFrame]:
    """``path`` as DataFrames of about ``batch_rows`` rows, in file order, indexed by their row numbers there
    (Parquet and Feather by record batches; CSV in chunks, parsed as :func:`read_table` parses it)."""
    start = 0
    try:
        if _kind(path) == "CSV":
            frames: Any = pd.read_csv(path, **_csv_options(path, sep, na_values), chunksize=batch_rows)
        else:
            frames = (b.to_pandas() for b in table_dataset(path).to_batches(batch_size=batch_rows) if b.num_rows)
        for frame in frames:
            frame.index = pd.RangeIndex(start, start + len(frame))
            frame.columns = [str(c) for c in frame.columns]
            start += len(frame)
            yield frame
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: reading row {start} onwards failed ({exc}); check the file") from exc
    if start == 0:
        raise DataError(f"{path} has a header but no rows; a table needs at least one data row")
