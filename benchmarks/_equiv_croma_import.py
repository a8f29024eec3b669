"""CROMA's released weights, saved as released, through ``ssl-domains import`` and back out through ``ssl-domains
export`` (the ``import_max_abs_diff`` and ``import.export_max_abs_diff`` of ``benchmarks/equivalence.py --plugin
croma``; Fuller et al. 2023, antofuller/CROMA @ 59505a6).

The reference networks are ``use_croma.py``'s own classes (the inference code the released files are read with;
its ``Attention`` names ``to_qkv`` / ``to_out`` and its ``FFN`` ``net.0`` / ``net.3``, where ``pretrain_croma.py``
has ``create_qkv`` / ``out`` and ``net.0`` / ``net.2``), loaded by path: its ``ViT`` (16 heads and patch 8, fixed
at L306-307) at width 64, optical 4 layers, radar 2, its ``BaseTransformerCrossAttn`` with 2 layers of 16 heads,
and the two GAP heads (L55-60, L69-74), each with its init plus noise (no LayerNorm at identity). Files, float32:

- ``croma``: ``{"s1_encoder", "s1_GAP_FFN", "s2_encoder", "s2_GAP_FFN", "joint_encoder"}``, each a state dict,
  as ``CROMA_base.pt`` is laid out (``use_croma.py`` L63-64, L77-78, L88 read those entries and nothing else);
- ``torchgeo``: ``torchgeo.models.croma.CROMA(encoder_dim=64, encoder_depth=4).state_dict()`` after torchgeo's own
  ``load_weights`` has read the ``croma`` file into it. At 7ea0616 ``attn_bias`` is a plain attribute, so not in
  it; later torchgeo registers it as a buffer, so ``torchgeo_attn_bias`` is the same file with it. torchgeo's
  ``croma.py`` is loaded from ``$TORCHGEO_CROMA`` (default ``~/.cache/ssl-domains-refs/torchgeo/torchgeo/models/
  croma.py``, a ``git archive`` of microsoft/torchgeo @ 7ea0616); its one import beyond torch and einops,
  ``torchvision.models._api``, gets a stand-in ``Weights`` / ``WeightsEnum`` when torchvision is absent. Without
  that file the layout is derived from the module definition instead: ``CROMA.__init__`` assigns the five parts
  under the entry names, so the state dict is ``{f"{entry}.{key}"}`` (plus ``attn_bias`` =
  ``get_2dalibi(16, 225)`` where it is a buffer), and the reference forward is ``use_croma.py``'s.

The reference forward is ``PretrainedCROMA.forward`` (``use_croma.py`` L90-112) on an instance whose parts are set
as its ``__init__`` sets them (L12-88) at the small size, their weights read from the saved file as there
(``__init__`` hard-codes the 768/1024 widths, L34-46: the one shim); for the torchgeo files, torchgeo's
``CROMA.forward``. Each file is imported (``import_weights`` on ``datasets/sentinel_s1s2/bigearthnet_v1_mm``,
heads given with ``--set``), loaded with ``load_encoder``, and ``embed`` of the 6 BigEarthNet-MM pairs at every
``embed_modality`` is compared with ``optical_GAP``, ``SAR_GAP`` and ``joint_GAP``; ``tokens_max_abs_diff``
also compares the three token sets (not part of the figure). ``CROMA_IMPORT_SIZE=base`` (or ``large``) builds the
released sizes instead (768 wide, 12/6/6 layers; 1024, 24/12/12). The released model was trained on 120² chips
with patch 8; ``use_croma.py`` builds its ALiBi table for one square ``image_resolution`` (a multiple of 8), ours
computes it for any grid.

Then the way back (``export_max_abs_diff``, per format and overall): the ``croma`` and ``torchgeo`` runs, their
weights perturbed, exported in the same format (``weights_croma_out.py``) and loaded strictly by the same reference
code (``PretrainedCROMA``'s parts from the ``croma`` file; torchgeo's ``CROMA.load_state_dict`` from the
``torchgeo`` file, or without torchgeo's code the file split at ``<entry>.`` into those parts), whose forward on the
same chips is compared with our ``embed`` at every ``embed_modality``.
"""

from __future__ import annotations

