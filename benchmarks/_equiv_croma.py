"""Our CROMA against the reference (antofuller/CROMA @ 59505a6, ``pretrain_croma.py``), for
``benchmarks/equivalence.py --plugin croma``.

The reference's ``pretrain_croma.py`` is loaded by path (:func:`import_reference`). One shim: its
``get_1d_sincos_pos_embed_from_grid`` calls ``np.float`` (``pretrain_croma.py:284``), which numpy 1.24 removed;
the module's ``np`` is replaced after loading by a stand-in that forwards to numpy and has ``float`` (Python's
``float``, which ``np.float`` was). Its ``ContrastLossInput`` gathers the embeddings with ``dist.all_gather``
(L354-357): that runs for real, in a one-process gloo group set up here (and torn down afterwards).

- Weights: the reference's ``CROMA`` at a small size (patch 8 on 120² chips as its decoder hard-codes, L475, L485;
  width 64, optical 4 layers, radar and joint 2, 4 heads, decoder 2 layers of 64 with its fixed 8 heads), its own
  initialisation plus noise (so that no LayerNorm is at its identity init and a wrong key map shows), copied into
  ours through :func:`to_ours` (the key map, documented there).
- Batch and masks: 6 BigEarthNet-MM pairs (``datasets/sentinel_s1s2/bigearthnet_v1_mm``) as our datamodule gives
  them; the reference's ``get_mask`` draws the radar then the optical mask (independent, 75 %), and their
  ``ids_keep`` / ``mask_for_mae`` are fed to ours (``CROMAObjective.loss``). ``flips`` is off (the reference has
  no augmentation in its code).
- Reference choices switched on in ours (``ssl_domains_rs.plugin.REFERENCE_CODE``): ``qkv_bias: false``,
  ``shared_cross_norm``, ``joint_self_bias: cross``, ``alibi_slopes: alibi``, ``decoder_positions: mae``,
  ``unbiased_patch_var``, ``detach_keys``. ``switch_off`` turns each off alone on the same weights and masks: how
  far each choice moves the loss.
- Measured in float64: the 2D-ALiBi and X-ALiBi biases of the masked sequences, ALiBi's slopes at head counts that
  are not powers of 2, the decoder's position table, every layer's output (encoders, joint encoder, decoder) and
  the GAP heads and projections, the contrastive and MAE losses, every gradient (the reference's mapped into our
  layout), and 5 optimiser steps (fresh masks each step), each side with ``torch.optim.AdamW`` at our
  ``run_defaults`` (lr 5e-4, weight decay 0.05, constant rate, no clipping: the reference has no training loop).
- Import (``_equiv_croma_import.py``): files laid out as the released ``CROMA_base.pt`` and as torchgeo's ``CROMA``
  module saves them, written from ``use_croma.py``'s networks, through ``ssl-domains import``, embedded by ours
  (optical GAP, radar GAP, joint GAP) against the reference's forward, in float32: ``import_max_abs_diff``.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy
import torch
import torch.distributed as dist

REFERENCE_COMMIT = "59505a6bcadbf36ba20767270154bf9f3067c5e7"
DATA = Path(__file__).resolve().parents[1] / "datasets" / "sentinel_s1s2" / "bigearthnet_v1_mm"
SIZES: dict[str, Any] = {
    "chip": 120, "patch": 8, "dim": 64, "depth": 4, "heads": 4, "decoder_dim": 64, "decoder_depth": 2,
    "decoder_heads": 8, "mask_ratio": 0.75, "flips": False, "batch_size": 6,
}  # fmt: skip
STEPS = 5


class _NumpyWithFloat(types.ModuleType):
    """numpy, plus the ``np.float`` alias (Python's ``float``) that numpy 1.24 removed."""

    float = float

    def __getattr__(self, name: str) -> Any:
        return getattr(numpy, name)


def import_reference(reference: Path) -> types.ModuleType:
    """``pretrain_croma.py`` of the checkout, loaded by path, with the ``np.float`` shim."""
    path = reference / "pretrain_croma.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --reference must be a checkout of antofuller/CROMA")
    spec = importlib.util.spec_from_file_location("croma_reference", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.np = _NumpyWithFloat("numpy")
    return module


# the key map: reference module path -> ours (weights and biases follow their module)
_FLAT = {
    "radar_encoder.linear_input": "radar.embed", "optical_encoder.linear_input": "optical.embed",
    "radar_encoder.transformer.norm_out": "radar.norm", "optical_encoder.transformer.norm_out": "optical.norm",
    "cross_encoder.norm_out": "joint_norm", "GAP_FFN_radar": "gap_radar", "GAP_FFN_optical": "gap_optical",
    "global_contrast_loss.radar_proj": "proj_radar", "global_contrast_loss.optical_proj": "proj_optical",
    "global_contrast_loss.logit_scale": "logit_scale", "decoder.encoder_to_decoder": "decoder.project",
    "decoder.decoder.norm_out": "decoder.norm", "decoder.linear_output": "decoder.head",
    "decoder.mask_token": "decoder.mask_token",
}  # fmt: skip
_STACKS = {
    "radar_encoder.transformer.layers": "radar.blocks", "optical_encoder.transformer.layers": "optical.blocks",
    "cross_encoder.layers": "joint", "decoder.decoder.layers": "decoder.blocks",
}  # fmt: skip
# inside a layer: [Attention, FFN] (BaseTransformer, L219-224) or [Attention, CrossAttention, FFN] (L241-247)
_SELF = {"0.input_norm": "norm1", "0.create_qkv": "qkv", "0.out": "proj"}
_FFN = {"input_norm": "norm2", "net.0": "ff.0", "net.2": "ff.3"}
_CROSS = {"1.input_norm": ("norm_cross", "norm_context"), "1.create_q": "q_cross", "1.to_out": "proj_cross"}
_LAYER = re.compile(r"^(?P<stack>.+\.layers)\.(?P<i>\d+)\.(?P<sub>\d+)\.(?P<module>.+)\.(?P<leaf>weight|bias)$")


def to_ours(ref: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference state (or gradients) -> ours. Layer ``i`` of each stack maps onto block ``i`` of ours; the
    reference's separate ``create_k`` / ``create_v`` become our fused ``kv_cross`` (rows k then v), its one
    cross-attention ``input_norm`` both ``norm_cross`` and ``norm_context``; ``mask_token`` ``[1, 1, d]`` -> ``[d]``;
    ``decoder.decoder_pos_embed`` (a fixed table, compared apart) is skipped."""
    out: dict[str, torch.Tensor] = {}
    kv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in ref.items():
        if value is None or key == "decoder.decoder_pos_embed":
            continue
        match = _LAYER.match(key)
        if match is None:
            src = next(s for s in _FLAT if key == s or key.startswith(s + "."))
            out[_FLAT[src] + key[len(src) :]] = value.reshape(-1) if src == "decoder.mask_token" else value
            continue
        stack, i, sub, module, leaf = match.group("stack", "i", "sub", "module", "leaf")
        block = f"{_STACKS[stack]}.{i}"
        cross = stack == "cross_encoder.layers"
        ffn = sub == ("2" if cross else "1")
        name = _FFN[module] if ffn else (_CROSS if cross and sub == "1" else _SELF).get(f"{sub}.{module}")
        if module in ("create_k", "create_v"):
            kv.setdefault(f"{block}.kv_cross.{leaf}", {})[module] = value
            continue
        for target in (name,) if isinstance(name, str) else name:
            out[f"{block}.{target}.{leaf}"] = value
    for key, parts in kv.items():
        out[key] = torch.cat([parts["create_k"], parts["create_v"]])
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def _setup() -> tuple[Any, Any, Any, dict[str, torch.Tensor]]:
    from ssl_domains import registry
    from ssl_domains.run import resolve_config
    from ssl_domains_rs.plugin import REFERENCE_CODE

    plugin = registry.load("croma")
    cfg = resolve_config(plugin, DATA, [{"croma": {**SIZES, **REFERENCE_CODE}}])
    dm = plugin.datamodule(cfg.method, cfg.data)
    dm.setup("fit")
    batch = next(iter(dm.predict_dataloader()))
    return plugin, cfg.method, dm, {k: batch[k].double() for k in ("radar", "optical")}


def _reference_model(ref: Any, cfg: Any, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = ref.CROMA(patch_size=cfg.patch, encoder_dim=cfg.dim, encoder_layers=cfg.depth, attention_heads=cfg.heads,
                      decoder_dim=cfg.decoder_dim, decoder_layers=cfg.decoder_depth, total_channels=14,
                      num_patches=(cfg.chip // cfg.patch) ** 2).double()  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * p.abs().mean().clamp(min=0.1) * torch.randn_like(p))
    return model


def _ours_from(plugin: Any, cfg: Any, dm: Any, reference: torch.nn.Module) -> torch.nn.Module:
    ours = plugin.model(cfg, dm).double()
    state = to_ours(reference.state_dict())
    missing, unexpected = ours.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith(("qkv.bias", "q_cross.bias", "kv_cross.bias")) for k in missing):
        raise RuntimeError(f"key map: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():  # qkv_bias on (switch_off): the reference has none, so zero
        for key in missing:
            ours.get_parameter(key).zero_()
    return ours


def _masks(ref: Any, batch_size: int, n: int, seed: int) -> tuple[dict, dict]:
    torch.manual_seed(seed)
    ratio = SIZES["mask_ratio"]
    return ref.get_mask(batch_size, n, "cpu", ratio), ref.get_mask(batch_size, n, "cpu", ratio)  # radar, optical


def _ours_masks(radar_info: dict, optical_info: dict) -> tuple[tuple, tuple]:
    return tuple((m["ids_keep"], m["mask_for_mae"].bool()) for m in (radar_info, optical_info))


def _both_losses(ref: Any, reference, ours, objective, batch, masks) -> tuple[torch.Tensor, torch.Tensor, dict]:
    imgs = torch.cat([batch["optical"], batch["radar"]], dim=1)  # the reference's stack: 12 optical, then 2 radar
    contrast, mae = reference(imgs, *masks, rank=0, world_size=1)
    mine = objective.loss(ours, batch["radar"], batch["optical"], *_ours_masks(*masks))
    return contrast + mae, mine["loss"], {"ref_contrastive": contrast, "ref_mae": mae, **mine}


def _hooks(modules: dict[str, torch.nn.Module], store: dict[str, torch.Tensor], residual: set[str]) -> list:
    def hook(name: str):
        def fn(_module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            store[name] = (inputs[0] + out if name in residual else out).detach()

        return fn

    return [m.register_forward_hook(hook(name)) for name, m in modules.items()]


def _layer_modules(reference, ours) -> tuple[dict, dict, set[str]]:
    """Name -> module on each side. A reference layer's output is its FFN's input plus output (the residual)."""
    ref_mods, our_mods = {}, {}
    for stack, ours_name in _STACKS.items():
        for i, layer in enumerate(reference.get_submodule(stack)):
            ref_mods[f"{ours_name}.{i}"] = layer[-1]
            our_mods[f"{ours_name}.{i}"] = ours.get_submodule(f"{ours_name}.{i}")
    residual = set(ref_mods)
    pairs = {
        "radar": "radar_encoder", "optical": "optical_encoder", "joint_norm": "cross_encoder",
        "gap_radar": "GAP_FFN_radar", "gap_optical": "GAP_FFN_optical", "decoder.head": "decoder.linear_output",
        "proj_radar": "global_contrast_loss.radar_proj", "proj_optical": "global_contrast_loss.optical_proj",
    }  # fmt: skip
    for name, ref_name in pairs.items():
        ref_mods[name], our_mods[name] = reference.get_submodule(ref_name), ours.get_submodule(name)
    return ref_mods, our_mods, residual


def _biases(ref: Any, cfg: Any, reference, ours, masks) -> dict[str, Any]:
    from ssl_domains_rs.model import alibi_bias, alibi_slopes, gather_tokens, grid_positions, mae_sincos_positions_2d

    radar_info, optical_info = masks
    grid = cfg.chip // cfg.patch
    n, b = grid * grid, radar_info["ids_keep"].shape[0]
    pos = grid_positions((grid, grid), torch.device("cpu")).expand(b, -1, -1)
    r_pos, o_pos = gather_tokens(pos, radar_info["ids_keep"]), gather_tokens(pos, optical_info["ids_keep"])

    def theirs(q, k):
        return ref.apply_mask_to_alibi(reference.attn_bias, q["ids_keep"], k["ids_keep"], b, n, q["len_keep"],
                                       cfg.heads).double()  # fmt: skip

    slopes = ours.radar.slopes.float()
    self_diff = max(float((alibi_bias(p, p, slopes).double() - theirs(m, m)).abs().max())
                    for p, m in ((r_pos, radar_info), (o_pos, optical_info)))  # fmt: skip
    cross_diff = float((alibi_bias(r_pos, o_pos, slopes).double() - theirs(radar_info, optical_info)).abs().max())
    small = grid_positions((4, 4), torch.device("cpu"))[None]
    slope_diff = {}
    for rule in ("alibi", "geometric"):
        slope_diff[rule] = max(
            float((alibi_bias(small, small, alibi_slopes(h, rule)) - ref.get_alibi(h, 16)).abs().max())
            for h in (3, 5, 6, 12)
        )
    table = mae_sincos_positions_2d(grid, grid, cfg.decoder_dim) - reference.decoder.decoder_pos_embed[0].double()
    return {
        "alibi_max_abs_diff": self_diff,
        "x_alibi_max_abs_diff": cross_diff,
        "alibi_slopes_max_abs_diff": slope_diff["alibi"],
        "alibi_slopes_geometric_max_abs_diff": slope_diff["geometric"],
        "decoder_positions_max_abs_diff": float(table.abs().max()),
    }


def _one_step(ref: Any, plugin: Any, cfg: Any, reference, ours, batch) -> dict[str, Any]:
    masks = _masks(ref, batch["radar"].shape[0], (cfg.chip // cfg.patch) ** 2, seed=0)
    result = _biases(ref, cfg, reference, ours, masks)
    ref_mods, our_mods, residual = _layer_modules(reference, ours)
    theirs_out, mine_out = {}, {}
    handles = _hooks(ref_mods, theirs_out, residual) + _hooks(our_mods, mine_out, set())
    ref_loss, our_loss, parts = _both_losses(ref, reference, ours, plugin.objective(cfg), batch, masks)
    for h in handles:
        h.remove()
    layers = {k: float((mine_out[k] - theirs_out[k]).abs().max()) for k in ref_mods}
    grads = _grads(reference, ours, ref_loss, our_loss)
    worst = max(grads, key=grads.get)
    result.update(
        output_max_abs_diff=max(layers.values()), layer_max_abs_diff=layers,
        loss_ours=float(our_loss.detach()), loss_reference=float(ref_loss.detach()),
        loss_rel_diff=_rel_float(our_loss, ref_loss),
        contrastive_rel_diff=_rel_float(parts["contrastive"], parts["ref_contrastive"]),
        mae_rel_diff=_rel_float(parts["mae_optical"] + parts["mae_radar"], parts["ref_mae"]),
        grad_max_rel_diff=grads[worst], grad_worst_parameter=worst, parameters_compared=len(grads),
        reference_parameters=sum(1 for p in reference.parameters() if p.requires_grad),
    )  # fmt: skip
    return result


def _rel_float(a: torch.Tensor, b: torch.Tensor) -> float:
    return abs(float(a.detach()) - float(b.detach())) / abs(float(b.detach()))


def _grads(reference, ours, ref_loss: torch.Tensor, our_loss: torch.Tensor, strict: bool = True) -> dict[str, float]:
    """max |g_ours - g_ref| / max |g_ref| of each of our parameters (``strict=False``: of those that have a
    reference counterpart)."""
    reference.zero_grad(set_to_none=True)
    ours.zero_grad(set_to_none=True)
    ref_loss.backward()
    our_loss.backward()
    ref_grads = to_ours({k: p.grad for k, p in reference.named_parameters() if p.requires_grad})
    pairs = [(k, p) for k, p in ours.named_parameters() if strict or k in ref_grads]
    return {k: _rel(p.grad, ref_grads[k].reshape(p.shape)) for k, p in pairs}


def _switch_off(ref: Any, plugin: Any, cfg: Any, dm: Any, batch) -> dict[str, dict[str, float]]:
    """Each reference choice turned off alone (our default for it), same weights and masks: how far the loss and
    the gradients (of our parameters that have a reference counterpart) move."""
    from ssl_domains_rs.plugin import REFERENCE_CODE

    reference = _reference_model(ref, cfg, seed=0)
    masks = _masks(ref, batch["radar"].shape[0], (cfg.chip // cfg.patch) ** 2, seed=0)
    defaults, out = type(cfg)(), {}
    for name in REFERENCE_CODE:
        off = copy.copy(cfg)
        setattr(off, name, getattr(defaults, name))
        ours = _ours_from(plugin, off, dm, reference)
        ref_loss, loss, _ = _both_losses(ref, reference, ours, plugin.objective(off), batch, masks)
        out[name] = {
            "loss": _rel_float(loss, ref_loss),
            "grad": max(_grads(reference, ours, ref_loss, loss, strict=False).values()),
        }
    return out


def _steps(ref: Any, plugin: Any, cfg: Any, dm: Any, batch) -> dict[str, Any]:
    from ssl_domains.config import OptimConfig, from_mapping
    from ssl_domains.module import build_optimizer

    reference = _reference_model(ref, cfg, seed=1)
    ours = _ours_from(plugin, cfg, dm, reference)
    optim_cfg = from_mapping(OptimConfig, dict(plugin.run_defaults["optim"]), "optim")
    ref_params = [p for p in reference.parameters() if p.requires_grad]
    ref_opt = torch.optim.AdamW(ref_params, lr=optim_cfg.lr, betas=optim_cfg.betas, weight_decay=optim_cfg.weight_decay)
    our_opt = build_optimizer([p for p in ours.parameters() if p.requires_grad], optim_cfg)
    objective = plugin.objective(cfg)
    losses_ref, losses_ours = [], []
    for step in range(STEPS):
        masks = _masks(ref, batch["radar"].shape[0], (cfg.chip // cfg.patch) ** 2, seed=10 + step)
        ref_loss, our_loss, _ = _both_losses(ref, reference, ours, objective, batch, masks)
        ref_loss.backward()
        our_loss.backward()
        for opt in (ref_opt, our_opt):
            opt.step()
            opt.zero_grad()
        losses_ref.append(float(ref_loss.detach()))
        losses_ours.append(float(our_loss.detach()))
    mapped = to_ours({k: p.detach() for k, p in reference.named_parameters() if p.requires_grad})
    params = max(_rel(p.detach(), mapped[k].reshape(p.shape)) for k, p in ours.named_parameters())
    rel = [abs(a - b) / abs(b) for a, b in zip(losses_ours, losses_ref, strict=True)]
    return {
        "steps_loss_max_rel_diff": max(rel),
        "steps_param_max_rel_diff": params,
        "steps_losses_ours": losses_ours,
        "steps_losses_reference": losses_ref,
    }


def compare(reference: Path) -> dict[str, Any]:
    """The CROMA figures of ``benchmarks/equivalence.py`` (see the module docstring)."""
    ref = import_reference(reference)
    work = Path(tempfile.mkdtemp(prefix="croma_equiv_"))
    own_group = not dist.is_initialized()
    if own_group:  # the reference's ContrastLossInput calls dist.all_gather (one process here)
        dist.init_process_group("gloo", init_method=f"file://{work / 'store'}", rank=0, world_size=1)
    try:
        plugin, cfg, dm, batch = _setup()
        reference_model = _reference_model(ref, cfg, seed=0)
        ours = _ours_from(plugin, cfg, dm, reference_model)
        result = _one_step(ref, plugin, cfg, reference_model, ours, batch)
        result.update(_steps(ref, plugin, cfg, dm, batch))
        result["switch_off"] = _switch_off(ref, plugin, cfg, dm, batch)
        result.update(config={k: getattr(cfg, k) for k in SIZES}, chips=int(batch["radar"].shape[0]))
        from _equiv_croma_import import check

        result["import"] = check(reference)
        result["import_max_abs_diff"] = result["import"].pop("import_max_abs_diff")
        result["export_max_abs_diff"] = result["import"].pop("export_max_abs_diff")
        return result
    finally:
        if own_group:
            dist.destroy_process_group()
        shutil.rmtree(work, ignore_errors=True)
