"""Our Alice against the reference (Jiang et al., ICCV 2023; alibaba-damo-academy/alice @ d45cfcd), for
``benchmarks/equivalence.py --plugin alice``.

The reference does not run end to end as released (``models/head.py:146`` calls ``super(Att_iBOTHead, self)``,
undefined; its backbone is nnFormer, ours MONAI's UNETR; its views come from SAM embeddings computed offline), so
its parts are checked one at a time, each from the same weights and inputs, in float64, with the reference's
files loaded by path (nothing of them is copied here; the shims applied are listed in ``shims``):

- ``dino``: ``loss.py`` ``Loss`` (its [CLS] and patch terms, the EMA centres, the teacher-temperature table)
  against our ``AliceObjective`` and ``AliceModel.after_step``, fed the same student/teacher logits through
  stand-ins for the networks; measured at a warm-up epoch (7 of 1000, 30 warm-up), so the temperature matters.
- ``reconstruction``: the same call's MSE term, and the masked student input (``models/nnFormer.py``
  ``mask_model``) with the reference's masks (``utils.random_mask``) injected into ours.
- ``casa``: ``CASA/CASA_Module.py`` ``CASA`` (its weights copied into our ``CrossAlignment`` through
  ``CASA_KEYS``) on the same queries and contexts, through to the patch loss.
- ``patch_head``: ``models/head.py`` ``AliceHead`` (the student's, and the teacher's with its shared prototypes)
  against our ``patch_head: dino`` (the [CLS] head's MLP and the patch prototypes on ``query_proj`` /
  ``context_proj`` tokens), their weights copied into ours, on the same encoder and decoder tokens, through the
  same CASA to the [CLS] and patch terms of ``loss.py`` ``Loss``.
- ``ema``: the EMA lines of ``engine_pretrain.py`` (L49-58, L147-150, parsed with ``ast`` and executed) with
  ``utils.cosine_scheduler``'s momentum table, against ``AliceModel.after_step`` on a small AliceModel over a run
  of 40 steps, each side driven as its trainer drives it (ours: the core's ``global_step / total`` after a step).

Reference choices switched on in ours (``SWITCHES``; ``switch_off`` gives each one's effect alone).
"""

from __future__ import annotations

import ast
import contextlib
import copy
import importlib.util
import shutil
import sys
import tempfile
import types
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

REFERENCE_COMMIT = "d45cfcdae3cdd09cc4f77b5ded720ee6c11615e7"
PAIRS, ROI, OUT_DIM, PATCH_DIM, QUERY_TOKENS, CONTEXT_TOKENS = 2, 64, 512, 512, 64, 512
EPOCHS, WARMUP_EPOCHS, EPOCH, NITER = 1000, 30, 7, 4  # the reference's schedule; a warm-up epoch; steps/epoch
LAMBDA3 = 10.0  # main-DDP.py --lambda3; loss.py:112 divides the MSE by 2 again, so ours runs at LAMBDA3 / 2
CASA_SIZES = (512, 2048, 8, 64, 64)  # main-DDP.py:212, CASA(d_out, d_inner, n_head, d_k, d_v)
EMA_EPOCHS = 10  # x NITER = 40 EMA steps
SWITCHES: dict[str, Any] = {"mask_axis": "z", "teacher_temp_epochs": EPOCHS, "momentum_at_step_start": True,
                            "momentum_ref_steps": 0, "patch_head": "dino"}  # fmt: skip
TOKEN_DIM, DECODER_DIM = 384, 192  # models/head.py:176-177 hard-codes mlp3 (384 ->) and mlp4 (192 ->)
HEAD_KEYS = {"mlp.0": "mlp.0", "mlp.2": "mlp.3", "mlp.4": "mlp.6"}  # the reference's Linear/GELU (no norm) MLP
CASA_KEYS = {
    "Cross_Att.MH_attn.w_qs": "q", "Cross_Att.MH_attn.w_ks": "k", "Cross_Att.MH_attn.w_vs": "v",
    "Cross_Att.MH_attn.fc": "proj", "Cross_Att.MH_attn.layer_norm": "norm1", "Cross_Att.pos_ffn.w_1": "ff.0",
    "Cross_Att.pos_ffn.w_2": "ff.2", "Cross_Att.pos_ffn.layer_norm": "norm2",
}  # fmt: skip  # projection_student/_teacher(_out) (CASA_Module.py:117-121): unused by its forward, none in ours


# ---- the reference, by path ------------------------------------------------------------------------------------


