"""T-JEPA weights in the reference's format (jose-melo/t-jepa @ 98dda99): ``ssl-domains import`` / ``export``.

What the reference saves: no encoder file of its own, only the training checkpoint of
``EarlyStopCounter.cache_model`` (``src/utils/checkpointer.py:364-408``): ``torch.save`` of a dict with ``epoch``,
``context_encoder`` and ``target_encoder`` (``Encoder.state_dict()``), ``predictor`` (``Predictors.state_dict_()``:
the ``TransformerPredictor``'s state dict, or a list of MLP state dicts), ``optimizer``, ``scaler``, ``scheduler``,
``weightdecay`` and ``train_loss``, as ``checkpoints/<dataset>/<job>/epoch_<N>.pth``. :func:`read` takes that file, or
a bare ``Encoder`` state dict (then it is both encoders, and the predictor starts fresh).

Key map (reference → ours; ``E`` = encoder, ``P`` = predictor; ``L`` = ``transformer.layers.<i>``):

====================================================  ==========================================================
``E.tokenizer.weight`` ``[R + n_num, H]``               ``reg_tokens`` (first ``R`` rows), ``tokenizer.num_weight``
``E.tokenizer.bias`` ``[n_num + n_cat, H]``             ``tokenizer.num_bias``, ``tokenizer.cat_bias``
``E.tokenizer.category_embeddings.<j>.weight``          rows ``1..c_j`` of column ``j`` in ``tokenizer.cat_embedding``
``E.encoder.L.self_attn.in_proj_weight / _bias``        ``blocks.<i>.qkv`` (same ``[q; k; v]`` row layout)
``E.encoder.L.self_attn.out_proj``                      ``blocks.<i>.proj``
``E.encoder.L.linear1`` / ``linear2``                   ``blocks.<i>.ff.0`` / ``ff.3``
``E.encoder.L.norm1`` / ``norm2``                       ``blocks.<i>.norm1`` / ``norm2``
``E.encoder.layernorm1``, ``fc``, ``layernorm2``        ``norm``, ``head.0``, ``head.1``
``P.predictor_emb``, ``P.mask_token`` ``[1, 1, p]``      ``predictor.embed``, ``predictor.mask_token`` ``[p]``
``P.transformer.L``                                     ``predictor.blocks.<i>`` (as above)
``P.transformer.layernorm1``, ``fc``, ``layernorm2``    ``predictor.head.0``, ``head.1``, ``head.2``
``P.predictor_norm``, ``P.predictor_proj``              ``predictor.norm``, ``predictor.out``
====================================================  ==========================================================

Not carried over, on purpose: ``E.pe.pe`` and ``P.predictor_pos_embed`` (fixed tables, checked against ours),
``E.encoder.transformer_layers.*`` and ``P.transformer.transformer_layers.*`` (the template layer
``TransformerEncoder`` clones, registered but never run, ``src/encoder.py:320-331``), ``P.layer_norm`` (built, never
used, ``src/predictors.py:246``), and the optimiser, scaler and schedulers.

What the table must match (checked when the model is built, :func:`check_table`): the number of numeric columns
and, for each categorical column in order, its number of categories. The reference's tokens are ``[REG] * R``,
then the numeric columns, then the categorical ones, each in the order of its dataset's ``num_features`` /
``cardinalities`` lists; ours are the numeric columns, then the categorical ones, in the table's column order, so
the table's columns must come in the reference's order. Reference category code ``k`` (``LabelEncoder``: the
sorted values) becomes our code ``k + 1`` (our vocabulary is the sorted values as text, with 0 for unseen ones),
so the values of each categorical column must sort the same way (text values do; numbers stored as text sort
differently, ``"10" < "9"``). Our unseen-category row has no reference counterpart and is set to zero (the
reference's ``OneHotEncoder`` rejects unseen categories, ``src/encoder.py:250``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ssl_domains import DataError, UserError

from .model import halves_positions, reference_positions
from .plugin import REFERENCE_ARCHITECTURE

if TYPE_CHECKING:
    from .model import TJEPAModel
    from .plugin import TJEPAConfig

CHECKPOINT_KEYS = ("epoch", "context_encoder", "target_encoder", "predictor", "optimizer", "scaler", "scheduler",
                   "weightdecay", "train_loss")  # fmt: skip
"""Top-level keys of the reference's checkpoint (``src/utils/checkpointer.py:378-388``)."""

