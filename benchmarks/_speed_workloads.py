"""What `speed.py` trains for each first-party plugin: data, presets, and the reference implementation beside it.

Presets name model sizes, the same three for every plugin:

* ``base``: the published configuration (the size the reference implementation trains), used for the ratios;
  for CROMA, SSL4EO, contrastive3d and Alice a GPU configuration (``gpu_base``: a CPU run without ``--preset``
  takes ``small``);
* ``small``: our CPU default (what ``ssl-domains train --plugin P`` runs without a preset);
* ``tiny``: the size the test suite trains.

Data are the samples shipped in ``datasets/`` (Cora, Adult, FSDD, the three ``medical3d`` volumes) or generated:
for MERLIN a single-look complex image large enough for 256-pixel patches, for CROMA and SSL4EO the RS plugin's
example Sentinel-1/2 scenes (``write_example_pairs``) at 264² (SSL4EO-S12's patch size), two locations and two
dates, windows every 8 pixels so that a full batch of 224² chips exists. Throughput does not depend on the
content, and a fresh clone has no larger scenes.

The references of the later plugins (``_speed_refs.py``) reuse the equivalence harnesses' loaders, key maps and
shims: CROMA and SSL4EO at our sizes (CROMA's decoder hard-codes 120² chips of patch 8, so every CROMA preset
keeps them), contrastive3d against the MONAI ViT notebook with our ``decoder: autoenc`` and ``loss_form:
tutorial`` (the notebook's network and losses; our default UNETR decoder is a different, larger network), Alice
on its parts only (see ``_speed_refs.alice_step``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_domains.plugin import ModalityPlugin
from ssl_domains.run import read_yaml

REPO = Path(__file__).resolve().parent.parent
PRESETS = ("tiny", "small", "base")

ReferenceBuilder = Callable[[Path | None, Any, dict[str, torch.Tensor], Any], Callable[[], torch.Tensor]]


@dataclass
class Workload:
    """One plugin's benchmark: how to get its data and config layers, what a sample is, and its reference."""

    unit: str
    """What one training sample is (nodes, rows, patches): samples/s counts these."""
    data: Callable[[Path], Path]
    """Returns the ``--data`` path, writing generated data under the given scratch folder if needed."""
    layers: Callable[[ModalityPlugin, str], list[dict[str, Any]]]
    """Config layers (presets, overrides) for a size preset."""
    reference: str
    """The reference implementation, as cited in docs/performance.md."""
    samples_per_item: int = 1
    """Samples one batch item gives (MERLIN: each patch trains two pairs, a->b and b->a)."""
    reference_needs_checkout: bool = True
    """Whether ``--reference NAME=DIR`` must give a checkout (False: the reference is an installed package)."""
    build_reference: ReferenceBuilder | None = None
    gpu_base: bool = False
    """Whether ``base`` is a GPU configuration: without ``--preset``, a CPU run takes ``small`` instead."""
    reference_context: bool = False
    """Whether ``build_reference`` is called as ``(ref_dir, cfg, batch, dm, model)``, with the whole resolved
    config (its ``optim`` too) and our model, instead of ``(ref_dir, cfg.method, batch, dm)``."""


def _graphmae_layers(plugin: ModalityPlugin, preset: str) -> list[dict[str, Any]]:
    sizes = {"tiny": (32, 2), "small": (256, 4), "base": (512, 4)}[preset]
    return [read_yaml("cora", plugin), {"graphmae": {"num_hidden": sizes[0], "num_heads": sizes[1]}}]


def _graphmae_reference(ref_dir: Path | None, cfg: Any, batch: dict[str, torch.Tensor], dm: Any):
    from _graphmae_ref import reference_step

    assert ref_dir is not None
    return reference_step(ref_dir, cfg, batch, dm.num_features)


def _tjepa_layers(plugin: ModalityPlugin, preset: str) -> list[dict[str, Any]]:
    layers = [read_yaml("adult", plugin)]
    if preset == "base":
        layers.append(read_yaml("paper", plugin))
    elif preset == "tiny":
        tiny = dict(plugin.example_overrides().get("tjepa", {}))
        tiny.pop("target", None)  # the example data's column; Adult's target stays the adult config's
        layers.append({"tjepa": tiny})
    return layers


def _tjepa_reference(ref_dir: Path | None, cfg: Any, batch: dict[str, torch.Tensor], dm: Any):
    from _tjepa_ref import reference_step

    assert ref_dir is not None
    return reference_step(ref_dir, cfg, batch, int(dm.numeric.shape[1]), list(dm.cardinalities))