def _stand_in(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


class Reference:
    """``loss.py``, ``utils.py``, ``CASA/CASA_Module.py``, ``models/nnFormer.py`` and the EMA statements of
    ``engine_pretrain.py``, loaded from the checkout with stand-ins only for what is not installed."""

    def __init__(self, root: Path) -> None:
        if not (root / "loss.py").is_file():
            raise FileNotFoundError(f"{root}/loss.py not found: --reference must be alibaba-damo-academy/alice")
        self.shims: list[str] = []
        missing = {
            "torchvision": ("utils.py:15", "`datasets`, `transforms` (only data_aug uses them, L1130, L1181; not "
                            "called)",
                            {"datasets": None, "transforms": _stand_in("transforms")}),
            "SimpleITK": ("utils.py:23", "empty (only load_sitk_vol uses it, L918-928; not called)", {}),
            "timm": ("models/nnFormer.py:16", "DropPath (identity), to_3tuple, trunc_normal_ for its layers, of "
                     "which only nnFormer.mask_model runs here", {}),
        }  # fmt: skip
        stand_ins = {n: _stand_in(n, **a) for n, (_, _, a) in missing.items() if importlib.util.find_spec(n) is None}
        for name in stand_ins:
            where, what = missing[name][:2]
            self.shims.append(f"{where} imports {name}, not installed here: a stand-in module, {what}")
        if "timm" in stand_ins:
            layers = _stand_in("timm.models.layers", DropPath=nn.Identity, to_3tuple=lambda x: (x, x, x),
                               trunc_normal_=nn.init.trunc_normal_)  # fmt: skip
            stand_ins.update({"timm.models": _stand_in("timm.models", layers=layers), "timm.models.layers": layers})
        with _modules(stand_ins):
            self.utils = _load("alice_ref_utils", root / "utils.py")
            self.nnformer = _load("alice_ref_nnformer", root / "models" / "nnFormer.py")
        self.shims.append("loss.py:2-3 `import utils` / `import models`: the utils.py loaded above, and an empty "
                          "stand-in for `models` (a folder without __init__.py, unused by loss.py)")  # fmt: skip
        with _modules({"utils": self.utils, "models": _stand_in("models")}):
            self.loss = _load("alice_ref_loss", root / "loss.py")
        self.casa = _load("alice_ref_casa", root / "CASA" / "CASA_Module.py")
        with _modules({"utils": self.utils}):
            self.head = _load("alice_ref_head", root / "models" / "head.py")
        self.head.Att_iBOTHead = self.head.AliceHead
        self.shims.append(
            "models/head.py:146 calls super(Att_iBOTHead, self), a name defined nowhere: the module's "
            "global Att_iBOTHead is bound to AliceHead, so the call is DINOHead.__init__ (head.py:60)"
        )
        self.ema = _ema_statements(root / "engine_pretrain.py")
        if not torch.cuda.is_available():
            self.shims.append("loss.py:110 moves the (unused) interpolated masks to CUDA: Tensor.cuda is the "
                              "identity during Loss.forward on a machine without CUDA")  # fmt: skip
        self.shims.append("loss.py:125,130 dist.all_reduce: runs for real, in a one-process gloo group")

    def loss_forward(self, loss: nn.Module, *args: Any) -> dict[str, torch.Tensor]:
        if torch.cuda.is_available():
            return loss(*args)
        with mock.patch.object(torch.Tensor, "cuda", lambda self, *a, **k: self):
            return loss(*args)


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _modules(modules: dict[str, types.ModuleType]):
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _ema_statements(path: Path) -> tuple[Any, Any]:
    """``train_one_epoch``'s parameter pairing (L49-58) and its EMA update (the ``with`` of L147-150), compiled."""
    fn = next(n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)
              and n.name == "train_one_epoch")  # fmt: skip
    src = [ast.unparse(s) for s in fn.body]
    first = next(i for i, s in enumerate(src) if s.startswith("names_q, params_q, names_k, params_k ="))
    last = next(i for i, s in enumerate(src) if s.startswith("params_k = "))
    loops = [n for n in fn.body if isinstance(n, ast.For)]  # the training loop is the last
    update = [s for s in loops[-1].body if isinstance(s, ast.With) and "momentum_schedule[it]" in ast.unparse(s)]
    if len(update) != 1:
        raise RuntimeError(f"{path}: expected one `with` block reading momentum_schedule[it], found {len(update)}")
    pairing = ast.Module(body=fn.body[first : last + 1], type_ignores=[])
    return compile(pairing, str(path), "exec"), compile(ast.Module(body=update, type_ignores=[]), str(path), "exec")


# ---- ours, fed the component's inputs through stand-ins for the networks ---------------------------------------


