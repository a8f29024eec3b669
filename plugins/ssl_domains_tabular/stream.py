"""Tables larger than memory: the schema fitted in one streaming pass, the table encoded a record batch at a time
into memory-mapped arrays under the cache (``ssl_domains.indexcache.cached_array_folder``).

What differs from the in-memory path (``data.TableDataModule`` picks this one with ``storage: stream``, or with
``auto`` when the table would not fit the memory budget):

- **Splits** are a hash of each row's number and ``split_seed`` (splitmix64): a row is test with probability
  ``test_fraction`` and, otherwise, validation with probability ``val_fraction``, as the in-memory split draws
  them, but not stratified by class (that would need every label in memory; at the sizes that stream, a
  class's share of each split is within a fraction of a percent of its share of the table).
- **Statistics**: counts, means and standard deviations (merged per batch, Chan et al. 1979), minima, maxima,
  vocabularies and classes are exact. The medians and the quantile knots come from a uniform sample of
  ``SAMPLE_ROWS`` training rows (the rows of smallest hash): exact, and equal to the in-memory fit, whenever the
  training split has at most that many rows.
- **Rows** stay in file order: the training file, then the validation and test files, so a row's ``id`` is its
  position in the encoded arrays.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ssl_domains import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL, DataError

from .formats import iter_frames
from .schema import MISSING_CATEGORY, QUANTILE_LEVELS, _as_strings, _fit_target, encode_table, infer_columns

if TYPE_CHECKING:  # annotations only
    from .plugin import TJEPAConfig

log = logging.getLogger("ssl_domains_tabular")

SAMPLE_ROWS = 200_000  # training rows the medians and quantile knots are fitted on
BATCH_ROWS = 65_536  # rows per record batch read and encoded at a time
MAX_TARGET_VALUES = 10_000  # distinct target values kept: every class, or enough to call a target continuous
VERSION = 1  # bump when what the encoded arrays hold changes


def uniform_hash(rows: np.ndarray, salt: int) -> np.ndarray:
    """A uniform number in [0, 1) per row number, a pure function of (row, salt): splitmix64's finaliser."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53


def hashed_split(rows: np.ndarray, cfg: TJEPAConfig, hold_test: bool, hold_val: bool) -> np.ndarray:
    """The split of each training-file row: test with probability ``test_fraction`` (when no test file is given),
    else validation with probability ``val_fraction`` (when no validation file is given), else training."""
    split = np.full(len(rows), SPLIT_TRAIN, np.int8)
    if hold_val and cfg.val_fraction > 0:
        split[uniform_hash(rows, 2 * cfg.split_seed + 2) < cfg.val_fraction] = SPLIT_VAL
    if hold_test and cfg.test_fraction > 0:
        split[uniform_hash(rows, 2 * cfg.split_seed + 1) < cfg.test_fraction] = SPLIT_TEST
    return split


