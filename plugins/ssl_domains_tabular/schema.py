"""Schema inference and the encoders fitted on the training split only.

Numeric columns are scaled (standard, min-max as in the T-JEPA reference, or a quantile-normal map); each
categorical column gets a vocabulary, with index 0 reserved for categories never seen in training. Encoding a
whole table is a handful of vectorised pandas/numpy calls (``pd.Categorical`` codes), so no per-batch
scikit-learn round trip happens during training, unlike the reference's per-batch ``OneHotEncoder``.

The fitted state is plain lists and numbers, saved with the run, so ``embed`` on new data reuses it exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from ssl_domains import DataError

if TYPE_CHECKING:  # annotations only
    from .plugin import TJEPAConfig

log = logging.getLogger("ssl_domains_tabular")

UNKNOWN_INDEX = 0
MISSING_CATEGORY = "<missing>"
QUANTILE_LEVELS = 1001


@dataclass
class EncodedTable:
    """A table as arrays: scaled numerics, categorical codes and (when a target is set) targets."""

    numeric: np.ndarray  # float32 [N, num_numeric]
    categorical: np.ndarray  # int64 [N, num_categorical]; 0 = unknown
    target: np.ndarray | None  # int64 class index or float32 value, [N]
    unknown_counts: dict[str, int]

    def __len__(self) -> int:
        return len(self.numeric)


def infer_columns(
    frame: pd.DataFrame, path: Path, target: str | None, categorical: list[str], numerical: list[str], drop: list[str]
) -> tuple[list[str], list[str]]:
    """Split the feature columns into (numeric, categorical): numeric dtypes are numeric, unless overridden."""
    columns = list(frame.columns)
    for name, listed in (("categorical", categorical), ("numerical", numerical), ("drop", drop)):
        unknown = [c for c in listed if c not in columns]
        if unknown:
            raise DataError(f"{path}: {name} names column(s) {unknown} that the table lacks (columns: {columns})")
    if target is not None and target not in columns:
        raise DataError(f"{path} has no target column {target!r}; set tjepa.target to one of {columns}")
    both = set(categorical) & set(numerical)
    if both:
        raise DataError(f"columns {sorted(both)} are listed as both categorical and numerical; pick one")
    features = [c for c in columns if c != target and c not in drop]
    if not features:
        raise DataError(f"{path} has no feature columns once the target and dropped columns are removed")
    numeric, cats = [], []
    for c in features:
        if c in categorical:
            cats.append(c)
        elif c in numerical:
            if not pd.api.types.is_numeric_dtype(frame[c]):
                raise DataError(f"{path}: column {c!r} is listed as numerical but holds text; fix it or drop it")
            numeric.append(c)
        elif pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]):
            numeric.append(c)
        else:
            cats.append(c)
    return numeric, cats


def check_missing(frame: pd.DataFrame, path: Path, columns: list[str], policy: str) -> None:
    """With ``missing: error``, refuse a table with missing values, naming each column and its row count."""
    if policy != "error":
        return
    counts = frame[columns].isna().sum()
    counts = counts[counts > 0]
    if len(counts):
        listing = ", ".join(f"{c!r} ({int(n)} rows)" for c, n in counts.items())
        raise DataError(
            f"{path} has missing values (NaN or an NA marker) in {listing}; set tjepa.missing=impute to fill "
            f"numerics with the training median and give categoricals a {MISSING_CATEGORY!r} category"
        )


def _as_strings(series: pd.Series) -> pd.Series:
    return series.astype("string").fillna(MISSING_CATEGORY).astype(str)


def fit_schema(frame: pd.DataFrame, path: Path, cfg: TJEPAConfig) -> dict[str, Any]:
    """Fit the scaler, vocabularies and target encoding on the training rows ``frame``."""
    numeric, cats = infer_columns(frame, path, cfg.target, list(cfg.categorical), list(cfg.numerical), list(cfg.drop))
    values = frame[numeric].to_numpy(dtype=np.float64) if numeric else np.zeros((len(frame), 0))
    finite = np.isfinite(values) | np.isnan(values)
    if not finite.all():
        bad = [numeric[j] for j in np.flatnonzero(~finite.all(axis=0))]
        raise DataError(f"{path}: numeric column(s) {bad} hold infinite values; replace them or drop the column(s)")
    median = np.nan_to_num(np.nanmedian(values, axis=0)) if numeric else np.zeros(0)
    filled = np.where(np.isnan(values), median, values)
    state: dict[str, Any] = {
        "numeric": numeric,
        "categorical": cats,
        "median": median.tolist(),
        "scaling": cfg.numeric_scaling,
        "vocab": {c: sorted(_as_strings(frame[c]).unique().tolist()) for c in cats},
        "target": cfg.target,
    }
    if cfg.numeric_scaling == "standard":
        state["shift"], state["scale"] = filled.mean(0).tolist(), np.where(filled.std(0) > 0, filled.std(0), 1).tolist()
    elif cfg.numeric_scaling == "minmax":
        span = filled.max(0) - filled.min(0) if len(filled) else np.ones(len(numeric))
        state["shift"], state["scale"] = filled.min(0).tolist(), np.where(span > 0, span, 1).tolist()
    else:
        levels = np.linspace(0.0, 1.0, QUANTILE_LEVELS)
        state["quantiles"] = np.quantile(filled, levels, axis=0).T.tolist() if numeric else []
    if cfg.target is not None:
        state.update(_fit_target(frame[cfg.target], path, cfg.task))
    return state


def _fit_target(series: pd.Series, path: Path, task: str) -> dict[str, Any]:
    if series.isna().any():
        raise DataError(f"{path}: target column {series.name!r} is empty in {int(series.isna().sum())} rows")
    if task == "auto":
        is_float = pd.api.types.is_float_dtype(series) and series.nunique() > 20
        task = "regression" if is_float else "classification"
    if task == "classification":
        classes = sorted(series.astype(str).str.strip().unique().tolist())
        if len(classes) < 2:
            raise DataError(f"{path}: target {series.name!r} has a single class {classes}; nothing to classify")
        return {"task": task, "classes": classes}
    if not pd.api.types.is_numeric_dtype(series):
        raise DataError(f"{path}: target {series.name!r} is text; use task=classification for a regression target")
    return {"task": task, "classes": []}


def _scale_numeric(values: np.ndarray, state: dict[str, Any]) -> np.ndarray:
    if state["scaling"] in ("standard", "minmax"):
        return (values - np.asarray(state["shift"])) / np.asarray(state["scale"])
    out = np.empty_like(values)
    levels = np.linspace(0.0, 1.0, QUANTILE_LEVELS)
    for j, knots in enumerate(state["quantiles"]):  # one np.interp per column, over the whole table
        knots = np.asarray(knots)
        # average the increasing and decreasing interpolations so ties (repeated quantiles) map to their middle
        up = np.interp(values[:, j], knots, levels)
        down = -np.interp(-values[:, j], -knots[::-1], -levels[::-1])
        out[:, j] = 0.5 * (up + down)
    clipped = torch.as_tensor(np.clip(out, 1e-3, 1 - 1e-3))
    return torch.special.ndtri(clipped).numpy()  # quantile -> standard normal (scikit-learn's output="normal")


def encode_table(frame: pd.DataFrame, path: Path, state: dict[str, Any], quiet: bool = False) -> EncodedTable:
    """Encode ``frame`` with a fitted ``state``; unseen categories become index 0 and are counted in the log
    (``quiet``: only in ``unknown_counts``, for a caller that encodes a file in parts and logs the total).

    Missing values are expected to be checked already (``check_missing``, once per file, before any split).
    """
    columns = state["numeric"] + state["categorical"]
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise DataError(f"{path} lacks the column(s) {absent} that the model was trained with")
    numeric = state["numeric"]
    values = frame[numeric].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64) if numeric else None
    if values is None:
        scaled = np.zeros((len(frame), 0), np.float32)
    else:
        text = frame[numeric].notna().to_numpy() & np.isnan(values)
        if text.any():
            bad = [numeric[j] for j in np.flatnonzero(text.any(0))]
            raise DataError(f"{path}: numeric column(s) {bad} hold text values; clean them or list them as categorical")
        values = np.where(np.isnan(values), np.asarray(state["median"]), values)
        scaled = _scale_numeric(values, state).astype(np.float32)
    codes = np.zeros((len(frame), len(state["categorical"])), np.int64)
    unknown: dict[str, int] = {}
    for j, c in enumerate(state["categorical"]):
        # a hash lookup per column; -1 (unseen) + 1 becomes UNKNOWN_INDEX
        codes[:, j] = pd.Index(state["vocab"][c]).get_indexer(_as_strings(frame[c])).astype(np.int64) + 1
        n_unknown = int((codes[:, j] == UNKNOWN_INDEX).sum())
        if n_unknown:
            unknown[c] = n_unknown
    if unknown and not quiet:
        log.warning("%s: categories unseen in training mapped to the unknown index: %s", path, unknown)
    return EncodedTable(scaled, codes, _encode_target(frame, path, state), unknown)


def _encode_target(frame: pd.DataFrame, path: Path, state: dict[str, Any]) -> np.ndarray | None:
    target = state.get("target")
    if target is None or target not in frame.columns:
        return None
    series = frame[target]
    if series.isna().any():
        raise DataError(f"{path}: target column {target!r} is empty in {int(series.isna().sum())} rows")
    if state["task"] == "regression":
        return series.to_numpy(dtype=np.float32)
    codes = pd.Index(state["classes"]).get_indexer(series.astype(str).str.strip())
    unseen = codes < 0
    if unseen.any():
        examples = sorted(set(series[unseen].astype(str).tolist()))[:5]
        raise DataError(
            f"{path}: target {target!r} has {int(unseen.sum())} rows with classes not in training "
            f"{state['classes']} (e.g. {examples}); make the labels match"
        )
    return codes.astype(np.int64)