class _Given(nn.Module):
    """Returns a fixed tensor whatever its input: a network part the component leaves out (with ``patch_head:
    dino`` the head's ``embed`` passes the given tokens on)."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, *args: Any) -> torch.Tensor:
        return self.value

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Context(nn.Module):
    """``align`` for the DINO check: the patch logits are the given contexts (no CASA)."""

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return context


class _Nets(nn.Module):
    """The student network (records its input and mask) and the teacher's ``context``: given encoder tokens and
    decoder map (placeholders where the component does not read them)."""

    def __init__(self, recon: torch.Tensor, tokens: torch.Tensor | None = None, decoder: torch.Tensor | None = None):
        super().__init__()
        self.recon, self.seen = recon, None
        dummy = torch.zeros(recon.shape[0], 1, 1, dtype=recon.dtype)
        self.tokens = dummy if tokens is None else tokens
        self.decoder = dummy[..., None, None] if decoder is None else decoder

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, Any]:
        self.seen = (x.detach(), mask)
        return {"output": self.recon, "tokens": self.tokens, "pyramid": [None, self.decoder]}

    def context(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens, self.decoder


def _stub_model(
    inputs: dict[str, torch.Tensor],
    align: nn.Module,
    centres: tuple,
    progress: float,
    parts: dict[str, Any] | None = None,
) -> Any:
    """Our objective's view of an AliceModel: given outputs for the network parts (``parts`` replaces them by
    real modules), ``align`` as CASA. The identity prototypes pass the given CASA inputs on under ``patch_head:
    dino``."""
    parts = parts or {"net": _Nets(inputs["recon"]), "query_proj": _Given(inputs["query"]),
                      "cls_head": _Given(inputs["cls_s"]), "context_proj": _Given(inputs["ctx_s"]),
                      "patch_prototypes": nn.Identity()}  # fmt: skip
    teacher_parts = parts.get("teacher") or (parts["net"], _Given(inputs["cls_t"]), _Given(inputs["ctx_t"]),
                                             nn.Identity())  # fmt: skip
    teacher = types.SimpleNamespace(module=teacher_parts, update=lambda student, progress: None)
    own = {k: v for k, v in parts.items() if k != "teacher"}
    return types.SimpleNamespace(
        **own, teacher=teacher, align=align, center_momentum=0.9, momentum_at_step_start=False,
        _step_start=None, _momentum_base=0.996, student=lambda: None,
        progress=torch.tensor(progress, dtype=torch.float64),
        center_cls=centres[0].clone(), center_patch=centres[1].clone(),
        pending_cls=torch.zeros_like(centres[0]), pending_patch=torch.zeros_like(centres[1]),
    )  # fmt: skip


def _config(**overrides: Any) -> Any:
    from ssl_domains_medical.plugin import AliceConfig

    sizes = {"roi": ROI, "out_dim": OUT_DIM, "align_dim": PATCH_DIM, "intensity_aug": False, "head_batch_norm": False,
             "teacher_temp_warmup": WARMUP_EPOCHS / EPOCHS, "recon_weight": LAMBDA3 / 2}  # fmt: skip
    return AliceConfig(**{**sizes, **SWITCHES, **overrides})


def _injected_mask(hidden: torch.Tensor) -> Any:
    """The reference's masks in place of our ``column_mask`` draw."""
    import ssl_domains_medical.objective as objective

    return mock.patch.object(objective, "column_mask", lambda batch, roi, *args: hidden)


# ---- the comparison ------------------------------------------------------------------------------------------


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


def _rel_float(a: torch.Tensor, b: torch.Tensor) -> float:
    return abs(float(a.detach()) - float(b.detach())) / abs(float(b.detach()))


def _inputs(seed: int, context: int = QUERY_TOKENS) -> dict[str, torch.Tensor]:
    """Crops, logits and tokens; ``context`` tokens on the context side (the DINO check reads them as patch logits)."""
    g = torch.Generator().manual_seed(seed)
    n = 2 * PAIRS

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()

    crops = torch.rand(n, 1, ROI, ROI, ROI, generator=g, dtype=torch.float64)
    return {
        "query_crop": crops[:PAIRS], "anchor_crop": crops[PAIRS:], "recon": rand(n, 1, ROI, ROI, ROI, scale=0.1),
        "cls_s": rand(n, OUT_DIM, scale=0.5), "cls_t": rand(n, OUT_DIM, scale=0.05).detach(),
        "ctx_s": rand(n, context, PATCH_DIM, scale=0.5), "ctx_t": rand(n, context, PATCH_DIM, scale=0.05),
        "query": rand(n, QUERY_TOKENS, PATCH_DIM, scale=0.5), "centre_cls": 0.05 * torch.randn(OUT_DIM, generator=g,
        dtype=torch.float64), "centre_patch": 0.05 * torch.randn(PATCH_DIM, generator=g, dtype=torch.float64),
    }  # fmt: skip


