"""CROMA's published layouts out (``ssl-domains export --run RUN --format croma|torchgeo``): the inverses of
``weights_croma.read_released`` / ``read_torchgeo``.

- ``croma``: ``{"s1_encoder", "s1_GAP_FFN", "s2_encoder", "s2_GAP_FFN", "joint_encoder"}``, five state dicts in
  ``use_croma.py``'s key names (antofuller/CROMA @ 59505a6), as ``CROMA_base.pt`` is laid out: ``PretrainedCROMA``
  (L63-64, L77-78, L88) and torchgeo's ``load_weights`` read it, each entry loads strictly into its module.
- ``torchgeo``: the flat state dict of ``torchgeo.models.croma.CROMA`` (microsoft/torchgeo @ 7ea0616):
  ``<entry>.<key>`` for the same five parts. ``attn_bias`` is not written: at 7ea0616 it is a plain attribute,
  so a strict ``load_state_dict`` refuses it (a torchgeo that registers it as a buffer computes it at
  construction; load with ``strict=False`` there, the weights are complete either way).

Both files hold exactly what those networks can hold, so a run is refused with :class:`ssl_domains.UserError`
(naming the switch to train with) when writing it would change its function: q/k/v (and cross-attention
q, k/v) biases that are not all zero (``use_croma.py``'s ``to_qkv``, ``to_q``, ``to_k``, ``to_v`` have
``bias=False``: train with ``--set croma.qkv_bias=false``), separate cross-attention norms for queries and context
that differ (its ``CrossAttention`` has one ``input_norm``: ``--set croma.shared_cross_norm=true``), heads other
than 16 or a patch other than 8 (its ``ViT`` fixes both, L306-307, as torchgeo's does), other than 2 radar and
12 optical bands (``PretrainedCROMA`` and torchgeo's ``CROMA`` fix them), or a depth whose half is not the radar
and joint depth (``int(depth / 2)``: depth 1). Not in either layout, so not written (``import`` reports them
fresh): the contrastive projections, the logit scale and the MAE decoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ssl_domains import UserError

if TYPE_CHECKING:
    from .model import CROMA
    from .plugin import CROMAConfig

__all__ = ["to_released", "to_torchgeo", "write_released", "write_torchgeo"]

_ENCODER = {"norm1": "0.input_norm", "qkv": "0.to_qkv", "proj": "0.to_out", "norm2": "1.input_norm",
            "ff.0": "1.net.0", "ff.3": "1.net.3"}  # fmt: skip
_JOINT = {"norm1": "0.input_norm", "qkv": "0.to_qkv", "proj": "0.to_out", "norm_cross": "1.input_norm",
          "q_cross": "1.to_q", "proj_cross": "1.to_out", "norm2": "2.input_norm", "ff.0": "2.net.0",
          "ff.3": "2.net.3"}  # fmt: skip
_NO_BIAS = ("qkv", "q_cross", "kv_cross")
"""Our projections whose ``use_croma.py`` counterparts (``to_qkv``; ``to_q``, ``to_k``, ``to_v``) have no bias."""
_SWITCHES = "train with the reference switches (--set croma.qkv_bias=false --set croma.shared_cross_norm=true)"


def _refuse_sizes(model: CROMA, fmt: str) -> None:
    """The sizes ``use_croma.py``'s and torchgeo's classes can build (both fix 16 heads, patch 8, 2 + 12 bands)."""
    from .weights_croma import HEADS

    heads, depth = model.optical.heads, len(model.optical.blocks)
    problems = []
    if heads != HEADS or model.radar.heads != HEADS or any(b.heads != HEADS for b in model.joint):
        problems.append(f"{heads} heads (use_croma.py's ViT fixes 16, L306: --set croma.heads=16, with a width "
                        "that is a multiple of 16)")  # fmt: skip
    if model.patch != 8:
        problems.append(f"patch {model.patch} (its ViT fixes 8, L307: --set croma.patch=8)")
    if model.radar_channels != 2 or model.optical_channels != 12:
        problems.append(f"{model.radar_channels} radar + {model.optical_channels} optical bands (PretrainedCROMA and "
                        "torchgeo's CROMA fix 2 + 12: S1 VV, VH and S2 L2A's 12 bands, the default s2_level and "
                        "s2_bands)")  # fmt: skip
    if int(depth / 2) != len(model.radar.blocks) or len(model.joint) != len(model.radar.blocks):
        problems.append(f"optical depth {depth} with radar and joint {len(model.radar.blocks)} (PretrainedCROMA "
                        "builds int(depth / 2) layers for both: --set croma.depth=2 or more)")  # fmt: skip
    if problems:
        raise UserError(f"cannot export --format {fmt}: this run's CROMA has {'; '.join(problems)}")


def _refuse_biases(model: CROMA, fmt: str) -> None:
    """q/k/v biases may only be left out when they are all zero (a run trained with ``qkv_bias: false`` has none)."""
    nonzero = []
    for part, blocks in (("optical.blocks", model.optical.blocks), ("radar.blocks", model.radar.blocks),
                         ("joint", model.joint)):  # fmt: skip
        for i, block in enumerate(blocks):
            for name in _NO_BIAS:
                bias = getattr(getattr(block, name, None), "bias", None)
                if bias is not None and bool(bias.detach().ne(0).any()):
                    nonzero.append(f"{part}.{i}.{name}.bias")
    if nonzero:
        raise UserError(f"cannot export --format {fmt}: use_croma.py's attention has no q/k/v biases (to_qkv, to_q, "
                        f"to_k, to_v: bias=False) and this run's are not zero ({len(nonzero)}: "
                        f"{', '.join(nonzero[:4])}); dropping them would change the network: {_SWITCHES}")  # fmt: skip


def _refuse_cross_norms(model: CROMA, fmt: str) -> None:
    """One cross-attention ``input_norm`` for queries and context: ours may be two modules, if they are equal."""
    differ = []
    for i, block in enumerate(model.joint):
        if block.norm_context is block.norm_cross:
            continue
        a, b = block.norm_cross.state_dict(), block.norm_context.state_dict()
        if any(not torch.equal(a[k], b[k]) for k in a):
            differ.append(f"joint.{i}")
    if differ:
        raise UserError(f"cannot export --format {fmt}: use_croma.py's CrossAttention has one input_norm for the "
                        f"queries and the context, and this run's norm_cross and norm_context differ in "
                        f"{', '.join(differ)}; {_SWITCHES}")  # fmt: skip


def _check(model: CROMA, fmt: str) -> None:
    _refuse_sizes(model, fmt)
    _refuse_biases(model, fmt)
    _refuse_cross_norms(model, fmt)


def _leaf(module: str, leaf: str) -> bool:
    """Whether our ``module.leaf`` is written (the zero q/k/v biases and the shared norm's second name are not)."""
    return not (leaf == "bias" and module in _NO_BIAS) and module != "norm_context"


def to_released(model: CROMA, fmt: str = "croma") -> dict[str, dict[str, torch.Tensor]]:
    """Our :class:`ssl_domains_rs.model.CROMA` as ``use_croma.py``'s five entries (refused where unfaithful)."""
    from .weights_croma import ENTRIES, FRESH

    _check(model, fmt)
    parts = {ours: entry for entry, ours in ENTRIES.items()}
    out: dict[str, dict[str, torch.Tensor]] = {entry: {} for entry in ENTRIES}
    for key, value in model.state_dict().items():
        part, _, rest = key.partition(".")
        module, _, leaf = rest.rpartition(".")
        value = value.detach().clone().contiguous()
        if part in ("optical", "radar"):
            entry = out[parts[part]]
            if module == "embed":
                entry[f"linear_input.{leaf}"] = value
            elif module == "norm":
                entry[f"transformer.norm_out.{leaf}"] = value
            elif _leaf(module.split(".", 2)[2], leaf):  # blocks.i.<module>
                _, i, name = module.split(".", 2)
                entry[f"transformer.layers.{i}.{_ENCODER[name]}.{leaf}"] = value
        elif part in ("gap_optical", "gap_radar"):
            out[parts[part]][rest] = value
        elif part == "joint_norm":
            out["joint_encoder"][f"norm_out.{leaf}"] = value
        elif part == "joint" and _leaf(module.split(".", 1)[1], leaf):
            i, name = module.split(".", 1)
            if name == "kv_cross":  # rows k then v
                k, v = value.chunk(2)
                out["joint_encoder"][f"layers.{i}.1.to_k.{leaf}"] = k.contiguous()
                out["joint_encoder"][f"layers.{i}.1.to_v.{leaf}"] = v.contiguous()
            else:
                out["joint_encoder"][f"layers.{i}.{_JOINT[name]}.{leaf}"] = value
        elif not key.startswith(FRESH) and part not in ("optical", "radar", "joint"):
            raise UserError(f"cannot export --format {fmt}: {key} has no place in use_croma.py's layout")
    return out


def to_torchgeo(model: CROMA) -> dict[str, torch.Tensor]:
    """Our CROMA as ``torchgeo.models.croma.CROMA``'s state dict (7ea0616: no ``attn_bias``)."""
    return {f"{entry}.{k}": v for entry, part in to_released(model, "torchgeo").items() for k, v in part.items()}


def write_released(model: CROMA, cfg: CROMAConfig | None, path: Path) -> None:
    """``--format croma``: a ``CROMA_base.pt``-style file, ``PretrainedCROMA(pretrained_path=...)`` reads it."""
    torch.save(to_released(model), path)


def write_torchgeo(model: CROMA, cfg: CROMAConfig | None, path: Path) -> None:
    """``--format torchgeo``: ``torchgeo.models.croma.CROMA(...).load_state_dict(torch.load(path))``."""
    torch.save(to_torchgeo(model), path)
