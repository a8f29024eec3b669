"""Our SSL4EO (MoCo v3 and MAE) against zhu-xlab/SSL4EO-S12 @ 2156913 (``src/benchmark/pretrain_ssl/models``),
for ``benchmarks/equivalence.py --plugin ssl4eo``.

SSL4EO-S12's pretraining code is facebookresearch/moco-v3 (``moco_v3/builder.py``, ``vits.py``) and
facebookresearch/mae (``mae/models_mae.py``, ``util/pos_embed.py``) with 13 input channels (Wang et al. 2022,
§4.1; the diffs against upstream are listed in ``docs/plugins/ssl4eo.md``). Those files are loaded by path
(:func:`import_reference`) with timm 0.4.9 (moco-v3's README; ``_timm.py``); nothing of them is copied here.
Shims, applied after loading: MAE's ``pos_embed.py`` calls ``np.float`` (L56), removed in numpy 1.24, so its
``np`` gets the alias back (``_equiv_croma._NumpyWithFloat``); MoCo's ``contrastive_loss`` moves its labels
with ``.cuda()`` (L69), an identity on the host while the reference runs; ``concat_all_gather`` and
``get_rank`` run for real in a one-process gloo group.

- Weights: the reference's ``MoCo_ViT`` / ``MaskedAutoencoderViT`` at a small size (13 bands, 32² chips,
  patch 8, width 64, 2 layers, 4 heads; MoCo heads 64 → 32; MAE decoder 32 × 2), its own initialisation plus
  noise (no LayerNorm at identity), copied into ours through :func:`to_ours`.
- Views and masks, injected: the two dates of SSL4EO-S12 chips as our datamodule gives them (L1C, 13 bands),
  through our batched ``augment``, fed to both sides (the reference's host-side cv2 pipeline is not compared);
  MAE's ``random_masking`` noise, drawn with a seed, and the same ``ids_keep`` / mask given to ours.
- Reference choices switched on (``ssl_domains_rs.plugin.REFERENCE_CODE_SSL4EO``); ``switch_off`` turns each
  off alone.
- Measured in float64: the position tables, every block's output, the heads, the loss, every gradient, and 5
  AdamW steps (MoCo: with the momentum encoder on its cosine schedule, the reference's ``_update_momentum_encoder``
  before each step's keys against our ``after_step``; fresh views or masks each step).
- Import (``_equiv_ssl4eo_import.py``): checkpoints in the three forms the reference's code saves or torchgeo
  ships, through ``ssl-domains import``, embedded by ours against the reference encoder, in float32.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import math
import shutil
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from _equiv_croma import _NumpyWithFloat, _rel, _rel_float
from _timm import import_timm, stub

REFERENCE_COMMIT = "2156913c5d8e5a2c572a5b000f0d5eaed6fc3192"
UPSTREAM_COMMITS = {
    "moco-v3": "c349e6e24f40d3fedb22d973f92defa4cedf37a7",
    "mae": "efb2a8062c206524e35e47d04501ed4f544c0ae8",
}


def reference_commit_for(reference: Path) -> str:
    """The pinned commit of the checkout's form (a ``git archive`` extract has no history to ask)."""
    return REFERENCE_COMMIT if (reference / MODELS).is_dir() else UPSTREAM_COMMITS["moco-v3"]


DATA = Path(__file__).resolve().parents[1] / "datasets" / "sentinel_s1s2" / "ssl4eo_s12"
MODELS = Path("src/benchmark/pretrain_ssl/models")
SIZES: dict[str, Any] = {
    "chip": 32, "patch": 8, "dim": 64, "depth": 2, "heads": 4, "proj_dim": 32, "hidden_dim": 64,
    "decoder_dim": 32, "decoder_depth": 2, "decoder_heads": 4, "mask_ratio": 0.75, "temperature": 0.2,
    "momentum": 0.9, "s2_level": "L1C", "batch_size": 6, "single_date": "augment",
}  # fmt: skip
STEPS = 5