def _reference_masks(ref: Reference) -> list[torch.Tensor]:
    np.random.seed(0)
    args = types.SimpleNamespace(local_rank=0, patch_size=16, mask_ratio=0.75)  # main-DDP.py defaults
    crop = torch.zeros(PAIRS, 1, ROI, ROI, ROI)
    return [m.double() for m in ref.utils.random_mask(args, [crop, crop])]  # one [1, 1, 32^3] per crop list


def _full(masks: list[torch.Tensor]) -> torch.Tensor:
    """The reference's masks at voxel resolution as ours takes them: bool ``[2 PAIRS, X, Y, Z]``."""
    up = [F.interpolate(m, size=(ROI,) * 3, mode="nearest")[:, 0].expand(PAIRS, -1, -1, -1) for m in masks]
    return torch.cat(up).bool()


def _reference_loss(ref: Reference, x: dict[str, torch.Tensor]) -> nn.Module:
    loss = ref.loss.Loss(OUT_DIM, PATCH_DIM, 2, 0.008, 0.01, 0.008, 0.01, WARMUP_EPOCHS, EPOCHS,
                         lambda1=1.0, lambda2=1.0, lambda3=LAMBDA3).double()  # main-DDP.py:269-283  # fmt: skip
    loss.center.copy_(x["centre_cls"][None])
    loss.center2.copy_(x["centre_patch"][None, None])
    return loss


def _ours(
    x: dict[str, torch.Tensor], align: nn.Module, cfg: Any, hidden: torch.Tensor, parts: dict[str, Any] | None = None
) -> tuple[dict, Any]:
    from ssl_domains_medical.model import AliceModel
    from ssl_domains_medical.objective import AliceObjective

    step = EPOCH * NITER + 1  # a step inside the warm-up epoch
    model = _stub_model(x, align, (x["centre_cls"], x["centre_patch"]), step / (EPOCHS * NITER), parts)
    q, a = x["query_crop"], x["anchor_crop"]
    with _injected_mask(hidden):
        out = AliceObjective(cfg)(model, {"query": q, "anchor": a, "query_view": q, "anchor_view": a})
    AliceModel.after_step(model, (step + 1) / (EPOCHS * NITER))  # the centres move here
    return out, model