@dataclass
class _Moments:
    """Count, mean and sum of squared deviations per column, merged batch by batch (Chan et al.)."""

    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    def add(self, n: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
        total = self.n + n
        delta = mean - self.mean
        share = np.divide(n, total, out=np.zeros_like(mean), where=total > 0)
        self.mean = self.mean + delta * share
        self.m2 = self.m2 + m2 + delta**2 * self.n * share
        self.n = total


@dataclass
class SchemaPass:
    """What one pass over the tables gathers: the training split's statistics and every file's row count."""

    cfg: TJEPAConfig
    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # file -> rows
    missing: dict[str, dict[str, int]] = field(default_factory=dict)  # file -> column -> missing rows
    vocab: dict[str, set[str]] = field(default_factory=dict)
    target: pd.Series | None = None  # the target's distinct values (at most MAX_TARGET_VALUES): classes, task
    train_rows: int = 0
    sample: tuple[np.ndarray, np.ndarray] | None = None  # (hash, values) of the sampled training rows
    moments: _Moments | None = None
    low: np.ndarray | None = None
    high: np.ndarray | None = None

    def first(self, frame: pd.DataFrame, path: Path) -> None:
        cfg = self.cfg
        self.numeric, self.categorical = infer_columns(
            frame, path, cfg.target, list(cfg.categorical), list(cfg.numerical), list(cfg.drop)
        )
        width = len(self.numeric)
        self.moments = _Moments(np.zeros(width), np.zeros(width), np.zeros(width))
        self.low, self.high = np.full(width, np.inf), np.full(width, -np.inf)
        self.vocab = {c: set() for c in self.categorical}

    def count(self, frame: pd.DataFrame, path: Path) -> None:
        """Rows and missing values of any file (``missing: error`` is checked on whole files)."""
        self.rows[str(path)] = self.rows.get(str(path), 0) + len(frame)
        features = [c for c in frame.columns if c != self.cfg.target and c not in self.cfg.drop]
        missing = self.missing.setdefault(str(path), {})
        for column, n in frame[features].isna().sum().items():
            if n:
                missing[str(column)] = missing.get(str(column), 0) + int(n)

    def fit(self, frame: pd.DataFrame, path: Path) -> None:
        """Add the training rows ``frame`` to the statistics."""
        assert self.moments is not None and self.low is not None and self.high is not None
        try:
            values = frame[self.numeric].to_numpy(dtype=np.float64) if self.numeric else np.zeros((len(frame), 0))
        except (TypeError, ValueError):
            bad = [c for c in self.numeric if not pd.api.types.is_numeric_dtype(frame[c])]
            raise DataError(
                f"{path}: numeric column(s) {bad} hold text from row {frame.index[0]} on; clean them or list them "
                "as categorical"
            ) from None
        if np.isinf(values).any():
            bad = [self.numeric[j] for j in np.flatnonzero(np.isinf(values).any(0))]
            raise DataError(f"{path}: numeric column(s) {bad} hold infinite values; replace them or drop the column(s)")
        seen = ~np.isnan(values)
        n = seen.sum(0).astype(np.float64)
        mean = np.divide(np.nansum(values, 0), n, out=np.zeros(values.shape[1]), where=n > 0)
        m2 = np.nansum((values - mean) ** 2, 0)
        self.moments.add(n, mean, m2)
        self.train_rows += len(frame)
        self.low = np.fmin(self.low, np.where(seen, values, np.inf).min(0, initial=np.inf))
        self.high = np.fmax(self.high, np.where(seen, values, -np.inf).max(0, initial=-np.inf))
        for c in self.categorical:
            self.vocab[c].update(_as_strings(frame[c]).unique().tolist())
        if self.cfg.target is not None:
            target = frame[self.cfg.target]
            if target.isna().any():
                raise DataError(f"{path}: target column {target.name!r} is empty in {int(target.isna().sum())} rows")
            seen = target if self.target is None else pd.concat([self.target, target], ignore_index=True)
            self.target = seen.drop_duplicates().head(MAX_TARGET_VALUES)
        keys = uniform_hash(frame.index.to_numpy(), 7)
        if self.sample is not None:
            keys, values = np.concatenate([self.sample[0], keys]), np.concatenate([self.sample[1], values])
        if len(keys) > SAMPLE_ROWS:  # the rows of smallest hash: a uniform sample, whatever the batch order
            keep = np.argpartition(keys, SAMPLE_ROWS)[:SAMPLE_ROWS]
            keys, values = keys[keep], values[keep]
        self.sample = (keys, values)

    def check_missing(self) -> None:
        if self.cfg.missing != "error":
            return
        for path, columns in self.missing.items():
            if columns:
                listing = ", ".join(f"{c!r} ({n} rows)" for c, n in columns.items())
                raise DataError(
                    f"{path} has missing values (NaN or an NA marker) in {listing}; set tjepa.missing=impute to fill "
                    f"numerics with the training median and give categoricals a {MISSING_CATEGORY!r} category"
                )

    def state(self, path: Path) -> dict[str, Any]:
        """The fitted state, with the keys and meaning of :func:`.schema.fit_schema`'s."""
        assert self.moments is not None and self.sample is not None and self.low is not None and self.high is not None
        cfg, sample = self.cfg, self.sample[1]
        median = np.nan_to_num(np.nanmedian(sample, axis=0)) if self.numeric else np.zeros(0)
        gaps = self.train_rows - self.moments.n  # missing values, imputed with the median
        moments = _Moments(self.moments.n.copy(), self.moments.mean.copy(), self.moments.m2.copy())
        moments.add(gaps, median, np.zeros_like(median))
        state: dict[str, Any] = {
            "numeric": self.numeric,
            "categorical": self.categorical,
            "median": median.tolist(),
            "scaling": cfg.numeric_scaling,
            "vocab": {c: sorted(self.vocab[c]) for c in self.categorical},
            "target": cfg.target,
        }
        if cfg.numeric_scaling == "standard":
            std = np.sqrt(moments.m2 / np.maximum(moments.n, 1))
            state["shift"], state["scale"] = moments.mean.tolist(), np.where(std > 0, std, 1).tolist()
        elif cfg.numeric_scaling == "minmax":
            low = np.where(gaps > 0, np.fmin(self.low, median), self.low)
            high = np.where(gaps > 0, np.fmax(self.high, median), self.high)
            state["shift"], state["scale"] = low.tolist(), np.where(high - low > 0, high - low, 1).tolist()
        else:
            filled = np.where(np.isnan(sample), median, sample)
            levels = np.linspace(0.0, 1.0, QUANTILE_LEVELS)
            state["quantiles"] = np.quantile(filled, levels, axis=0).T.tolist() if self.numeric else []
        if cfg.target is not None and self.target is not None:
            state.update(_fit_target(self.target, path, cfg.task))
        return state


def encoded_key(files: list[Path], cfg: TJEPAConfig, state: dict[str, Any]) -> dict[str, Any]:
    """What the encoded arrays depend on besides the files: the split settings and the fitted state."""
    digest = hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"tabular": "encoded", "version": VERSION, "files": [str(p) for p in files], "state": digest,
            "split": [cfg.val_fraction, cfg.test_fraction, cfg.split_seed, cfg.sep, list(cfg.na_values)]}  # fmt: skip


