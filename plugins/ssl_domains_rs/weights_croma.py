"""CROMA's released weights in (``ssl-domains import --plugin croma --format croma|torchgeo``).

Two layouts of the same networks (Fuller, Millard, Green, NeurIPS 2023; antofuller/CROMA @ 59505a6):

- ``croma``: ``CROMA_base.pt`` / ``CROMA_large.pt`` (huggingface.co/antofuller/CROMA; torchgeo re-hosts the same
  files for ``CROMABase_Weights`` / ``CROMALarge_Weights.CROMA_VIT``), as ``use_croma.py``'s ``PretrainedCROMA``
  reads them (L63-64, L77-78, L88): a dict of five state dicts, ``s1_encoder`` and ``s2_encoder`` (its ``ViT``),
  ``s1_GAP_FFN`` and ``s2_GAP_FFN`` (LN, d → 4d, GELU, 4d → d) and ``joint_encoder``
  (``BaseTransformerCrossAttn``). Any other top-level entry is left out and named in the notes.
- ``torchgeo``: the flat state dict of torchgeo's ``torchgeo.models.croma.CROMA`` (microsoft/torchgeo @ 7ea0616,
  ``croma_base(weights).state_dict()``): the module holds the five parts under the same names (``s1_encoder``,
  ``s1_GAP_FFN``, ``s2_encoder``, ``s2_GAP_FFN``, ``joint_encoder``), so its keys are the entries' keys behind
  ``<entry>.``. Later torchgeo registers its 2D-ALiBi table ``attn_bias`` ``[1, heads, N, N]`` (for
  ``image_size``) as a buffer, at 7ea0616 it is a plain attribute: when present it gives the heads and is checked
  against ours.

Key map (theirs → ours, :class:`ssl_domains_rs.model.CROMA`; weights and biases follow their module):

==============================================  =====================================================
``s2_encoder`` / ``s1_encoder``                  ``optical`` / ``radar``
``  .linear_input``                              ``  .embed`` (``Linear(C·p·p, d)``, channel-major patches)
``  .transformer.layers.i.0.{input_norm,         ``  .blocks.i.{norm1, qkv, proj}``
  to_qkv, to_out}``
``  .transformer.layers.i.1.{input_norm,         ``  .blocks.i.{norm2, ff.0, ff.3}``
  net.0, net.3}``
``  .transformer.norm_out``                      ``  .norm``
``joint_encoder.layers.i.0.*``                   ``joint.i.{norm1, qkv, proj}`` (as above)
``joint_encoder.layers.i.1.input_norm``          ``joint.i.norm_cross`` and ``norm_context`` (one module)
``joint_encoder.layers.i.1.{to_q, to_out}``      ``joint.i.{q_cross, proj_cross}``
``joint_encoder.layers.i.1.{to_k, to_v}``        ``joint.i.kv_cross`` (rows k then v)
``joint_encoder.layers.i.2.*``                   ``joint.i.{norm2, ff.0, ff.3}``
``joint_encoder.norm_out``                       ``joint_norm``
``s2_GAP_FFN`` / ``s1_GAP_FFN`` ``.{0,1,3}``     ``gap_optical`` / ``gap_radar`` ``.{0,1,3}``
==============================================  =====================================================

Sizes come from the shapes: width from ``linear_input``, patch from the radar embedding (2 bands: ``2 p²``
inputs), optical bands from the optical one, depth from the layer count (radar and joint must have half).
Heads leave no trace in the released file: ``use_croma.py``'s ``ViT`` fixes 16 for base and large (L306-307), as
its ``PretrainedCROMA`` does (L34-46); torchgeo's ``attn_bias`` holds them. Not in either file, left at their
initialisation: the contrastive projections, the logit scale and the MAE decoder.

The way out (``ssl-domains export --format croma|torchgeo``), this map reversed, is ``weights_croma_out.py``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ssl_domains import UserError

__all__ = ["ENTRIES", "FRESH", "from_released", "from_torchgeo", "read_released", "read_torchgeo"]

ENTRIES = {"s1_encoder": "radar", "s1_GAP_FFN": "gap_radar", "s2_encoder": "optical", "s2_GAP_FFN": "gap_optical",
           "joint_encoder": "joint"}  # fmt: skip
"""The released file's entries (``use_croma.py`` L63-88) and the parts of our model they fill."""
FRESH = ("decoder.", "proj_optical.", "proj_radar.", "logit_scale")
"""Our keys that no released file holds (pretrain_croma.py's ``global_contrast_loss`` and ``decoder``)."""
HEADS = 16
"""``use_croma.py``'s ``ViT``: ``self.num_heads = 16  # always 16, for base and large models``."""
SIZES = {(768, 12): "CROMA-B", (1024, 24): "CROMA-L"}

