"""When a run writes checkpoints, and what it does when it is asked to stop.

:class:`RunCheckpoints` is the only writer of checkpoints (Lightning's own checkpointing is off). It writes

* at the end of every ``trainer.checkpoint_every_n_epochs``-th epoch and of the last one;
* every ``trainer.checkpoint_every_n_steps`` optimiser steps and whenever ``trainer.checkpoint_every_n_minutes``
  of wall time passed since the last write (30 min by default), mid-epoch included;
* when training ends early (``max_steps``, ``max_minutes``);
* at the current step when the process receives SIGTERM, SIGUSR1 (SLURM's pre-timeout signal) or a first
  Ctrl-C, then raises :class:`~ssl_domains.errors.Preempted` (exit code 75);
* a write (or stop) due at an epoch's last batch happens at that epoch's end, after its validation: Lightning
  resumes a checkpoint of the last batch in the next epoch and skips the epoch's end, which would change the
  RNG draws that follow (validation draws too) and leave the epoch without its validation;
* at the last finished step when an unreadable item stops the run (``trainer.on_data_error: stop``).

Each file is ``checkpoints/step-<N>.ckpt`` (``epoch-<E>-step-<N>.ckpt`` at an epoch end), written atomically;
``last.ckpt`` is then pointed at it (a hard link, so no second copy is written), and only the newest
``trainer.keep_checkpoints`` files are kept. A checkpoint is always taken at an optimiser-step boundary, after the
finite-loss check, so it never holds a half-accumulated step or weights trained on a NaN loss. It holds the
model, optimiser, schedule, loop counters and the training loader's position and RNG streams
(:mod:`ssl_domains.loader`), which is what makes ``--resume`` continue mid-epoch exactly.

Under DDP every decision that leads to a collective write is agreed on by all ranks at the end of each step
(one all-reduce of three flags): a signal seen by one rank, a due wall-time checkpoint and a pending unreadable
item stop or checkpoint every rank at the same step.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from .checkpoint import link_or_copy
from .config import TrainerConfig
from .errors import DataError, Preempted
from .loader import ResumableDataLoader
from .module import FiniteLossGuard

__all__ = ["CHECKPOINT_DIR", "RunCheckpoints"]

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^(?:epoch-(\d+)-)?step-(\d+)\.ckpt$")
_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


def _order(path: Path) -> tuple[int, int]:
    match = _NAME.match(path.name)
    # an epoch-end checkpoint comes after a mid-epoch one of the same step
    return (int(match.group(2)), 1 if match.group(1) is not None else 0) if match else (-1, 0)


def train_loaders(trainer: pl.Trainer) -> list[ResumableDataLoader]:
    """The trainer's training loaders that are the core's :class:`ResumableDataLoader`."""
    try:
        loaders: Any = trainer.train_dataloader
    except Exception:  # before the loaders exist
        return []
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    elif not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    return [loader for loader in loaders if isinstance(loader, ResumableDataLoader)]


def _restore_loader_position(trainer: pl.Trainer) -> None:
    """Hand the checkpoint's loader states to the training loaders, and restart their iterator from them.

    Lightning 2.6 restores stateful loaders only when it builds them after the checkpoint's loop state was
    loaded. Our ``configure_optimizers`` asks for ``estimated_stepping_batches`` (the schedule's length), which
    builds and iterates the loaders earlier, so Lightning never calls ``load_state_dict`` and the resumed epoch
    would restart at its first batch while the step counter continues. ``on_train_start`` runs after the restore
    and before the first batch is fetched: loading the states here and re-creating the iterator puts the loader
    at the checkpoint's position. (The mid-epoch resume tests pin this against a Lightning upgrade.)
    """
    fit_loop = trainer.fit_loop
    states = getattr(fit_loop, "_combined_loader_states_to_load", None)
    combined = getattr(fit_loop, "_combined_loader", None)
    if not states or combined is None:
        return
    combined._load_state_dicts(states)
    for loader in train_loaders(trainer):
        loader.follow_epoch(trainer.current_epoch)
    fit_loop._combined_loader_states_to_load = []
    iter(fit_loop._data_fetcher)


class RunCheckpoints(pl.Callback):
    """Epoch, step, wall-time and stop checkpoints under ``run_dir`` (see the module docstring)."""

    def __init__(self, run_dir: Path, cfg: TrainerConfig, guard: FiniteLossGuard) -> None:
        self.run_dir, self.cfg, self.guard = Path(run_dir), cfg, guard
        self.folder = self.run_dir / CHECKPOINT_DIR
        self.last_path: Path | None = None  # the newest checkpoint this process wrote
        self.saved_step = -1
        self.stop_reason: str | None = None  # the signal's name, once one arrived
        self._seen_step = -1
        self._last_save = time.monotonic()
        self._started = False
        self._handlers: dict[int, Any] = {}
        self._write_at_epoch_end = False  # a checkpoint (and a stop) due at an epoch's last batch waits for its end
        self._stop_at_epoch_end = False

    # ---- signals ---------------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT" and self.stop_reason is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.stop_reason = self.stop_reason or name
        if name == "SIGINT":
            print("\nCtrl-C: writing a checkpoint after this step (press again to stop at once)", flush=True)

    def _install_handlers(self) -> None:
        # Lightning registers its own SIGTERM handler just before this hook, one that broadcasts inside the
        # handler under DDP; ours only sets a flag, and the ranks agree on it at the next step boundary.
        if threading.current_thread() is not threading.main_thread():
            return
        for name in _SIGNALS:
            signum = getattr(signal, name, None)
            if signum is not None:
                self._handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._handlers = {}

    # ---- hooks -----------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = True
        self._seen_step = self.saved_step = trainer.global_step  # a resumed run's step is already on disk
        self._last_save = time.monotonic()
        for loader in train_loaders(trainer):
            loader.on_error = self.cfg.on_data_error
        _restore_loader_position(trainer)
        self._install_handlers()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._seen_step or trainer.fast_dev_run:  # inside a gradient accumulation: not a boundary
            return
        self._seen_step = step
        loaders = train_loaders(trainer)
        skipped = sum(loader.skipped for loader in loaders)
        if skipped:
            pl_module.log("train/skipped_items", float(skipped), on_step=True, on_epoch=False, reduce_fx="max")
        every = self.cfg.checkpoint_every_n_steps
        due_steps = every > 0 and step % every == 0
        minutes = self.cfg.checkpoint_every_n_minutes
        due_time = minutes > 0 and time.monotonic() - self._last_save >= minutes * 60
        data_error = next((loader.pending_error for loader in loaders if loader.pending_error), None)
        stop = self.stop_reason is not None
        if trainer.world_size > 1:
            flags = torch.tensor([due_time, stop, data_error is not None], device=trainer.strategy.root_device)
            flags = trainer.strategy.reduce(flags.float(), reduce_op="max") > 0
            due_time, stop, other_error = (bool(v) for v in flags.tolist())
            if other_error and data_error is None:
                data_error = "an unreadable item on another rank (its log names the file)"
            if stop and self.stop_reason is None:
                self.stop_reason = "a signal to another rank"
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if (due_steps or due_time or stop) and not data_error and last_batch:
            # Lightning resumes a checkpoint of an epoch's last batch in the next epoch without running this epoch's
            # end (validation, epoch hooks and the RNG draws they make), so the write waits for the epoch end
            self._write_at_epoch_end, self._stop_at_epoch_end = True, stop
            return
        if due_steps or due_time or stop or data_error:
            self.save(trainer, f"step-{step:09d}")
        if data_error:
            raise DataError(data_error)
        if stop:
            raise Preempted(self.stop_reason)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        for loader in train_loaders(trainer):
            loader.mark_epoch_end()
        finished = trainer.current_epoch + 1
        last_epoch = trainer.max_epochs is not None and finished >= trainer.max_epochs
        deferred, stop = self._write_at_epoch_end, self._stop_at_epoch_end
        self._write_at_epoch_end = self._stop_at_epoch_end = False
        if finished % self.cfg.checkpoint_every_n_epochs == 0 or last_epoch or deferred:
            self.save(trainer, f"epoch-{finished:04d}-step-{trainer.global_step:09d}")
        if stop:  # the ranks agreed on it at the last batch
            raise Preempted(self.stop_reason)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a run stopped by max_steps or max_minutes ends mid-epoch: keep its final state too
        if not trainer.fast_dev_run and trainer.global_step > self.saved_step:
            self.save(trainer, f"step-{trainer.global_step:09d}")
        self._restore_handlers()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()
        # One process met an unreadable item before training on its batch: the state is that of the last
        # finished step, and the loader's position excludes the batch, so a checkpoint now loses nothing.
        # (Under DDP the ranks agreed in on_train_batch_end, which has written it already.)
        if (
            isinstance(exception, DataError)
            and self._started
            and trainer.world_size == 1
            and trainer.training
            and trainer.global_step > self.saved_step
        ):
            self.save(trainer, f"step-{trainer.global_step:09d}")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_handlers()

    # ---- writing ---------------------------------------------------------------------------------------------
    def save(self, trainer: pl.Trainer, name: str) -> Path:
        """Write ``checkpoints/<name>.ckpt``, point ``last.ckpt`` at it, drop the oldest beyond ``keep``."""
        from .run import LAST_CKPT

        self.guard.check(trainer)  # never a checkpoint of weights trained on a NaN loss
        for logger in trainer.loggers:  # the metrics up to the checkpoint reach the disk with it
            logger.save()
        path = self.folder / f"{name}.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # the full state: optimiser, schedule, loops
        if trainer.is_global_zero:
            link_or_copy(path, self.run_dir / LAST_CKPT)
            if name.startswith("epoch-"):  # a step checkpoint of this same step is superseded by this one
                (self.folder / f"step-{trainer.global_step:09d}.ckpt").unlink(missing_ok=True)
            kept = sorted(self.folder.glob("*.ckpt"), key=_order)
            for old in kept[: -self.cfg.keep_checkpoints]:
                old.unlink(missing_ok=True)
        self.last_path, self.saved_step = path, trainer.global_step
        self._last_save = time.monotonic()
        return path