import enum
import importlib.util
import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import torch
from _timm import stub
from torch import nn

DATA = Path(__file__).resolve().parents[1] / "datasets" / "sentinel_s1s2" / "bigearthnet_v1_mm"
TORCHGEO_CROMA = Path("~/.cache/ssl-domains-refs/torchgeo/torchgeo/models/croma.py").expanduser()
TORCHGEO_COMMIT = "7ea0616ded0cc27a8feb8b2aafefd7c14155f6fb"
_SIZES = {"small": (64, 4), "base": (768, 12), "large": (1024, 24)}
SIZE = os.environ.get("CROMA_IMPORT_SIZE", "small")
DIM, DEPTH = _SIZES[SIZE]
HEADS, CHIP = 16, 120
SETS = [f"croma.heads={HEADS}", "croma.batch_size=6"]
_ENTRIES = ("s1_encoder", "s1_GAP_FFN", "s2_encoder", "s2_GAP_FFN", "joint_encoder")


def _load(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def import_use(reference: Path) -> types.ModuleType:
    """``use_croma.py`` of the checkout, loaded by path."""
    path = reference / "use_croma.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --reference must be a checkout of antofuller/CROMA")
    return _load(path, "croma_use_reference")


def import_torchgeo() -> types.ModuleType | None:
    """torchgeo's ``models/croma.py`` by path (``$TORCHGEO_CROMA``), or None when it is not there."""
    path = Path(os.environ.get("TORCHGEO_CROMA", TORCHGEO_CROMA))
    if not path.is_file():
        return None
    if importlib.util.find_spec("torchvision") is None and "torchvision.models._api" not in sys.modules:

        class Weights:  # torchvision's dataclass: url, transforms, meta
            def __init__(self, url: str, transforms: Any, meta: dict) -> None:
                self.url, self.transforms, self.meta = url, transforms, meta

        api = stub("torchvision.models._api", Weights=Weights, WeightsEnum=enum.Enum)
        sys.modules.update({"torchvision": stub("torchvision"), "torchvision.models": stub("torchvision.models"),
                            "torchvision.models._api": api})  # fmt: skip
    return _load(path, "croma_torchgeo_reference")


def _gap(dim: int) -> nn.Sequential:
    # use_croma.py L51-56 / L65-70 (GAP_FFN_s1, GAP_FFN_s2), torchgeo croma.py L95-100
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))


