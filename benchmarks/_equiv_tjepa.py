"""Our T-JEPA against the reference (jose-melo/t-jepa @ 98dda99), for ``benchmarks/equivalence.py --plugin tjepa``.

The reference is loaded by path (``_tjepa_ref.import_reference``: its ``src`` package, a stand-in for
``tabulate`` if absent); its modules are built with their own constructors as ``run.py`` L81-L113 builds them.

- Weights: the reference's ``Encoder`` (context and target) and ``Predictors`` (transformer) at a small size
  (3 numeric + 2 categorical features with 3 and 4 categories, 2 [REG] tokens, dim 16, 2 + 2 layers, dropout 0),
  its own initialisation (``init_weights(trunc_normal)``) plus noise so that no weight is near zero, the target a
  perturbed copy of the context encoder; copied into ours through ``ssl_domains_tabular.weights_tjepa``'s key map
  (``encoder_to_ours`` / ``predictor_to_ours``, documented there).
- Index sets: drawn by the reference's own ``MaskCollator`` (one context set, 4 target sets per row) and injected
  into ours (``TJEPAObjective.predict(..., sets=...)``).
- Reference choices switched on in ours: ``block_norm=post``, ``positions=sincos``, ``predictor_head=encoder_head``,
  ``predictor_positions=halves``, ``mask_indexing=reference``. The activation is GELU on both sides (the
  reference's ``model_act_func`` / ``pred_activation``); ``relu_output_max_abs_diff`` repeats the forward with the
  reference's default ReLU and ours ``activation=relu``.
- Measured in float64: every layer's output of the target encoder, the context encoder and the predictor, the
  MSE loss, every gradient (the reference's grads mapped into our layout), and 5 optimiser steps: ours with the
  core's AdamW (``build_optimizer``, constant rate), the reference with its ``init_optim`` (four AdamW groups,
  ``WarmupCosineSchedule`` / ``CosineWDSchedule`` held constant), both at lr 1e-3, weight decay 0 (the launch
  script's), each followed by its EMA update on the same momentum schedule (0.9 → 1.0 over 10 steps, so that the
  target encoder moves visibly). The reference's first step would run at AdamW's defaults (lr 1e-3, weight decay
  0.01, ``src/utils/optim_utils.py:66``: its schedulers set the rate only after each step), so its groups are set
  to the configured values before the first step.
- The reference's element-wise gradient clamp (``exp_gradient_clipping=1.0``, ``src/encoder.py:209-214``) stays
  on; ``reference_grad_clamp_inactive`` reports that no context-encoder gradient reached 1, so it did not bind.
- Paper mode: the same weights and index sets in our default model (switches off, ``feature_embedding`` zero),
  and each switch turned off alone (``switch_off``): how far each choice moves the loss and the outputs.
- Import: a table (interleaved numeric and text columns) goes through the reference's pipeline
  (``LabelEncoder`` codes as its dataset classes make them, ``encode_data``'s MinMax); the reference trains 2 steps
  and saves with its own ``EarlyStopCounter.cache_model``; ``ssl_domains.transfer.import_weights`` makes a run
  folder, ``ssl_domains.load_encoder`` loads it, and our ``embed`` of the table's rows is compared with the
  reference's target encoder on the same rows, flattened (``OnlineDataset.load``: ``N × (n_cls + D) × H``), in
  float32 as users run it (and in float64 from the same weights). Our export (``ssl-domains export --format
  t-jepa``) is loaded back strictly into fresh reference modules.
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
import warnings
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from _tjepa_ref import import_reference

REFERENCE_COMMIT = "98dda991dd5e5d12266b3557aa80a33c4e0a6606"

SIZES: dict[str, Any] = {
    "dim": 16, "depth": 2, "heads": 2, "ff_dim": 24, "dropout": 0.0, "num_reg_tokens": 2, "predictor_dim": 8,
    "predictor_depth": 2, "predictor_heads": 2, "predictor_ff_dim": 12, "num_targets": 4,
    "context_share": [0.2, 0.6], "target_share": [0.2, 0.6], "ema_start": 0.9, "ema_end": 1.0,
}  # fmt: skip
REFERENCE_SWITCHES = {
    "block_norm": "post",
    "positions": "sincos",
    "predictor_head": "encoder_head",
    "predictor_positions": "halves",
    "mask_indexing": "reference",
}
PAPER_SWITCHES = {
    "block_norm": "pre",
    "positions": "learned",
    "predictor_head": "norm",
    "predictor_positions": "interleaved",
    "mask_indexing": "paper",
}
NUM_NUMERIC, CATEGORIES, ROWS = 3, [3, 4], 16
STEPS, HORIZON, LR = 5, 10, 1e-3


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _config(**switches: Any) -> Any:
    from ssl_domains.config import from_mapping
    from ssl_domains_tabular.plugin import TJEPAConfig

    return from_mapping(TJEPAConfig, {**SIZES, "activation": "gelu", **REFERENCE_SWITCHES, **switches}, "tjepa")


def _reference_modules(
    cfg: Any, idx_num: list[int], cardinalities: list[tuple[int, int]], activation: str
) -> SimpleNamespace:
    """Context encoder, target encoder (deep copy) and predictor, as ``run.py`` L81-L120 builds them."""
    from src.encoder import Encoder
    from src.predictors import Predictors
    from src.utils.train_utils import init_weights

    num_features = len(idx_num) + len(cardinalities)
    with contextlib.redirect_stdout(io.StringIO()):  # the constructors print their settings
        context = Encoder(
            idx_num_features=idx_num, cardinalities=cardinalities, hidden_dim=cfg.dim, num_layers=cfg.depth,
            num_heads=cfg.heads, p_dropout=cfg.dropout, layer_norm_eps=1e-5, gradient_clipping=1.0,
            feature_type_embedding=False, feature_index_embedding=False, dim_feedforward=cfg.ff_dim, device="cpu",
            args=Namespace(n_cls_tokens=cfg.num_reg_tokens, model_act_func=activation),
        )  # fmt: skip
        predictor = Predictors(
            pred_type="transformer", hidden_dim=cfg.dim, pred_embed_dim=cfg.predictor_dim,
            num_features=num_features, num_layers=cfg.predictor_depth, num_heads=cfg.predictor_heads,
            p_dropout=cfg.dropout, layer_norm_eps=1e-5, activation=activation, device="cpu",
            cardinalities=cardinalities, pred_dim_feedforward=cfg.predictor_ff_dim or cfg.predictor_dim,
        )  # fmt: skip
    for module in context.modules():
        init_weights(module, init_type="trunc_normal")
    return SimpleNamespace(context=context, target=copy.deepcopy(context), predictor=predictor)


def _perturb(ref: SimpleNamespace, seed: int) -> None:
    """Noise on every trainable weight (the reference's init leaves its linears at std 0.02), the target apart."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module, scale in ((ref.context, 0.2), (ref.predictor, 0.2)):
            for p in module.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
        ref.target.load_state_dict(ref.context.state_dict())
        for p in ref.target.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05)