_SELF = {"0.input_norm": ("norm1",), "0.to_qkv": ("qkv",), "0.to_out": ("proj",)}
_FFN = {"input_norm": "norm2", "net.0": "ff.0", "net.3": "ff.3"}
_CROSS = {"1.input_norm": ("norm_cross", "norm_context"), "1.to_q": ("q_cross",), "1.to_out": ("proj_cross",)}
_LAYER = re.compile(r"(?:transformer\.)?layers\.(\d+)\.(\d)\.(.+)\.(weight|bias)")
_GAP = re.compile(r"[013]\.(weight|bias)")
_NOTE_NORM = (
    "normalisation: CROMA's README scales each band to [mean - 2 std, mean + 2 std] -> [0, 1] and clips (SatMAE's "
    "and SeCo's recipe, optionally through uint8), with the statistics of the data at hand; this plugin's default is "
    "the same formula with SSL4EO-S12's published statistics (stats: ssl4eo, normalize: clip2sigma), CROMA's "
    "pretraining data; `ssl-domains run croma stats` gives your data's own. S1 in dB (VV, VH), S2 as 12 bands in "
    "SSL4EO-S12's order (L2A, or L1C without the cirrus band B10: --set croma.s2_level=L1C with s2_bands)"
)
_NOTE_SWITCHES = (
    "reference-code switches on (ssl_domains_rs.plugin.REFERENCE_CODE): qkv_bias false (the file has no q/k/v "
    "biases), shared_cross_norm (one cross-attention input_norm for queries and context), joint_self_bias cross and "
    "alibi_slopes alibi (as pretrained; at 16 heads on unmasked chips both equal our defaults), decoder_positions "
    "mae, unbiased_patch_var and detach_keys (pretrain_croma.py's objective, for train --init-from)"
)