def _dino_and_reconstruction(ref: Reference) -> dict[str, dict[str, Any]]:
    from ssl_domains_medical.masking import column_mask
    from ssl_domains_medical.objective import AliceObjective

    x, masks = _inputs(0), _reference_masks(ref)
    loss_ref, images = _reference_loss(ref, x), [x["query_crop"], x["anchor_crop"]]
    theirs = ref.loss_forward(loss_ref, images, [x["cls_s"], None, None, x["recon"]], [x["cls_t"], None, None, None],
                              x["ctx_s"], x["ctx_t"], masks, EPOCH)  # fmt: skip
    theirs["loss"].backward()
    ref_grads = {k: x[k].grad.clone() for k in ("cls_s", "ctx_s", "recon")}
    for k in ref_grads:
        x[k].grad = None
    mine, model = _ours(x, _Context(), _config(), _full(masks))
    mine["loss"].backward()
    grads = {k: _rel(x[k].grad, ref_grads[k]) for k in ref_grads}
    # the teacher-temperature table (both heads, loss.py:46-60) at every step of the reference's 1000 epochs
    progress = torch.arange(EPOCHS * NITER, dtype=torch.float64) / (EPOCHS * NITER)
    tables = [torch.as_tensor(np.repeat(t, NITER)) for t in (loss_ref.teacher_temp_schedule,
                                                            loss_ref.teacher_temp2_schedule)]  # fmt: skip

    def table_diff(cfg: Any) -> float:
        return max(_rel(AliceObjective(cfg).teacher_temperature(progress), t) for t in tables)

    default, _ = _ours(_inputs(0), _Context(), _config(teacher_temp_epochs=0), _full(masks))
    masked_ref = torch.cat(
        [ref.nnformer.nnFormer.mask_model(None, im, m)[1] for im, m in zip(images, masks, strict=True)]
    )
    drawn = {a: column_mask(8, ROI, 16, 0.75, torch.device("cpu"), i)[:, None] for a, i in (("x", 0), ("z", 2))}
    centres = (float((model.center_cls - loss_ref.center[0]).abs().max()),
               float((model.center_patch - loss_ref.center2[0, 0]).abs().max()))  # fmt: skip
    dino = {
        "output_max_abs_diff": max(centres), "centre_cls_max_abs_diff": centres[0],
        "centre_patch_max_abs_diff": centres[1],
        "loss_rel_diff": _rel_float(mine["loss_cls"] + mine["loss_patch"], theirs["cls"] + theirs["patch"]),
        "grad_max_rel_diff": max(grads["cls_s"], grads["ctx_s"]),
        "cls_rel_diff": _rel_float(mine["loss_cls"], theirs["cls"]),
        "patch_rel_diff": _rel_float(mine["loss_patch"], theirs["patch"]),
        "teacher_temp_table_max_rel_diff": table_diff(_config()), "epoch": EPOCH,
        "output": "both EMA centres after the step", "grad_over": "the student's [CLS] and patch logits",
        "switch_off": {"teacher_temp_epochs": {
            "loss_rel_diff": _rel_float(default["loss_cls"] + default["loss_patch"], theirs["cls"] + theirs["patch"]),
            "teacher_temp_table_max_rel_diff": table_diff(_config(teacher_temp_epochs=0)),
        }},
    }  # fmt: skip
    reconstruction = {
        "output_max_abs_diff": float((model.net.seen[0] - masked_ref).abs().max()),
        "loss_rel_diff": _rel_float(LAMBDA3 / 2 * mine["loss_mim"], theirs["recon"]),
        "grad_max_rel_diff": grads["recon"], "recon_weight": LAMBDA3 / 2,
        "loss_rel_diff_at_recon_weight_10": _rel_float(LAMBDA3 * mine["loss_mim"], theirs["recon"]),
        "output": "the student's masked input (nnFormer.mask_model), the reference's masks injected into ours",
        "grad_over": "the student's reconstruction",
        "mask_hidden_cells": {"reference": int(ref.utils.MaskGenerator((ROI,) * 3).mask_count),
                              "ours": int(column_mask(1, ROI, 16, 0.75, torch.device("cpu"))[0, 0].sum()) // 16**2},
        "mask_constant_axes": {"reference": _constant_axes(masks[0]), "ours_mask_axis_x": _constant_axes(drawn["x"]),
                               "ours_mask_axis_z": _constant_axes(drawn["z"])},
        "student_receives_mask_for_mask_token": model.net.seen[1] is not None,
        "total_loss_rel_diff": _rel_float(mine["loss"], theirs["loss"]),
    }  # fmt: skip
    return {"dino": dino, "reconstruction": reconstruction}


def _constant_axes(mask: torch.Tensor) -> list[str]:
    """The spatial axes of ``[B, 1, X, Y, Z]`` masks along which every mask is constant."""
    return [name for dim, name in zip((2, 3, 4), "xyz", strict=True)
            if torch.equal(mask, mask.narrow(dim, 0, 1).expand_as(mask))]  # fmt: skip


def _noisy(module: nn.Module) -> nn.Module:
    """Its init plus noise, so no LayerNorm sits at its identity init and no bias at 0 (weight_g, the prototypes'
    norm the reference fixes at 1, is kept)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not name.endswith("weight_g"):
                p.add_(0.1 * p.abs().mean().clamp(min=0.1) * torch.randn_like(p))
    return module


def _casa_pair(ref: Reference) -> tuple[nn.Module, nn.Module]:
    """The reference's CASA (main-DDP.py:212 sizes, in eval: its dropout 0.1 off, ours has none) and ours with its
    weights."""
    from ssl_domains_medical.model import CrossAlignment

    theirs = _noisy(ref.casa.CASA(*CASA_SIZES).double().eval())
    d_out, d_inner, heads, _, _ = CASA_SIZES
    ours = CrossAlignment(d_out, heads, d_inner).double()
    state = {CASA_KEYS[k.rsplit(".", 1)[0]] + "." + k.rsplit(".", 1)[1]: v for k, v in theirs.state_dict().items()
             if k.rsplit(".", 1)[0] in CASA_KEYS}  # fmt: skip
    ours.load_state_dict(state, strict=True)
    return theirs, ours


def _casa(ref: Reference) -> dict[str, Any]:
    torch.manual_seed(0)
    theirs, ours = _casa_pair(ref)
    x, masks = _inputs(1, CONTEXT_TOKENS), _reference_masks(ref)
    feats = theirs([None, x["query"], x["ctx_s"]], [None, None, x["ctx_t"]])
    loss_ref = _reference_loss(ref, x)
    out_ref = ref.loss_forward(loss_ref, [x["query_crop"], x["anchor_crop"]], [x["cls_s"], None, None, x["recon"]],
                               [x["cls_t"], None, None, None], feats[0], feats[1], masks, EPOCH)  # fmt: skip
    out_ref["loss"].backward()  # only its patch term reaches CASA and its inputs
    ref_grads = {k: x[k].grad.clone() for k in ("query", "ctx_s")}
    for k in ("query", "ctx_s", "cls_s", "recon"):
        x[k].grad = None
    seen: list[torch.Tensor] = []
    handle = ours.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    mine, _ = _ours(x, ours, _config(), _full(masks))
    handle.remove()
    mine["loss"].backward()  # likewise (loss_patch is logged detached)
    by_name, inverse = dict(theirs.named_parameters()), {v: k for k, v in CASA_KEYS.items()}
    pairs = [(name, p.grad, by_name[inverse[name.rsplit(".", 1)[0]] + "." + name.rsplit(".", 1)[1]].grad)
             for name, p in ours.named_parameters()]  # fmt: skip
    grads = {name: _rel(mine, theirs) for name, mine, theirs in pairs}
    grads.update({k: _rel(x[k].grad, ref_grads[k]) for k in ref_grads})
    worst = max(grads, key=grads.get)
    return {
        # ours aligns the teacher side first (objective.py, under no_grad), the reference returns [student, teacher]
        "output_max_abs_diff": max(float((a - b.detach()).abs().max()) for a, b in zip(seen, feats[::-1], strict=True)),
        "loss_rel_diff": _rel_float(mine["loss_patch"], out_ref["patch"]),
        "grad_max_rel_diff": grads[worst], "grad_worst": worst, "grads_compared": len(grads),
        "output": "CASA's student-side and teacher-side outputs", "loss": "the patch term through CASA",
        "grad_over": "CASA's parameters and its query/context inputs",
        "reference_parameters_without_counterpart": sorted(k for k in by_name if k.rsplit(".", 1)[0] not in CASA_KEYS),
    }  # fmt: skip


def _our_head(state: dict[str, torch.Tensor]) -> dict[str, nn.Module]:
    """Our ``patch_head: dino`` modules with an ``AliceHead`` state dict: the [CLS] head (MLP, prototypes), the
    patch prototypes (``last_layer2``), ``query_proj`` (``mlp3``) and ``context_proj`` (``mlp4``)."""
    from ssl_domains_medical.model import DINOHead, PatchPrototypes

    head = DINOHead(TOKEN_DIM, OUT_DIM, 2048, 256).double()  # main-DDP.py:217-226: hidden 2048, bottleneck 256
    head.load_state_dict({**{f"{HEAD_KEYS[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in state.items()
                             if k.rsplit(".", 1)[0] in HEAD_KEYS},
                          "prototypes": state["last_layer.weight_v"]}, strict=True)  # fmt: skip
    prototypes = PatchPrototypes(PATCH_DIM, 256).double()  # float64 before loading: load_state_dict casts
    query, context = nn.Linear(TOKEN_DIM, TOKEN_DIM).double(), nn.Linear(DECODER_DIM, TOKEN_DIM).double()
    prototypes.load_state_dict({"weight": state["last_layer2.weight_v"]})
    query.load_state_dict({"weight": state["mlp3.weight"], "bias": state["mlp3.bias"]})
    context.load_state_dict({"weight": state["mlp4.weight"], "bias": state["mlp4.bias"]})
    return {"cls_head": head, "patch_prototypes": prototypes, "query_proj": query, "context_proj": context}


def _patch_head(ref: Reference) -> dict[str, Any]:
    """The patch branch through the reference's head: ``AliceHead`` -> CASA -> ``Loss``, against ours."""
    torch.manual_seed(2)
    n = 2 * PAIRS
    kwargs = {"patch_out_dim": PATCH_DIM, "norm": None, "act": "gelu", "norm_last_layer": True}
    head_s = _noisy(ref.head.AliceHead(TOKEN_DIM, OUT_DIM, shared_head=False, **kwargs).double())
    head_t = _noisy(ref.head.AliceHead(TOKEN_DIM, OUT_DIM, shared_head=True, **kwargs).double())  # L73, L236
    head_t.requires_grad_(False)
    casa_ref, casa = _casa_pair(ref)
    x, masks = _inputs(3), _reference_masks(ref)
    side = ROI // 16  # the 1/16 encoder grid and (below) the 1/8 decoder grid
    enc = {k: torch.randn(n, TOKEN_DIM, side, side, side, dtype=torch.float64, requires_grad=k == "s") for k in "st"}
    dec = {k: torch.randn(n, DECODER_DIM, 2 * side, 2 * side, 2 * side, dtype=torch.float64, requires_grad=k == "s")
           for k in "st"}  # fmt: skip
    cls = {k: enc[k].flatten(2).mean(-1) for k in "st"}  # the average-pooled bottleneck (nnFormer.py:830)
    out_s, out_t = head_s(cls["s"], enc["s"], dec["s"]), head_t(cls["t"], enc["t"], dec["t"])
    feats = casa_ref([None, out_s[1], out_s[2]], [None, None, out_t[2]])
    theirs = ref.loss_forward(_reference_loss(ref, x), [x["query_crop"], x["anchor_crop"]],
                              [out_s[0], None, None, x["recon"]], [out_t[0], None, None, None], feats[0], feats[1],
                              masks, EPOCH)  # fmt: skip
    theirs["loss"].backward()
    named = dict(head_s.named_parameters())
    ref_grads = {k: p.grad.clone() for k, p in named.items() if p.requires_grad}
    ref_grads.update({f"input_{k}": t.grad.clone() for k, t in (("encoder", enc["s"]), ("decoder", dec["s"]))})
    enc["s"].grad, dec["s"].grad = None, None
    student, teacher = _our_head(head_s.state_dict()), _our_head(head_t.state_dict())
    teacher["patch_prototypes"].load_state_dict({"weight": head_t.state_dict()["last_layer.weight_v"]})  # shared
    tokens = {k: enc[k].flatten(2).transpose(1, 2) for k in "st"}
    parts = {"net": _Nets(x["recon"], tokens["s"], dec["s"]), **student,
             "teacher": (_Nets(x["recon"], tokens["t"], dec["t"]), teacher["cls_head"], teacher["context_proj"],
                         teacher["patch_prototypes"])}  # fmt: skip
    scores: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: scores.append(out.detach()))
             for m in (student["patch_prototypes"], teacher["patch_prototypes"])]  # fmt: skip
    mine, _ = _ours(x, casa, _config(), _full(masks), parts)
    for h in hooks:
        h.remove()
    mine["loss"].backward()
    ours_by_ref = {"mlp.0": "cls_head.mlp.0", "mlp.2": "cls_head.mlp.3", "mlp.4": "cls_head.mlp.6",
                   "last_layer": "cls_head.prototypes", "last_layer2": "patch_prototypes.weight",
                   "mlp3": "query_proj", "mlp4": "context_proj"}  # fmt: skip
    ours_params = {f"{k}.{n}": p for k, m in student.items() for n, p in m.named_parameters()}
    grads = {}
    for name, ref_grad in ref_grads.items():
        if name.startswith("input_"):
            grads[name] = _rel((enc if name == "input_encoder" else dec)["s"].grad, ref_grad)
            continue
        module, leaf = name.rsplit(".", 1)
        target = ours_by_ref[module]
        key = target if leaf == "weight_v" else f"{target}.{leaf}"
        grads[name] = _rel(ours_params[key].grad, ref_grad)
    worst = max(grads, key=grads.get)
    # our scores in call order: student queries, student context, teacher context (objective.py)
    outputs = {"query": (scores[0], out_s[1]), "context_student": (scores[1], out_s[2]),
               "context_teacher": (scores[2], out_t[2])}  # fmt: skip
    return {
        "output_max_abs_diff": max(float((a - b.detach()).abs().max()) for a, b in outputs.values()),
        "loss_rel_diff": _rel_float(mine["loss_cls"] + mine["loss_patch"], theirs["cls"] + theirs["patch"]),
        "patch_rel_diff": _rel_float(mine["loss_patch"], theirs["patch"]),
        "cls_rel_diff": _rel_float(mine["loss_cls"], theirs["cls"]),
        "grad_max_rel_diff": grads[worst], "grad_worst": worst, "grads_compared": len(grads),
        "output": "the head's prototype scores of the student's encoder and decoder tokens and the teacher's "
                  "decoder tokens (CASA's inputs)",
        "loss": "the [CLS] and patch terms, through the head and CASA",
        "grad_over": "the student head's parameters (weight_g fixed) and its encoder/decoder token inputs",
        "teacher_patch_prototypes": "the reference teacher's shared last_layer (shared_head_teacher, main-DDP.py:73; "
                                    "head.py:166-169), copied into our teacher's patch prototypes",
    }  # fmt: skip


