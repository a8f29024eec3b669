"""MERLIN's self-supervised loss: the negative log-likelihood of the held-out component.

For ``b ~ N(0, R/2)``, ``-log p(b | R) = 1/2 log(pi R) + b^2 / R``. Dropping the constant gives the loss of
Dalsasso et al. (IEEE TGRS 2021, Eq. 6; reference ``merlin/training/model.py::loss_function``)::

    L = mean( 1/2 log R_hat + b^2 / R_hat ),   log R_hat = 2 (out (M - m) + m)

``R_hat`` is predicted from the other component ``a``. The loss is minimised by ``R_hat = 2 E[b^2] = R``.
"""

from __future__ import annotations

import torch
from torch import nn

from .masking import component_views
from .model import wide


def merlin_nll(log_reflectivity: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean(1/2 log R + b^2 / R)`` in at least float32; ``b^2 / R`` as ``b^2 exp(-log R)`` (no overflow)."""
    with torch.autocast(target.device.type, enabled=False):
        log_r = wide(log_reflectivity)
        return (0.5 * log_r + wide(target).square() * torch.exp(-log_r)).mean()


class MerlinObjective:
    """Both directions in each batch: predict ``R`` from ``a`` and score with ``b``, and vice versa."""

    stochastic = False  # the views are the two components; the randomness is in the datamodule's patch draws

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs, targets = component_views(batch["real"], batch["imag"])
        out = model(model.normalize(inputs))
        log_r = model.log_reflectivity(out)
        loss = merlin_nll(log_r, targets)
        with torch.no_grad():  # E[b^2] = R/2: this ratio's mean is 1 for a calibrated estimate (a monitor)
            ratio = (2 * wide(targets).square() * torch.exp(-log_r)).mean()
        return {"loss": loss, "ratio_mean": ratio}
