"""Exponential-moving-average teacher, shared by the methods that need one (T-JEPA, Alice, MoCo v3, ...)."""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["EMATeacher", "momentum_at"]


def momentum_at(progress: float, start: float, end: float, schedule: Literal["cosine", "linear"]) -> float:
    """EMA momentum after ``progress`` (0..1) of training, rising from ``start`` to ``end``.

    ``cosine`` is BYOL's schedule (Grill et al. 2020, eq. in §3.2: ``1 - (1 - m0)(cos(pi k/K) + 1)/2``);
    ``linear`` is I-JEPA's (Assran et al. 2023), which T-JEPA follows.
    """
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        return end - (end - start) * (math.cos(math.pi * progress) + 1.0) / 2.0
    return start + (end - start) * progress


class EMATeacher(nn.Module):
    """A frozen copy of a student network, updated as ``teacher <- m * teacher + (1 - m) * student``.

    The teacher is a submodule of the plugin's model, so it is saved in checkpoints and restored on resume; its
    parameters do not require gradients, so the core's optimiser never sees them. Call :meth:`update` from the
    model's ``after_step(progress)``, which the core calls once per optimiser step. The update is one fused
    ``_foreach_lerp_`` over all parameters, with no host sync.
    """

    def __init__(
        self,
        student: nn.Module,
        momentum_start: float = 0.996,
        momentum_end: float = 1.0,
        schedule: Literal["cosine", "linear"] = "cosine",
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum_start <= momentum_end <= 1.0:
            raise ValueError("need 0 <= momentum_start <= momentum_end <= 1")
        self.module = copy.deepcopy(student)
        self.module.requires_grad_(False)
        self.momentum_start = momentum_start
        self.momentum_end = momentum_end
        self.schedule = schedule

    def momentum(self, progress: float) -> float:
        """The momentum used at ``progress`` (0..1)."""
        return momentum_at(progress, self.momentum_start, self.momentum_end, self.schedule)

    @torch.no_grad()
    def update(self, student: nn.Module, progress: float) -> None:
        """Move the teacher towards ``student``; buffers (e.g. BatchNorm statistics) are copied."""
        weight = 1.0 - self.momentum(progress)
        teacher_params = list(self.module.parameters())
        student_params = list(student.parameters())
        if len(teacher_params) != len(student_params):
            raise ValueError("student and teacher have different parameter lists")
        if weight > 0.0:
            torch._foreach_lerp_(teacher_params, [p.detach() for p in student_params], weight)
        for t_buf, s_buf in zip(self.module.buffers(), student.buffers(), strict=False):
            t_buf.copy_(s_buf)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the teacher (without gradients: its parameters are frozen)."""
        return self.module(*args, **kwargs)