def _load(name: str, path: Path) -> types.ModuleType:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not there; --reference is a zhu-xlab/SSL4EO-S12 checkout or extract")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _mae_source(mae_dir: Path, upstream: bool) -> str:
    """MAE's ``models_mae.py`` with its ``util/pos_embed.py``: SSL4EO-S12's imports it relatively, upstream's as
    ``util.pos_embed``; the latter is rewritten to the former in memory (the file on disk is untouched)."""
    text = (mae_dir / "models_mae.py").read_text()
    return text.replace("from util.pos_embed import", "from .util.pos_embed import") if upstream else text


@functools.cache
def import_reference(reference: Path) -> types.SimpleNamespace:
    """The MoCo v3 ``builder`` and ``vits`` and MAE's ``models_mae``, loaded by path, from either a zhu-xlab/SSL4EO-S12
    checkout (``src/benchmark/pretrain_ssl/models``: 13-band MAE, and its MoCo v2 builder for the ResNet-50 check),
    or a facebookresearch/moco-v3 checkout with facebookresearch/mae beside it (``DIR/../mae``; upstream MAE's
    ``patchify`` is written for 3 channels, so its check runs on RGB: B04, B03, B02)."""
    import_timm("the SSL4EO-S12 reference", "0.4.9")
    root = reference / MODELS
    if root.is_dir():
        moco, vits_path, mae_dir, v2 = root / "moco_v3" / "builder.py", root / "moco_v3" / "vits.py", root / "mae", True
    elif (reference / "moco" / "builder.py").is_file():
        moco, vits_path, v2 = reference / "moco" / "builder.py", reference / "vits.py", False
        mae_dir = next((d for d in (reference.parent / "mae", reference / "mae") if (d / "models_mae.py").is_file()),
                       None)  # fmt: skip
    else:
        raise FileNotFoundError(f"{reference}: neither a zhu-xlab/SSL4EO-S12 nor a facebookresearch/moco-v3 checkout")
    builder = _load("_ssl4eo_moco_builder", moco)
    vits = _load("_ssl4eo_moco_vits", vits_path)
    mae = None
    if mae_dir is not None:
        sys.modules["_ssl4eo_mae"] = stub("_ssl4eo_mae", __path__=[str(mae_dir)])
        pos_embed = _load("_ssl4eo_mae.util.pos_embed", mae_dir / "util" / "pos_embed.py")
        pos_embed.np = _NumpyWithFloat("numpy")  # np.float (pos_embed.py L56), removed in numpy 1.24
        mae = types.ModuleType("_ssl4eo_mae.models_mae")
        mae.__package__ = "_ssl4eo_mae"
        sys.modules[mae.__name__] = mae
        exec(compile(_mae_source(mae_dir, upstream=not v2), str(mae_dir / "models_mae.py"), "exec"), mae.__dict__)
    builder_v2 = _load("_ssl4eo_moco_v2_builder", root / "moco_v2" / "builder.py") if v2 else None
    form = "ssl4eo-s12" if v2 else "moco-v3 + mae"
    return types.SimpleNamespace(builder=builder, vits=vits, mae=mae, builder_v2=builder_v2,
                                 mae_channels=13 if v2 else 3, form=form)  # fmt: skip


@contextlib.contextmanager
def _cuda_is_identity() -> Iterator[None]:
    """MoCo's ``contrastive_loss`` puts its labels on the GPU with ``.cuda()`` (builder.py L69): on the host."""
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


def _block_map(prefix: str, ours: str) -> dict[str, str]:
    pairs = {"norm1": "norm1", "attn.qkv": "qkv", "attn.proj": "proj", "norm2": "norm2", "mlp.fc1": "ff.0"}
    return {f"{prefix}.{k}": f"{ours}.{v}" for k, v in {**pairs, "mlp.fc2": "ff.3"}.items()}