def _ema(ref: Reference, **overrides: Any) -> dict[str, Any]:
    from ssl_domains import registry

    plugin = registry.load("alice")
    sizes = plugin.example_overrides()["alice"]
    cfg = _config(**{**sizes, "roi": 32, "out_dim": 32, "align_dim": 32, **overrides})
    torch.manual_seed(0)
    ours = plugin.model(cfg, None).double()
    theirs = copy.deepcopy(ours)
    used: list[float] = []  # the progress each of our updates reads its momentum at
    update = ours.teacher.update
    ours.teacher.update = lambda student, progress: (used.append(progress), update(student, progress))[1]
    ns: dict[str, Any] = {"torch": torch, "student": types.SimpleNamespace(module=theirs.student()),
                          "teacher_without_ddp": theirs.teacher.module}  # fmt: skip
    exec(ref.ema[0], ns)
    schedule = ref.utils.cosine_scheduler(cfg.momentum, 1, EMA_EPOCHS, NITER)  # main-DDP.py:319-320
    ns["momentum_schedule"], total = schedule, EMA_EPOCHS * NITER
    start = [p.detach().clone() for p in theirs.teacher.module.parameters()]
    for it in range(total):
        g = torch.Generator().manual_seed(it)  # the same "optimiser step" on both students
        for a, b in zip(ours.student().parameters(), theirs.student().parameters(), strict=True):
            delta = 0.05 * torch.randn(a.shape, generator=g, dtype=a.dtype)
            with torch.no_grad():
                a.add_(delta), b.add_(delta)
        ours.after_step((it + 1) / total)  # what the core passes: global_step / total after the step
        ns["it"] = it
        exec(ref.ema[1], ns)
    t_ours, t_ref = list(ours.teacher.module.parameters()), list(theirs.teacher.module.parameters())
    diff = max(float((a - b).abs().max()) for a, b in zip(t_ours, t_ref, strict=True))
    moved = max(float((b - s).abs().max()) for b, s in zip(t_ref, start, strict=True))
    momentum = [ours.teacher.momentum(p) for p in used]
    return {
        "output_max_abs_diff": diff, "teacher_rel_to_movement": diff / moved,
        "momentum_max_abs_diff": float(np.abs(np.asarray(momentum) - schedule).max()),
        "loss_rel_diff": None, "grad_max_rel_diff": None, "pairs_updated": len(ns["params_q"]),
        "teacher_parameters": len(t_ours), "steps": total,
        "output": f"every teacher parameter after {total} EMA steps", "loss": "none: the EMA has no loss",
    }  # fmt: skip