REFERENCE_MAX_LEN = 5000
"""Rows of the reference's ``PositionalEncoding`` buffer (``src/utils/train_utils.py:24``)."""

_LAYER = {  # reference TransformerEncoderLayer -> our TransformerBlock
    "self_attn.in_proj_weight": "qkv.weight",
    "self_attn.in_proj_bias": "qkv.bias",
    "self_attn.out_proj.weight": "proj.weight",
    "self_attn.out_proj.bias": "proj.bias",
    "linear1.weight": "ff.0.weight",
    "linear1.bias": "ff.0.bias",
    "linear2.weight": "ff.3.weight",
    "linear2.bias": "ff.3.bias",
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
}
_ENCODER_HEAD = {"encoder.layernorm1": "norm", "encoder.fc": "head.0", "encoder.layernorm2": "head.1"}
_PREDICTOR_PLAIN = {
    "predictor_emb": "embed",
    "transformer.layernorm1": "head.0",
    "transformer.fc": "head.1",
    "transformer.layernorm2": "head.2",
    "predictor_norm": "norm",
    "predictor_proj": "out",
}
_ENCODER_LAYER = re.compile(r"^encoder\.transformer\.layers\.(\d+)\.(.+)$")
_PREDICTOR_LAYER = re.compile(r"^transformer\.transformer\.layers\.(\d+)\.(.+)$")
_CATEGORY = re.compile(r"^tokenizer\.category_embeddings\.(\d+)\.weight$")


# ---- the shapes a reference encoder implies -------------------------------------------------------------------


