"""Run directories: where a run goes, when an existing one is continued, and what a failed run leaves behind.

The policy, in the order ``ssl-domains train`` applies it:

1. ``--output DIR`` that does not exist or is empty: a new run.
2. ``--output DIR`` holding a run: refused, naming the two ways on (``--resume DIR``, or ``--resume-if-exists``).
   With ``--resume-if-exists`` (the flag for a requeued job that re-runs the same command) a run with a
   checkpoint is continued, provided the command's config is the run's; a run killed before its first
   checkpoint (nothing to continue) is started over.
3. The run directory is created only after the config, the data and the model were all built without an error
   (:func:`ssl_domains.run.train`), so bad input leaves nothing behind.
4. A run that fails before its first checkpoint removes what it created; one with a checkpoint keeps everything,
   and ``--resume DIR`` continues it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = [
    "RUN_FILES",
    "CreatedRun",
    "config_differences",
    "default_run_dir",
    "has_checkpoint",
    "latest_run",
    "plan_run_dir",
    "refuse_existing",
]

LAST_CKPT = "last.ckpt"
CHECKPOINT_DIR = "checkpoints"
# what a run writes before its first checkpoint; a folder holding only these can be started over
RUN_FILES = frozenset(
    {
        "config.yaml",
        "input_spec.yaml",
        "metrics.csv",
        "hparams.yaml",
        "tensorboard",
        CHECKPOINT_DIR,
        "figures",
        "initialised_from.yaml",
    }
)
# trainer settings a continued run may change: how long, on what hardware, how it reports and checkpoints
RESUMABLE_KEYS = frozenset(
    {
        "max_epochs",
        "max_steps",
        "max_minutes",
        "accelerator",
        "devices",
        "num_nodes",
        "strategy",
        "progress_bar",
        "log_every_n_steps",
        "checkpoint_every_n_steps",
        "checkpoint_every_n_minutes",
        "keep_checkpoints",
        "on_data_error",
    }
)


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint to continue from."""
    run_dir = Path(run_dir)
    return (run_dir / LAST_CKPT).is_file() or any((run_dir / CHECKPOINT_DIR).glob("*.ckpt"))


def only_run_files(run_dir: Path) -> bool:
    """Whether everything in ``run_dir`` is something a run writes (nothing of the user's would be lost)."""
    return all(entry.name in RUN_FILES or entry.name.startswith(".") for entry in Path(run_dir).iterdir())


def refuse_existing(run_dir: Path) -> None:
    """Raise the :class:`UserError` for a fresh run pointed at ``run_dir`` that already holds files."""
    if has_checkpoint(run_dir):
        raise UserError(
            f"{run_dir} already holds a run with a checkpoint; continue it with `ssl-domains train --resume "
            f"{run_dir}` (or re-run this command with --resume-if-exists), or pick another --output"
        )
    if only_run_files(run_dir):
        raise UserError(
            f"{run_dir} holds a run that saved no checkpoint (it was stopped before its first one), so there is "
            "nothing to continue: delete it, pass --resume-if-exists to start it over, or pick another --output"
        )
    raise UserError(f"{run_dir} already holds files that are not a run; pick another --output")


def clear_unstarted(run_dir: Path) -> None:
    """Remove the files of a run that saved no checkpoint, so that it can start over in the same place."""
    if has_checkpoint(run_dir) or not only_run_files(run_dir):
        raise UserError(f"{run_dir} is not a run without checkpoints; refusing to clear it")
    for entry in Path(run_dir).iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def config_differences(saved: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs, ignoring :data:`RESUMABLE_KEYS`."""
    out = []
    for key in sorted(set(saved) | set(new)):
        dotted = f"{prefix}{key}"
        a, b = saved.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(config_differences(a, b, f"{dotted}."))
        elif a != b and not (prefix == "trainer." and key in RESUMABLE_KEYS):
            out.append(f"{dotted}: the run has {a!r}, the command {b!r}")
    return out


def plan_run_dir(
    run_dir: Path, config: Mapping[str, Any], *, resume: bool, resume_if_exists: bool, output_given: bool
) -> tuple[Path, bool]:
    """``(run directory, continue from its checkpoint?)`` for ``ssl-domains train``: the policy above.

    ``run_dir`` is ``--output`` (``output_given``), ``--resume DIR`` (``resume``) or the default; ``config`` the
    command's resolved config. Under torchrun or srun every rank gets here; only the launching process (not a
    rank Lightning started for it) checks and clears the directory.
    """
    import os

    from .run import CONFIG_FILE, RUN_DIR_ENV, is_worker_process, read_yaml

    worker = is_worker_process()
    # srun sets SLURM_STEP_NUM_TASKS for the tasks it starts; a plain shell inside salloc or sbatch does not
    world = int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_STEP_NUM_TASKS") or 1)
    if world > 1 and not os.environ.get(RUN_DIR_ENV) and not output_given and not resume:
        # torchrun / srun start every rank at once: a timestamped default directory could differ between them
        raise UserError("every rank must write the same run: pass --output DIR when launching with torchrun or srun")
    if worker and os.environ.get(RUN_DIR_ENV):
        run_dir = Path(os.environ[RUN_DIR_ENV])
    holds_files = run_dir.is_dir() and any(run_dir.iterdir())
    if resume_if_exists:
        # a requeued job re-runs its command: continue the run if it has a checkpoint, else (re)start it
        resume = run_dir.is_dir() and has_checkpoint(run_dir)
        if resume and not worker:
            saved = read_yaml(str(run_dir / CONFIG_FILE)) if (run_dir / CONFIG_FILE).is_file() else {}
            differences = config_differences(saved, config)
            if differences:
                raise UserError(
                    f"--resume-if-exists: {run_dir} is a run of another config ({'; '.join(differences[:3])}); "
                    "pick another --output, or continue that run with --resume DIR"
                )
        elif not resume and not worker and holds_files:
            clear_unstarted(run_dir)  # it saved no checkpoint: nothing is lost by starting over
    elif not worker and not resume and holds_files:
        refuse_existing(run_dir)
    return run_dir, resume


def latest_run(plugin: str | None, root: Path = Path("runs")) -> Path:
    """The most recently checkpointed run under ``runs/`` (for ``--resume last``)."""
    pattern = f"{plugin}/*/{LAST_CKPT}" if plugin else f"*/*/{LAST_CKPT}"
    candidates = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise UserError(f"--resume last: no run with a {LAST_CKPT} under {root.resolve()}")
    return candidates[-1].parent


def default_run_dir(plugin: str, root: Path = Path("runs")) -> Path:
    """``runs/<plugin>/<timestamp>``, made unique."""
    base = root / plugin / time.strftime("%Y%m%d-%H%M%S")
    run_dir, n = base, 1
    while run_dir.exists():
        run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
    return run_dir


@dataclass
class CreatedRun:
    """What :func:`ssl_domains.run.train` created, so that a run failing before its first checkpoint can undo it."""

    run_dir: Path
    made_dir: bool
    existing: set[str] = field(default_factory=set)

    @classmethod
    def create(cls, run_dir: Path) -> CreatedRun:
        """Create ``run_dir`` (and its parents) and remember what was there before."""
        run_dir = Path(run_dir)
        made = not run_dir.exists()
        existing = set() if made else {p.name for p in run_dir.iterdir()}
        run_dir.mkdir(parents=True, exist_ok=True)
        return cls(run_dir, made, existing)

    def remove(self) -> None:
        """Remove what this run created (everything, when it made the folder itself)."""
        if self.made_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            return
        for entry in self.run_dir.iterdir():
            if entry.name not in self.existing:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
