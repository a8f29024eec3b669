"""Collecting embeddings from any plugin's model, writing them to disk, and the generic evaluation."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from ..data import random_split_indices
from ..errors import UserError
from ..plugin import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL, SSLDataModule, SSLModel
from .knn import knn_probe
from .probe import linear_probe
from .rankme import rankme
from .writer import EmbeddingWriter

__all__ = [
    "Embeddings",
    "collect_embeddings",
    "collect_position_embeddings",
    "embeddings_once",
    "evaluate_embeddings",
    "predict_embeddings",
    "write_embeddings",
]


@dataclass
class Embeddings:
    """Row-aligned embeddings with their ids and, when the data has them, labels and split assignments. Per-position
    embeddings (:func:`collect_position_embeddings`) have one row per (item, position) and ``positions``."""

    ids: np.ndarray
    vectors: np.ndarray
    labels: np.ndarray | None = None
    splits: np.ndarray | None = None
    positions: np.ndarray | None = None


Rows = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]


@torch.no_grad()
def _collect(
    model: torch.nn.Module, batches: Iterable[dict[str, Any]], device: str, rows: Callable[[Any, dict], Rows]
) -> Embeddings:
    """``rows(model, batch) -> (vectors [R, D], item of each row [R] or None for one row per item, positions [R]
    or None)``, gathered over ``batches`` with the items' ids, labels and splits."""
    model = model.to(device).eval()
    parts: dict[str, list[np.ndarray]] = {"ids": [], "vectors": [], "labels": [], "splits": [], "positions": []}
    for batch in batches:
        batch = move_data_to_device(batch, torch.device(device))
        vectors, item, position = rows(model, batch)
        # copies, not views: a plugin's embed may return a slice of a much larger tensor (e.g. the seed rows
        # of a sampled subgraph), and a view would keep all of it alive for the whole collection
        parts["vectors"].append(vectors.copy())
        for key, name in (("ids", "id"), ("labels", "label"), ("splits", "split")):
            if name in batch:
                values = batch[name].cpu().numpy()
                parts[key].append(values.copy() if item is None else values[item])
        if position is not None:
            parts["positions"].append(position)
    if not parts["ids"]:
        raise UserError("the data yielded no items to embed")
    whole = {k: np.concatenate(v) if v and len(v) == len(parts["ids"]) else None for k, v in parts.items()}
    return Embeddings(
        ids=whole["ids"],
        vectors=whole["vectors"].astype(np.float32),
        labels=whole["labels"],
        splits=whole["splits"],
        positions=None if whole["positions"] is None else whole["positions"].astype(np.int64),
    )


def _item_rows(model: SSLModel, batch: dict[str, Any]) -> Rows:
    z = model.embed(batch)
    if z.ndim != 2 or z.shape[0] != len(batch["id"]):
        raise RuntimeError(f"embed returned shape {tuple(z.shape)} for {len(batch['id'])} ids")
    return z.detach().float().cpu().numpy(), None, None


def _position_rows(model: SSLModel, batch: dict[str, Any]) -> Rows:
    states, lengths = model.embed_positions(batch)
    if states.ndim != 3 or states.shape[0] != len(batch["id"]) or lengths.shape != (states.shape[0],):
        raise RuntimeError(
            f"embed_positions returned shapes {tuple(states.shape)} and {tuple(lengths.shape)} for "
            f"{len(batch['id'])} ids"
        )
    valid = torch.arange(states.shape[1], device=states.device)[None, :] < lengths[:, None]
    item, position = (t.cpu().numpy() for t in torch.nonzero(valid, as_tuple=True))
    return states[valid].float().cpu().numpy(), item, position


def collect_embeddings(model: torch.nn.Module, batches: Iterable[dict[str, Any]], device: str = "cpu") -> Embeddings:
    """Run ``model.embed`` over ``batches`` (dicts with ``id``, optionally ``label`` and ``split``)."""
    return _collect(model, batches, device, _item_rows)


_ONCE: dict[tuple[int, int, str], Embeddings] | None = None


@contextmanager
def embeddings_once() -> Iterator[None]:
    """Within the block, :func:`predict_embeddings` embeds each (model, datamodule, device) once: a command that
    evaluates with the plugin's protocol and with the core's probes reads the data a single time."""
    global _ONCE
    outer, _ONCE = _ONCE, {} if _ONCE is None else _ONCE
    try:
        yield
    finally:
        _ONCE = outer


def predict_embeddings(model: torch.nn.Module, datamodule: SSLDataModule, device: str | torch.device) -> Embeddings:
    """``model.embed`` over ``datamodule.predict_dataloader()`` (the clean view), computed once per
    :func:`embeddings_once` block; the model and data must not change inside it."""
    key = (id(model), id(datamodule), str(device))
    if _ONCE is not None and key in _ONCE:
        return _ONCE[key]
    emb = collect_embeddings(model, datamodule.predict_dataloader(), str(device))
    if _ONCE is not None:
        _ONCE[key] = emb
    return emb


def collect_position_embeddings(
    model: torch.nn.Module, batches: Iterable[dict[str, Any]], device: str = "cpu"
) -> Embeddings:
    """Run the optional ``model.embed_positions`` over ``batches``: one row per position of each item (an audio
    frame, a token), with the item's id, the position's index and the item's label when the data has one.

    ``embed_positions(batch)`` returns ``(states [N, T, D], lengths [N])``; positions at or after an item's length
    are padding and are left out.
    """
    if not callable(getattr(model, "embed_positions", None)):
        raise UserError(
            f"{type(model).__name__} gives one embedding per item only (it has no embed_positions); "
            "leave out --per-position"
        )
    return _collect(model, batches, device, _position_rows)


def write_embeddings(emb: Embeddings, out: Path) -> list[Path]:
    """Write embeddings held in memory, as ``embed`` writes them (:class:`~ssl_domains.evaluation.EmbeddingWriter`):
    ``.parquet`` (columns ``id``, ``position`` per position, ``embedding``, ``label`` where known) or ``.npy``
    (vectors, ``<stem>.ids.npy``, ``<stem>.positions.npy`` per position, labels in ``<stem>.rows.parquet``)."""
    with EmbeddingWriter(out) as writer:
        writer.write(emb.ids, emb.vectors, labels=emb.labels, positions=emb.positions)
        return writer.close()


def evaluate_embeddings(emb: Embeddings, seed: int = 0) -> dict[str, Any]:
    """RankMe always; with labels, a linear probe and kNN (selected on validation, reported on test).

    The data's own split is used when it has one (``split`` in the batches); otherwise a stratified 60/20/20
    split with ``seed``. Items labelled ``-1`` are ignored by the probes.
    """
    metrics: dict[str, Any] = {"num_items": len(emb.ids), "embed_dim": int(emb.vectors.shape[1])}
    metrics["rankme"] = rankme(emb.vectors)
    if emb.labels is None:
        return metrics
    keep = emb.labels >= 0
    x, y = emb.vectors[keep], emb.labels[keep]
    if len(np.unique(y)) < 2:
        return metrics
    if emb.splits is not None and {SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST} <= set(np.unique(emb.splits[keep])):
        s = emb.splits[keep]
        parts = [np.flatnonzero(s == k) for k in (SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST)]
        metrics["split"] = "data"
    else:
        parts = random_split_indices(len(y), (0.6, 0.2, 0.2), seed, stratify=y)
        metrics["split"] = f"stratified 60/20/20, seed {seed}"
    train, val, test = ((x[p], y[p]) for p in parts)
    metrics.update(linear_probe(train, val, test))
    metrics.update(knn_probe(train, val, test))
    return metrics