def compare(reference: Path) -> dict[str, Any]:
    """The per-component figures of the module docstring, and their maxima."""
    ref = Reference(reference)
    work = Path(tempfile.mkdtemp(prefix="alice_equiv_"))
    own_group = not dist.is_initialized()
    if own_group:  # the reference's Loss.update_center calls dist.all_reduce (one process here)
        dist.init_process_group("gloo", init_method=f"file://{work / 'store'}", rank=0, world_size=1)
    try:
        components = _dino_and_reconstruction(ref)
        components["casa"] = _casa(ref)
        components["patch_head"] = _patch_head(ref)
        components["ema"] = _ema(ref)
        keys = ("output_max_abs_diff", "teacher_rel_to_movement", "momentum_max_abs_diff")
        components["ema"]["switch_off"] = {
            "momentum_at_step_start": {k: v for k, v in _ema(ref, momentum_at_step_start=False).items() if k in keys},
            "momentum_ref_steps": {k: v for k, v in _ema(ref, momentum_ref_steps=3000).items() if k in keys},
        }  # our default 3000 scales a 40-step run's base momentum to the floor, 0.9
        components["patch_head"]["switch_off"] = {"patch_head": "not comparable: linear (ours) has no head here"}
    finally:
        if own_group:
            dist.destroy_process_group()
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {key: max(c[key] for c in components.values() if c.get(key) is not None)
                              for key in ("output_max_abs_diff", "loss_rel_diff", "grad_max_rel_diff")}  # fmt: skip
    result.update(components=components, switches=SWITCHES, shims=ref.shims,
                  casa_key_map=CASA_KEYS, pairs=PAIRS, roi=ROI)  # fmt: skip
    # published weights: Alice's repository releases none; MONAI's Swin UNETR self-supervised encoder and MONAI
    # bundles import into an Alice run's student and teacher (_equiv_contrastive3d_import.py, against MONAI)
    from _equiv_contrastive3d_import import check

    result["import"] = check("alice")
    result["import_max_abs_diff"] = result["import"].pop("import_max_abs_diff")
    result["not_compared"] = [
        "the backbone: the reference builds nnFormer (main-DDP.py:198-209), ours MONAI's UNETR/SwinUNETR",
        "which prototypes the teacher's patch scores follow over a run: the reference's teacher shares its [CLS] "
        "prototypes (main-DDP.py:73, head.py:166-169), which its by-name EMA pairing (engine_pretrain.py:49-58) "
        "moves towards the student's [CLS] prototypes; ours follows the student's patch prototypes",
        "the view mining (SAM embeddings, interfaces.find_point_in_vol): ours uses geometric correspondence",
    ]  # fmt: skip
    return result