def _merlin_data(scratch: Path) -> Path:
    """A 1024 x 1024 single-look complex image: fully developed speckle over a smooth reflectivity."""
    path = scratch / "merlin_slc" / "synthetic_slc.npy"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:1024, 0:1024] / 1024.0
        amplitude = 50.0 * (1.5 + np.sin(6 * np.pi * xx) * np.cos(4 * np.pi * yy))
        speckle = (rng.standard_normal((1024, 1024)) + 1j * rng.standard_normal((1024, 1024))) / np.sqrt(2)
        np.save(path, (amplitude * speckle).astype(np.complex64))
    return path.parent


def _merlin_layers(plugin: ModalityPlugin, preset: str) -> list[dict[str, Any]]:
    sizes = {
        "tiny": {"patch_size": 64, "batch_size": 4, "width": 8, "decoder_width": 16},
        "small": {"patch_size": 128, "batch_size": 12, "width": 48, "decoder_width": 96},
        "base": {"patch_size": 256, "batch_size": 12, "width": 48, "decoder_width": 96},
    }[preset]
    return [{"merlin": {**sizes, "patches_per_epoch": 96}}]


def _merlin_reference(ref_dir: Path | None, cfg: Any, batch: dict[str, torch.Tensor], dm: Any):
    from _merlin_ref import reference_step

    return reference_step(cfg, batch)


_SIZE_KEYS = ("dim", "depth", "heads", "ff_dim")
# tiny: the test suite's size; small: our CPU default; base: the paper's (and s3prl's TERA config) 3 x 768
_TERA_SIZES = {"tiny": (32, 1, 2, 64), "small": (256, 3, 4, 1024), "base": (768, 3, 12, 3072)}
# tiny: the test suite's size; small: our CPU default (the paper's SSAST-Tiny); base: the paper's SSAST-Base
_SSAST_SIZES = {"tiny": (32, 1, 2, 64), "small": (192, 12, 3, 768), "base": (768, 12, 12, 3072)}


def _tera_layers(plugin: ModalityPlugin, preset: str) -> list[dict[str, Any]]:
    return [read_yaml("tera-fsdd", plugin), {"tera": dict(zip(_SIZE_KEYS, _TERA_SIZES[preset], strict=True))}]


def _tera_reference(ref_dir: Path | None, cfg: Any, batch: dict[str, torch.Tensor], dm: Any):
    from _tera_ref import reference_step

    assert ref_dir is not None
    return reference_step(ref_dir, cfg, batch)


def _ssast_layers(plugin: ModalityPlugin, preset: str) -> list[dict[str, Any]]:
    return [read_yaml("ssast-fsdd", plugin), {"ssast": dict(zip(_SIZE_KEYS, _SSAST_SIZES[preset], strict=True))}]


def _ssast_reference(ref_dir: Path | None, cfg: Any, batch: dict[str, torch.Tensor], dm: Any):
    from _ssast_ref import reference_step

    assert ref_dir is not None
    return reference_step(ref_dir, cfg, batch)


_STRIDE = {"train_stride": 8}  # enough windows of the generated 264² scenes for a full batch at every chip size


def _rs_data(scratch: Path) -> Path:
    from ssl_domains_rs.synthetic import write_example_pairs

    folder = scratch / "rs"
    return folder / "sentinel" if (folder / "sentinel").is_dir() else write_example_pairs(folder, size=264)


def _croma_layers(plugin: ModalityPlugin, preset: str) -> list[dict[str, Any]]:
    if preset == "base":  # CROMA-B
        return [read_yaml("croma-base", plugin), {"croma": _STRIDE}]
    tiny = {"dim": 32, "depth": 2, "heads": 2, "decoder_dim": 32, "decoder_heads": 8, "batch_size": 4}
    return [{"croma": {"chip": 120, "patch": 8, **_STRIDE, **(tiny if preset == "tiny" else {})}}]


def _croma_reference(ref_dir: Path | None, cfg: Any, batch: dict[str, torch.Tensor], dm: Any, model: Any):
    from _speed_refs import croma_step

    assert ref_dir is not None
    return croma_step(ref_dir, cfg.method, cfg.optim, batch)


def _ssl4eo_layers(plugin: ModalityPlugin, preset: str) -> list[dict[str, Any]]:
    if preset == "base":  # SSL4EO-S12's ViT-S/16 on 224²
        return [read_yaml("ssl4eo-small", plugin), {"ssl4eo": _STRIDE}]
    tiny = {"chip": 32, "patch": 8, "dim": 64, "depth": 2, "heads": 4, "proj_dim": 32, "hidden_dim": 64,
            "decoder_dim": 32, "decoder_heads": 4, "batch_size": 8}  # fmt: skip
    return [{"ssl4eo": {**_STRIDE, **(tiny if preset == "tiny" else {})}}]