def encoder_sizes(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``{num_reg_tokens, num_numeric, categories, dim, depth, ff_dim}`` of a reference ``Encoder`` state dict."""
    n_cat = sum(1 for k in sd if _CATEGORY.match(k))
    categories = [int(sd[f"tokenizer.category_embeddings.{j}.weight"].shape[0]) for j in range(n_cat)]
    weight, bias = sd["tokenizer.weight"], sd["tokenizer.bias"]
    num_numeric = int(bias.shape[0]) - n_cat
    layers = sorted({int(m.group(1)) for k in sd if (m := _ENCODER_LAYER.match(k))})
    return {
        "num_reg_tokens": int(weight.shape[0]) - num_numeric,
        "num_numeric": num_numeric,
        "categories": categories,
        "dim": int(weight.shape[1]),
        "depth": len(layers),
        "ff_dim": int(sd["encoder.transformer.layers.0.linear1.weight"].shape[0]) if layers else 0,
    }


# ---- reference -> ours ------------------------------------------------------------------------------------------


def encoder_to_ours(sd: Mapping[str, torch.Tensor], unknown_rows: bool = True) -> dict[str, torch.Tensor]:
    """A reference ``Encoder`` state dict (or its gradients: only the keys present are mapped) in the keys of our
    ``TabularEncoder``. ``unknown_rows`` inserts our unseen-category row (zeros) before each column's rows."""
    sizes = encoder_sizes(sd)
    reg, n_num, cats = sizes["num_reg_tokens"], sizes["num_numeric"], sizes["categories"]
    out: dict[str, torch.Tensor] = {}
    if "tokenizer.weight" in sd:
        out["reg_tokens"] = sd["tokenizer.weight"][:reg].clone()
        out["tokenizer.num_weight"] = sd["tokenizer.weight"][reg:].clone()
    if "tokenizer.bias" in sd:
        out["tokenizer.num_bias"] = sd["tokenizer.bias"][:n_num].clone()
        out["tokenizer.cat_bias"] = sd["tokenizer.bias"][n_num:].clone()
    dim = sizes["dim"]
    like = sd["tokenizer.weight"]
    rows = []
    for j in range(len(cats)):
        table = sd.get(f"tokenizer.category_embeddings.{j}.weight")
        table = torch.zeros(cats[j], dim, dtype=like.dtype) if table is None else table
        rows += [torch.zeros(1, dim, dtype=table.dtype), table] if unknown_rows else [table]
    # no categorical column: our embedding keeps one frozen dummy row (FeatureTokenizer)
    out["tokenizer.cat_embedding.weight"] = torch.cat(rows) if rows else torch.zeros(1, dim, dtype=like.dtype)
    sizes_ours = [c + 1 if unknown_rows else c for c in cats]
    out["tokenizer.cat_offsets"] = torch.tensor([0, *sizes_ours[:-1]], dtype=torch.long).cumsum(0) if cats else \
        torch.zeros(0, dtype=torch.long)  # fmt: skip
    for key, value in sd.items():
        if m := _ENCODER_LAYER.match(key):
            if m.group(2) in _LAYER:
                out[f"blocks.{m.group(1)}.{_LAYER[m.group(2)]}"] = value.clone()
            continue
        module, _, leaf = key.rpartition(".")
        if module in _ENCODER_HEAD:
            out[f"{_ENCODER_HEAD[module]}.{leaf}"] = value.clone()
    return out


def predictor_to_ours(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A reference ``TransformerPredictor`` state dict (or its gradients) in the keys of our ``Predictor``
    (``predictor_head=encoder_head``)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key == "mask_token":
            out["mask_token"] = value.reshape(-1).clone()
        elif m := _PREDICTOR_LAYER.match(key):
            if m.group(2) in _LAYER:
                out[f"blocks.{m.group(1)}.{_LAYER[m.group(2)]}"] = value.clone()
        else:
            module, _, leaf = key.rpartition(".")
            if module in _PREDICTOR_PLAIN:
                out[f"{_PREDICTOR_PLAIN[module]}.{leaf}"] = value.clone()
    return out


def _unknown_encoder_keys(sd: Mapping[str, Any]) -> list[str]:
    unknown = []
    for key in sd:
        module, _, leaf = key.rpartition(".")
        ok = (
            key in ("tokenizer.weight", "tokenizer.bias", "pe.pe")
            or _CATEGORY.match(key)
            or ((m := _ENCODER_LAYER.match(key)) and m.group(2) in _LAYER)
            or key.startswith("encoder.transformer_layers.")
            or (module in _ENCODER_HEAD and leaf in ("weight", "bias"))
        )
        if not ok:
            unknown.append(key)
    return unknown


def _unknown_predictor_keys(sd: Mapping[str, Any]) -> list[str]:
    unknown = []
    for key in sd:
        module, _, leaf = key.rpartition(".")
        ok = (
            key in ("mask_token", "predictor_pos_embed", "layer_norm.weight", "layer_norm.bias")
            or ((m := _PREDICTOR_LAYER.match(key)) and m.group(2) in _LAYER)
            or key.startswith("transformer.transformer_layers.")
            or (module in _PREDICTOR_PLAIN and leaf in ("weight", "bias"))
        )
        if not ok:
            unknown.append(key)
    return unknown


def _is_tensor_map(value: Any) -> bool:
    return isinstance(value, Mapping) and all(torch.is_tensor(v) for v in value.values())


def read(path: Path) -> Any:
    """``ImportedWeights`` from a reference checkpoint (``epoch_<N>.pth``) or a bare ``Encoder`` state dict."""
    from ssl_domains.transfer import ImportedWeights, read_checkpoint

    path = Path(path)
    raw = read_checkpoint(path)
    notes: list[str] = []
    if "tokenizer.weight" in raw:  # a bare Encoder state dict
        target = context = raw
        predictor = None
        notes.append("an Encoder state dict: loaded as both the context and the target encoder")
    else:
        unknown_top = sorted(k for k in raw if k not in CHECKPOINT_KEYS)
        missing_top = [k for k in ("target_encoder",) if k not in raw]
        if unknown_top or missing_top:
            raise UserError(
                f"{path} is not a T-JEPA reference checkpoint: "
                + "; ".join(
                    part
                    for part in (
                        f"unknown keys {unknown_top}" if unknown_top else "",
                        f"missing {missing_top}" if missing_top else "",
                    )
                    if part
                )
                + f" (expected {list(CHECKPOINT_KEYS)}, as src/utils/checkpointer.py saves, or an Encoder state dict)"
            )
        target = raw["target_encoder"]
        context = raw.get("context_encoder", target)
        predictor = raw.get("predictor")
        if "context_encoder" not in raw:
            notes.append("no context_encoder in the file: the context encoder starts as a copy of the target encoder")
        if "epoch" in raw:
            notes.append(f"reference checkpoint of epoch {raw['epoch']}; optimiser and schedulers are not imported")
    for name, sd in (("target_encoder", target), ("context_encoder", context)):
        if not _is_tensor_map(sd) or "tokenizer.weight" not in sd or "tokenizer.bias" not in sd:
            raise UserError(f"{path}: {name} is not a reference Encoder state dict (no tokenizer.weight / bias)")
    problems = [f"{name}.{k}" for name, sd in (("target_encoder", target), ("context_encoder", context))
                for k in _unknown_encoder_keys(sd)]  # fmt: skip
    if isinstance(predictor, list):
        notes.append("the predictor is the reference's MLP variant (pred_type=mlp), which has no counterpart here: "
                     "the predictor starts fresh")  # fmt: skip
        predictor = None
    elif predictor is not None:
        if not _is_tensor_map(predictor):
            raise UserError(f"{path}: predictor is not a state dict of tensors")
        problems += [f"predictor.{k}" for k in _unknown_predictor_keys(predictor)]
    if problems:
        raise UserError(
            f"{path} holds keys the T-JEPA reference format does not have ({len(problems)}): "
            f"{', '.join(problems[:12])}{' ...' if len(problems) > 12 else ''}. Feature-type and feature-index "
            "embeddings (model_feature_type_embedding / model_feature_index_embedding) are not supported"
        )
    sizes = encoder_sizes(target)
    if encoder_sizes(context) != sizes:
        raise UserError(f"{path}: context_encoder and target_encoder have different shapes")
    if sizes["depth"] == 0 or sizes["num_reg_tokens"] < 0:
        raise UserError(f"{path}: the encoder has no transformer layers, or tokenizer shapes that do not add up")
    dim, reg = sizes["dim"], sizes["num_reg_tokens"]
    num_features = sizes["num_numeric"] + len(sizes["categories"])
    if "pe.pe" in target:
        ours = reference_positions(int(target["pe.pe"].shape[0]), dim)
        if target["pe.pe"].shape != ours.shape or not torch.allclose(target["pe.pe"].float(), ours, atol=1e-5):
            raise UserError(f"{path}: the encoder's positional table pe.pe is not the reference's PositionalEncoding")
    layer: dict[str, Any] = {
        "dim": dim,
        "depth": sizes["depth"],
        "ff_dim": sizes["ff_dim"],
        "num_reg_tokens": reg,
        # the file cannot tell the number of heads: the launch script's (scripts/launch_tjepa.sh)
        "heads": 2,
        "predictor_heads": 4,
        # the reference's choices, so that the imported weights compute what they computed there
        "block_norm": "post",
        "activation": "relu",
        "positions": "sincos",
        "predictor_head": "encoder_head",
        "predictor_positions": "halves",
        "mask_indexing": "reference",
        "numeric_scaling": "minmax",
        "expect_numeric": sizes["num_numeric"],
        "expect_categories": sizes["categories"],
    }
    state: dict[str, torch.Tensor] = {}
    state.update({f"context_encoder.{k}": v for k, v in encoder_to_ours(context).items()})
    state.update({f"target_encoder.module.{k}": v for k, v in encoder_to_ours(target).items()})
    fresh: tuple[str, ...] = ()
    if predictor is None:
        fresh = ("predictor.",)
        notes.append("no transformer predictor in the file: predictor sizes are our defaults, weights fresh")
    else:
        pdim = int(predictor["predictor_emb.weight"].shape[0])
        players = sorted({int(m.group(1)) for k in predictor if (m := _PREDICTOR_LAYER.match(k))})
        if not players or "transformer.fc.weight" not in predictor:
            raise UserError(f"{path}: the predictor has no transformer layers or no head (transformer.fc)")
        layer.update(
            predictor_dim=pdim,
            predictor_depth=len(players),
            predictor_ff_dim=int(predictor["transformer.transformer.layers.0.linear1.weight"].shape[0]),
        )
        table = predictor.get("predictor_pos_embed")
        if table is not None:
            expected = halves_positions(num_features, pdim)
            if tuple(table.shape) != (1, num_features, pdim) or not torch.allclose(table[0].float(), expected,
                                                                                    atol=1e-5):  # fmt: skip
                raise UserError(f"{path}: predictor_pos_embed is not the reference's sin-cos table over "
                                f"{num_features} features")  # fmt: skip
        state.update({f"predictor.{k}": v for k, v in predictor_to_ours(predictor).items()})
    notes += [
        f"table: {sizes['num_numeric']} numeric columns, then categorical columns with {sizes['categories']} "
        "categories (the reference's token order); categories map to the sorted values, our unseen-category row "
        "is zero",
        "the file does not record the attention heads (set to the launch script's 2 and 4) nor the activation "
        "(set to the reference's default relu): pass --set tjepa.heads=/predictor_heads=/activation= if yours "
        "differed",
        "numerics must be scaled as the reference did (MinMax over the table it was trained on): "
        "numeric_scaling=minmax is set, fitted on --data",
    ]
    return ImportedWeights(config={"tjepa": layer}, state_dict=state, fresh=fresh, notes=tuple(notes))


# ---- the table must match -----------------------------------------------------------------------------------------


def check_table(cfg: TJEPAConfig, datamodule: Any) -> None:
    """With ``expect_numeric`` / ``expect_categories`` set (imported weights), refuse a table that does not match."""
    if cfg.expect_numeric is None and cfg.expect_categories is None:
        return
    fitted = getattr(datamodule, "fitted", None) or {}
    numeric, cats = list(fitted.get("numeric", [])), list(fitted.get("categorical", []))
    vocab = fitted.get("vocab", {})
    problems = []
    if cfg.expect_numeric is not None and len(numeric) != cfg.expect_numeric:
        problems.append(f"{cfg.expect_numeric} numeric columns, the table has {len(numeric)} ({numeric})")
    if cfg.expect_categories is not None:
        sizes = [len(vocab[c]) for c in cats]
        expected = list(cfg.expect_categories)
        if len(sizes) != len(expected):
            problems.append(f"{len(expected)} categorical columns, the table has {len(sizes)} ({cats})")
        else:
            pairs = zip(cats, expected, sizes, strict=True)
            wrong = [f"{c!r}: {e} in the weights, {s} in the table" for c, e, s in pairs if e != s]
            if wrong:
                problems.append("category counts differ: " + "; ".join(wrong))
    if problems:
        raise DataError(
            f"the table {getattr(datamodule, 'data', '')} does not match the imported weights: they need "
            + "; ".join(problems)
            + ". Columns must come in the reference's order (numeric columns, then categorical ones) and each "
            "categorical column must have the same categories as the reference's dataset (fit on the whole table: "
            "pass it without the target column, or list columns with tjepa.categorical / numerical / drop)"
        )


# ---- ours -> reference --------------------------------------------------------------------------------------------


def _layer_to_reference(sd: Mapping[str, torch.Tensor], ours: str, theirs: str) -> dict[str, torch.Tensor]:
    back = {v: k for k, v in _LAYER.items()}
    out = {}
    for key, value in sd.items():
        if key.startswith(ours):
            rest = key[len(ours) :]
            index, _, leaf = rest.partition(".")
            if leaf in back:
                out[f"{theirs}{index}.{back[leaf]}"] = value.clone()
    return out


def encoder_to_reference(sd: Mapping[str, torch.Tensor], cardinalities: list[int]) -> dict[str, torch.Tensor]:
    """Our ``TabularEncoder`` state dict (``positions=sincos``) as a reference ``Encoder`` state dict; our
    ``cardinalities`` include the unseen-category row, which is dropped."""
    dim = sd["reg_tokens"].shape[1]
    out = {
        "tokenizer.weight": torch.cat([sd["reg_tokens"], sd["tokenizer.num_weight"]]).clone(),
        "tokenizer.bias": torch.cat([sd["tokenizer.num_bias"], sd["tokenizer.cat_bias"]]).clone(),
    }
    offset = 0
    for j, size in enumerate(cardinalities):
        out[f"tokenizer.category_embeddings.{j}.weight"] = sd["tokenizer.cat_embedding.weight"][
            offset + 1 : offset + size
        ].clone()
        offset += size
    out.update(_layer_to_reference(sd, "blocks.", "encoder.transformer.layers."))
    # the reference's unused template layer (src/encoder.py:320): strict loading wants it; a copy of layer 0
    out.update({k.replace("encoder.transformer.layers.0.", "encoder.transformer_layers."): v.clone()
                for k, v in out.items() if k.startswith("encoder.transformer.layers.0.")})  # fmt: skip
    for theirs, ours in _ENCODER_HEAD.items():
        out[f"{theirs}.weight"], out[f"{theirs}.bias"] = sd[f"{ours}.weight"].clone(), sd[f"{ours}.bias"].clone()
    out["pe.pe"] = reference_positions(REFERENCE_MAX_LEN, dim).to(sd["reg_tokens"].dtype)
    return out


def predictor_to_reference(sd: Mapping[str, torch.Tensor], num_features: int) -> dict[str, torch.Tensor]:
    """Our ``Predictor`` state dict (``predictor_head=encoder_head``, ``predictor_positions=halves``) as a reference
    ``TransformerPredictor`` state dict."""
    pdim = sd["mask_token"].shape[0]
    dtype = sd["mask_token"].dtype
    out = {
        "mask_token": sd["mask_token"].reshape(1, 1, -1).clone(),
        "predictor_pos_embed": halves_positions(num_features, pdim).to(dtype).unsqueeze(0),
        "layer_norm.weight": torch.ones(pdim, dtype=dtype),  # built but unused by the reference
        "layer_norm.bias": torch.zeros(pdim, dtype=dtype),
    }
    out.update(_layer_to_reference(sd, "blocks.", "transformer.transformer.layers."))
    out.update({k.replace("transformer.transformer.layers.0.", "transformer.transformer_layers."): v.clone()
                for k, v in out.items() if k.startswith("transformer.transformer.layers.0.")})  # fmt: skip
    for theirs, ours in _PREDICTOR_PLAIN.items():
        out[f"{theirs}.weight"], out[f"{theirs}.bias"] = sd[f"{ours}.weight"].clone(), sd[f"{ours}.bias"].clone()
    return out


def write(model: TJEPAModel, cfg: TJEPAConfig, path: Path) -> None:
    """Save ``model`` as a reference checkpoint: ``{"epoch", "context_encoder", "target_encoder", "predictor"}``
    (the keys ``cache_model`` writes that hold weights); load each with the reference's ``load_state_dict``."""
    wrong = {k: getattr(cfg, k) for k, v in REFERENCE_ARCHITECTURE.items() if getattr(cfg, k) != v}
    if wrong:
        raise UserError(
            f"this run's model is not the reference's architecture ({wrong}); only runs with "
            f"{', '.join(f'tjepa.{k}={v}' for k, v in REFERENCE_ARCHITECTURE.items())} (imported or trained so) "
            "can be exported to the t-jepa format"
        )
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    offsets = sd["target_encoder.module.tokenizer.cat_offsets"].tolist()
    rows = int(sd["target_encoder.module.tokenizer.cat_embedding.weight"].shape[0])
    cards = [end - start for start, end in zip(offsets, [*offsets[1:], rows], strict=True)]

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}

    checkpoint = {
        "epoch": 0,
        "context_encoder": encoder_to_reference(part("context_encoder."), cards),
        "target_encoder": encoder_to_reference(part("target_encoder.module."), cards),
        "predictor": predictor_to_reference(part("predictor."), model.num_features),
    }
    torch.save(checkpoint, path)