def _reference_state(ref: SimpleNamespace) -> dict[str, torch.Tensor]:
    """The reference's weights in our model's keys."""
    from ssl_domains_tabular.weights_tjepa import encoder_to_ours, predictor_to_ours

    state = {f"context_encoder.{k}": v for k, v in encoder_to_ours(ref.context.state_dict()).items()}
    state.update({f"target_encoder.module.{k}": v for k, v in encoder_to_ours(ref.target.state_dict()).items()})
    state.update({f"predictor.{k}": v for k, v in predictor_to_ours(ref.predictor.predictors.state_dict()).items()})
    return state


def _ours(cfg: Any, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Our model through the plugin's factory, with ``state`` (keys our model lacks dropped; ``feature_embedding``
    zero where the switch off adds it)."""
    from ssl_domains_tabular.plugin import TJEPAPlugin

    fitted = {"numeric": [f"n{j}" for j in range(NUM_NUMERIC)]}
    datamodule = SimpleNamespace(fitted=fitted, cardinalities=[c + 1 for c in CATEGORIES])
    model = TJEPAPlugin().model(cfg, datamodule).to(torch.get_default_dtype())
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if cfg.positions == "sincos" and missing:
        raise AssertionError(f"the key map leaves {missing} of our model unset")
    merged = {k: state[k] if k in state else torch.zeros_like(v) for k, v in own.items()}
    model.load_state_dict(merged, strict=True)
    return model


def _collate(collator: Any, table: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    return collator([(row, 0) for row in table])


def _reference_loss(ref: SimpleNamespace, rows: torch.Tensor, masks_enc: list, masks_pred: list) -> torch.Tensor:
    """The body of ``Trainer.train`` (``src/train.py`` L350-L373), transformer predictor."""
    from src.utils.train_utils import apply_masks_from_idx

    with torch.no_grad():
        h = apply_masks_from_idx(ref.target(rows), masks_pred)
    z = ref.predictor(ref.context(rows, masks_enc), masks_enc, masks_pred)
    return torch.nn.MSELoss()(z, h)


def _batch(table: torch.Tensor) -> dict[str, torch.Tensor]:
    """Our batch from the reference's table (numeric columns first here): our codes are the reference's + 1."""
    return {"numeric": table[:, :NUM_NUMERIC], "categorical": table[:, NUM_NUMERIC:].long() + 1}


def _sets(masks_enc: list[torch.Tensor], masks_pred: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return masks_enc[0], torch.stack(masks_pred, dim=1)


class _Recorder:
    """Forward hooks on a list of modules; ``outputs`` in call order."""

    def __init__(self, modules: Any) -> None:
        self.outputs: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(lambda _m, _i, out: self.outputs.append(out.detach())) for m in modules]

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _layer_outputs(ref: SimpleNamespace, ours: Any, objective: Any, table: torch.Tensor, masks: tuple) -> dict:
    """Per-part max |ours - reference| over every layer and the final outputs, and both losses."""
    rows, masks_enc, masks_pred = masks
    parts = {
        "target_encoder": (ref.target.encoder.transformer.layers, ours.target_encoder.module.blocks),
        "context_encoder": (ref.context.encoder.transformer.layers, ours.context_encoder.blocks),
        "predictor": (ref.predictor.predictors.transformer.transformer.layers, ours.predictor.blocks),
    }
    recorders = {name: (_Recorder(theirs), _Recorder(mine)) for name, (theirs, mine) in parts.items()}
    finals = {"target_encoder": (_Recorder([ref.target]), _Recorder([ours.target_encoder])),
              "context_encoder": (_Recorder([ref.context]), _Recorder([ours.context_encoder])),
              "predictor": (_Recorder([ref.predictor]), _Recorder([ours.predictor]))}  # fmt: skip
    ref_loss = _reference_loss(ref, rows, masks_enc, masks_pred)
    our_loss = objective(ours, _batch(table), sets=_sets(masks_enc, masks_pred))["loss"]
    b, t = rows.shape[0], len(masks_pred)
    diffs: dict[str, float] = {}
    for name in parts:
        theirs, mine = recorders[name]
        outs_ref, outs_ours = theirs.outputs, mine.outputs
        final_ref, final_ours = finals[name][0].outputs[-1], finals[name][1].outputs[-1]
        if name == "predictor":  # ours runs the T target sets row-major (b, t), the reference target-major
            outs_ours = [o.view(b, t, *o.shape[1:]).transpose(0, 1).reshape(o.shape) for o in outs_ours]
            final_ours = final_ours.transpose(0, 1).reshape(final_ref.shape)
        assert len(outs_ref) == len(outs_ours), (name, len(outs_ref), len(outs_ours))
        diffs[name] = max([_max_abs(a, c) for a, c in zip(outs_ref, outs_ours, strict=True)]
                          + [_max_abs(final_ref, final_ours)])  # fmt: skip
        theirs.close(), mine.close(), finals[name][0].close(), finals[name][1].close()
    return {"diffs": diffs, "ref_loss": ref_loss, "our_loss": our_loss}


def _gradients(ref: SimpleNamespace, ours: Any) -> tuple[float, int, float]:
    """(max over parameters of max|g_ours - g_ref| / max|g_ref|, parameters compared, max |g| of our context
    encoder)."""
    from ssl_domains_tabular.weights_tjepa import encoder_to_ours, predictor_to_ours

    context = {n: p.grad for n, p in ref.context.named_parameters() if p.grad is not None}
    predictor = {n: p.grad for n, p in ref.predictor.predictors.named_parameters() if p.grad is not None}
    ref_grads = {f"context_encoder.{k}": v for k, v in encoder_to_ours(context).items()}
    ref_grads.update({f"predictor.{k}": v for k, v in predictor_to_ours(predictor).items()})
    worst, compared, biggest = 0.0, 0, 0.0
    for name, p in ours.named_parameters():
        if not p.requires_grad:
            continue
        if name not in ref_grads:
            raise AssertionError(f"no reference gradient for {name}")
        g_ours = p.grad if p.grad is not None else torch.zeros_like(p)
        g_ref = ref_grads[name]
        scale = float(g_ref.abs().max())
        worst = max(worst, _max_abs(g_ours, g_ref) / (scale if scale > 0 else 1.0))
        compared += 1
        if name.startswith("context_encoder."):
            biggest = max(biggest, float(g_ours.abs().max()))
    return worst, compared, biggest


def _steps(ref: SimpleNamespace, ours: Any, objective: Any, table: torch.Tensor, masks: list) -> tuple[list, list]:
    """5 optimiser steps each side, with its own AdamW and EMA update."""
    from src.utils.optim_utils import init_optim

    from ssl_domains.config import OptimConfig
    from ssl_domains.module import build_optimizer, warmup_cosine

    optimizer, scheduler, wd_scheduler = init_optim(
        ref.context, ref.predictor, 1, LR, LR, 0, HORIZON, 0.0, 0.0, LR, 1.0, True, True
    )
    for group in optimizer.param_groups:  # what its schedulers would have set before the first step
        group["lr"], group["weight_decay"] = LR, 0.0
    momenta = (SIZES["ema_start"] + i * (SIZES["ema_end"] - SIZES["ema_start"]) / HORIZON for i in range(HORIZON + 1))
    params = [p for p in ours.parameters() if p.requires_grad]
    our_opt = build_optimizer(params, OptimConfig(lr=LR, weight_decay=0.0, schedule="constant"))
    our_sched = torch.optim.lr_scheduler.LambdaLR(our_opt, warmup_cosine(HORIZON, 0, "constant", 0.0))
    ref_losses, our_losses = [], []
    for i, (rows, masks_enc, masks_pred) in enumerate(masks):
        loss = _reference_loss(ref, rows, masks_enc, masks_pred)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():  # src/train.py L437-L443
            m = next(momenta)
            for param_q, param_k in zip(ref.context.parameters(), ref.target.parameters(), strict=True):
                param_k.data.mul_(m).add_((1.0 - m) * param_q.detach().data)
        scheduler.step()
        wd_scheduler.step()
        ref_losses.append(float(loss.detach()))

        out = objective(ours, _batch(table), sets=_sets(masks_enc, masks_pred))
        out["loss"].backward()
        our_opt.step()
        our_opt.zero_grad()
        our_sched.step()
        ours.after_step(i / HORIZON)  # momentum start + (end - start) * i / HORIZON, as the reference's i-th
        our_losses.append(float(out["loss"].detach()))
    return our_losses, ref_losses


def _training_check(reference: Path) -> dict[str, Any]:
    from src.mask import MaskCollator

    from ssl_domains_tabular.plugin import TJEPAPlugin

    cfg = _config()
    cardinalities = [(NUM_NUMERIC + j, c) for j, c in enumerate(CATEGORIES)]
    idx_num = list(range(NUM_NUMERIC))
    num_features = NUM_NUMERIC + len(CATEGORIES)
    torch.manual_seed(0)
    ref = _reference_modules(cfg, idx_num, cardinalities, "gelu")
    _perturb(ref, seed=1)
    initial = copy.deepcopy(ref)
    state = _reference_state(ref)

    gen = torch.Generator().manual_seed(2)
    numeric = torch.rand(ROWS, NUM_NUMERIC, generator=gen)
    codes = torch.stack([torch.randint(0, c, (ROWS,), generator=gen) for c in CATEGORIES], dim=1)
    table = torch.cat([numeric, codes.to(numeric.dtype)], dim=1)
    np.random.seed(0)  # MaskCollator.create_masks shuffles with NumPy's global generator
    with contextlib.redirect_stdout(io.StringIO()):
        collator = MaskCollator(False, *SIZES["context_share"], *SIZES["target_share"], SIZES["num_targets"], 1,
                                num_features, cardinalities)  # fmt: skip
    masks = [_collate(collator, table) for _ in range(STEPS)]
    for rows, _, _ in masks:
        assert torch.equal(rows, table)
    used = torch.cat([torch.cat([e.flatten() for e in enc] + [p.flatten() for p in pred]) for _, enc, pred in masks])

    ours = _ours(cfg, state)
    objective = TJEPAPlugin().objective(cfg)
    first = _layer_outputs(ref, ours, objective, table, masks[0])
    ref_loss, our_loss = first["ref_loss"], first["our_loss"]
    ref_loss.backward()
    our_loss.backward()
    grad_rel, compared, biggest = _gradients(ref, ours)

    ref5, ours5 = copy.deepcopy(initial), _ours(cfg, state)
    our_losses, ref_losses = _steps(ref5, ours5, objective, table, masks)
    steps_rel = max(abs(a - b) / abs(b) for a, b in zip(our_losses, ref_losses, strict=True))

    # the reference's default activation, ReLU, on both sides (ours: activation=relu)
    ref_relu = _reference_modules(cfg, idx_num, cardinalities, "relu")
    for name in ("context", "target", "predictor"):
        getattr(ref_relu, name).load_state_dict(getattr(initial, name).state_dict())
    relu = _layer_outputs(ref_relu, _ours(_config(activation="relu"), state), objective, table, masks[0])

    # paper mode: our defaults, the same weights and index sets (read as feature indices)
    def off(**switches: Any) -> dict[str, float]:
        cfg_off = _config(**switches)
        model = _ours(cfg_off, state)
        run = TJEPAPlugin().objective(cfg_off)
        rows, masks_enc, masks_pred = masks[0]
        with torch.no_grad():
            loss = run(model, _batch(table), sets=_sets(masks_enc, masks_pred))["loss"]
            out = model.target_encoder(*_batch(table).values())
            ref_out = initial.target(rows)
        return {"loss_rel_diff": abs(float(loss) - float(ref_loss.detach())) / abs(float(ref_loss.detach())),
                "target_output_max_abs_diff": _max_abs(out, ref_out)}  # fmt: skip

    paper = off(**PAPER_SWITCHES)
    return {
        "output_max_abs_diff": max(first["diffs"].values()),
        "output_max_abs_diff_by_part": first["diffs"],
        "loss": float(ref_loss),
        "loss_rel_diff": abs(float(our_loss) - float(ref_loss)) / abs(float(ref_loss)),
        "grad_max_rel_diff": grad_rel,
        "grad_parameters_compared": compared,
        "reference_grad_clamp_inactive": biggest < 1.0,
        "steps_loss_max_rel_diff": steps_rel,
        "steps_losses_ours": our_losses,
        "steps_losses_reference": ref_losses,
        "relu_output_max_abs_diff": max(relu["diffs"].values()),
        "relu_loss_rel_diff": abs(float(relu["our_loss"]) - float(relu["ref_loss"])) / abs(float(relu["ref_loss"])),
        "reference_mask_indices_used": sorted({int(i) for i in used}),
        "reference_mask_never_uses_token": list(range(num_features, num_features + cfg.num_reg_tokens)),
        "paper_mode_loss_rel_diff": paper["loss_rel_diff"],
        "paper_mode_target_output_max_abs_diff": paper["target_output_max_abs_diff"],
        "switch_off": {name: off(**{name: value}) for name, value in PAPER_SWITCHES.items()},
    }


# ---- import ------------------------------------------------------------------------------------------------------

IMPORT_ROWS = 40


def _table(root: Path) -> tuple[Path, Any]:
    """A CSV with numeric and text columns interleaved (as the reference's datasets have them), no target."""
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "age": rng.integers(18, 80, IMPORT_ROWS).astype(float),
        "job": np.resize(["clerk", "farmer", "nurse"], IMPORT_ROWS),
        "hours": rng.normal(40, 10, IMPORT_ROWS).round(1),
        "city": rng.permutation(np.resize(["east", "north", "south", "west"], IMPORT_ROWS)),
        "income": rng.lognormal(10, 1, IMPORT_ROWS).round(0),
    })  # fmt: skip
    path = root / "table.csv"
    frame.to_csv(path, index=False)
    return path, frame


