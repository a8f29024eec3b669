"""The plugin contract: what a modality plugin declares and provides.

A plugin is a small class. Its *metadata* are class attributes, readable without importing torch, so that
``ssl-domains list`` and ``ssl-domains info`` stay fast and work when an extra is missing. Its *factories*
import the heavy code (torch, the domain libraries) only when called.

The training loop, precision, devices, checkpoints, logging, seeding and evaluation belong to the core. A plugin
owns its science: how data is read (``datamodule``), the network (``model``), and the objective, with its
masking, computed on the device (``objective``). See ``docs/plugin-authoring.md`` for a walk-through.

Batches are dicts of tensors. Every batch carries ``"id"``: an int64 tensor ``[N]`` naming the N items whose
representations ``model.embed(batch)`` returns as ``[N, D]``. A batch may also carry ``"label"`` (int64 ``[N]``,
``-1`` for unlabelled) and ``"split"`` (int64 ``[N]``: 0 train, 1 validation, 2 test, -1 none), which the core's
evaluation uses when present.
"""

from __future__ import annotations

import importlib
import importlib.resources
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # only for annotations: importing this module must not import torch
    import lightning.pytorch as pl
    import torch
    from torch import nn

__all__ = ["SPLIT_TEST", "SPLIT_TRAIN", "SPLIT_VAL", "ModalityPlugin", "Objective", "PluginCommand"]

SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST = 0, 1, 2

Objective = "Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]]"


@dataclass(frozen=True)
class PluginCommand:
    """A command a plugin adds to ``ssl-domains run PLUGIN COMMAND ...``.

    ``target`` is ``"module:function"``; the function takes the remaining argv (``list[str]``) and returns an
    exit code. It is imported only when the command runs.
    """

    name: str
    target: str
    help: str

    def load(self) -> Callable[[list[str]], int]:
        """Import and return the command's function."""
        module_name, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module_name), attr)