def to_ours(ref: dict[str, torch.Tensor], channels: int, patch: int) -> dict[str, torch.Tensor]:
    """The reference's keys (and layouts) in ours. timm's ``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
    mlp.fc2}`` are our ``TransformerBlock``'s ``{norm1, qkv, proj, norm2, ff.0, ff.3}``; the patch embedding's
    ``Conv2d`` weight ``[D, C, p, p]`` is our ``Linear`` on channel-major patches, flattened; ``cls_token`` /
    ``mask_token`` ``[1, 1, D]`` are ``[D]``. MoCo: ``base_encoder`` → ``backbone`` (its ``head``, the 3-layer
    projector, → ``projector``), ``momentum_encoder`` → ``key_encoder.module.{0, 1}``. MAE: ``decoder_embed`` →
    ``decoder.project``, ``decoder_blocks`` / ``decoder_norm`` → ``decoder.blocks`` / ``decoder.norm``,
    ``decoder_pred`` → ``decoder.head``, whose output rows go from MAE's ``(p, q, c)`` patch order
    (``models_mae.py`` L106, ``nchpwq->nhwpqc``) to ours, ``(c, p, q)``. The fixed ``pos_embed`` tables are not
    parameters of ours (compared separately)."""
    out: dict[str, torch.Tensor] = {}
    encoders = {"base_encoder.": "backbone.", "momentum_encoder.": "key_encoder.module.0.", "": "backbone."}
    for key, value in ref.items():
        if key.endswith("pos_embed"):
            continue
        head_of = next((p for p in ("base_encoder.head.", "momentum_encoder.head.") if key.startswith(p)), None)
        if head_of is not None:
            target = "projector." if head_of.startswith("base") else "key_encoder.module.1."
            out[target + key[len(head_of) :]] = value
            continue
        if key.startswith("predictor."):
            out[key] = value
            continue
        if key.startswith(("decoder_", "mask_token")):
            out.update(_decoder_key(key, value, channels, patch))
            continue
        prefix = next(p for p in encoders if key.startswith(p))
        rest, base = key[len(prefix) :], encoders[prefix]
        if rest.startswith("patch_embed.proj."):
            out[base + "embed." + rest.rsplit(".", 1)[1]] = value.flatten(1) if value.dim() > 1 else value
        elif rest == "cls_token":
            out[base + "cls"] = value.reshape(-1)
        elif rest.startswith("blocks."):
            i, sub = rest.split(".", 2)[1:]
            mapped = _block_map(f"blocks.{i}", f"{base}blocks.{i}")
            module, leaf = sub.rsplit(".", 1)
            out[mapped[f"blocks.{i}.{module}"] + "." + leaf] = value
        elif rest.startswith("norm."):
            out[base + rest] = value
        else:
            raise KeyError(f"key map: no place for {key}")
    return out


def _pqc_to_cpq(value: torch.Tensor, channels: int, patch: int) -> torch.Tensor:
    rest = value.shape[1:]
    return value.reshape(patch, patch, channels, *rest).permute(2, 0, 1, *range(3, 3 + len(rest))).reshape(value.shape)


def _decoder_key(key: str, value: torch.Tensor, channels: int, patch: int) -> dict[str, torch.Tensor]:
    if key == "mask_token":
        return {"decoder.mask_token": value.reshape(-1)}
    if key.startswith("decoder_embed."):
        return {"decoder.project." + key.rsplit(".", 1)[1]: value}
    if key.startswith("decoder_pred."):
        return {"decoder.head." + key.rsplit(".", 1)[1]: _pqc_to_cpq(value, channels, patch)}
    if key.startswith("decoder_norm."):
        return {"decoder.norm." + key.rsplit(".", 1)[1]: value}
    i, sub = key.split(".", 2)[1:]
    module, leaf = sub.rsplit(".", 1)
    mapped = _block_map(f"decoder_blocks.{i}", f"decoder.blocks.{i}")[f"decoder_blocks.{i}.{module}"]
    return {f"{mapped}.{leaf}": value}