def encode_to(
    folder: Path,
    tables: list[tuple[Path, Callable[[np.ndarray], np.ndarray]]],
    rows: int,
    state: dict[str, Any],
    cfg: TJEPAConfig,
) -> None:
    """Encode ``tables`` (a file and the split of its row numbers) a batch at a time into ``folder``:
    ``numeric`` float32, ``categorical`` int64, ``split`` int8, and ``target`` when every table has it. Written
    as streams (:class:`ssl_domains.evaluation.NpyStream`): the process holds one batch, whatever the table."""
    from ssl_domains.evaluation.writer import NpyStream

    streams = {
        "numeric": NpyStream(folder / "numeric.npy", "float32"),
        "categorical": NpyStream(folder / "categorical.npy", "int64"),
        "split": NpyStream(folder / "split.npy", "int8"),
    }
    target: NpyStream | None = None
    every_target, start = True, 0
    for path, split_of in tables:
        unknown: dict[str, int] = {}
        for frame in iter_frames(path, BATCH_ROWS, cfg.sep, tuple(cfg.na_values)):
            encoded = encode_table(frame, path, state, quiet=True)
            streams["numeric"].write(encoded.numeric.reshape(len(frame), -1))
            streams["categorical"].write(encoded.categorical.reshape(len(frame), -1))
            streams["split"].write(split_of(frame.index.to_numpy()))
            if encoded.target is None:
                every_target = False
            elif every_target:
                if target is None and start == 0:
                    target = NpyStream(folder / "target.npy", str(encoded.target.dtype))
                if target is not None:
                    target.write(encoded.target)
            for column, n in encoded.unknown_counts.items():
                unknown[column] = unknown.get(column, 0) + n
            start += len(frame)
        if unknown:
            log.warning("%s: categories unseen in training mapped to the unknown index: %s", path, unknown)
    for stream in [*streams.values(), *([target] if target is not None else [])]:
        stream.close()
    if target is not None and not every_target:  # labels on some tables only: none are used, as in memory
        (folder / "target.npy").unlink()
    if start != rows:
        raise DataError(f"the tables changed while being read ({start} rows, {rows} before); read them again")
