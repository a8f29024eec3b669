"""Runs: resolving a config, the run directory, training through Lightning, and reloading a finished run.

A run directory holds everything needed to continue, reuse or audit a run::

    config.yaml         the fully resolved config (every default written out)
    input_spec.yaml     the input the weights expect (sample rate, bands and statistics, spacing, schema, ...)
    last.ckpt           the newest checkpoint (a hard link into checkpoints/): what --resume continues from
    checkpoints/        the newest trainer.keep_checkpoints checkpoints: epoch ends, step and wall-time ones
    metrics.csv         per-step and per-epoch metrics
    tensorboard/        TensorBoard event files (the plugin's figures included)
    wandb/, mlruns/     with trainer.loggers wandb / mlflow: the offline W&B run and the MLflow file store
    trackers.yaml       the W&B and MLflow run ids, so that --resume continues the same tracked runs
    model.safetensors   the trained model's weights (what ``embed`` and ``evaluate`` load)
    config.json         the config as JSON, and README.md, the model card (see :mod:`ssl_domains.encoder`)
    evaluation.json     the metrics of the latest ``ssl-domains evaluate``
    data_state.pt       what the datamodule fitted on the training data (normalisation, vocabularies, sizes)
    figures/            the plugin's figures, if it draws any
    skipped_items.txt   the unreadable items skipped with trainer.on_data_error=skip, if any
    initialised_from.yaml  with ``train --init-from RUN``: the run whose weights the model started from
    imported.yaml       in a folder written by ``ssl-domains import``: the published file and its SHA-256
"""

from __future__ import annotations

import csv
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import registry
from .config import MonitorConfig, OptimConfig, TrainerConfig, from_mapping, merge, parse_overrides, to_mapping
from .errors import ConfigError, UserError
from .plugin import ModalityPlugin, SSLDataModule, SSLModel
from .rundir import LAST_CKPT

__all__ = ["LoadedRun", "ResolvedConfig", "load_run", "read_yaml", "resolve_config", "train"]

CONFIG_FILE = "config.yaml"
INPUT_SPEC_FILE = "input_spec.yaml"
WEIGHTS_FILE = "model.safetensors"
DATA_STATE_FILE = "data_state.pt"
METRICS_FILE = "metrics.csv"
INIT_FILE = "initialised_from.yaml"
RUN_DIR_ENV = "SSL_DOMAINS_RUN_DIR"  # set by rank 0 so DDP worker processes write into the same run


@dataclass
class ResolvedConfig:
    """Everything a run is built from, after defaults, plugin defaults, YAML files and --set are merged."""

    plugin: ModalityPlugin
    data: Path
    trainer: TrainerConfig
    optim: OptimConfig
    method: Any
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def to_mapping(self) -> dict[str, Any]:
        """The YAML form written to ``config.yaml``."""
        return {
            "plugin": self.plugin.name,
            "data": str(self.data),
            "trainer": to_mapping(self.trainer),
            "optim": to_mapping(self.optim),
            "monitor": to_mapping(self.monitor),
            self.plugin.name: to_mapping(self.method),
        }


def read_yaml(path_or_preset: str, plugin: ModalityPlugin | None = None) -> dict[str, Any]:
    """Read a YAML config file, or a preset shipped by ``plugin`` when no such file exists."""
    path = Path(path_or_preset)
    if not path.is_file() and plugin is not None:
        presets = plugin.presets()
        if path_or_preset in presets:
            path = presets[path_or_preset]
        else:
            names = ", ".join(presets) or "none"
            raise ConfigError(
                f"config {path_or_preset!r} is neither a file nor a preset of {plugin.name} (presets: {names})"
            )
    elif not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping (trainer:, optim:, <plugin>:), not a {type(data).__name__}")
    return data


