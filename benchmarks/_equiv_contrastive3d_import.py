"""Swin UNETR's self-supervised encoder file through ``ssl-domains import --plugin contrastive3d --format swinvit``
(the ``import_max_abs_diff`` of ``benchmarks/equivalence.py --plugin contrastive3d``).

The file is written in the layout MONAI's ``SwinUNETR.load_from`` reads (Tang et al.'s ``model_swinvit.pt``:
``{"state_dict": {"module.<SwinTransformer key, mlp.fc1 / fc2>": ...}}``) from a MONAI ``SwinUNETR`` (feature
size 12, its own initialisation plus noise). MONAI's ``load_from`` reads it back into a fresh ``SwinUNETR`` (the
reference, and the check that the layout is the one MONAI expects: ``loadfrom_max_abs_diff``); ours imports it
into a run on the shipped volumes (``datasets/medical3d``), is loaded with ``load_encoder``, and our encoder tokens
(the 1/16 stage, ``VolumeNet.encode``) of 64³ crops are compared with ``swinViT(x, normalize=True)[3]`` of the
reference, in float32.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

DATA = Path(__file__).resolve().parents[1] / "datasets" / "medical3d"
FEATURE_SIZE, ROI = 12, 64


def _file_layout(swin_vit: torch.nn.Module) -> dict[str, torch.Tensor]:
    """MONAI's ``SwinTransformer`` state in ``model_swinvit.pt``'s names (``SwinTransformerBlock.load_from``)."""
    return {
        "module." + k.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2."): v.clone()
        for k, v in swin_vit.state_dict().items()
    }


def check(plugin_name: str = "contrastive3d") -> dict[str, Any]:
    """The figures of the module docstring for ``plugin_name`` (``alice`` reads the same files into its student and
    the teacher's starting copy; both are compared)."""
    from monai.networks.nets import SwinUNETR

    from ssl_domains import load_encoder, registry
    from ssl_domains.transfer import import_weights

    torch.manual_seed(0)
    source = SwinUNETR(in_channels=1, out_channels=1, feature_size=FEATURE_SIZE, spatial_dims=3)
    with torch.no_grad():
        for p in source.swinViT.parameters():
            p.add_(0.05 * torch.randn_like(p))
    weights = {"state_dict": _file_layout(source.swinViT)}
    reference = SwinUNETR(in_channels=1, out_channels=1, feature_size=FEATURE_SIZE, spatial_dims=3).eval()
    reference.load_from(weights)
    theirs_state, source_state = reference.swinViT.state_dict(), source.swinViT.state_dict()
    loadfrom = max(float((theirs_state[k] - v).abs().max()) for k, v in source_state.items() if v.is_floating_point())
    with tempfile.TemporaryDirectory(prefix="swinvit_import_") as tmp:
        path = Path(tmp) / "model_swinvit.pt"
        torch.save(weights, path)
        run = import_weights(registry.load(plugin_name), path, DATA, Path(tmp) / "run",
                             fmt="swinvit", overrides=[f"{plugin_name}.roi={ROI}"])  # fmt: skip
        ours, _dm = load_encoder(run, DATA)
    torch.manual_seed(1)
    x = torch.rand(2, 1, ROI, ROI, ROI)
    with torch.no_grad():
        mine = _tokens(ours, x)
        out = reference.swinViT(x, normalize=True)[3]
    theirs = out.flatten(2).transpose(1, 2).repeat(len(mine) // len(x), 1, 1)
    bundle = _bundles(plugin_name)
    return {
        "import_max_abs_diff": max(float((mine - theirs).abs().max()), *bundle.values()),
        "import_swinvit_max_abs_diff": float((mine - theirs).abs().max()),
        **{f"import_bundle_{k}_max_abs_diff": v for k, v in bundle.items()},
        "import_tokens_abs_max": float(theirs.abs().max()),
        "import_loadfrom_max_abs_diff": loadfrom,
        "import_config": {"feature_size": FEATURE_SIZE, "roi": ROI, "crops": int(x.shape[0])},
    }


def _tokens(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The encoder tokens; for Alice the teacher's copy too, stacked, so that both are compared."""
    tokens = model.net.encode(x)[0]
    teacher = getattr(model, "teacher", None)
    return tokens if teacher is None else torch.cat([tokens, teacher.module[0].encode(x)[0]])


def _bundles(plugin_name: str = "contrastive3d") -> dict[str, float]:
    """``monai-bundle``: a SwinUNETR with a 14-class head (``swin_unetr_btcv_segmentation``'s network, feature size
    12 here) and a UNETR, built by MONAI, noised, saved as a bundle's ``models/model.pt`` (a plain state dict),
    imported, and our encoder tokens against MONAI's own forward (``swinViT(x)[3]``; ``vit(x)[0]``)."""
    from monai.networks.nets import UNETR, SwinUNETR

    from ssl_domains import load_encoder, registry
    from ssl_domains.transfer import import_weights

    torch.manual_seed(2)
    nets = {
        "swinunetr": SwinUNETR(in_channels=1, out_channels=14, feature_size=FEATURE_SIZE, spatial_dims=3),
        "unetr": UNETR(1, 14, ROI, feature_size=8, hidden_size=128, mlp_dim=512, num_heads=2, proj_type="conv",
                       norm_name="instance", res_block=True),
    }  # fmt: skip
    x = torch.rand(2, 1, ROI, ROI, ROI)
    out = {}
    for name, net in nets.items():
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        net.eval()
        with tempfile.TemporaryDirectory(prefix="bundle_import_") as tmp:
            path = Path(tmp) / "model.pt"
            torch.save(net.state_dict(), path)
            sets = [f"{plugin_name}.roi={ROI}"] + ([f"{plugin_name}.num_heads=2"] if name == "unetr" else [])
            run = import_weights(registry.load(plugin_name), path, DATA, Path(tmp) / "run", fmt="monai-bundle",
                                 overrides=sets)  # fmt: skip
            ours, _dm = load_encoder(run, DATA)
        with torch.no_grad():
            mine = _tokens(ours, x)
            theirs = (
                net.swinViT(x, normalize=True)[3].flatten(2).transpose(1, 2) if name == "swinunetr" else net.vit(x)[0]
            )
        out[name] = float((mine - theirs.repeat(len(mine) // len(theirs), 1, 1)).abs().max())
    return out
