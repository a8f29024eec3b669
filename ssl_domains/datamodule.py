"""The base of every plugin's datamodule: fitted state saved with the run, and a setup that runs once.

What a datamodule fits on its training data (feature widths, normalisation statistics, vocabularies, sensor
constants) must be applied unchanged to any data embedded later with the trained model, or the embeddings mean
nothing. The core saves :attr:`FittedDataModule.fitted` with the run (``data_state.pt``, and in every
checkpoint) and restores it before ``setup()`` when it loads the run (:func:`ssl_domains.load_encoder`), so a
plugin only says *what* it fits, through :meth:`FittedDataModule.fit`, never how it is stored.

Modelled on torchgeo's ``BaseDataModule``: the base owns the template (``setup`` calls :meth:`read` once), the
subclass owns its formats. Loaders come from :func:`ssl_domains.data.train_loader` and
:func:`ssl_domains.data.eval_loader`, so shuffling, sharding and exact resume are the core's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import lightning.pytorch as pl
import numpy as np

__all__ = ["FittedDataModule"]

T = TypeVar("T")
C = TypeVar("C")


class FittedDataModule(pl.LightningDataModule, ABC, Generic[C]):
    """A LightningDataModule reading ``data`` under ``cfg`` (of the plugin's config class ``C``), whose fitted
    state the core saves and restores.

    Subclasses implement :meth:`read` (find, check and index the data: called once, by the first ``setup``),
    ``train_dataloader`` and ``predict_dataloader`` (the clean view ``embed`` and ``evaluate`` use), and may
    implement ``val_dataloader``. A value fitted on the training data is obtained with :meth:`fit`.
    """

    def __init__(self, data: Path | str, cfg: C) -> None:
        super().__init__()
        self.data, self.cfg = Path(data), cfg
        self.fitted: dict[str, Any] = {}
        """Everything fitted on the training data, by name; saved with the run and restored before ``setup``."""
        self.ready = False

    @abstractmethod
    def input_spec(self) -> dict[str, Any]:
        """What an input must be to mean anything to the trained model, as plain YAML values: the
        preprocessing a user must reproduce to use the weights elsewhere (sample rate and features, bands in
        their order and their normalisation statistics, voxel spacing and orientation, the feature schema).
        Called after ``setup``; the keys are the plugin's declared ``input_spec``. The core writes it into the
        run directory (``input_spec.yaml``), next to the weights."""

    @abstractmethod
    def read(self, stage: str | None) -> None:
        """Find, check and index the data for ``stage`` (``"fit"``, ``"predict"``, ...); raise ``DataError``
        naming the file and the fix on bad input. Called once: ``setup`` is idempotent."""

    def setup(self, stage: str | None = None) -> None:
        """Read the data once; later calls (Lightning calls ``setup`` per stage) do nothing."""
        if self.ready:
            return
        self.read(stage)
        self.ready = True

    def provenance(self, ids: np.ndarray) -> dict[str, Any]:
        """Columns that tie the items ``ids`` (the ``id`` of the predict batches) back to the user's data, written
        beside their embeddings by ``embed``: name -> ``len(ids)`` values (a NumPy array or a list of str), such as
        the source ``path``, a ``node_id``, a ``row`` in its file. The reserved name ``geometry`` takes lon/lat
        rings, float64 ``[N, K, 2]`` (NaN where an item has no georeference), and is written as GeoParquet.
        Called after ``setup("predict")``; the default gives none."""
        return {}

    def fit(self, key: str, compute: Callable[[], T]) -> T:
        """The fitted value ``key``: the run's when it was restored, else ``compute()`` (on the training data),
        kept so that it is saved with the run."""
        if key not in self.fitted:
            self.fitted[key] = compute()
        return self.fitted[key]

    def state_dict(self) -> dict[str, Any]:
        """The fitted state (Lightning also stores it in every checkpoint)."""
        return dict(self.fitted)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the fitted state of a run (before ``setup``, so new data is prepared like the training data)."""
        self.fitted = dict(state)
