"""One training step of the reference MERLIN code (deepdespeckling 0.8, ``merlin/training``), for speed comparisons.

The reference is imported from the installed package (``pip install deepdespeckling==0.8``, a dev dependency),
never copied. :func:`reference_step` runs the body of the inner loop of ``train.fit`` on one fixed batch:
``optimizer.zero_grad()``, ``Model.training_step(batch, i)`` (normalisation, forward, loss), ``loss.backward()``,
``clip_grad_norm_(max_norm=5.0)`` (``fit_model`` defaults to ``clip_by_norm=True``) and ``Adam.step()``. The
model comes from the reference's ``train.create_model``.

The reference trains ONE direction per step: ``training_step`` predicts from the real part and scores with the
imaginary part on even batch numbers, the other way round on odd ones. A step therefore covers one training
pair per patch (:data:`REFERENCE_PAIRS_PER_PATCH`); ours stacks both directions, two pairs per patch
(:data:`OUR_PAIRS_PER_PATCH`). The closure keeps the batch counter, so successive calls alternate as ``fit`` does.

Deviations from the reference, each minimal:

* ``deepdespeckling.utils.load_cosar`` imports ``osgeo.gdal`` at module load (GDAL is not a dependency of the
  package) and ``training/model.py`` reaches it through ``utils.utils``. ``osgeo`` is stubbed; only the TerraSAR-X
  ``.cos`` reader uses it, and it is never called here.
* ``Model`` reshapes its input to ``PATCH_SIZE`` (a module constant, 256). Its ``height`` and ``width`` are set to
  ``cfg.patch_size``, so smaller patches also run (nothing changes at 256). Its ``batch_size`` is the batch's.
* ``fit`` prints ``'%.3f' % loss`` after every step, which reads the loss back to the host (a device sync each
  step), and appends every step's loss tensor to a list. Both are left out, so the closure syncs nothing.
* Offline work is skipped: ``GenerateDataset.generate_patches`` (strided patches, each spectrum-symmetrised with
  ``scipy.signal.gaussian``, which SciPy 1.13 removed) and the ``Dataset``/``DataLoader`` pass. The reference's
  batch is a pair ``(x, y)`` of ``[B, 1, P, P]`` float32 tensors, exactly our ``batch["real"]``, ``batch["imag"]``
  (our datamodule centres each image's spectrum once instead of each patch's).
* ``train.fit`` builds a new Adam each epoch with ``lr_list[epoch]`` (no default). One Adam is built here with
  ``lr`` (our run default, 1e-3) and kept across calls, as within an epoch.

Differences from our configuration that the reference imposes: its normalisation constants are the TerraSAR-X
``M``, ``m`` of ``utils/constants.py`` (ours are fitted on the data or set by a preset; the cost is the same), its
loss carries an extra ``1/batch_size`` factor (``(1/B) * mean(...)``), it clips the gradient norm at 5 (ours at 1)
and its widths are fixed at 48 / 96 (a config with other widths is refused).
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ssl_domains_sar.plugin import MerlinConfig

REFERENCE_PAIRS_PER_PATCH: int = 1
"""Training pairs (input component -> target component) per patch in one reference step: one direction."""

OUR_PAIRS_PER_PATCH: int = 2
"""Training pairs per patch in one step of ours: a->b and b->a stacked (``masking.component_views``)."""

REFERENCE_CLIP_NORM: float = 5.0
"""``fit``'s ``clip_grad_norm_(max_norm=5.0)``, on by default (``fit_model(clip_by_norm=True)``)."""

REFERENCE_WIDTHS: tuple[int, int] = (48, 96)
"""Encoder and decoder channels, hard-coded in the reference ``Model``."""


def import_reference() -> None:
    """Stub ``osgeo`` (GDAL), which ``deepdespeckling.utils.load_cosar`` imports at load and we never call."""
    # a real module object (with __spec__): torch._dynamo inspects every entry of sys.modules
    stub = types.ModuleType("osgeo")
    stub.__spec__ = importlib.machinery.ModuleSpec("osgeo", loader=None)
    stub.gdal = None
    sys.modules.setdefault("osgeo", stub)


def reference_model(cfg: MerlinConfig, batch_size: int, device: torch.device) -> torch.nn.Module:
    """The reference ``Model`` from ``train.create_model``, on ``device``, for ``cfg.patch_size`` patches."""
    if (cfg.width, cfg.decoder_width) != REFERENCE_WIDTHS:
        raise ValueError(
            f"the reference MERLIN has fixed widths {REFERENCE_WIDTHS}, got ({cfg.width}, {cfg.decoder_width})"
        )
    import_reference()
    from deepdespeckling.merlin.training.train import create_model

    model = create_model(batch_size=batch_size, val_batch_size=1, device=device)
    model.height = model.width = cfg.patch_size  # PATCH_SIZE (256) otherwise
    return model


def reference_step(
    cfg: MerlinConfig, batch: dict[str, torch.Tensor], *, lr: float = 1e-3
) -> Callable[[], torch.Tensor]:
    """Return a closure running one full reference training step (the reference's forward on its input layout, its
    loss, backward, optimizer step) on the fixed batch; it returns the loss tensor without .item().

    Successive calls alternate a->b and b->a like ``fit``'s batch counter; each covers
    ``REFERENCE_PAIRS_PER_PATCH * B`` training pairs for a batch of ``B`` patches.
    """
    x, y = batch["real"], batch["imag"]  # the reference's (x, y): real and imaginary parts, [B, 1, P, P] float32
    if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected real and imag of shape [B, 1, P, P], got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.float().contiguous(), y.float().contiguous()
    model = reference_model(cfg, x.shape[0], x.device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    counter = [0]

    def step() -> torch.Tensor:
        optimizer.zero_grad()
        loss = model.training_step((x, y), counter[0])  # log-normalises the input component on the device
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=REFERENCE_CLIP_NORM)
        optimizer.step()
        counter[0] += 1
        return loss.detach()

    step.samples_per_step = REFERENCE_PAIRS_PER_PATCH * x.shape[0]  # type: ignore[attr-defined]
    return step