def _ssl4eo_reference(ref_dir: Path | None, cfg: Any, batch: dict[str, torch.Tensor], dm: Any, model: Any):
    from _speed_refs import ssl4eo_step

    assert ref_dir is not None
    return ssl4eo_step(ref_dir, cfg.method, cfg.optim, batch, len(dm.bands))


_MEDICAL = REPO / "datasets" / "medical3d"
# the notebook's network and losses (ViTAutoEnc, L1 + ContrastiveLoss), so both sides train the same model
_TUTORIAL = {"decoder": "autoenc", "loss_form": "tutorial", "rotation": False}


def _medical_layers(name: str, small: str, base: str, extra: dict[str, Any]):
    def layers(plugin: ModalityPlugin, preset: str) -> list[dict[str, Any]]:
        if preset == "tiny":
            return [{name: {**plugin.example_overrides()[name], **extra}}]
        return [read_yaml(base if preset == "base" else small, plugin), {name: extra}]

    return layers


def _contrastive3d_reference(ref_dir: Path | None, cfg: Any, batch: dict[str, torch.Tensor], dm: Any, model: Any):
    from _speed_refs import contrastive3d_step

    assert ref_dir is not None
    return contrastive3d_step(ref_dir, cfg.method, batch)


def _alice_reference(ref_dir: Path | None, cfg: Any, batch: dict[str, torch.Tensor], dm: Any, model: Any):
    from _speed_refs import alice_step

    assert ref_dir is not None
    return alice_step(ref_dir, cfg.method, cfg.optim, batch, model)


WORKLOADS: dict[str, Workload] = {
    "graphmae": Workload(
        unit="nodes",
        data=lambda scratch: REPO / "datasets" / "cora",
        layers=_graphmae_layers,
        reference="THUDM/GraphMAE, branch pyg (git clone -b pyg https://github.com/THUDM/GraphMAE)",
        build_reference=_graphmae_reference,
    ),
    "tjepa": Workload(
        unit="rows",
        data=lambda scratch: REPO / "datasets" / "adult",
        layers=_tjepa_layers,
        reference="jose-melo/t-jepa (git clone https://github.com/jose-melo/t-jepa)",
        build_reference=_tjepa_reference,
    ),
    "merlin": Workload(
        unit="pairs",
        samples_per_item=2,
        data=_merlin_data,
        layers=_merlin_layers,
        reference="deepdespeckling 0.8, merlin/training (pip install deepdespeckling==0.8)",
        reference_needs_checkout=False,
        build_reference=_merlin_reference,
    ),
    "tera": Workload(
        unit="clips",
        data=lambda scratch: REPO / "datasets" / "fsdd",
        layers=_tera_layers,
        reference="s3prl/s3prl, pretrain/tera (git clone https://github.com/s3prl/s3prl)",
        build_reference=_tera_reference,
    ),
    "ssast": Workload(
        unit="clips",
        data=lambda scratch: REPO / "datasets" / "fsdd",
        layers=_ssast_layers,
        reference="YuanGongND/ssast with timm 0.4.5 (git clone https://github.com/YuanGongND/ssast)",
        build_reference=_ssast_reference,
    ),
    "croma": Workload(
        gpu_base=True,
        unit="chip pairs",
        data=_rs_data,
        layers=_croma_layers,
        reference="antofuller/CROMA pretrain_croma.py (git clone https://github.com/antofuller/CROMA)",
        build_reference=_croma_reference,
        reference_context=True,
    ),
    "ssl4eo": Workload(
        gpu_base=True,
        unit="locations",
        data=_rs_data,
        layers=_ssl4eo_layers,
        reference="zhu-xlab/SSL4EO-S12 MoCo v3 / MAE with timm 0.4.9 (git clone https://github.com/zhu-xlab/SSL4EO-S12)",
        build_reference=_ssl4eo_reference,
        reference_context=True,
    ),
    "contrastive3d": Workload(
        gpu_base=True,
        unit="crops",
        data=lambda scratch: _MEDICAL,
        layers=_medical_layers("contrastive3d", "contrastive3d-cpu", "contrastive3d-vit", _TUTORIAL),
        reference="Project-MONAI/tutorials vit_unetr_ssl/ssl_train.ipynb (git clone https://github.com/Project-MONAI/tutorials)",
        build_reference=_contrastive3d_reference,
        reference_context=True,
    ),
    "alice": Workload(
        gpu_base=True,
        unit="crop pairs",
        data=lambda scratch: _MEDICAL,
        layers=_medical_layers("alice", "alice-cpu", "alice-paper", {}),
        reference="alibaba-damo-academy/alice, its heads, CASA, loss and EMA (git clone https://github.com/alibaba-damo-academy/alice)",
        build_reference=_alice_reference,
        reference_context=True,
    ),
}