def _reference_input(frame: Any) -> tuple[torch.Tensor, list[int], list[tuple[int, int]]]:
    """The reference's pipeline: ``LabelEncoder`` codes (``src/datasets/adult_income.py`` L80-L82), then
    ``encode_data`` (MinMax per numeric column over the whole table, ``src/utils/encode_utils.py``)."""
    import pandas as pd
    from sklearn.preprocessing import LabelEncoder
    from src.utils.encode_utils import encode_data

    frame = frame.copy()
    cat_cols = [j for j, c in enumerate(frame.columns) if not pd.api.types.is_numeric_dtype(frame[c])]
    for j in cat_cols:
        frame[frame.columns[j]] = LabelEncoder().fit_transform(frame[frame.columns[j]])
    x = frame.to_numpy(dtype=np.float64)
    cardinalities = [(j, int(frame[frame.columns[j]].nunique())) for j in cat_cols]
    num_idx = [j for j in range(x.shape[1]) if j not in cat_cols]
    dataset = SimpleNamespace(D=x.shape[1], cardinalities=cardinalities)
    return encode_data(x, dataset, None), num_idx, cardinalities


def _save_reference_checkpoint(ref: SimpleNamespace, table: torch.Tensor, cardinalities: list, out: Path) -> Path:
    """Two reference training steps, then its own ``EarlyStopCounter.cache_model`` (``torch.save`` of its dict)."""
    from src.mask import MaskCollator
    from src.utils.checkpointer import EarlyStopCounter
    from src.utils.optim_utils import init_optim

    num_features = table.shape[1]
    with contextlib.redirect_stdout(io.StringIO()):
        collator = MaskCollator(False, *SIZES["context_share"], *SIZES["target_share"], SIZES["num_targets"], 1,
                                num_features, cardinalities)  # fmt: skip
        optimizer, scheduler, wd_scheduler = init_optim(ref.context, ref.predictor, 1, LR, LR, 0, HORIZON, 0.0,
                                                        0.0, LR, 1.0, True, True)  # fmt: skip
        for _ in range(2):
            rows, masks_enc, masks_pred = _collate(collator, table[:ROWS])
            loss = _reference_loss(ref, rows, masks_enc, masks_pred)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            with torch.no_grad():
                for param_q, param_k in zip(ref.context.parameters(), ref.target.parameters(), strict=True):
                    param_k.data.mul_(0.9).add_(0.1 * param_q.detach().data)
            scheduler.step()
            wd_scheduler.step()
        args = Namespace(np_seed=0, exp_val_cache_cadence=1, exp_cadence_type="improvement", exp_cache_cadence=1,
                         exp_patience=16, load_from_checkpoint=True)  # True: do not clear ./checkpoints  # fmt: skip
        counter = EarlyStopCounter(args, "equivalence", "table", device="cpu", is_distributed=False)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        counter.cache_model(ref.context, ref.target, ref.predictor, optimizer, scaler, scheduler, wd_scheduler, 2,
                            loss.detach(), save_pth=str(out))  # fmt: skip
    return out / "epoch_2.pth"


