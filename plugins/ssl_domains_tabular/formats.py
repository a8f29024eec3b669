"""Reading tables: CSV, TSV and Parquet files, or a folder holding ``train`` / ``val`` / ``test`` tables.

Every failure is a :class:`~ssl_domains.DataError` that names the file and what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ssl_domains import DataError

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")
SPLIT_STEMS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test",)}


@dataclass
class TableFiles:
    """The tables of a dataset: ``train`` always, ``val`` and ``test`` when the user ships them."""

    train: Path
    val: Path | None = None
    test: Path | None = None


def find_tables(path: Path) -> TableFiles:
    """Resolve ``--data``: one table file, or a folder with ``train.*`` (and optional ``val.*``, ``test.*``).

    A folder holding a single table is read as that table.
    """
    path = Path(path)
    if path.is_file():
        return TableFiles(train=path)
    if not path.is_dir():
        raise DataError(f"{path} does not exist; pass a CSV/Parquet file or a folder with train.csv (or .parquet)")
    tables = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)
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
    listing = ", ".join(p.name for p in tables) or "no .csv/.tsv/.parquet files"
    raise DataError(f"{path}: cannot tell the training table ({listing}); name it train.csv or train.parquet")


def read_table(path: Path, sep: str | None = None, na_values: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read one CSV/TSV/Parquet file into a DataFrame; empty or unreadable files raise ``DataError``."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            delimiter = sep if sep is not None else ("\t" if suffix == ".tsv" else ",")
            frame = pd.read_csv(
                path, sep=delimiter, skipinitialspace=True, na_values=list(na_values) or None, low_memory=False
            )
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path} is empty; a table needs a header row and at least one data row") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        kind = "Parquet" if suffix in (".parquet", ".pq") else "CSV"
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
