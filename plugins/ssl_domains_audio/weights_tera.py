"""s3prl's TERA / Mockingjay checkpoints (``states-*.ckpt``) in and out of :class:`~.model.TERAModel`.

The file s3prl's ``pretrain/runner.py`` saves (``torch.save(all_states)``, L250-L265) holds ``Transformer`` and
``SpecHead`` (the state dicts of ``TransformerModel`` and ``TransformerSpecPredictionHead``,
``upstream/mockingjay/model.py``), ``Upstream_Config`` (its ``transformer``, ``task`` and ``audio`` sections;
legacy files keep them under ``Config``), ``Optimizer``, ``Step`` and ``Args`` (an ``argparse.Namespace``, the
one non-tensor object, allowed explicitly: the file is still read with ``weights_only=True``).

Key map (s3prl → ours), ``i`` the layer:

=====================================================  ======================================
``input_representations.spec_transform``               ``input``
``input_representations.LayerNorm``                    ``input_norm``
``encoder.layer.i.attention.self.{query,key,value}``   ``blocks.i.qkv`` (concatenated, q k v)
``encoder.layer.i.attention.output.dense``             ``blocks.i.proj``
``encoder.layer.i.attention.output.LayerNorm``         ``blocks.i.norm1``
``encoder.layer.i.intermediate.dense``                 ``blocks.i.ff.0``
``encoder.layer.i.output.dense``                       ``blocks.i.ff.3``
``encoder.layer.i.output.LayerNorm``                   ``blocks.i.norm2``
``SpecHead.{dense,LayerNorm,output}``                  ``head.{0,2,3}``
=====================================================  ======================================

TensorFlow-era names (``gamma``/``beta``) are renamed as s3prl's ``TransformerBuilder.load_model`` does.
Supported: post-norm (``pre_layer_norm: False``), GELU, unshared layers, output dim = input dim (TERA and
Mockingjay as released); anything else is one clear error.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ssl_domains import UserError
from ssl_domains.transfer import ImportedWeights, read_checkpoint

if TYPE_CHECKING:
    from .plugin import TERAConfig

_BLOCK = {
    "attention.output.dense": "proj",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "ff.0",
    "output.dense": "ff.3",
    "output.LayerNorm": "norm2",
}
_HEAD = {"dense": "head.0", "LayerNorm": "head.2", "output": "head.3"}


def _states(path: Path) -> dict[str, Any]:
    """The file's mapping, read with ``weights_only=True``. Two kinds of object are let through as inert data:
    ``Args`` (an ``argparse.Namespace``), and the LR-schedule objects (``WarmupLinearSchedule``, ...) that s3prl's
    ``Lamb`` keeps in its param groups and so in ``Optimizer``, rebuilt as empty stand-ins of the same name (no
    s3prl code is imported or run)."""
    allowed: list[Any] = [argparse.Namespace]
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if Path(path).is_file() else []
    except Exception:  # not a torch zip file: read_checkpoint names the problem
        unsafe = []
    for name in unsafe:
        module, _, cls = name.rpartition(".")
        if module.rpartition(".")[2].endswith("optimizers") and cls.endswith(("Schedule", "LR")):
            allowed.append(type(cls, (), {"__module__": module, "__qualname__": cls}))
    with torch.serialization.safe_globals(allowed):
        return read_checkpoint(path)


def _renamed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace("gamma", "weight").replace("beta", "bias"): v for k, v in state.items()}


def _upstream_config(states: dict[str, Any], path: Path) -> dict[str, Any]:
    for key in ("Upstream_Config", "Config"):  # new files, then legacy ones (s3prl TransformerBuilder)
        if isinstance(states.get(key), dict) and "transformer" in states[key]:
            return states[key]
    raise UserError(f"{path} has no s3prl upstream config (Upstream_Config or Config with a 'transformer' section)")


def to_ours(transformer: dict[str, torch.Tensor], head: dict[str, torch.Tensor], depth: int) -> dict[str, Any]:
    """Our state dict from s3prl's ``Transformer`` and ``SpecHead`` state dicts (the key map above; an empty
    ``head`` maps to no ``head.*`` keys)."""
    transformer, head = _renamed(transformer), _renamed(head)
    ours: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(src: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        where = name if src is transformer else f"SpecHead.{name}"
        if name not in src:
            raise UserError(f"the checkpoint lacks {where}: not a {depth}-layer TERA/Mockingjay state dict")
        used.add(where)
        return src[name]

    for suffix in ("weight", "bias"):
        ours[f"input.{suffix}"] = take(transformer, f"input_representations.spec_transform.{suffix}")
        ours[f"input_norm.{suffix}"] = take(transformer, f"input_representations.LayerNorm.{suffix}")
        for i in range(depth):
            prefix = f"encoder.layer.{i}."
            qkv = [take(transformer, f"{prefix}attention.self.{p}.{suffix}") for p in ("query", "key", "value")]
            ours[f"blocks.{i}.qkv.{suffix}"] = torch.cat(qkv)
            for theirs, mine in _BLOCK.items():
                ours[f"blocks.{i}.{mine}.{suffix}"] = take(transformer, f"{prefix}{theirs}.{suffix}")
        for theirs, mine in _HEAD.items() if head else ():
            ours[f"{mine}.{suffix}"] = take(head, f"{theirs}.{suffix}")
    left = sorted({*transformer, *(f"SpecHead.{k}" for k in head)} - used)
    if left:
        raise UserError(f"keys this TERA reader does not know: {', '.join(left[:8])}")
    return ours


def to_theirs(state: dict[str, torch.Tensor], depth: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """s3prl's ``(Transformer, SpecHead)`` state dicts from ours: the inverse of :func:`to_ours`."""
    transformer: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    for suffix in ("weight", "bias"):
        transformer[f"input_representations.spec_transform.{suffix}"] = state[f"input.{suffix}"]
        transformer[f"input_representations.LayerNorm.{suffix}"] = state[f"input_norm.{suffix}"]
        for i in range(depth):
            prefix = f"encoder.layer.{i}."
            for name, part in zip(("query", "key", "value"), state[f"blocks.{i}.qkv.{suffix}"].chunk(3), strict=True):
                transformer[f"{prefix}attention.self.{name}.{suffix}"] = part.clone()
            for theirs, mine in _BLOCK.items():
                transformer[f"{prefix}{theirs}.{suffix}"] = state[f"blocks.{i}.{mine}.{suffix}"]
        for theirs, mine in _HEAD.items():
            head[f"{theirs}.{suffix}"] = state[f"{mine}.{suffix}"]
    return transformer, head


