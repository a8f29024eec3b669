"""One training step of the reference T-JEPA (jose-melo/t-jepa @ 98dda99) at our configuration, for speed comparisons.

The reference is never part of this repository: pass the directory of a checkout
(``git clone https://github.com/jose-melo/t-jepa /tmp/tjepa_ref && git -C /tmp/tjepa_ref checkout 98dda99``).
Only its ``src`` package is imported (``src.encoder``, ``src.predictors``, ``src.mask``, ``src.utils``); its
training loop (``src/train.py``, which needs wandb, Lightning, torchvision) is not: :func:`reference_step` repeats
the per-iteration body of ``Trainer.train`` (``src/train.py`` L340-L449) and the set-up of ``run.py`` around the
reference's own modules, without logging, probing or checkpointing.

What one reference step does, all included in the closure: ``MaskCollator.__call__`` (the DataLoader's
``collate_fn``: a Python loop over the rows with a NumPy shuffle and ``setdiff1d`` each, then ``default_collate``
of the rows and masks), host-to-device copies of the batch and masks, the target encoder on all features, the
context encoder on the context features, the transformer predictor, ``MSELoss``, backward (through the encoder's
per-parameter gradient-clamp hooks), ``AdamW.step``, the ``loss.item()`` NaN assert (a host sync every step),
``zero_grad``, the EMA update (a Python loop over parameters), and the LR / weight-decay scheduler steps. Inside
each encoder call the categorical columns go to the host, through a freshly fitted sklearn ``OneHotEncoder`` and
back to the device as float64 one-hot columns, then ``argmax`` per column (``Encoder.in_embbed_sample``): one
more device-to-host sync and a NumPy round trip, twice per step (target and context encoder).

Settings mapped from our ``TJEPAConfig``: width ``dim``, ``depth``, ``heads``, ``ff_dim``, ``dropout``,
``num_reg_tokens`` (reference ``n_cls_tokens``), predictor ``predictor_dim`` / ``predictor_depth`` /
``predictor_heads`` (its feed-forward width set to ``predictor_dim``, as ours), ``context_share``,
``target_share``, ``num_targets`` (``mask_num_preds``; one context set, no overlap), EMA ``ema_start`` →
``ema_end`` (linear), AdamW at our learning rate and weight decay (plugin ``run_defaults``), batch as given.

Differences that remain (the closest reference setting is used):

- Activation: GELU in encoder and predictor (``model_act_func`` / ``pred_activation=gelu``) to match ours; the
  reference's default, used by its launch script, is ReLU.
- Blocks: the reference's post-norm ``TransformerEncoderLayer`` (``nn.MultiheadAttention``, not SDPA called
  directly), and its predictor ends in the encoder head (LayerNorm → Linear → LayerNorm) plus another LayerNorm and
  the projection; ours are pre-norm SDPA blocks and the predictor ends in LayerNorm → Linear. Every layer also
  evaluates an unused ``(x - norm1.bias) / norm1.weight`` on the whole activation (the argument of a disabled
  ``_debug_values`` call), recorded by autograd in the context encoder and predictor.
- Positions: the reference adds a sinusoidal table to the tokens and has no feature-index embedding; ours learns one
  vector per feature.
- Parameters: each reference ``TabularEncoder`` (encoder, and inside the predictor) keeps the template
  ``TransformerEncoderLayer`` it cloned as a registered but unused submodule, so it holds one layer more than it
  runs (never given a gradient; in the encoder it is still walked by the EMA loop and given clamp hooks). On Adult
  at our defaults: context encoder 180,160 (146,688 without the unused layer) vs our 147,584 (the difference: our
  14 × 64 feature embedding); predictor 38,304 (31,840 without it) vs our 30,144; with the target encoder 398,624
  vs 325,312.
- Masks: the reference's off-by-one is kept (indices ``0..D-1`` gathered from ``[REG] * R + features``, so the
  [REG] tokens enter the context or targets only when drawn, and the last ``R`` features are never used); its
  context sequence is ``k_ctx`` tokens where ours is ``R + k_ctx``. Set sizes are drawn as the reference does
  (``round`` of the share bounds times ``D``, rejection until context + target fit).
- Gradient clipping: the reference's default ``exp_gradient_clipping=1.0`` (element-wise clamp hooks on every
  context-encoder parameter) is kept, as its launch script does not change it; ours does not clip by default.
- Optimiser: the reference's four AdamW groups (no weight decay on biases and 1-D parameters) and its
  ``WarmupCosineSchedule`` / ``CosineWDSchedule``, here without warm-up over a long horizon, so the learning rate
  stays at our peak rate during a benchmark (our schedule warms up over 3.3 % of training). As in the reference,
  the very first step runs at AdamW's default rate 1e-3 (its scheduler sets the rate only after each step).
  AdamW uses PyTorch's default (for-each) implementation; ours is ``fused=True`` on CUDA.
- Inputs: numeric columns as our datamodule scaled them (quantile by default; the reference uses MinMax) and our
  categorical codes (0 = unknown / missing), laid out as the reference expects: one float32 ``[B, D]`` table,
  numeric columns first, held on the host as the reference's dataset is, as a list of rows for the collator.
  Indexing the dataset row by row (the DataLoader's ``__getitem__`` calls) is not timed.
- Precision: float32 (the reference's ``model_amp=False`` default). The target encoder stays in training mode and
  its parameters keep ``requires_grad=True``, as in a fresh reference run (it runs under ``torch.no_grad``).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.machinery
import importlib.util
import io
import sys
import types
import warnings
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

BENCH_HORIZON = 1_000_000
"""Steps of the reference's LR, weight-decay and momentum schedules: far more than a benchmark runs."""


