"""T-JEPA data: tables read once, encoded once, served as dict batches of tensors.

Batches carry ``numeric`` (float32 ``[N, num_numeric]``, scaled), ``categorical`` (int64 ``[N, num_categorical]``,
0 = unseen category), ``id`` (the row's number in its file; val and test files continue the numbering after the
training file, and rows held out of the training file keep their numbers), ``split`` and ``label`` (class index,
or -1 without a classification target). A batch is one slice of the encoded tensors, so no per-row Python work
happens.

Splits (honest protocol), made only when the table has the target column: the official test table, when given,
is the test split. Otherwise
``test_fraction`` of the training table is held out. Validation is carved from the training rows
(``val_fraction``, stratified by class). The split depends on ``split_seed`` only, so it is the same for every
pretraining seed. Scaler, vocabularies and classes are fitted on the training split alone, and pretraining sees
only the training split.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from ssl_domains import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL, DataError
from ssl_domains.data import batch_tensors, eval_loader, random_split_indices, train_loader
from ssl_domains.datamodule import FittedDataModule
from ssl_domains.indexcache import cached_array_folder, cached_index
from ssl_domains.memory import fits_in_memory

from .formats import TableFiles, find_tables, iter_frames, read_table, table_dataset, table_rows
from .plugin import TJEPAConfig
from .schema import check_missing, encode_table, fit_schema
from .stream import BATCH_ROWS, SchemaPass, encode_to, encoded_key, hashed_split


class _Rows(Dataset):
    """Row ids; a whole batch is gathered at once (``__getitems__``) into one shared buffer by ``gather``."""

    def __init__(self, rows: np.ndarray, gather: Callable[[np.ndarray], dict[str, torch.Tensor]]) -> None:
        self.rows, self.gather = rows, gather

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> int:
        return int(self.rows[i])

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return self.gather(self.rows[np.asarray(indices, dtype=np.int64)])


class TableDataModule(FittedDataModule[TJEPAConfig]):
    """Reads a table (or train/val/test tables), fits the encoders on the training split, serves row batches."""

    def input_spec(self) -> dict[str, Any]:
        """The feature schema fitted on the training rows: columns in token order, encodings, the target."""
        fitted = self.fitted
        return {
            "numeric": list(fitted["numeric"]),
            "categorical": {c: len(fitted["vocab"][c]) for c in fitted["categorical"]},
            "numeric_scaling": fitted["scaling"],
            "missing": "imputed with the training median" if self.cfg.missing == "impute" else "refused (an error)",
            "unseen_categories": "mapped to the unknown index (counted in the log)",
            "target": fitted.get("target"),
            "task": fitted.get("task"),
        }

    @property
    def feature_names(self) -> list[str]:
        return list(self.fitted["numeric"]) + list(self.fitted["categorical"])

    @property
    def cardinalities(self) -> list[int]:
        """Embedding rows per categorical column: its vocabulary plus the unknown index."""
        return [len(self.fitted["vocab"][c]) + 1 for c in self.fitted["categorical"]]

    @property
    def task(self) -> str | None:
        return self.fitted.get("task")

    # ---- reading ---------------------------------------------------------------------------------------------
    def _read(self, path: Path) -> pd.DataFrame:
        frame = read_table(path, self.cfg.sep, tuple(self.cfg.na_values))
        # checked on the whole file, before any split, so the counts are the file's
        features = [c for c in frame.columns if c != self.cfg.target and c not in self.cfg.drop]
        check_missing(frame, path, features, self.cfg.missing)
        return frame

    def _split(self, frame: pd.DataFrame, fraction: float, path: Path, salt: int) -> tuple[np.ndarray, np.ndarray]:
        """(kept rows, held-out rows) of ``frame``: a seeded split, stratified by class for classification."""
        target = self.cfg.target
        stratify = None
        if target is not None and target in frame.columns and self.cfg.task != "regression":
            labels = frame[target].astype(str).str.strip().to_numpy()
            if pd.Series(labels).nunique() <= max(2, len(labels) // 10):
                stratify = labels
        held, kept = random_split_indices(len(frame), [fraction, 1.0 - fraction], self.cfg.split_seed + salt, stratify)
        if len(kept) == 0:
            raise DataError(f"{path} has {len(frame)} rows: too few to hold out {fraction:.0%} and still train")
        return kept, held

    def read(self, stage: str | None) -> None:
        files = find_tables(self.data)
        self.streamed = self._streams(files)
        if self.streamed:
            self._read_streaming(files)
            return
        train = self._read(files.train)
        first_row = {"train": 0}
        # Splits need the target: a table without it (new rows to embed) is kept whole, in file order.
        labelled = self.cfg.target is not None and self.cfg.target in train.columns
        val = self._read(files.val) if files.val is not None else None
        test = self._read(files.test) if files.test is not None else None
        first_row["val"] = len(train)
        first_row["test"] = first_row["val"] + (len(val) if val is not None else 0)
        if test is None and labelled and self.cfg.test_fraction > 0:
            kept, held = self._split(train, self.cfg.test_fraction, files.train, salt=1)
            train, test = train.iloc[kept], train.iloc[held]
            first_row["test"] = 0  # held-out rows keep their row numbers in the training file
        if val is None and labelled and self.cfg.val_fraction > 0 and len(train) > 1:
            kept, held = self._split(train, self.cfg.val_fraction, files.train, salt=2)
            train, val = train.iloc[kept], train.iloc[held]
            first_row["val"] = 0
        if not self.fitted:  # the schema (columns, scaler, vocabularies, classes) is fitted as a whole
            self.fitted.update(fit_schema(train, files.train, self.cfg))
        frames, splits, row_ids, self.files, file_of, row_in_file = [], [], [], [], [], []
        for name, frame, split, source in (
            ("train", train, SPLIT_TRAIN, files.train),
            ("val", val, SPLIT_VAL, files.val or files.train),
            ("test", test, SPLIT_TEST, files.test or files.train),
        ):
            if frame is None or len(frame) == 0:
                continue
            frames.append(encode_table(frame, source, self.fitted))
            splits.append(np.full(len(frame), split, np.int64))
            row_ids.append(first_row[name] + frame.index.to_numpy(dtype=np.int64))
            if str(source) not in self.files:
                self.files.append(str(source))
            file_of.append(np.full(len(frame), self.files.index(str(source)), np.int64))
            row_in_file.append(frame.index.to_numpy(dtype=np.int64))
        self.numeric = torch.as_tensor(np.concatenate([f.numeric for f in frames]))
        self.categorical = torch.as_tensor(np.concatenate([f.categorical for f in frames]))
        self.split = torch.as_tensor(np.concatenate(splits))
        self.row_id = torch.as_tensor(np.concatenate(row_ids))
        self.file_of, self.row_in_file = np.concatenate(file_of), np.concatenate(row_in_file)
        self.unknown_counts = [f.unknown_counts for f in frames]
        has_target = all(f.target is not None for f in frames)
        target = np.concatenate([f.target for f in frames]) if has_target else None
        self.target = None if target is None else torch.as_tensor(target)
        if self.task == "classification" and self.target is not None:
            self.label = self.target.long()
        else:
            self.label = torch.full((len(self.split),), -1, dtype=torch.long)
        self.train_rows = torch.nonzero(self.split == SPLIT_TRAIN).flatten().numpy()
        if len(self.train_rows) == 0:
            raise DataError(f"{files.train} leaves no training rows after the validation and test splits")

    # ---- tables larger than memory (stream.py) ---------------------------------------------------------------
    def _streams(self, files: TableFiles) -> bool:
        """``storage: auto``: stream when the tables, read into pandas and encoded, would exceed the memory
        budget (16 bytes per cell: the float64 frame and its encoding; a CSV at 3 bytes of RAM per byte)."""
        if self.cfg.storage != "auto":
            return self.cfg.storage == "stream"
        need = 0
        for path in (p for p in (files.train, files.val, files.test) if p is not None):
            rows = table_rows(path)
            need += path.stat().st_size * 3 if rows is None else rows * len(table_dataset(path).schema) * 16
        return not fits_in_memory(need, f"{files.train}: the table in pandas")

    def _read_streaming(self, files: TableFiles) -> None:
        """One pass for the statistics and row counts (cached, keyed by the files and the settings), one to
        encode into memory-mapped arrays (cached too); batches then gather their rows from the maps."""
        cfg, tables = self.cfg, [p for p in (files.train, files.val, files.test) if p is not None]
        first = next(iter_frames(files.train, 16, cfg.sep, tuple(cfg.na_values)))
        labelled = cfg.target is not None and cfg.target in first.columns
        hold_test, hold_val = labelled and files.test is None, labelled and files.val is None
        fitted = dict(self.fitted)

        def gather() -> dict[str, Any]:
            summary = SchemaPass(cfg)
            if not fitted:  # new rows to embed: the run's schema, checked as each batch is encoded
                summary.first(first, files.train)
            for path in tables:
                for frame in iter_frames(path, BATCH_ROWS, cfg.sep, tuple(cfg.na_values)):
                    summary.count(frame, path)
                    if path == files.train and not fitted:
                        split = hashed_split(frame.index.to_numpy(), cfg, hold_test, hold_val)
                        summary.fit(frame[split == SPLIT_TRAIN], path)
            summary.check_missing()
            return {"rows": summary.rows, "state": None if fitted else summary.state(files.train)}

        parts = [p for t in tables for p in (sorted(t.rglob("*")) if t.is_dir() else [t]) if p.is_file()]
        settings = {k: getattr(cfg, k) for k in ("target", "task", "categorical", "numerical", "drop", "missing",
                    "numeric_scaling", "sep", "na_values", "val_fraction", "test_fraction", "split_seed")}  # fmt: skip
        key = {"tabular": "pass", "fitted": bool(fitted), **json.loads(json.dumps(settings))}
        summary = cached_index(self.data, key, gather, files=parts)
        if not fitted:
            self.fitted.update(summary["state"])
        counts = [summary["rows"][str(p)] for p in tables]
        splits = {files.train: lambda rows: hashed_split(rows, cfg, hold_test, hold_val)}
        for path, code in ((files.val, SPLIT_VAL), (files.test, SPLIT_TEST)):
            if path is not None:
                splits[path] = lambda rows, code=code: np.full(len(rows), code, np.int8)

        def write(folder: Path) -> None:
            encode_to(folder, [(p, splits[p]) for p in tables], sum(counts), self.fitted, cfg)

        arrays = cached_array_folder(
            self.data, encoded_key(tables, cfg, self.fitted), write, files=parts, mmap_mode="c"
        )
        self.numeric, self.categorical = torch.from_numpy(arrays["numeric"]), torch.from_numpy(arrays["categorical"])
        self.split = torch.from_numpy(arrays["split"])
        self.target = torch.from_numpy(arrays["target"]) if "target" in arrays else None
        self.row_id = None  # rows in file order: an id is a position (positions())
        self.files, self.file_starts = [str(p) for p in tables], np.cumsum([0, *counts[:-1]])
        self.unknown_counts = []  # logged per file by encode_to
        n = len(self.split)
        if self.task == "classification" and self.target is not None:
            self.label = self.target
        else:
            self.label = torch.tensor(-1, dtype=torch.long).expand(n)  # no memory per row
        self.train_rows = np.flatnonzero(arrays["split"] == SPLIT_TRAIN)
        if len(self.train_rows) == 0:
            raise DataError(f"{files.train} leaves no training rows after the validation and test splits")

    def positions(self, row_ids: np.ndarray) -> np.ndarray:
        """Where the rows with these ids sit in the encoded tensors (the inverse of ``row_id``)."""
        if self.streamed:  # rows in file order: an id is a position
            return np.asarray(row_ids, dtype=np.int64)
        ids = self.row_id.numpy()
        order = np.argsort(ids)
        return order[np.searchsorted(ids, row_ids, sorter=order)]

    def provenance(self, ids: np.ndarray) -> dict[str, Any]:
        """Each embedded row's file and its 0-based position there (a held-out row keeps its training file's)."""
        at = self.positions(np.asarray(ids))
        if self.streamed:
            k = np.searchsorted(self.file_starts, at, side="right") - 1
            return {"file": [self.files[j] for j in k], "row": at - self.file_starts[k]}
        return {"file": [self.files[k] for k in self.file_of[at]], "row": self.row_in_file[at]}

    # ---- batches ---------------------------------------------------------------------------------------------
    def rows(self, split: int) -> torch.Tensor:
        """Row ids of one split."""
        return torch.nonzero(self.split == split).flatten()

    def collate(self, ids: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """One batch: the encoded tensors indexed by row id, a single gather per tensor into one buffer
        (:func:`ssl_domains.data.batch_tensors`: in a loader worker the batch reaches the main process as one
        shared-memory segment rather than five, which doubled a worker's rate at batches of 512 rows)."""
        index = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        n = len(index)
        out = batch_tensors({
            "numeric": ((n, self.numeric.shape[1]), self.numeric.dtype),
            "categorical": ((n, self.categorical.shape[1]), self.categorical.dtype),
            "label": ((n,), self.label.dtype),
            "split": ((n,), torch.long),
            "id": ((n,), torch.long),
        })  # fmt: skip
        torch.index_select(self.numeric, 0, index, out=out["numeric"])
        torch.index_select(self.categorical, 0, index, out=out["categorical"])
        torch.index_select(self.label, 0, index, out=out["label"])
        out["split"].copy_(self.split[index])
        out["id"].copy_(index if self.streamed else self.row_id[index])
        return out

    def train_dataloader(self) -> DataLoader:
        return train_loader(
            _Rows(self.train_rows, self.collate),
            batch_size=self.cfg.batch_size,
            collate_fn=self.collate,
            num_workers=self.cfg.num_workers,
            drop_last="auto",
        )

    def predict_dataloader(self) -> DataLoader:
        rows = np.arange(len(self.split))
        batch_size = max(self.cfg.batch_size, 1024)
        return eval_loader(_Rows(rows, self.collate), batch_size=batch_size, collate_fn=self.collate)
