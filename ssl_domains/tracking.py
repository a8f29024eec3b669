"""Experiment trackers chosen in the config (``trainer.loggers``): CSV, TensorBoard, Weights & Biases, MLflow.

Every tracker writes inside the run directory, so a run needs no network and no server:

- ``csv``: ``metrics.csv`` (kept across ``--resume``);
- ``tensorboard``: ``tensorboard/`` event files;
- ``wandb``: ``wandb/`` in offline mode (``wandb sync run/wandb/offline-run-*`` uploads it later). Set
  ``WANDB_MODE=online`` to log live; ``WANDB_PROJECT`` names the project (default ``ssl-domains``);
- ``mlflow``: a file store in ``mlruns/`` (``mlflow ui --backend-store-uri run/mlruns``), or the server in
  ``MLFLOW_TRACKING_URI`` when that is set.

W&B and MLflow come with ``pip install "ssl-domains[tracking]"``. A resumed run continues the same W&B and MLflow
runs: their ids are kept in ``trackers.yaml``. The plugin's figures are sent to every tracker that takes images
(:func:`log_figures`), and the representation monitor's metrics (:mod:`ssl_domains.monitor`) to all of them.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

__all__ = ["TRACKERS", "build_loggers", "check_trackers_installed", "finish", "log_figures", "log_metrics"]

TRACKERS = ("csv", "tensorboard", "wandb", "mlflow")
IDS_FILE = "trackers.yaml"
_PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}


def check_trackers_installed(names: Sequence[str]) -> None:
    """Raise :class:`UserError` naming the install command when a chosen tracker's package is missing (called
    before any data is read)."""
    missing = [n for n in names if n in _PACKAGES and importlib.util.find_spec(_PACKAGES[n]) is None]
    if missing:
        raise UserError(
            f"trainer.loggers asks for {', '.join(missing)}, which is not installed: "
            f'pip install "ssl-domains[tracking]" (or drop it from trainer.loggers)'
        )


def _saved_ids(run_dir: Path) -> dict[str, str]:
    path = run_dir / IDS_FILE
    return dict(yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def build_loggers(names: Sequence[str], run_dir: Path, resumed_step: int | None, rank_zero: bool) -> list[Any]:
    """The Lightning loggers for ``names``, writing under ``run_dir``; ``resumed_step`` is the step a resumed
    run continues from (``None`` for a new run). Only rank zero records the trackers' run ids."""
    import lightning.pytorch as pl

    from .checkpoint import atomic_write
    from .csv_logger import ResumableCSVLogger

    ids = _saved_ids(run_dir) if resumed_step is not None else {}
    loggers: list[Any] = []
    for name in names:
        if name == "csv":
            loggers.append(ResumableCSVLogger(save_dir=str(run_dir), name="", version=""))
        elif name == "tensorboard":
            purge = {"purge_step": resumed_step} if resumed_step is not None else {}  # replayed events go
            loggers.append(
                pl.loggers.TensorBoardLogger(
                    save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False, **purge
                )
            )
        elif name == "wandb":
            ids.setdefault("wandb", secrets.token_hex(6))  # W&B ids are [a-z0-9]
            loggers.append(
                pl.loggers.WandbLogger(
                    save_dir=str(run_dir),
                    project=os.environ.get("WANDB_PROJECT", "ssl-domains"),
                    name=run_dir.name,
                    id=ids["wandb"],
                    resume="allow",
                    offline=os.environ.get("WANDB_MODE", "offline") != "online",  # no network unless asked
                )
            )
        elif name == "mlflow":
            uri = os.environ.get("MLFLOW_TRACKING_URI")
            if not uri:  # the file store: no server, and it travels with the run folder
                uri = (run_dir / "mlruns").resolve().as_uri()
                # MLflow 3.x refuses its file store ("maintenance mode") unless this opt-out is set
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            logger = pl.loggers.MLFlowLogger(
                experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", "ssl-domains"),
                run_name=run_dir.name,
                tracking_uri=uri,
                run_id=ids.get("mlflow"),
            )
            if rank_zero:
                ids["mlflow"] = logger.run_id  # creates the run now, so that a resume finds it
            loggers.append(logger)
        else:  # the config's Literal already refuses other names
            raise UserError(f"unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
    if ids and rank_zero:
        text = yaml.safe_dump(ids)
        atomic_write(run_dir / IDS_FILE, lambda tmp: tmp.write_text(text))
    return loggers


def log_metrics(loggers: Sequence[Any], metrics: dict[str, float], step: int) -> None:
    """Send ``metrics`` to every logger at ``step`` (rank zero only: Lightning's loggers check that)."""
    for logger in loggers:
        logger.log_metrics(metrics, step=step)


def log_figures(loggers: Sequence[Any], figures: Path, step: int) -> int:
    """Send every PNG under ``figures`` to the loggers that take images (TensorBoard, W&B, MLflow); returns
    how many were sent to each."""
    paths = sorted(Path(figures).rglob("*.png")) if Path(figures).is_dir() else []
    if not paths:
        return 0
    import lightning.pytorch as pl

    for logger in loggers:
        if isinstance(logger, pl.loggers.WandbLogger):
            for path in paths:
                logger.log_image(key=f"figures/{path.stem}", images=[str(path)], step=step)
        elif isinstance(logger, pl.loggers.MLFlowLogger):
            for path in paths:
                logger.experiment.log_artifact(logger.run_id, str(path), artifact_path="figures")
        elif isinstance(logger, pl.loggers.TensorBoardLogger):
            import numpy as np
            from PIL import Image  # matplotlib, which draws the figures, depends on Pillow

            for path in paths:
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
                logger.experiment.add_image(f"figures/{path.stem}", pixels, step, dataformats="HWC")
            logger.experiment.flush()
    return len(paths)


def finish(loggers: Sequence[Any]) -> None:
    """Close the trackers' runs after the figures were sent (W&B writes its offline run file to the end)."""
    import lightning.pytorch as pl

    for logger in loggers:
        if isinstance(logger, pl.loggers.WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()
