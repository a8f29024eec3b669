"""The plugin contract: a plugin *describes* its method, *builds* three objects, and its model *steps*.

- **Describe.** Class attributes, readable without importing torch, so that ``ssl-domains list`` and ``info``
  stay fast and work when an extra is missing: ``name``, ``description``, ``paper``, ``extra``, ``requires``,
  ``data_formats``, ``batch_keys``, ``commands``, ``run_defaults`` and ``config``, the typed config class (a
  dataclass whose fields are declared with ``config.option`` and whose ``validate()`` holds the cross-field checks).
- **Build.** ``datamodule(cfg, data)`` (an :class:`SSLDataModule`, normally a
  :class:`ssl_domains.datamodule.FittedDataModule`), ``model(cfg, datamodule)`` (an :class:`SSLModel`) and
  ``objective(cfg)`` (an :class:`Objective`). The factories import the heavy code only when called.
- **Step.** The core trains ``objective(model, batch)`` and, after every optimiser step, calls
  ``model.after_step(progress)`` when the model defines it: EMA teachers and centres move there, and nowhere else.

The training loop, precision, devices, checkpoints, logging, seeding, fitted state and evaluation belong to the
core. See ``docs/plugin-authoring.md`` for a walk-through and ``docs/architecture.md`` for the picture.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:  # only for annotations: importing this module must not import torch
    import torch
    from torch import nn

__all__ = [
    "SPLIT_TEST",
    "SPLIT_TRAIN",
    "SPLIT_VAL",
    "ModalityPlugin",
    "Objective",
    "PluginCommand",
    "SSLDataModule",
    "SSLModel",
    "contract_problems",
]

SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST = 0, 1, 2

C = TypeVar("C")


@runtime_checkable
class Objective(Protocol):
    """``(model, batch) -> {"loss": scalar tensor, **logs}``: masking, views and the loss of one training step.

    Computed on the batch's device, batched, without host syncs (no ``.item()``); scalar logs are logged as
    ``train/<key>``. An objective whose loss draws no randomness (its views are fixed by the data) sets a class
    attribute ``stochastic = False``, which the conformance kit reads.
    """

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor], /) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class SSLModel(Protocol):
    """The network a plugin builds: an ``nn.Module`` that embeds a batch.

    ``embed(batch) -> [N, embed_dim]`` is the representation used downstream, one row per ``batch["id"]``.
    Optional: ``embed_positions(batch) -> ([N, T, D], lengths [N])`` for ``embed --per-position``, and
    ``after_step(progress)``, which the core calls once after every optimiser step (``progress`` from 0 to 1).
    """

    embed_dim: int

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...


@runtime_checkable
class SSLDataModule(Protocol):
    """What the core needs of a datamodule (:class:`ssl_domains.datamodule.FittedDataModule` provides the rest).

    ``setup`` is idempotent; ``predict_dataloader`` is the clean, un-augmented view ``embed`` and ``evaluate``
    read; ``state_dict``/``load_state_dict`` carry what was fitted on the training data (restored before
    ``setup`` when a run is loaded, so new data is processed exactly like the training data).
    """

    def setup(self, stage: str | None = None) -> None: ...

    def train_dataloader(self) -> Any: ...

    def predict_dataloader(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


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


@dataclass(frozen=True)
class WeightFormat:
    """A published checkpoint format a plugin reads (``ssl-domains import``) or writes (``ssl-domains export``).

    ``reader`` is ``"module:function"``, a function ``(path: Path) -> ssl_domains.transfer.ImportedWeights``
    that maps the file onto the plugin's model; ``writer`` a function ``(model, cfg, path: Path) -> None`` that
    writes the model in the format, loadable by the format's own code. Both are imported only when used.
    ``example_overrides`` are run-config overrides, on top of the plugin's ``example_overrides()``, at which the
    writer accepts the model (a format may hold only the published architectures); the conformance kit
    round-trips the format there.
    """

    name: str
    help: str
    reader: str | None = None
    writer: str | None = None
    example_overrides: Mapping[str, Any] = field(default_factory=dict)

    def load(self, role: str) -> Callable[..., Any]:
        """Import and return the ``"reader"`` or ``"writer"`` function."""
        target = self.reader if role == "reader" else self.writer
        if target is None:
            raise ValueError(f"weight format {self.name!r} has no {role}")
        module_name, _, attr = target.partition(":")
        return getattr(importlib.import_module(module_name), attr)


class ModalityPlugin(ABC, Generic[C]):
    """Base class of every ssl-domains plugin, first-party or third-party; ``C`` is its config class.

    Register a subclass under the ``ssl_domains.plugins`` entry-point group of your distribution::

        [project.entry-points."ssl_domains.plugins"]
        mymethod = "my_package.plugin:MyMethodPlugin"

    The module named there must import without torch; import heavy modules inside the factory methods.
    """

    # ---- describe (class attributes) -------------------------------------------------------------------------
    name: ClassVar[str]
    """Unique plugin name, as typed on the command line (``--plugin NAME``) and as the run config's section."""
    description: ClassVar[str]
    """One line for ``ssl-domains list``."""
    paper: ClassVar[str]
    """Citation (authors, title, venue, year) and URL of the method this plugin implements."""
    config: ClassVar[type]
    """The typed config class ``C``: a dataclass of ``config.option`` fields, with cross-field checks in its
    ``validate()``; its defaults are the paper's."""
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
    weight_formats: ClassVar[tuple[WeightFormat, ...]] = ()
    """Published checkpoint formats of the method, for ``ssl-domains import`` and ``ssl-domains export``."""
    run_defaults: ClassVar[Mapping[str, Any]] = {}
    """Plugin-specific defaults for the core sections, e.g. ``{"optim": {"lr": 1e-3}, "trainer": {...}}``."""
    input_spec: ClassVar[Mapping[str, str]] = {}
    """The input the model expects, key -> meaning (``info`` prints it); a run's values, from its datamodule's
    ``input_spec()``, are saved with its weights as ``input_spec.yaml``. Weights without their preprocessing are
    unusable (torchgeo#1042): declare everything a user must reproduce."""

    def default_config(self) -> C:
        """The config with the paper's defaults."""
        return type(self).config()

    def presets(self) -> dict[str, Path]:
        """Named YAML presets shipped with the plugin (``--config NAME``), by default ``<package>/configs/*.yaml``.

        Plugins of one package that share ``configs/`` override this to keep their own files.
        """
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
        }

    # ---- build (may import torch and domain libraries) -------------------------------------------------------
    @abstractmethod
    def datamodule(self, cfg: C, data: Path) -> SSLDataModule:
        """The datamodule reading ``data`` and yielding dict batches (see :class:`SSLDataModule`); subclass
        :class:`ssl_domains.datamodule.FittedDataModule`, which saves what it fits with the run."""

    @abstractmethod
    def model(self, cfg: C, datamodule: SSLDataModule) -> SSLModel:
        """The network (see :class:`SSLModel`). Called after ``datamodule.setup("fit")`` (or ``"predict"``), so
        sizes can be read from the datamodule."""

    @abstractmethod
    def objective(self, cfg: C) -> Objective:
        """The training step's loss (see :class:`Objective`)."""

    # ---- example data (quickstart, conformance kit, tests) ---------------------------------------------------
    @abstractmethod
    def make_example_data(self, root: Path) -> Path:
        """Write a tiny dataset in an accepted format under ``root`` and return the path to pass as ``--data``.

        Used by the conformance kit and by tests; it must need no network and finish in seconds.
        """

    def example_overrides(self) -> Mapping[str, Any]:
        """Run-config overrides sized for :meth:`make_example_data` (a smaller model, fewer epochs), which the
        conformance kit and the tests train with; none by default."""
        return {}

    # ---- downstream ------------------------------------------------------------------------------------------
    def evaluate(
        self, model: SSLModel, datamodule: SSLDataModule, cfg: C, device: torch.device
    ) -> dict[str, float] | None:
        """Plugin-specific downstream evaluation with the field's protocol, or None to use the core's. ``model``
        is on ``device``, in eval mode."""
        return None

    def visualize(
        self, model: SSLModel, datamodule: SSLDataModule, cfg: C, out_dir: Path, device: torch.device
    ) -> list[Path]:
        """Save figures about the trained model under ``out_dir`` and return their paths (default: none)."""
        return []

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


# Members of the first contract that plugins may still define, and what replaced each.
_REPLACED = {
    "test_overrides": "rename the class attribute to a method: def example_overrides(self) -> Mapping[str, Any]",
    "stochastic_objective": "set `stochastic = False` on the objective's class instead",
    "shared_presets": "override presets() and keep the files named after the plugin",
    "config_section": "remove it: the config section is the plugin's name",
    "on_train_batch_end": "move the teacher update into the model: def after_step(self, progress: float) -> None",
}


def contract_problems(cls: type) -> list[str]:
    """What a plugin class written against the first contract must change, one line each (empty when none)."""
    import inspect

    problems = [f"`{member}`: {fix}" for member, fix in _REPLACED.items() if hasattr(cls, member)]
    if not isinstance(getattr(cls, "config", None), type):
        problems.append("declare the config class: `config = MyConfig` (and drop default_config())")
    for hook, params in (("evaluate", 4), ("visualize", 5)):
        fn = getattr(cls, hook, None)
        if fn is not None and len(inspect.signature(fn).parameters) - 1 != params:
            want = "model, datamodule, cfg, device" if hook == "evaluate" else "model, datamodule, cfg, out_dir, device"
            problems.append(f"`{hook}` takes ({want})")
    return problems