def _parts(use: types.ModuleType) -> dict[str, nn.Module]:
    """The five parts, built by use_croma.py's classes as ``PretrainedCROMA.__init__`` builds them."""
    parts = {
        "s1_encoder": use.ViT(dim=DIM, depth=DEPTH // 2, in_channels=2), "s1_GAP_FFN": _gap(DIM),
        "s2_encoder": use.ViT(dim=DIM, depth=DEPTH, in_channels=12), "s2_GAP_FFN": _gap(DIM),
        "joint_encoder": use.BaseTransformerCrossAttn(dim=DIM, depth=DEPTH // 2, num_heads=HEADS),
    }  # fmt: skip
    with torch.no_grad():
        for part in parts.values():
            for p in part.parameters():
                p.add_(0.1 * p.abs().mean().clamp(min=0.1) * torch.randn_like(p))
    return parts


def _pretrained(use: types.ModuleType, path: Path) -> nn.Module:
    """A ``PretrainedCROMA`` (modality 'both') at the small size, weights from ``path`` as its ``__init__`` reads."""
    model = use.PretrainedCROMA.__new__(use.PretrainedCROMA)
    nn.Module.__init__(model)
    model.encoder_dim, model.encoder_depth, model.num_heads, model.patch_size = DIM, DEPTH, HEADS, 8
    model.modality, model.num_patches = "both", (CHIP // 8) ** 2
    model.s1_channels, model.s2_channels = 2, 12
    model.attn_bias = use.get_2dalibi(num_heads=HEADS, num_patches=model.num_patches)
    state = torch.load(path)
    model.s1_encoder = use.ViT(dim=DIM, depth=DEPTH // 2, in_channels=2)
    model.GAP_FFN_s1 = _gap(DIM)
    model.s2_encoder = use.ViT(dim=DIM, depth=DEPTH, in_channels=12)
    model.GAP_FFN_s2 = _gap(DIM)
    model.cross_encoder = use.BaseTransformerCrossAttn(dim=DIM, depth=DEPTH // 2, num_heads=HEADS)
    for module, entry in ((model.s1_encoder, "s1_encoder"), (model.GAP_FFN_s1, "s1_GAP_FFN"),
                          (model.s2_encoder, "s2_encoder"), (model.GAP_FFN_s2, "s2_GAP_FFN"),
                          (model.cross_encoder, "joint_encoder")):  # fmt: skip
        module.load_state_dict(state[entry])
    return model.eval()


def _reference_out(model: nn.Module, radar: torch.Tensor, optical: torch.Tensor, torchgeo: bool) -> dict:
    with torch.no_grad():
        if torchgeo:
            out = model(x_sar=radar, x_optical=optical)
            out = {k.replace("sar", "SAR"): v for k, v in out.items()}
        else:
            out = model(SAR_images=radar, optical_images=optical)
    return out


def _torchgeo_files(tg: types.ModuleType | None, use: types.ModuleType, released: Path, work: Path) -> tuple:
    """Write the torchgeo-layout files, without and with ``attn_bias`` (a plain attribute at 7ea0616, a registered
    buffer in later torchgeo); return them and torchgeo's model when its code is at hand."""
    paths = {"torchgeo": work / "torchgeo.pt", "torchgeo_attn_bias": work / "torchgeo_attn_bias.pt"}
    bias = use.get_2dalibi(num_heads=HEADS, num_patches=(CHIP // 8) ** 2)
    if tg is None:  # the layout derived from torchgeo's CROMA.__init__ (see the module docstring)
        state = torch.load(released)
        flat = {f"{e}.{k}": v for e in _ENTRIES for k, v in state[e].items()}
        model = None
    else:

        class FileWeights:  # what load_weights asks of a WeightsEnum member
            def get_state_dict(self, progress: bool = True) -> dict:
                return torch.load(released)

        model = tg.CROMA(encoder_dim=DIM, encoder_depth=DEPTH, num_heads=HEADS, patch_size=8, image_size=CHIP)
        tg.load_weights(model, FileWeights())  # torchgeo's own reader of the released file
        flat = model.state_dict()
        bias = model.attn_bias
        model.eval()
    torch.save({k: v for k, v in flat.items() if k != "attn_bias"}, paths["torchgeo"])
    torch.save({**flat, "attn_bias": bias}, paths["torchgeo_attn_bias"])
    return paths, model


def check(reference: Path) -> dict[str, Any]:
    """The import figures per format: max |ours - reference| of each embedding, in float32."""
    from ssl_domains import load_encoder, registry
    from ssl_domains.transfer import import_weights

    use, tg = import_use(reference), import_torchgeo()
    torch.manual_seed(5)
    out: dict[str, Any] = {"torchgeo_code": f"microsoft/torchgeo @ {TORCHGEO_COMMIT[:7]}" if tg else None}
    with tempfile.TemporaryDirectory(prefix="croma_import_") as tmp:
        work = Path(tmp)
        released = work / "CROMA_small.pt"
        torch.save({name: part.state_dict() for name, part in _parts(use).items()}, released)
        tg_paths, tg_model = _torchgeo_files(tg, use, released, work)
        paths = {"croma": released, **tg_paths}
        plugin = registry.load("croma")
        for label, path in paths.items():
            fmt = label.partition("_")[0]
            torchgeo_forward = fmt == "torchgeo" and tg_model is not None
            run = import_weights(plugin, path, DATA, work / f"run-{label}", fmt=fmt, overrides=SETS)
            ours, dm = load_encoder(run, DATA)
            dm.setup("predict")
            batch = next(iter(dm.predict_dataloader()))
            radar, optical = batch["radar"].float(), batch["optical"].float()
            reference_model = tg_model if torchgeo_forward else _pretrained(use, released)
            theirs = _reference_out(reference_model, radar, optical, torchgeo_forward)
            block: dict[str, Any] = {}
            with torch.no_grad():
                for modality, key in (("optical", "optical_GAP"), ("radar", "SAR_GAP"), ("joint", "joint_GAP")):
                    ours.embed_modality = modality
                    mine = ours.eval().embed({"radar": radar, "optical": optical})
                    block[f"{modality}_max_abs_diff"] = float((mine - theirs[key]).abs().max())
                    block[f"{modality}_abs_max"] = float(theirs[key].abs().max())
                tokens = ours(radar, optical, None, None)
            block["tokens_max_abs_diff"] = max(
                float((tokens[mine] - theirs[key]).abs().max())
                for mine, key in (("optical", "optical_encodings"), ("radar", "SAR_encodings"),
                                  ("joint", "joint_encodings"))
            )  # fmt: skip
            block["max_abs_diff"] = max(block[f"{m}_max_abs_diff"] for m in ("optical", "radar", "joint"))
            block.update(chips=int(radar.shape[0]), chip=int(radar.shape[-1]), optical_bands=int(optical.shape[1]))
            block["reference"] = "torchgeo CROMA" if torchgeo_forward else "use_croma.py PretrainedCROMA"
            block["attn_bias_in_file"] = label == "torchgeo_attn_bias"
            if label in ("croma", "torchgeo"):
                block["export"] = _export(use, tg, fmt, run, ours, radar, optical, work)
                block["export_max_abs_diff"] = block["export"].pop("max_abs_diff")
            out[label] = block
    out["import_max_abs_diff"] = max(out[f]["max_abs_diff"] for f in paths)
    out["export_max_abs_diff"] = max(out[f]["export_max_abs_diff"] for f in ("croma", "torchgeo"))
    out["config"] = {"size": SIZE, "dim": DIM, "depth": DEPTH, "heads": HEADS, "patch": 8, "chip": CHIP}
    return out


def _export(use: types.ModuleType, tg: types.ModuleType | None, fmt: str, run: Path, ours: nn.Module,
            radar: torch.Tensor, optical: torch.Tensor, work: Path) -> dict[str, Any]:  # fmt: skip
    """The way back: the imported run, its weights perturbed (so that nothing is the file read), through ``ssl-domains
    export --format fmt`` and loaded strictly by the reference's code as the import check builds it: the ``croma``
    file by ``PretrainedCROMA``'s parts (``load_state_dict`` of each entry, L63-88), the ``torchgeo`` file by
    ``torchgeo.models.croma.CROMA(...).load_state_dict`` (or, without torchgeo's code, split at ``<entry>.`` into
    ``use_croma.py``'s parts); the reference's forward against our ``embed`` at each ``embed_modality``."""
    from ssl_domains.checkpoint import save_weights
    from ssl_domains.run import WEIGHTS_FILE
    from ssl_domains.transfer import export_weights

    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.01 * p.abs().mean().clamp(min=0.1) * torch.randn_like(p))
    save_weights(ours, run / WEIGHTS_FILE)
    path = export_weights(run, fmt, work / f"exported-{fmt}.pt")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    torchgeo_forward = fmt == "torchgeo" and tg is not None
    if torchgeo_forward:
        model = tg.CROMA(encoder_dim=DIM, encoder_depth=DEPTH, num_heads=HEADS, patch_size=8, image_size=CHIP)
        model.load_state_dict(saved, strict=True)
        model.eval()
    else:
        if fmt == "torchgeo":  # the layout derived from torchgeo's CROMA.__init__: back to the five entries
            path = work / "exported-torchgeo-entries.pt"
            torch.save({e: {k.removeprefix(f"{e}."): v for k, v in saved.items() if k.startswith(f"{e}.")}
                        for e in _ENTRIES}, path)  # fmt: skip
        model = _pretrained(use, path)
    theirs = _reference_out(model, radar, optical, torchgeo_forward)
    block: dict[str, Any] = {"reference": "torchgeo CROMA" if torchgeo_forward else "use_croma.py PretrainedCROMA"}
    with torch.no_grad():
        for modality, key in (("optical", "optical_GAP"), ("radar", "SAR_GAP"), ("joint", "joint_GAP")):
            ours.embed_modality = modality
            mine = ours.eval().embed({"radar": radar, "optical": optical})
            block[f"{modality}_max_abs_diff"] = float((mine - theirs[key]).abs().max())
    block["max_abs_diff"] = max(block[f"{m}_max_abs_diff"] for m in ("optical", "radar", "joint"))
    return block