def _tensors(state: Mapping[str, Any], what: str, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping):
        raise UserError(f"{source}: {what} is a {type(state).__name__}, not a state dict")
    bad = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise UserError(f"{source}: {what} is not a state dict, these entries are not tensors: {', '.join(bad[:8])}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _stack(sd: Mapping[str, torch.Tensor], ours: str, cross: bool, what: str, source: str) -> tuple[dict, int]:
    """One ``BaseTransformer`` (``transformer.*`` of a ViT) or ``BaseTransformerCrossAttn`` in our keys; its depth."""
    out: dict[str, torch.Tensor] = {}
    kv: dict[str, dict[str, torch.Tensor]] = {}
    layers: set[int] = set()
    unknown = []
    ffn = "2" if cross else "1"
    for key, value in sd.items():
        if key.removeprefix("transformer.").startswith("norm_out."):
            out[f"{'joint_norm' if cross else ours + '.norm'}.{key.rsplit('.', 1)[1]}"] = value
            continue
        match = _LAYER.fullmatch(key)
        if match is None:
            unknown.append(key)
            continue
        i, sub, module, leaf = match.groups()
        block = f"{ours}.{i}" if cross else f"{ours}.blocks.{i}"
        if sub == ffn and module in _FFN:
            names: tuple[str, ...] = (_FFN[module],)
        elif cross and sub == "1" and module in ("to_k", "to_v"):
            kv.setdefault(f"{block}.kv_cross.{leaf}", {})[module] = value
            names = ()
        else:
            names = (_CROSS if cross else {}).get(f"{sub}.{module}") or _SELF.get(f"{sub}.{module}", ())
            if not names:
                unknown.append(key)
                continue
        layers.add(int(i))
        out.update({f"{block}.{name}.{leaf}": value for name in names})
    for key, parts in kv.items():
        if set(parts) != {"to_k", "to_v"}:
            raise UserError(f"{source}: {what} has only {', '.join(parts)} of a cross-attention's to_k / to_v")
        out[key] = torch.cat([parts["to_k"], parts["to_v"]])
    if unknown:
        kind = "BaseTransformerCrossAttn" if cross else "ViT"
        raise UserError(f"{source}: keys of {what} that are not use_croma.py's {kind} ({len(unknown)}): "
                        f"{', '.join(unknown[:8])}")  # fmt: skip
    if not layers or layers != set(range(len(layers))):
        raise UserError(f"{source}: {what} has layers {sorted(layers)}; expected 0 .. n-1")
    return out, len(layers)


def _gap(sd: Mapping[str, torch.Tensor], ours: str, what: str, source: str) -> dict[str, torch.Tensor]:
    unknown = [k for k in sd if not _GAP.fullmatch(k)]
    if unknown:
        raise UserError(f"{source}: {what} is not CROMA's GAP head (LN, Linear, GELU, Linear: keys 0, 1, 3); it has "
                        f"{', '.join(unknown[:8])}")  # fmt: skip
    return {f"{ours}.{k}": v for k, v in sd.items()}


def _convert(entries: Mapping[str, Mapping[str, torch.Tensor]], source: str) -> tuple[dict, dict[str, Any]]:
    """Our state dict from the five entries, and the sizes it implies."""
    out: dict[str, torch.Tensor] = {}
    depths = {}
    for entry, ours in ENTRIES.items():
        sd = entries[entry]
        if entry.endswith("GAP_FFN"):
            out.update(_gap(sd, ours, entry, source))
            continue
        if entry == "joint_encoder":
            part, depths[entry] = _stack(sd, ours, True, entry, source)
        else:
            for leaf in ("weight", "bias"):
                if f"linear_input.{leaf}" not in sd:
                    raise UserError(f"{source}: {entry} has no linear_input.{leaf}; not use_croma.py's ViT")
                out[f"{ours}.embed.{leaf}"] = sd[f"linear_input.{leaf}"]
            part, depths[entry] = _stack({k: v for k, v in sd.items() if not k.startswith("linear_input.")}, ours,
                                         False, entry, source)  # fmt: skip
        out.update(part)
    optical, radar = out["optical.embed.weight"], out["radar.embed.weight"]
    dim = int(optical.shape[0])
    patch = round((radar.shape[1] / 2) ** 0.5)
    if radar.shape[1] != 2 * patch * patch or optical.shape[1] % (patch * patch) or int(radar.shape[0]) != dim:
        raise UserError(f"{source}: s1_encoder.linear_input {tuple(radar.shape)} and s2_encoder.linear_input "
                        f"{tuple(optical.shape)} are not a 2-band radar and a multispectral patch embedding of one "
                        "width (CROMA: 2 x 8 x 8 and 12 x 8 x 8 inputs)")  # fmt: skip
    depth = depths["s2_encoder"]
    half = max(depth // 2, 1)
    if depths["s1_encoder"] != half or depths["joint_encoder"] != half:
        raise UserError(f"{source}: optical {depth} layers, radar {depths['s1_encoder']}, joint "
                        f"{depths['joint_encoder']}; this plugin's CROMA gives radar and joint half the optical depth "
                        f"({half}), as the released models do")  # fmt: skip
    bands = int(optical.shape[1]) // (patch * patch)
    sizes: dict[str, Any] = {"dim": dim, "depth": depth, "patch": patch, "bands": bands}
    return out, sizes


def _imported(state: dict[str, torch.Tensor], sizes: dict[str, Any], heads: str, form: str,
              extra: list[str]) -> Any:  # fmt: skip
    """The config layer (sizes, 120² chips, the reference switches, pretrain_croma.py's decoder) and notes."""
    from ssl_domains.transfer import ImportedWeights

    from .plugin import REFERENCE_CODE

    dim, depth, patch, bands = sizes["dim"], sizes["depth"], sizes["patch"], sizes["bands"]
    layer = {"patch": patch, "dim": dim, "depth": depth, "heads": sizes["heads"], "chip": 120, "decoder_dim": 512,
             "decoder_depth": 1, "decoder_heads": 8, **REFERENCE_CODE}  # fmt: skip
    if "alibi_slopes" in sizes:
        layer["alibi_slopes"] = sizes["alibi_slopes"]
    name = SIZES.get((dim, depth), "CROMA")
    notes = [
        f"{form}: {name}, width {dim}, optical {depth} layers, radar and joint {max(depth // 2, 1)}, patch {patch}, "
        f"2 radar + {bands} optical bands, pretrained on 120² chips (any size that is a multiple of {patch} works: "
        "2D-ALiBi is computed from the grid)",
        heads,
        _NOTE_SWITCHES,
        "not in the file, left at their initialisation: the contrastive projections (proj_optical, proj_radar), the "
        "logit scale and the MAE decoder (pretrain_croma.py's defaults: 512 wide, 1 layer, 8 heads)",
        _NOTE_NORM,
        *extra,
    ]
    if bands != 12:
        notes.append(f"the optical encoder takes {bands} bands: pass --set croma.s2_bands=[...] with {bands} bands")
    return ImportedWeights({"croma": layer}, state, fresh=FRESH, notes=tuple(notes))


def from_released(state: Mapping[str, Any], source: str = "the checkpoint") -> Any:
    """A released CROMA file (``use_croma.py``'s five entries) as :class:`ssl_domains.transfer.ImportedWeights`."""
    absent = [e for e in ENTRIES if e not in state]
    if absent:
        if any(str(k).startswith(tuple(f"{e}." for e in ENTRIES)) for k in state):
            raise UserError(f"{source} is a flat state dict (torchgeo's CROMA module): use --format torchgeo")
        raise UserError(f"{source} is not a released CROMA file (CROMA_base.pt, CROMA_large.pt): no "
                        f"{', '.join(absent)}; it holds {', '.join(ENTRIES)} (this one has: "
                        f"{', '.join(map(str, list(state)[:8]))})")  # fmt: skip
    entries = {e: _tensors(state[e], e, source) for e in ENTRIES}
    out, sizes = _convert(entries, source)
    sizes["heads"] = HEADS
    heads = (f"{HEADS} heads (not stored in the file: use_croma.py's ViT uses 16 for base and large; else --set "
             "croma.heads=N)")  # fmt: skip
    other = sorted(str(k) for k in state if k not in ENTRIES)
    extra = [f"left out of the file: {', '.join(other)} (use_croma.py reads only the five entries)"] if other else []
    return _imported(out, sizes, heads, "CROMA release", extra)


def _attn_bias(table: torch.Tensor, source: str) -> tuple[int, int, str]:
    """Heads, grid side and slope rule of torchgeo's ``attn_bias`` ``[1, H, N, N]``, checked against our 2D-ALiBi.

    torchgeo's ``get_2dalibi`` keeps the power-of-2 formula for any head count (our ``geometric``), use_croma.py's
    falls back to ALiBi's recipe (``alibi``); at 16 heads they agree."""
    from .model import alibi_bias, alibi_slopes, grid_positions

    if table.dim() != 4 or table.shape[0] != 1 or table.shape[2] != table.shape[3]:
        raise UserError(f"{source}: attn_bias {tuple(table.shape)} is not torchgeo's [1, heads, N, N] 2D-ALiBi table")
    heads, grid = int(table.shape[1]), round(table.shape[2] ** 0.5)
    pos = grid_positions((grid, grid), torch.device("cpu"))[None]
    for rule in ("alibi", "geometric"):
        ours = alibi_bias(pos, pos, alibi_slopes(heads, rule))
        if grid * grid == table.shape[2] and torch.allclose(table.float(), ours, atol=1e-4):
            return heads, grid, rule
    raise UserError(f"{source}: attn_bias is not the 2D-ALiBi table of {heads} heads on a {grid} x {grid} grid "
                    "(get_2dalibi); this plugin computes the bias and cannot hold another one")  # fmt: skip


def from_torchgeo(state: Mapping[str, Any], source: str = "the checkpoint") -> Any:
    """torchgeo's ``CROMA`` module state dict (``s1_encoder.*`` ..., ``attn_bias``) as ``ImportedWeights``."""
    if all(e in state and isinstance(state[e], Mapping) for e in ENTRIES):
        raise UserError(f"{source} is a released CROMA file (five nested state dicts): use --format croma")
    sd = _tensors(state, "the file", source)
    entries: dict[str, dict[str, torch.Tensor]] = {e: {} for e in ENTRIES}
    unknown = []
    for key, value in sd.items():
        head, _, rest = key.partition(".")
        if head in entries and rest:
            entries[head][rest] = value
        elif key != "attn_bias":
            unknown.append(key)
    if unknown:
        raise UserError(f"{source}: keys that are not torchgeo's CROMA module ({len(unknown)}): "
                        f"{', '.join(unknown[:8])}")  # fmt: skip
    absent = [e for e, part in entries.items() if not part]
    if absent:
        raise UserError(f"{source}: nothing under {', '.join(absent)}; this plugin needs both modalities and the joint "
                        "encoder (torchgeo's CROMA(modalities=['sar', 'optical']), its default)")  # fmt: skip
    out, sizes = _convert(entries, source)
    extra: list[str] = []
    if "attn_bias" in sd:
        sizes["heads"], grid, rule = _attn_bias(sd["attn_bias"], source)
        heads = f"{sizes['heads']} heads, from attn_bias (checked against our 2D-ALiBi; computed, not loaded)"
        if rule != "alibi":
            sizes["alibi_slopes"] = rule
            extra.append("alibi_slopes geometric: torchgeo's get_2dalibi at a head count that is not a power of 2")
        if grid * sizes["patch"] != 120:
            extra.append(f"attn_bias was built for {grid * sizes['patch']}² images (torchgeo's image_size); the "
                         "weights are the same at any size, chip stays at the pretraining 120")  # fmt: skip
    else:
        sizes["heads"] = HEADS
        heads = f"{HEADS} heads (no attn_bias in the file: torchgeo's ViT uses 16; else --set croma.heads=N)"
    return _imported(out, sizes, heads, "torchgeo CROMA", extra)


def _read(path: Path) -> Mapping[str, Any]:
    from ssl_domains.transfer import read_checkpoint

    state = read_checkpoint(path)
    for key in ("state_dict", "model"):  # a training checkpoint around the module's state dict
        if isinstance(state.get(key), Mapping) and not any(e in state for e in ENTRIES):
            return state[key]
    return state


def read_released(path: Path) -> Any:
    """``--format croma``: ``CROMA_base.pt`` / ``CROMA_large.pt`` as ``use_croma.py`` reads them."""
    return from_released(_read(path), str(path))


def read_torchgeo(path: Path) -> Any:
    """``--format torchgeo``: ``torchgeo.models.croma.CROMA(...).state_dict()`` (``croma_base`` / ``croma_large``)."""
    return from_torchgeo(_read(path), str(path))