def _import_check(reference: Path) -> dict[str, Any]:
    import ssl_domains
    from ssl_domains import registry
    from ssl_domains.transfer import export_weights, import_weights

    cfg = _config(predictor_heads=4)  # the heads the reader assumes (the launch script's 2 and 4)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        csv, frame = _table(root)
        x_ref, num_idx, cardinalities = _reference_input(frame)
        torch.manual_seed(3)
        ref = _reference_modules(cfg, num_idx, cardinalities, "relu")  # the reference's default activation
        _perturb(ref, seed=4)
        (root / "ckpt").mkdir()
        checkpoint = _save_reference_checkpoint(ref, x_ref, cardinalities, root / "ckpt")
        run_dir = import_weights(registry.load("tjepa"), checkpoint, csv, root / "run")
        model, datamodule = ssl_domains.load_encoder(run_dir, csv)
        batch = datamodule.collate(list(range(len(datamodule.split))))
        assert torch.equal(batch["id"], torch.arange(IMPORT_ROWS))
        with torch.no_grad():
            ours = model.embed(batch)
            theirs = ref.target(x_ref).reshape(IMPORT_ROWS, -1)  # OnlineDataset.load: the target encoder's output
            ours64 = copy.deepcopy(model).double().embed({k: v.double() if v.is_floating_point() else v
                                                          for k, v in batch.items()})  # fmt: skip
            theirs64 = copy.deepcopy(ref.target).double()(x_ref.double()).reshape(IMPORT_ROWS, -1)
        numeric_ref = x_ref[:, num_idx]
        exported = export_weights(run_dir, "t-jepa", root / "export.pth")
        saved = torch.load(exported, weights_only=True)
        back = _reference_modules(cfg, num_idx, cardinalities, "relu")
        back.target.load_state_dict(saved["target_encoder"], strict=True)
        back.context.load_state_dict(saved["context_encoder"], strict=True)
        back.predictor.predictors.load_state_dict(saved["predictor"], strict=True)
        with torch.no_grad():
            exported_out = back.target(x_ref).reshape(IMPORT_ROWS, -1)
        imported = (run_dir / "imported.yaml").read_text()
    return {
        "import_max_abs_diff": _max_abs(ours, theirs),
        "import_max_abs_diff_float64": _max_abs(ours64, theirs64),
        "import_input_numeric_max_abs_diff": _max_abs(batch["numeric"], numeric_ref),
        "import_embedding_shape": list(ours.shape),
        "import_all_keys_from_file": "fresh: []" in imported,
        "export_max_abs_diff": _max_abs(exported_out, ours),
    }


def compare(reference: Path) -> dict[str, Any]:
    """The figures listed in the module docstring."""
    import_reference(reference)
    warnings.filterwarnings("ignore", category=FutureWarning)
    with _default_dtype(torch.float64):
        training = _training_check(reference)
    return {**training, **_import_check(reference)}


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser()
    parser.add_argument("--reference", type=Path, default=Path.home() / ".cache/ssl-domains-refs/t-jepa")
    print(json.dumps(compare(parser.parse_args().reference)))