class ModalityPlugin(ABC):
    """Base class of every ssl-domains plugin, first-party or third-party.

    Register a subclass under the ``ssl_domains.plugins`` entry-point group of your distribution::

        [project.entry-points."ssl_domains.plugins"]
        mymethod = "my_package.plugin:MyMethodPlugin"

    The module named there must import without torch; import heavy modules inside the factory methods.
    """

    # ---- declarative metadata (class attributes) -------------------------------------------------------------
    name: ClassVar[str]
    """Unique plugin name, as typed on the command line (``--plugin NAME``)."""
    description: ClassVar[str]
    """One line for ``ssl-domains list``."""
    paper: ClassVar[str]
    """Citation (authors, title, venue, year) and URL of the method this plugin implements."""
    extra: ClassVar[str | None] = None
    """The pip extra of the plugin's distribution that installs ``requires`` (``"graph"`` -> ``pip install
    "ssl-domains[graph]"``), or None if the distribution's base install suffices."""
    requires: ClassVar[tuple[str, ...]] = ()
    """Import names the plugin needs beyond the core (checked with ``importlib.util.find_spec``)."""
    data_formats: ClassVar[tuple[str, ...]] = ()
    """Human-readable descriptions of the ``--data`` inputs the plugin accepts, shown by ``info``."""
    batch_keys: ClassVar[Mapping[str, str]] = {"id": "int64"}
    """Keys and torch dtype names every training batch carries; checked by the conformance kit."""
    commands: ClassVar[tuple[PluginCommand, ...]] = ()
    """Extra commands reachable as ``ssl-domains run NAME COMMAND``."""
    run_defaults: ClassVar[Mapping[str, Any]] = {}
    """Plugin-specific defaults for the core sections, e.g. ``{"optim": {"lr": 1e-3}, "trainer": {...}}``."""
    stochastic_objective: ClassVar[bool] = True
    """Whether the objective draws random masks or views on the device. False for methods whose views are fixed
    by the data (MERLIN's real/imaginary split), whose randomness lives in the datamodule's patch sampling."""
    test_overrides: ClassVar[Mapping[str, Any]] = {}
    shared_presets: ClassVar[bool] = False
    """True when several plugins of one package share its ``configs/`` folder: each then offers only the
    ``<name>-*.yaml`` files (``tera-fsdd`` for ``tera``)."""
    """Config overrides the conformance kit applies (e.g. a smaller model), in run-config form."""

    # ---- configuration ---------------------------------------------------------------------------------------
    @abstractmethod
    def default_config(self) -> Any:
        """The plugin's typed config: a dataclass instance whose fields are declared with ``config.option``."""

    def presets(self) -> dict[str, Path]:
        """Named YAML presets shipped with the plugin (``--config NAME``), by default ``<package>/configs/*.yaml``."""
        package = type(self).__module__.rpartition(".")[0] or type(self).__module__
        try:
            root = importlib.resources.files(package) / "configs"
        except ModuleNotFoundError:
            return {}
        if not root.is_dir():
            return {}
        return {
            Path(entry.name).stem: Path(str(entry))
            for entry in sorted(root.iterdir(), key=lambda e: e.name)
            if entry.name.endswith((".yaml", ".yml"))
            and (not self.shared_presets or entry.name.startswith(f"{self.name}-"))
        }

    # ---- factories (may import torch and domain libraries) ---------------------------------------------------
    @abstractmethod
    def datamodule(self, cfg: Any, data: Path) -> pl.LightningDataModule:
        """A LightningDataModule reading ``data`` and yielding dict batches.

        It must provide ``train_dataloader()`` and ``predict_dataloader()`` (the clean, un-augmented view used by
        ``embed`` and ``evaluate``), may provide ``val_dataloader()``, and must make ``setup()`` idempotent.
        Anything fitted on the training data (feature dims, normalisation statistics, vocabularies) goes into
        ``state_dict()``; the core saves it with the run and calls ``load_state_dict()`` before ``setup()`` when
        embedding new data, so new data is processed exactly like the training data.
        """

    @abstractmethod
    def model(self, cfg: Any, datamodule: pl.LightningDataModule) -> nn.Module:
        """The network. Called after ``datamodule.setup("fit")`` (or ``"predict"``), so sizes can be read from it.

        The module must define ``embed_dim: int`` and ``embed(batch) -> Tensor[N, embed_dim]``, the
        representation used downstream (one row per ``batch["id"]``). It may define ``embed_positions(batch) ->
        (Tensor[N, T, D], lengths[N])``, one vector per position of each item, for ``embed --per-position``.
        """

    @abstractmethod
    def objective(self, cfg: Any) -> Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """A callable ``(model, batch) -> {"loss": scalar, **logs}``.

        Masking and views are computed inside it, on the batch's device, batched, without host syncs.
        """

    @abstractmethod
    def make_example_data(self, root: Path) -> Path:
        """Write a tiny dataset in an accepted format under ``root`` and return the path to pass as ``--data``.

        Used by the conformance kit and by tests; it must need no network and finish in seconds.
        """

    # ---- optional hooks --------------------------------------------------------------------------------------
    def on_train_batch_end(  # noqa: B027 - an optional hook: doing nothing is the default
        self, model: nn.Module, batch: dict[str, torch.Tensor], progress: float
    ) -> None:
        """Called after every optimiser step; ``progress`` runs from 0 to 1. Update EMA teachers here."""

    def visualize(self, model: nn.Module, datamodule: pl.LightningDataModule, out_dir: Path) -> list[Path]:
        """Save figures about the trained model under ``out_dir`` and return their paths (default: none)."""
        return []

    def evaluate(self, model: nn.Module, datamodule: pl.LightningDataModule, cfg: Any) -> dict[str, float] | None:
        """Plugin-specific downstream evaluation with the field's protocol, or None to use the core's."""
        return None

    # ---- helpers ---------------------------------------------------------------------------------------------
    def install_command(self, distribution: str) -> str:
        """The exact pip command that installs what ``requires`` lists."""
        target = f"{distribution}[{self.extra}]" if self.extra else distribution
        return f'pip install "{target}"'

    def missing_requirements(self) -> list[str]:
        """Import names from ``requires`` that cannot be found (nothing is imported to check)."""
        import importlib.util

        missing = []
        for module in self.requires:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                missing.append(module)
        return missing

    def config_section(self) -> str:
        """Name of this plugin's section in run configs and ``--set`` keys (the plugin name)."""
        return self.name
