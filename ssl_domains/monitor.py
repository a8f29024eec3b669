"""Live representation monitor: catches silent collapse while the loss still falls, and names the step.

Every ``monitor.every_n_steps`` optimiser steps, between steps (never inside one), rank zero embeds a fixed sample
of the predict view (the first ``monitor.max_items`` items of ``datamodule.predict_dataloader()``, the clean
view ``embed`` writes) with the model in eval mode, and logs to every tracker:

- ``monitor/rankme``, ``monitor/effective_rank``, ``monitor/alpha_req``, ``monitor/nesum``,
  ``monitor/stable_rank`` from the spectrum of those embeddings
  (:func:`ssl_domains.evaluation.spectrum.spectrum_metrics`; RankMe as in Garrido et al. 2023);
- ``monitor/knn_acc`` where the items have labels: cosine kNN (Wu et al. 2018) with half the sample as the bank;
- ``monitor/collapsed`` (1 on collapse), ``monitor/seconds`` (this call) and ``monitor/overhead`` (the monitor's
  share of the wall time so far).

Collapse (embeddings that are constant or not finite, or whose centred effective rank falls below
``monitor.min_effective_rank``) raises a :class:`CollapseWarning` naming the step. The alarm reads the centred
effective rank, not RankMe, because the raw embeddings' common offset often dominates their spectrum at
initialisation (RankMe near 1 for a healthy random encoder); both are logged.

The cost is bounded twice: the first sample is cut short after ``max(10 s, max_overhead x elapsed)``, and each
next call waits until the monitor's time so far, plus one more call, stays under ``monitor.max_overhead`` of the
wall time. The random state is restored afterwards, so a run with the monitor trains exactly as one without it.
Modelled on stable-pretraining's ``RankMe`` / ``OnlineKNN`` callbacks and solo-learn's online probe.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from itertools import islice
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from .config import MonitorConfig
from .evaluation.knn import knn_predict
from .evaluation.spectrum import spectrum_metrics
from .tracking import log_metrics

if TYPE_CHECKING:  # annotations only
    from .plugin import SSLDataModule

__all__ = ["CollapseWarning", "RepresentationMonitor"]

_CACHE_BYTES = 256 * 2**20  # a sample whose batches fit is kept in host memory instead of being read again


class CollapseWarning(UserWarning):
    """The representation collapsed: constant or non-finite embeddings, or an effective rank below the threshold."""


def _nbytes(batch: dict[str, Any]) -> int:
    return sum(v.numel() * v.element_size() for v in batch.values() if torch.is_tensor(v))


class RepresentationMonitor(pl.Callback):
    """Monitors the embeddings of a fixed sample of ``datamodule``'s predict view (see the module docstring)."""

    def __init__(self, cfg: MonitorConfig, datamodule: SSLDataModule) -> None:
        self.cfg, self.datamodule = cfg, datamodule
        self.spent = 0.0  # seconds inside the monitor
        self._batches: int | None = None  # how many predict batches form the sample (fixed by the first call)
        self._cache: list[dict[str, Any]] | None = None
        self._next = 0
        self._started, self._first_step = 0.0, 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n = self.cfg.every_n_steps
        self._next = (trainer.global_step // n + 1) * n if n else math.inf
        strategy = type(trainer.strategy).__name__.lower()
        if n and ("fsdp" in strategy or "deepspeed" in strategy):
            # sharded parameters: a forward pass on rank zero alone would wait for the other ranks forever
            warnings.warn(f"the representation monitor is off under {type(trainer.strategy).__name__}", stacklevel=2)
            self._next = math.inf
        self._started, self._first_step = time.perf_counter(), trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step < self._next:
            return
        start = time.perf_counter()
        if trainer.is_global_zero:
            metrics = self.measure(getattr(pl_module, "model", pl_module), pl_module.device, trainer)
            metrics["seconds"] = time.perf_counter() - start
            self.spent += metrics["seconds"]
            metrics["overhead"] = self.spent / max(time.perf_counter() - self._started, 1e-9)
            log_metrics(trainer.loggers, {f"monitor/{k}": v for k, v in metrics.items()}, step)
            self._warn_on_collapse(metrics, step)
        self._schedule(step, time.perf_counter() - start)

    def _schedule(self, step: int, took: float) -> None:
        """The next call: ``every_n_steps`` on, or later, once the wall time has grown enough that the monitor's
        time so far plus one more call like this one stays under ``max_overhead`` of it."""
        n = self.cfg.every_n_steps
        elapsed = time.perf_counter() - self._started
        per_step = max(elapsed - self.spent, 1e-9) / max(step - self._first_step, 1)
        wait = max((self.spent + took) / self.cfg.max_overhead - elapsed, 0.0) / per_step
        self._next = step + n * max(1, math.ceil(wait / n))

    def _warn_on_collapse(self, metrics: dict[str, float], step: int) -> None:
        if not metrics["collapsed"]:
            return
        if not metrics["finite"]:
            why = "the embeddings are not finite"
        elif metrics["constant"]:
            why = "the embeddings are constant (every item maps to the same vector)"
        else:
            why = (
                f"effective rank {metrics['effective_rank']:.2f} < monitor.min_effective_rank "
                f"{self.cfg.min_effective_rank} (RankMe {metrics['rankme']:.2f})"
            )
        warnings.warn(
            CollapseWarning(
                f"representation collapse at step {step}: {why}. The loss can still fall while this happens; "
                "check the learning rate, the projector and the augmentations (metrics: monitor/* in the logs)"
            ),
            stacklevel=2,
        )

    # ---- measuring ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def measure(self, model: torch.nn.Module, device: torch.device, trainer: pl.Trainer | None = None) -> dict:
        """The metrics of the current model on the fixed sample (also usable outside training)."""
        modes = {m: m.training for m in model.modules()}
        states = (random.getstate(), np.random.get_state())
        devices = [device.index or 0] if device.type == "cuda" else []
        context = trainer.precision_plugin.forward_context() if trainer is not None else contextlib.nullcontext()
        model.eval()
        try:
            with torch.random.fork_rng(devices=devices), context:
                vectors, labels = self._embed_sample(model, device, trainer)
        finally:
            for module, training in modes.items():
                module.train(training)
            random.setstate(states[0])
            np.random.set_state(states[1])
        metrics = spectrum_metrics(vectors.float())
        low_rank = metrics["effective_rank"] < self.cfg.min_effective_rank
        metrics["collapsed"] = float(not metrics["finite"] or bool(metrics["constant"]) or low_rank)
        metrics["items"] = float(len(vectors))
        if labels is not None and metrics["finite"]:
            keep = labels >= 0
            z, y = vectors[keep].float(), labels[keep].long()
            if len(y) >= 4 and int(y.unique().numel()) >= 2:
                pred = knn_predict(z[0::2], y[0::2], z[1::2], self.cfg.knn_k)
                metrics["knn_acc"] = float((pred == y[1::2]).float().mean())
        return metrics

    def _embed_sample(
        self, model: torch.nn.Module, device: torch.device, trainer: pl.Trainer | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        first = self._batches is None
        if self._cache is not None:
            source: Any = self._cache
        else:
            loader = self.datamodule.predict_dataloader()
            source = loader if first else islice(loader, self._batches)
        elapsed = time.perf_counter() - self._started if trainer is not None else 0.0
        deadline = time.perf_counter() + max(10.0, self.cfg.max_overhead * elapsed)
        vectors, labels, kept, cached_bytes, count = [], [], [], 0, 0
        rows = 0
        for batch in source:
            count += 1
            if first and kept is not None:
                cached_bytes += _nbytes(batch)
                if cached_bytes <= _CACHE_BYTES:
                    kept.append(batch)
                else:
                    kept = None
            on_device = move_data_to_device(batch, device)
            z = model.embed(on_device)
            vectors.append(z.float())
            label = on_device.get("label") if isinstance(on_device, dict) else None
            if labels is not None and torch.is_tensor(label) and label.shape[:1] == z.shape[:1]:
                labels.append(label)
            else:
                labels = None
            rows += len(z)
            if rows >= self.cfg.max_items or (first and time.perf_counter() > deadline):
                break
        if first:
            self._batches, self._cache = count, kept
        if not vectors:
            raise RuntimeError("the predict view yielded no items for the representation monitor")
        z = torch.cat(vectors)[: self.cfg.max_items]
        y = torch.cat(labels)[: self.cfg.max_items] if labels else None
        return z, y
