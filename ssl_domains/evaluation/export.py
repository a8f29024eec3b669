"""``embed``: a trained model over a datamodule's clean view, streamed to disk by Lightning's ``Trainer.predict``.

``Trainer.predict`` brings the accelerators, precisions and launchers the user already trains with (one GPU,
``--devices 8``, several nodes under SLURM or torchrun): under DDP each rank embeds its share of the items (an
unrepeated distributed sampler, so no item twice) and writes its own shard. Nothing is gathered in memory
(``return_predictions=False``); :class:`EmbeddingPredictionWriter` writes each batch as it comes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from ..errors import UserError
from .embeddings import Rows, _item_rows, _position_rows
from .writer import EmbeddingWriter

if TYPE_CHECKING:  # annotations only
    from ..plugin import SSLDataModule

__all__ = ["EmbeddingPredictionWriter", "ExportSummary", "export_embeddings"]


class _Embedder(pl.LightningModule):
    """The plugin's model seen by ``Trainer.predict``: one step is ``rows(model, batch)``, returned as NumPy."""

    def __init__(self, model: torch.nn.Module, rows: Callable[[Any, dict], Rows]) -> None:
        super().__init__()
        self.model, self.rows = model, rows

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        vectors, item, position = self.rows(self.model, batch)
        out: dict[str, Any] = {"vectors": vectors, "item": item, "position": position}
        for name in ("id", "label"):
            if name in batch:
                out[name] = batch[name].cpu().numpy()
        return out


class EmbeddingPredictionWriter(BasePredictionWriter):
    """Write every predicted batch to this rank's shard of ``out`` (:class:`EmbeddingWriter`), with the columns
    ``provenance(ids)`` gives for the batch's items (the datamodule's :meth:`~ssl_domains.FittedDataModule.provenance`).
    """

    def __init__(self, out: Path, provenance: Callable[[np.ndarray], dict[str, Any]] | None = None) -> None:
        super().__init__(write_interval="batch")
        self.out, self.provenance = Path(out), provenance
        self.writer: EmbeddingWriter | None = None
        self.paths: list[Path] = []
        self.items = 0

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.writer = EmbeddingWriter(self.out, trainer.global_rank, trainer.world_size)
        self.items = 0

    def write_on_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: dict[str, Any], *_: Any
    ) -> None:
        assert self.writer is not None
        if "id" not in prediction:
            raise RuntimeError("predict batches must carry an 'id' per item")
        ids, item = prediction["id"], prediction["item"]
        columns = self.provenance(ids) if self.provenance is not None else {}
        for name, values in columns.items():
            if len(values) != len(ids):
                raise RuntimeError(f"provenance column {name!r} has {len(values)} values for {len(ids)} items")
        pick = (lambda v: v) if item is None else (lambda v: np.asarray(v)[item])
        self.writer.write(
            pick(ids),
            prediction["vectors"],
            labels=None if "label" not in prediction else pick(prediction["label"]),
            positions=prediction["position"],
            columns={name: pick(values) for name, values in columns.items()},
        )
        self.items += len(ids)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.writer is not None
        self.paths = self.writer.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.writer is not None:
            self.writer.abort()


@dataclass
class ExportSummary:
    """What one process wrote: its files, items and rows (rows = items, or positions with ``per_position``)."""

    paths: list[Path]
    items: int
    rows: int
    dim: int
    rank: int
    world_size: int


def export_embeddings(
    model: torch.nn.Module,
    datamodule: SSLDataModule,
    out: Path,
    *,
    per_position: bool = False,
    accelerator: str = "auto",
    devices: int | str = 1,
    num_nodes: int = 1,
    precision: str = "32-true",
) -> ExportSummary:
    """Embed ``datamodule.predict_dataloader()`` with ``model.embed`` (or ``embed_positions``) and stream the rows,
    with the datamodule's provenance columns, to ``out`` (one shard per rank under DDP)."""
    if per_position and not callable(getattr(model, "embed_positions", None)):
        raise UserError(
            f"{type(model).__name__} gives one embedding per item only (it has no embed_positions); "
            "leave out --per-position"
        )
    writer = EmbeddingPredictionWriter(out, getattr(datamodule, "provenance", None))
    trainer = pl.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, precision=precision,
        callbacks=[writer], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, inference_mode=False,  # no_grad, as training's embed calls see
    )  # fmt: skip
    embedder = _Embedder(model, _position_rows if per_position else _item_rows)
    trainer.predict(embedder, dataloaders=datamodule.predict_dataloader(), return_predictions=False)
    assert writer.writer is not None and writer.writer.dim is not None
    return ExportSummary(
        writer.paths, writer.items, writer.writer.rows, writer.writer.dim, trainer.global_rank, trainer.world_size
    )