def _setup(objective: str, rgb: bool = False) -> tuple[Any, Any, Any, dict[str, torch.Tensor]]:
    from ssl_domains import registry
    from ssl_domains.run import resolve_config
    from ssl_domains_rs.plugin import REFERENCE_CODE_SSL4EO

    plugin = registry.load("ssl4eo")
    overrides = {**SIZES, "objective": objective, **REFERENCE_CODE_SSL4EO[objective]}
    if rgb:  # upstream MAE's patchify takes 3 channels
        overrides["s2_bands"] = ["B04", "B03", "B02"]
    cfg = resolve_config(plugin, DATA, [{"ssl4eo": overrides}])
    dm = plugin.datamodule(cfg.method, cfg.data)
    dm.setup("fit")
    torch.manual_seed(0)  # the loader's shuffle: the same chips on every run
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)  # normalised as on the device
    return plugin, cfg.method, dm, {k: batch[k].double() for k in ("view1", "view2")}


def _noise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * p.abs().mean().clamp(min=0.1) * torch.randn_like(p))
    return model


def reference_model(ref: types.SimpleNamespace, cfg: Any, channels: int, seed: int) -> torch.nn.Module:
    """The reference network at ``cfg``'s sizes (timm's LayerNorm ε 1e-6, as both files' factories)."""
    norm = functools.partial(torch.nn.LayerNorm, eps=1e-6)
    vit = {"img_size": cfg.chip, "patch_size": cfg.patch, "in_chans": channels, "embed_dim": cfg.dim,
           "depth": cfg.depth, "num_heads": cfg.heads, "mlp_ratio": 4, "norm_layer": norm}  # fmt: skip
    torch.manual_seed(seed)
    if cfg.objective == "moco":
        base = functools.partial(ref.vits.VisionTransformerMoCo, qkv_bias=True, stop_grad_conv1=cfg.stop_grad_conv1,
                                 **vit)  # fmt: skip
        model = ref.builder.MoCo_ViT(base, cfg.proj_dim, cfg.hidden_dim, cfg.temperature)
        model = _noise(model.double(), seed)
        with torch.no_grad():  # the momentum encoder starts as a copy (builder.py L33-35)
            for b, m in zip(model.base_encoder.parameters(), model.momentum_encoder.parameters(), strict=True):
                m.copy_(b)
        return model
    model = ref.mae.MaskedAutoencoderViT(
        decoder_embed_dim=cfg.decoder_dim, decoder_depth=cfg.decoder_depth, decoder_num_heads=cfg.decoder_heads,
        norm_pix_loss=True, **vit,
    )  # fmt: skip
    return _noise(model.double(), seed)


def ours_from(plugin: Any, cfg: Any, dm: Any, reference: torch.nn.Module) -> torch.nn.Module:
    ours = plugin.model(cfg, dm).double()
    state = to_ours(reference.state_dict(), len(dm.bands), cfg.patch)
    missing, unexpected = ours.load_state_dict(state, strict=False)
    unused = ("decoder.",) if cfg.objective == "moco" else ("projector.", "predictor.")
    if unexpected or any(not k.startswith(unused) for k in missing):
        raise RuntimeError(f"key map: missing {missing}, unexpected {unexpected}")
    return ours.train()