def import_reference(ref_dir: Path) -> None:
    """Put the checkout on ``sys.path``, with a stand-in for ``tabulate`` (used only to print settings) if absent."""
    ref_dir = Path(ref_dir).resolve()
    loaded = sys.modules.get("src")
    if loaded is not None and Path(loaded.__file__ or "").resolve().parent != ref_dir / "src":
        raise RuntimeError(f"another module named 'src' is already imported ({loaded.__file__}), not {ref_dir}")
    if str(ref_dir) not in sys.path:
        sys.path.insert(0, str(ref_dir))
    if "tabulate" not in sys.modules and importlib.util.find_spec("tabulate") is None:
        # a real module with a spec: torch._dynamo calls importlib.util.find_spec("tabulate") when it loads
        stand_in = types.ModuleType("tabulate")
        stand_in.__spec__ = importlib.machinery.ModuleSpec("tabulate", None)
        stand_in.tabulate = lambda *args, **kwargs: ""
        sys.modules["tabulate"] = stand_in
    # its disabled _debug_values(x[0].T) calls warn on every step (x.T on 3-D tensors), and its TransformerEncoder
    # warns that it cannot use nested tensors: silence both, for the reference's modules only
    warnings.filterwarnings("ignore", message="The use of `x.T`", module=r"src\.")
    warnings.filterwarnings("ignore", message="enable_nested_tensor is True", module=r"src\.")


def _optim_defaults() -> dict[str, Any]:
    from ssl_domains_tabular.plugin import TJEPAPlugin

    return TJEPAPlugin.run_defaults["optim"]


