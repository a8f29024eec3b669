"""The LightningModule that trains any plugin: objective, optimiser, schedule, seeding, finite-loss guard."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from .config import OptimConfig
from .data import mix_seed
from .errors import NonFiniteLossError
from .plugin import Objective

__all__ = ["FiniteLossGuard", "SSLModule", "build_optimizer", "compile_objective", "warmup_cosine"]


def compile_objective(objective: Callable[[nn.Module, dict[str, Any]], dict[str, Any]]) -> Callable:
    """``torch.compile`` of the step ``(model, batch) -> outputs``, with the model as an argument.

    Compiling the model alone (``torch.compile(model)``) covers only ``model.forward``: an objective that calls
    submodules (a context encoder, an EMA target, a predictor) would run them eagerly, and its masking and loss
    would not be fused. Tracing the objective inlines all of it. The model stays unwrapped, so its state dict
    keeps its own key names.
    """

    def step(model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        return objective(model, batch)

    return torch.compile(step)


def warmup_cosine(total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warmup from 0 over ``warmup_steps``, then cosine to ``min_ratio`` (or constant)."""
    total_steps = max(int(total_steps), 1)
    warmup_steps = min(max(int(warmup_steps), 0), total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        progress = min(progress, 1.0)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_optimizer(params: list[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD over ``params``; fused kernels on CUDA."""
    if cfg.no_decay_on_bias_and_norm:
        groups: list[dict[str, Any]] = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
    else:
        groups = [{"params": params, "weight_decay": cfg.weight_decay}]
    fused = bool(params) and all(p.is_cuda for p in params)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused or None)


FINISHED_EPOCHS = "finished_epochs"
"""Checkpoint key: how many epochs of training the checkpoint holds."""


class SSLModule(pl.LightningModule):
    """Calls an objective on each dict batch and owns everything around it.

    It knows no plugin: it receives the ``objective`` (``(model, batch) -> {"loss", **logs}``) and the ``model``.
    After every optimiser step (not every micro-batch, so gradient accumulation does not speed up an EMA) it
    calls ``model.after_step(progress)`` when the model defines it: the one place where teachers move, DINO
    centres update and anything else that follows the optimiser happens (``progress`` runs from 0 to 1).

    The model is a registered submodule (``self.model``), so checkpoints hold plain ``model.*`` keys. With
    ``compile=True`` the whole step, ``objective(model, batch)``, is compiled (:func:`compile_objective`): masking,
    every submodule the objective calls and the loss, not only ``model.forward``. Nothing wraps the model, so no
    ``_orig_mod.`` prefix ever reaches a checkpoint.
    """

    def __init__(
        self,
        objective: Objective,
        model: nn.Module,
        optim: OptimConfig,
        seed: int,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.optim_cfg = optim
        self.seed = seed
        self.objective = objective
        self.compile = compile
        # compiled on first use and kept in a tuple: the module stays picklable (ddp_spawn) and an objective that
        # is an nn.Module is not registered a second time
        self._compiled: tuple[Callable, ...] = ()

    def step_fn(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        """The objective, compiled on the first call when ``compile=True``."""
        if not self.compile:
            return self.objective(model, batch)
        if not self._compiled:
            self._compiled = (compile_objective(self.objective),)
        return self._compiled[0](model, batch)

    def _reseed(self) -> None:
        # Each epoch starts from RNG state f(seed, epoch, rank): masking and dropout do not depend on history,
        # so a run resumed from an end-of-epoch checkpoint replays the uninterrupted run bit for bit.
        s = mix_seed(self.seed, self.current_epoch, self.global_rank)
        torch.manual_seed(s)
        random.seed(s)
        np.random.seed(s % 2**32)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if batch_idx == 0:
            self._reseed()
        out = self.step_fn(self.model, batch)
        self._log_outputs("train", out, batch)
        return out["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(mix_seed(self.seed, batch_idx))
            out = self.step_fn(self.model, batch)
        self._log_outputs("val", out, batch)

    def _log_outputs(self, stage: str, out: dict[str, Any], batch: dict[str, Any]) -> None:
        size = len(batch["id"]) if "id" in batch else None
        for key, value in out.items():
            if not torch.is_tensor(value) or value.numel() != 1:
                continue
            self.log(
                f"{stage}/{key}",
                value.detach().float(),
                on_step=stage == "train",
                on_epoch=True,
                prog_bar=key == "loss",
                batch_size=size,
                sync_dist=stage == "val",
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning's "epoch" is the index of the epoch being saved (0 after the first), which reads as
        # "nothing finished"; our own key counts the epochs whose training is complete, mid-epoch saves included.
        checkpoint[FINISHED_EPOCHS] = int(self.trainer.fit_loop.epoch_progress.current.processed)

    def on_train_start(self) -> None:
        self._total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        self._hooked_step = self.global_step

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        # after_step follows optimiser steps, not batches: with gradient accumulation an EMA teacher that moved
        # on every micro-batch would run at momentum m**k. Every DDP rank calls it on its replica with the same
        # (all-reduced) weights, so the teachers stay identical without communication.
        after_step = getattr(self.model, "after_step", None)
        if after_step is None or self.global_step == getattr(self, "_hooked_step", -1):
            return
        self._hooked_step = self.global_step
        total = getattr(self, "_total_steps", 1)
        after_step(min(self.global_step / total, 1.0))

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = build_optimizer(params, self.optim_cfg)
        total = int(self.trainer.estimated_stepping_batches)
        warm = self.optim_cfg.warmup_steps
        warmup = round(warm * total) if isinstance(warm, float) and warm < 1 else int(warm)
        factor = warmup_cosine(total, warmup, self.optim_cfg.schedule, self.optim_cfg.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class FiniteLossGuard(pl.Callback):
    """Stops the run when the loss becomes NaN or inf, naming the first bad step.

    The check is kept on the device (no host sync per step): the first non-finite step and its value are
    recorded in tensors, and read on the host every ``check_every`` steps, at the end of each epoch and before
    every checkpoint (:meth:`check`), so a checkpoint never holds weights trained on a NaN loss.
    """

    def __init__(self, check_every: int) -> None:
        self.check_every = max(int(check_every), 1)
        self._first_bad: torch.Tensor | None = None
        self._bad_value: torch.Tensor | None = None
        self._counter: torch.Tensor | None = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach().float()
        if self._counter is None or self._counter.device != loss.device:
            self._counter = torch.full((), trainer.global_step - 1, device=loss.device, dtype=torch.long)
            self._first_bad = torch.full((), -1, device=loss.device, dtype=torch.long)
            self._bad_value = torch.zeros((), device=loss.device)
        assert self._first_bad is not None and self._bad_value is not None
        self._counter += 1
        newly_bad = (~torch.isfinite(loss)) & (self._first_bad < 0)
        self._first_bad = torch.where(newly_bad, self._counter, self._first_bad)
        self._bad_value = torch.where(newly_bad, loss, self._bad_value)
        if trainer.global_step % self.check_every == 0:
            self.check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)

    def check(self, trainer: pl.Trainer) -> None:
        """Raise :class:`NonFiniteLossError` if any step so far had a non-finite loss (one host sync)."""
        if self._first_bad is None:
            return
        step = int(self._first_bad)
        if step >= 0:
            value = float(self._bad_value)  # type: ignore[arg-type]
            raise NonFiniteLossError(
                f"the loss became {value} at training step {step} (epoch {trainer.current_epoch}); "
                "training stopped and no checkpoint was written after it. Lower optim.lr, set "
                "optim.gradient_clip_val, or check the data for NaN/inf values."
            )