def _mae_masks(n: int, tokens: int, ratio: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MAE's ``random_masking`` draw (models_mae.py L125-150) for ``seed``: (``ids_keep`` ``[n, k]`` in the
    reference's noise order, ``masked`` ``[n, N]`` boolean)."""
    torch.manual_seed(seed)
    ids_shuffle = torch.argsort(torch.rand(n, tokens), dim=1)
    keep = ids_shuffle[:, : int(tokens * (1 - ratio))]
    masked = torch.ones(n, tokens, dtype=torch.bool).scatter(1, keep, False)
    return keep, masked


def _views(batch: dict[str, torch.Tensor], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from ssl_domains_rs.objective import augment

    torch.manual_seed(seed)
    return augment(batch["view1"]), augment(batch["view2"])


def both_losses(ref, cfg, reference, ours, objective, batch, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's and our loss on the same views (MoCo) or image and masks (MAE), drawn for ``seed``."""
    if cfg.objective == "moco":
        x1, x2 = _views(batch, seed)
        with _cuda_is_identity():
            ref_loss = reference(x1, x2, cfg.momentum)
        return ref_loss, objective.loss(ours, x1, x2)["loss"]
    x = batch["view1"]
    tokens = (cfg.chip // cfg.patch) ** 2
    keep, masked = _mae_masks(x.shape[0], tokens, cfg.mask_ratio, seed)
    torch.manual_seed(seed)  # the reference draws the same noise inside forward_encoder
    ref_loss, _, ref_mask = reference(x, cfg.mask_ratio)
    if not torch.equal(ref_mask.bool(), masked):
        raise RuntimeError("the injected MAE mask is not the reference's: its draw order changed")
    return ref_loss, objective.loss(ours, x, keep, masked)["loss"]


def _layer_pairs(cfg: Any, reference, ours) -> tuple[dict, dict]:
    if cfg.objective == "moco":
        ref_vit, our_vit = reference.base_encoder, ours.backbone
        theirs = {"head": reference.base_encoder.head, "predictor": reference.predictor}
        mine = {"head": ours.projector, "predictor": ours.predictor}
    else:
        ref_vit, our_vit = reference, ours.backbone
        theirs = {f"decoder.blocks.{i}": b for i, b in enumerate(reference.decoder_blocks)}
        theirs.update({"decoder.norm": reference.decoder_norm, "decoder.head": reference.decoder_pred})
        mine = {f"decoder.blocks.{i}": b for i, b in enumerate(ours.decoder.blocks)}
        mine.update({"decoder.norm": ours.decoder.norm, "decoder.head": ours.decoder.head})
    theirs.update({f"blocks.{i}": b for i, b in enumerate(ref_vit.blocks)}, norm=ref_vit.norm)
    mine.update({f"blocks.{i}": b for i, b in enumerate(our_vit.blocks)}, norm=our_vit.norm)
    return theirs, mine


def _record(modules: dict[str, torch.nn.Module], store: dict[str, list]) -> list:
    def hook(name: str):
        return lambda _m, _i, out: store.setdefault(name, []).append(out.detach())

    return [m.register_forward_hook(hook(name)) for name, m in modules.items()]


def _grads(reference, ours, ref_loss, our_loss, channels: int, patch: int, strict: bool = True) -> dict[str, float]:
    reference.zero_grad(set_to_none=True)
    ours.zero_grad(set_to_none=True)
    ref_loss.backward()
    our_loss.backward()
    ref_grads = to_ours({k: p.grad for k, p in reference.named_parameters() if p.grad is not None}, channels, patch)
    pairs = [(k, p) for k, p in ours.named_parameters() if p.requires_grad and (strict or k in ref_grads)]
    return {k: (p.grad, ref_grads[k].reshape(p.shape)) for k, p in pairs}


def _grad_figures(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """``grad_max_rel_diff`` over the parameters whose gradient is not zero by construction. MoCo's projector
    starts with Linear then BatchNorm, which subtracts the batch mean: a shift of every row of its input (the final
    LayerNorm's bias) has an exactly zero gradient, and both sides give round-off (~1e-15) whose relative
    difference means nothing. Those (largest |g| below 1e-9 of the model's largest) are listed with both sides'
    largest |g| instead."""
    scale = max(float(ref.abs().max()) for _, ref in pairs.values())
    zero = {k: [float(o.abs().max()), float(r.abs().max())] for k, (o, r) in pairs.items()
            if float(r.abs().max()) < 1e-9 * scale}  # fmt: skip
    rel = {k: _rel(o, r) for k, (o, r) in pairs.items() if k not in zero}
    worst = max(rel, key=rel.get)
    return {"grad_max_rel_diff": rel[worst], "grad_worst_parameter": worst, "parameters_compared": len(rel),
            "grad_zero_parameters": zero}  # fmt: skip


def _positions(ref, cfg, reference) -> float:
    from ssl_domains_rs.model import POSITION_TABLES
    from ssl_domains_rs.plugin import resolved_positions

    grid, layout = cfg.chip // cfg.patch, resolved_positions(cfg)
    table = reference.base_encoder.pos_embed if cfg.objective == "moco" else reference.pos_embed
    diff = (table[0, 1:].double() - POSITION_TABLES[layout](grid, grid, cfg.dim).double()).abs().max()
    if cfg.objective == "mae":
        decoder = POSITION_TABLES[layout](grid, grid, cfg.decoder_dim).double()
        diff = torch.maximum(diff, (reference.decoder_pos_embed[0, 1:].double() - decoder).abs().max())
    return float(diff)


def one_step(ref, plugin, cfg, dm, batch) -> dict[str, Any]:
    channels = len(dm.bands)
    reference = reference_model(ref, cfg, channels, seed=0)
    ours = ours_from(plugin, cfg, dm, reference)
    theirs_mods, our_mods = _layer_pairs(cfg, reference, ours)
    theirs_out: dict[str, list] = {}
    mine_out: dict[str, list] = {}
    handles = _record(theirs_mods, theirs_out) + _record(our_mods, mine_out)
    ref_loss, our_loss = both_losses(ref, cfg, reference, ours, plugin.objective(cfg), batch, seed=0)
    for h in handles:
        h.remove()
    if cfg.objective == "mae":  # MAE's pixel order inside a patch is (p, q, c), ours (c, p, q)
        theirs_out["decoder.head"] = [_pqc_to_cpq(t.movedim(-1, 0), channels, cfg.patch).movedim(0, -1)
                                      for t in theirs_out["decoder.head"]]  # fmt: skip
    layers = {
        k: max(float((a - b).abs().max()) for a, b in zip(mine_out[k], theirs_out[k], strict=True)) for k in theirs_mods
    }
    grads = _grad_figures(_grads(reference, ours, ref_loss, our_loss, channels, cfg.patch))
    return {
        "positions_max_abs_diff": _positions(ref, cfg, reference),
        "output_max_abs_diff": max(layers.values()), "layer_max_abs_diff": layers,
        "loss_ours": float(our_loss.detach()), "loss_reference": float(ref_loss.detach()),
        "loss_rel_diff": _rel_float(our_loss, ref_loss),
        **grads,
    }  # fmt: skip


def switch_off(ref, plugin, cfg, dm, batch) -> dict[str, dict[str, float]]:
    """Each reference choice turned off alone (our default), same weights and draws: loss and gradient moves."""
    from ssl_domains_rs.plugin import REFERENCE_CODE_SSL4EO

    channels, defaults, out = len(dm.bands), type(cfg)(), {}
    reference = reference_model(ref, cfg, channels, seed=0)
    for name in REFERENCE_CODE_SSL4EO[cfg.objective]:
        off = copy.copy(cfg)
        setattr(off, name, getattr(defaults, name))
        ours = ours_from(plugin, off, dm, reference)
        ref_loss, loss = both_losses(ref, off, reference, ours, plugin.objective(off), batch, seed=0)
        grads = _grad_figures(_grads(reference, ours, ref_loss, loss, channels, cfg.patch, strict=False))
        out[name] = {"loss": _rel_float(loss, ref_loss), "grad": grads["grad_max_rel_diff"]}
    return out


def steps(ref, plugin, cfg, dm, batch) -> dict[str, Any]:
    """5 AdamW steps on both sides at our ``run_defaults``; MoCo's momentum encoder follows its cosine schedule
    (main_moco.py ``adjust_moco_momentum``: ``m_i = 1 - (1 - m0)(1 + cos(pi i / n)) / 2``, applied before step
    ``i``'s keys) and ours moves in ``after_step((i + 1) / n)``, after step ``i``: the same sequence of weights
    (after the last step ours applies ``m = 1``, the identity, and the reference's next update is not due)."""
    from ssl_domains.config import OptimConfig, from_mapping
    from ssl_domains.module import build_optimizer

    channels = len(dm.bands)
    reference = reference_model(ref, cfg, channels, seed=1)
    ours = ours_from(plugin, cfg, dm, reference)
    optim = from_mapping(OptimConfig, dict(plugin.run_defaults["optim"]), "optim")
    ref_params = [p for p in reference.parameters() if p.requires_grad]
    ref_opt = torch.optim.AdamW(ref_params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    our_opt = build_optimizer([p for p in ours.parameters() if p.requires_grad], optim)
    objective, moco = plugin.objective(cfg), cfg.objective == "moco"
    losses_ref, losses_ours = [], []
    for step in range(STEPS):
        m = 1 - (1 - cfg.momentum) * (1 + math.cos(math.pi * step / STEPS)) / 2
        run = copy.copy(cfg)
        run.momentum = m  # the momentum the reference's forward applies before this step's keys
        ref_loss, our_loss = both_losses(ref, run, reference, ours, objective, batch, seed=10 + step)
        ref_loss.backward()
        our_loss.backward()
        for opt in (ref_opt, our_opt):
            opt.step()
            opt.zero_grad()
        if moco:
            ours.after_step((step + 1) / STEPS)
        losses_ref.append(float(ref_loss.detach()))
        losses_ours.append(float(our_loss.detach()))
    mapped = to_ours({k: p.detach() for k, p in reference.named_parameters()}, channels, cfg.patch)
    params = {k: _rel(p.detach(), mapped[k].reshape(p.shape)) for k, p in ours.named_parameters() if k in mapped}
    rel = [abs(a - b) / abs(b) for a, b in zip(losses_ours, losses_ref, strict=True)]
    return {
        "steps_loss_max_rel_diff": max(rel), "steps_param_max_rel_diff": max(params.values()),
        "steps_param_worst": max(params, key=params.get),
        "steps_losses_ours": losses_ours, "steps_losses_reference": losses_ref,
    }  # fmt: skip


def compare(reference: Path) -> dict[str, Any]:
    """The SSL4EO figures of ``benchmarks/equivalence.py``: one block per objective, the bar figures the worse."""
    ref = import_reference(reference)
    work = Path(tempfile.mkdtemp(prefix="ssl4eo_equiv_"))
    own_group = not dist.is_initialized()
    if own_group:  # MoCo's concat_all_gather and get_rank (one process here)
        dist.init_process_group("gloo", init_method=f"file://{work / 'store'}", rank=0, world_size=1)
    try:
        from _equiv_ssl4eo_import import check

        result: dict[str, Any] = {}
        setups = {}
        for objective in ("moco", "mae"):
            if objective == "mae" and ref.mae is None:
                result["mae"] = {"skipped": f"no facebookresearch/mae checkout beside {reference}"}
                continue
            rgb = objective == "mae" and ref.mae_channels == 3
            plugin, cfg, dm, batch = setups[objective] = _setup(objective, rgb)
            block = one_step(ref, plugin, cfg, dm, batch)
            block.update(steps(ref, plugin, cfg, dm, batch))
            block["switch_off"] = switch_off(ref, plugin, cfg, dm, batch)
            result[objective] = block
        measured = [o for o in ("moco", "mae") if "skipped" not in result[o]]
        for key in ("output_max_abs_diff", "loss_rel_diff", "grad_max_rel_diff", "steps_loss_max_rel_diff"):
            result[key] = max(result[o][key] for o in measured)
        result["reference_form"] = ref.form
        if ref.builder_v2 is None:
            result["reference_commits"] = UPSTREAM_COMMITS
        result["import"] = check(ref, setups)
        result["import_max_abs_diff"] = result["import"].pop("import_max_abs_diff")
        result["export_max_abs_diff"] = result["import"].pop("export_max_abs_diff")
        result.update(config=dict(SIZES), bands=len(dm.bands), chips=int(batch["view1"].shape[0]))
        return result
    finally:
        if own_group:
            dist.destroy_process_group()
        shutil.rmtree(work, ignore_errors=True)