def reference_step(
    ref_dir: Path,
    cfg: Any,
    batch: dict[str, torch.Tensor],
    n_num: int,
    cat_cardinalities: list[int],
    *,
    lr: float | None = None,
    weight_decay: float | None = None,
) -> Callable[[], torch.Tensor]:
    """Return a closure running one full reference training step (mask collation, context encoder, target encoder,
    predictor, loss, backward, optimizer step, EMA update of the target encoder) on the fixed batch; it returns the
    loss tensor (no .item()).

    ``cfg`` is our ``TJEPAConfig``; ``batch`` one of our training batches (``numeric`` float32 ``[B, n_num]``,
    ``categorical`` int64 ``[B, n_cat]``), on the device the reference model is put on. ``lr`` and
    ``weight_decay`` default to the plugin's ``run_defaults``.
    """
    import_reference(ref_dir)
    from src.encoder import Encoder
    from src.mask import MaskCollator
    from src.predictors import Predictors
    from src.utils.optim_utils import init_optim
    from src.utils.train_utils import AllReduce, apply_masks_from_idx, init_weights

    optim = _optim_defaults()
    lr = optim["lr"] if lr is None else lr
    weight_decay = optim["weight_decay"] if weight_decay is None else weight_decay
    device = batch["numeric"].device
    num_features = n_num + len(cat_cardinalities)
    # reference layout: one table, cardinalities as (column index, number of categories)
    cardinalities = [(n_num + j, int(c)) for j, c in enumerate(cat_cardinalities)]

    with contextlib.redirect_stdout(io.StringIO()):  # the constructors print their settings
        context_encoder = Encoder(
            idx_num_features=list(range(n_num)),
            cardinalities=cardinalities,
            hidden_dim=cfg.dim,
            num_layers=cfg.depth,
            num_heads=cfg.heads,
            p_dropout=cfg.dropout,
            layer_norm_eps=1e-5,
            gradient_clipping=1.0,  # reference default (exp_gradient_clipping), not set by its launch script
            feature_type_embedding=False,
            feature_index_embedding=False,
            dim_feedforward=cfg.ff_dim,
            device=device,
            args=Namespace(n_cls_tokens=cfg.num_reg_tokens, model_act_func="gelu"),
        )
        predictors = Predictors(
            pred_type="transformer",
            hidden_dim=cfg.dim,
            pred_embed_dim=cfg.predictor_dim,
            num_features=num_features,
            num_layers=cfg.predictor_depth,
            num_heads=cfg.predictor_heads,
            p_dropout=cfg.dropout,
            layer_norm_eps=1e-5,
            activation="gelu",
            device=device,
            cardinalities=cardinalities,
            pred_dim_feedforward=cfg.predictor_dim,
        )
        mask_collator = MaskCollator(
            False,  # allow_overlap
            cfg.context_share[0],
            cfg.context_share[1],
            cfg.target_share[0],
            cfg.target_share[1],
            cfg.num_targets,
            1,  # num_encs: one context set per sample
            num_features,
            cardinalities,
        )
    for module in context_encoder.modules():  # run.py: init_type="trunc_normal" (launch script)
        init_weights(module, init_type="trunc_normal")
    target_encoder = copy.deepcopy(context_encoder)
    context_encoder.to(device)
    target_encoder.to(device)
    predictors.to(device)

    # iter_per_epoch=1 and num_epochs=BENCH_HORIZON: no warm-up, rate ~ lr throughout a benchmark
    optimizer, scheduler, wd_scheduler = init_optim(
        context_encoder, predictors, 1, lr, lr, 0, BENCH_HORIZON, weight_decay, weight_decay, 0.0, 1.0, True, True
    )
    ema_start, ema_end = cfg.ema_start, cfg.ema_end
    momentum_scheduler = (ema_start + i * (ema_end - ema_start) / BENCH_HORIZON for i in range(BENCH_HORIZON + 1))
    loss_fn = torch.nn.MSELoss()

    # The reference's dataset is a float32 [N, D] table on the host; its DataLoader hands the collator a list of
    # (row, label) pairs. Built once here; the collation itself is per-step work and runs in the closure.
    table = torch.cat([batch["numeric"].float(), batch["categorical"].float()], dim=1).cpu()
    samples = [(row, 0) for row in table]

    def step() -> torch.Tensor:
        # DataLoader collate_fn: per-row masks in a Python loop, then default_collate (src/mask.py)
        rows, masks_enc, masks_pred = mask_collator(samples)
        rows = rows.to(device, non_blocking=True)
        masks_enc = [mask.to(device, non_blocking=True) for mask in masks_enc]
        masks_pred = [mask.to(device, non_blocking=True) for mask in masks_pred]
        with torch.no_grad():
            h = apply_masks_from_idx(target_encoder(rows), masks_pred)
        z = context_encoder(rows, masks_enc)
        z = predictors(z, masks_enc, masks_pred)
        loss = AllReduce.apply(loss_fn(z, h))
        loss.backward()
        optimizer.step()
        assert not np.isnan(loss.item()), "loss is NaN"  # the reference's per-step check: a host sync
        optimizer.zero_grad()
        with torch.no_grad():
            m = next(momentum_scheduler)
            for param_q, param_k in zip(context_encoder.parameters(), target_encoder.parameters(), strict=True):
                param_k.data.mul_(m).add_((1.0 - m) * param_q.detach().data)
        scheduler.step()
        wd_scheduler.step()
        return loss.detach()

    step.modules = {"context_encoder": context_encoder, "target_encoder": target_encoder, "predictors": predictors}
    return step