def resolve_config(
    plugin: ModalityPlugin,
    data: str | Path | None,
    layers: list[dict[str, Any]] = (),  # type: ignore[assignment]
    overrides: list[str] = (),  # type: ignore[assignment]
    trainer_flags: dict[str, Any] | None = None,
) -> ResolvedConfig:
    """Merge, in increasing priority: core defaults, ``plugin.run_defaults``, ``layers`` (YAML files),
    ``--set`` overrides and explicit trainer flags; then validate every key and type."""
    section = plugin.name
    merged: dict[str, Any] = {
        "trainer": to_mapping(TrainerConfig()),
        "optim": to_mapping(OptimConfig()),
        "monitor": to_mapping(MonitorConfig()),
        section: to_mapping(plugin.default_config()),
    }
    merged = merge(merged, plugin.run_defaults)
    for layer in [*layers, parse_overrides(list(overrides)), {"trainer": trainer_flags or {}}]:
        merged = merge(merged, layer)
    allowed = {"plugin", "data", "trainer", "optim", "monitor", section}
    unknown = sorted(set(merged) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown top-level config key {unknown[0]!r}; valid keys: {', '.join(sorted(allowed))} "
            f"(plugin settings go under {section}:)"
        )
    if merged.get("plugin", plugin.name) != plugin.name:
        raise ConfigError(f"the config is for plugin {merged['plugin']!r}, but --plugin is {plugin.name!r}")
    data = data if data is not None else merged.get("data")
    if data is None:
        raise UserError("no data given: pass --data PATH")
    return ResolvedConfig(
        plugin=plugin,
        data=Path(data),
        trainer=from_mapping(TrainerConfig, merged["trainer"], "trainer"),
        optim=from_mapping(OptimConfig, merged["optim"], "optim"),
        method=from_mapping(plugin.config, merged[section], section),
        monitor=from_mapping(MonitorConfig, merged["monitor"], "monitor"),
    )