def read(path: Path) -> ImportedWeights:
    """An s3prl TERA / Mockingjay checkpoint as our weights and the ``tera`` config it implies."""
    states = _states(path)
    if "Transformer" not in states:
        raise UserError(f"{path} is not an s3prl TERA/Mockingjay checkpoint (no 'Transformer' state dict)")
    config = _upstream_config(states, path)
    t = config["transformer"]
    unsupported = [
        f"{key}={t.get(key)!r} (ours: {want!r})"
        for key, want in (("pre_layer_norm", False), ("share_layer", False), ("hidden_act", "gelu"))
        if t.get(key, want) != want
    ]
    if unsupported:
        raise UserError(f"{path}: this TERA model cannot hold {', '.join(unsupported)}")
    transformer = states["Transformer"]
    n_mels = int(transformer["input_representations.spec_transform.weight"].shape[1])
    head = states.get("SpecHead") or {}
    if head and int(head["output.weight"].shape[0]) != n_mels:
        raise UserError(f"{path}: its prediction head outputs {head['output.weight'].shape[0]} values per frame, "
                        f"not its {n_mels} inputs; only TERA/Mockingjay with output = input are supported")  # fmt: skip
    depth = int(t["num_hidden_layers"])
    layer = {
        "dim": int(t["hidden_size"]),
        "depth": depth,
        "heads": int(t["num_attention_heads"]),
        "ff_dim": int(t["intermediate_size"]),
        "dropout": float(t.get("hidden_dropout_prob", 0.1)),
        "layer_norm_eps": float(t.get("layer_norm_eps", 1e-12)),
        "num_mel_bins": n_mels,
    }
    task = config.get("task", {})
    if int(task.get("sequence_length", 0) or 0) > 0:
        layer["crop_frames"] = int(task["sequence_length"])  # the reference's training crop
    notes = [f"s3prl step {states.get('Step', '?')}, {depth} x {layer['dim']}, {n_mels} input features"]
    audio = config.get("audio", {})
    feat = (audio.get("input") or {}) if isinstance(audio, dict) else {}
    if feat and (feat.get("feat_type") != "mel" or int(feat.get("delta", 0)) or not feat.get("cmvn", True)):
        notes.append(f"its input features are {feat}; ours are log-mel with per-utterance CMVN: embeddings of "
                     "such a model are only meaningful on its own features")  # fmt: skip
    if "kaldi" in audio:
        notes.append(f"it was trained on Kaldi features {audio['kaldi']}; ours are torchaudio log-mel")
    if not head:
        notes.append("no SpecHead in the file: the reconstruction head is freshly initialised")
    ours = to_ours(transformer, head, depth)
    return ImportedWeights({"tera": layer}, ours, fresh=() if head else ("head.",), notes=tuple(notes))


def write(model: torch.nn.Module, cfg: TERAConfig, path: Path) -> None:
    """Save ``model`` as s3prl's runner does, loadable by s3prl's upstream ``TransformerBuilder`` and
    ``UpstreamPretrainExpert.load_model``."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    transformer, head = to_theirs(state, cfg.depth)
    upstream = {
        "transformer": {
            "input_dim": cfg.num_mel_bins, "hidden_size": cfg.dim, "num_hidden_layers": cfg.depth,
            "num_attention_heads": cfg.heads, "intermediate_size": cfg.ff_dim, "hidden_act": "gelu",
            "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
            "initializer_range": 0.02, "layer_norm_eps": cfg.layer_norm_eps, "share_layer": False,
            "pre_layer_norm": False,
        },
        "task": {
            "loss": "L1", "sequence_length": cfg.crop_frames, "position_encoding_size": cfg.dim,
            "mask_proportion": cfg.time_mask_ratio, "mask_consecutive_min": cfg.time_mask_block,
            "mask_consecutive_max": cfg.time_mask_block, "mask_allow_overlap": True, "mask_bucket_ratio": 1.5,
            "mask_frequency": cfg.freq_mask_max, "noise_proportion": cfg.noise_prob,
        },
    }  # fmt: skip
    if cfg.cmvn == "utterance" and cfg.f_max is None:  # our log-mel is s3prl's preprocessor at these settings
        feat = {"feat_type": "mel", "log": True, "delta": 0, "cmvn": True}
        upstream["audio"] = {
            "target_level": -25, "win_ms": 25, "hop_ms": 10, "n_freq": 201, "n_mels": cfg.num_mel_bins,
            "n_mfcc": 13, "input": {**feat, "channel": 0}, "target": {**feat, "channel": 1},
        }  # fmt: skip
    torch.save({"Transformer": transformer, "SpecHead": head, "Upstream_Config": upstream, "Step": 0}, path)