def is_worker_process() -> bool:
    """True in every DDP process but global rank 0, however it was launched.

    Lightning's own launcher sets ``LOCAL_RANK`` and ``NODE_RANK``; torchrun sets ``RANK`` (on a second node the
    first process has ``LOCAL_RANK=0`` but ``RANK>0``); SLURM's srun sets ``SLURM_PROCID``.
    """
    return any(os.environ.get(key, "0") != "0" for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def _trim_metrics(run_dir: Path, resume_step: int, finished_epochs: int) -> None:
    """Drop metric rows logged after the checkpoint we resume from, so that no step appears twice.

    A row logged at step ``resume_step`` or later is replayed by the resumed run; so is an epoch's summary row
    (no ``*_step`` value in it) of an epoch the checkpoint had not finished.
    """
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return

    def kept(row: dict[str, str]) -> bool:
        if row.get("step", "") != "" and int(float(row["step"])) >= resume_step:
            return False
        summary = not any(value != "" for key, value in row.items() if key.endswith("_step"))
        return not (summary and row.get("epoch", "") != "" and int(float(row["epoch"])) >= finished_epochs)

    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        rows = [r for r in reader if kept(r)]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _quiet_known_warnings() -> None:
    """Silence Lightning messages that are expected in this design and would only confuse users."""
    for message in (
        ".*smaller than the logging interval.*",  # full-graph plugins take one step per epoch
        ".*defined a `validation_step` but have no `val_dataloader`.*",  # validation is optional per plugin
        ".*does not have many workers.*",  # in-memory datasets need none
        ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",  # Lightning 2.6 internals on torch 2.11
        ".*Consider setting `persistent_workers=True`.*",
    ):
        warnings.filterwarnings("ignore", message=message)


def train(
    cfg: ResolvedConfig,
    run_dir: Path,
    resume: bool = False,
    fast_dev_run: bool = False,
    init_from: Path | None = None,
    callbacks: Sequence[Any] = (),
) -> Path:
    """Train ``cfg`` into ``run_dir`` (continuing from its ``last.ckpt`` when ``resume``); return ``run_dir``.
    ``init_from`` is a run folder (trained, or written by ``ssl-domains import``) whose weights the model
    starts from; every key must match. ``callbacks`` are extra Lightning callbacks, called before the core's.

    Everything that reads or checks input (the data module's ``setup``, the model) runs before the run directory
    is created, so bad input leaves nothing behind. A run that then fails before its first checkpoint removes
    what it created; one that has a checkpoint keeps it (``--resume`` continues). See :mod:`ssl_domains.rundir`
    and ``docs/reliability.md`` for every fault.
    """
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import TQDMProgressBar

    from .checkpoint import AtomicCheckpointIO, atomic_write, load_weights, save_data_state, save_weights
    from .checkpointing import RunCheckpoints
    from .encoder import write_model_card
    from .module import FINISHED_EPOCHS, FiniteLossGuard, SSLModule
    from .monitor import RepresentationMonitor
    from .rundir import CreatedRun, has_checkpoint
    from .tracking import build_loggers, check_trackers_installed, finish, log_figures

    _quiet_known_warnings()
    worker = is_worker_process()
    run_dir = Path(run_dir)
    ckpt_path, resumed_step = None, 0
    if resume:
        ckpt_path = run_dir / LAST_CKPT
        if not ckpt_path.is_file():
            if (run_dir / "imported.yaml").is_file():
                raise UserError(
                    f"cannot resume {run_dir}: it holds imported weights, no training state; start a run from them "
                    f"with `ssl-domains train --init-from {run_dir} --data DIR --output NEW`"
                )
            raise UserError(f"cannot resume: {ckpt_path} does not exist (the run wrote no checkpoint)")
        meta = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        resumed_step, finished = int(meta.get("global_step", 0)), int(meta.get(FINISHED_EPOCHS, 0))
        del meta

    tc = cfg.trainer
    check_trackers_installed(tc.loggers)
    pl.seed_everything(tc.seed, workers=True, verbose=False)
    datamodule = cfg.plugin.datamodule(cfg.method, cfg.data)
    datamodule.setup("fit")
    model = cfg.plugin.model(cfg.method, datamodule)
    if init_from is not None and not resume:
        load_weights(model, Path(init_from) / WEIGHTS_FILE)
    module = SSLModule(cfg.plugin.objective(cfg.method), model, cfg.optim, tc.seed, compile=tc.compile)
    input_spec = yaml.safe_dump(datamodule.input_spec(), sort_keys=False)  # the preprocessing the weights need

    # Only now, with the config, the data and the model built, does the run directory come into being.
    created = None
    if not worker:
        created = None if resume else CreatedRun.create(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(cfg.to_mapping(), sort_keys=False)
        atomic_write(run_dir / CONFIG_FILE, lambda tmp: tmp.write_text(text))
        if not resume:
            atomic_write(run_dir / INPUT_SPEC_FILE, lambda tmp: tmp.write_text(input_spec))
        if init_from is not None and not resume:
            origin = yaml.safe_dump({"run": str(Path(init_from).resolve()), "weights": WEIGHTS_FILE})
            atomic_write(run_dir / INIT_FILE, lambda tmp: tmp.write_text(origin))
        if resume:
            _trim_metrics(run_dir, resumed_step, finished)
    previous_env = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())  # read by the DDP processes Lightning starts inside fit()

    guard = FiniteLossGuard(tc.log_every_n_steps)
    checkpoints = RunCheckpoints(run_dir, tc, guard)
    all_callbacks: list[pl.Callback] = [*callbacks, guard, checkpoints]
    if cfg.monitor.every_n_steps:
        all_callbacks.append(RepresentationMonitor(cfg.monitor, datamodule))
    if tc.progress_bar:
        all_callbacks.append(TQDMProgressBar(refresh_rate=max(1, min(tc.log_every_n_steps, 20))))
    loggers = build_loggers(tc.loggers, run_dir, resumed_step if resume else None, rank_zero=not worker)
    trainer = pl.Trainer(
        max_epochs=tc.max_epochs,
        max_steps=tc.max_steps,
        max_time=None if tc.max_minutes is None else {"minutes": tc.max_minutes},
        precision=tc.precision,
        accelerator=tc.accelerator,
        devices=tc.devices,
        strategy=tc.strategy,
        num_nodes=tc.num_nodes,
        sync_batchnorm=tc.sync_batchnorm,
        logger=loggers or False,
        callbacks=all_callbacks,
        log_every_n_steps=tc.log_every_n_steps,
        accumulate_grad_batches=tc.accumulate_grad_batches,
        gradient_clip_val=cfg.optim.gradient_clip_val,
        deterministic=tc.deterministic,
        enable_progress_bar=tc.progress_bar,
        enable_model_summary=False,
        limit_train_batches=tc.limit_train_batches,
        check_val_every_n_epoch=tc.check_val_every_n_epoch,
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=False,  # RunCheckpoints writes every checkpoint
        default_root_dir=str(run_dir),
        fast_dev_run=fast_dev_run,
        num_sanity_val_steps=0,
    )
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except BaseException as exc:
        kept = has_checkpoint(run_dir)
        if created is not None and not kept:
            created.remove()  # nothing worth keeping: the same command can run again
        raise _explained(exc, run_dir, checkpoints, kept) from exc
    finally:
        if previous_env is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous_env
    if trainer.is_global_zero:
        save_weights(model, run_dir / WEIGHTS_FILE)
        save_data_state(datamodule.state_dict(), run_dir / DATA_STATE_FILE)
        _write_skipped(trainer, run_dir)
        model.eval()
        with torch.no_grad():  # on the host: Lightning's teardown has moved the model back from the accelerator
            cfg.plugin.visualize(model, datamodule, cfg.method, run_dir / "figures", torch.device("cpu"))
        log_figures(loggers, run_dir / "figures", trainer.global_step)
        finish(loggers)
        write_model_card(run_dir)
    return run_dir


def _explained(exc: BaseException, run_dir: Path, checkpoints: Any, kept: bool) -> BaseException:
    """The exception a failed run raises, with what was kept and how to continue where the user needs it."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from .errors import CheckpointWriteError, DataError, Preempted

    step = checkpoints.saved_step
    where = f"{run_dir / LAST_CKPT} (step {step})" if checkpoints.last_path is not None else f"{run_dir / LAST_CKPT}"
    resume = f"ssl-domains train --resume {run_dir}"
    if isinstance(exc, (Preempted, SIGTERMException)):
        reason = exc.args[0] if isinstance(exc, Preempted) and exc.args else "SIGTERM"
        if checkpoints.last_path is None and not kept:  # stopped while Lightning was still starting up
            return Preempted(f"stopped by {reason} before the first training step; nothing was kept, run it again")
        if checkpoints.last_path is None:
            return Preempted(f"stopped by {reason}; the run's checkpoints are kept. Continue with `{resume}`")
        return Preempted(f"stopped by {reason}; checkpoint written: {where}. Continue with `{resume}`")
    if isinstance(exc, DataError) and kept:
        return DataError(
            f"{exc}. Training stopped; checkpoint written: {where}. Fix or remove the file and continue with "
            f"`{resume}`, or set trainer.on_data_error=skip"
        )
    if isinstance(exc, CheckpointWriteError):
        before = f"the last good checkpoint is {run_dir / LAST_CKPT}" if kept else "no checkpoint was written yet"
        return CheckpointWriteError(f"{exc}. Training stopped; {before}. Free space, then `{resume}`")
    if kept and not isinstance(exc, (UserError, KeyboardInterrupt)):
        print(f"the run failed; its checkpoints are kept in {run_dir}: continue with `{resume}`", file=sys.stderr)
    return exc


def _write_skipped(trainer: Any, run_dir: Path) -> None:
    """List the unreadable items this rank skipped in ``skipped_items.txt`` (nothing when none was)."""
    from .checkpoint import atomic_write
    from .checkpointing import train_loaders

    messages = [m for loader in train_loaders(trainer) for m in loader.skipped_messages]
    total = sum(loader.skipped for loader in train_loaders(trainer))
    if total:
        atomic_write(run_dir / "skipped_items.txt", lambda tmp: tmp.write_text("\n".join(messages) + "\n"))
        print(f"skipped {total} unreadable items (trainer.on_data_error=skip): {run_dir / 'skipped_items.txt'}")


@dataclass
class LoadedRun:
    """A finished run, rebuilt for embedding or evaluation."""

    config: ResolvedConfig
    datamodule: SSLDataModule
    model: SSLModel
    run_dir: Path


def load_run(run_dir: Path, data: str | Path | None = None) -> LoadedRun:
    """Rebuild a run's plugin, datamodule (on ``data`` or the training data) and model with trained weights."""
    from .checkpoint import load_weights

    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); pass the --output of a train run")
    raw = read_yaml(str(config_path))
    plugin = registry.load(str(raw.get("plugin")))
    cfg = resolve_config(plugin, data if data is not None else raw.get("data"), [raw])
    if not cfg.data.exists():
        raise UserError(f"data path {cfg.data} does not exist; pass --data PATH")
    datamodule = predict_datamodule(cfg, run_dir)
    model = plugin.model(cfg.method, datamodule)
    load_weights(model, run_dir / WEIGHTS_FILE)
    model.eval()
    return LoadedRun(cfg, datamodule, model, run_dir)


def predict_datamodule(cfg: ResolvedConfig, run_dir: Path) -> SSLDataModule:
    """The datamodule of ``cfg`` on ``cfg.data``, with the fitted state of ``run_dir``, set up for prediction."""
    from .checkpoint import load_data_state

    datamodule = cfg.plugin.datamodule(cfg.method, cfg.data)
    datamodule.load_state_dict(load_data_state(Path(run_dir) / DATA_STATE_FILE))
    datamodule.setup("predict")
    return datamodule
