"""Importing the reference GraphMAE code (THUDM/GraphMAE, branch ``pyg``) from a checkout, for comparisons.

The reference is never part of this repository: pass the directory of a checkout
(``git clone -b pyg https://github.com/THUDM/GraphMAE``).
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def import_reference(ref_dir: Path) -> None:
    """Put the checkout on ``sys.path``, with empty stand-ins for imports the reference never uses here."""
    sys.path.insert(0, str(ref_dir))
    # graphmae/utils.py imports tensorboardX for a logger, and graphmae/datasets ogb for OGB loaders
    # real module objects (with __spec__), since torch._dynamo inspects every entry of sys.modules
    sys.modules.setdefault("tensorboardX", _stub("tensorboardX", SummaryWriter=None))
    sys.modules.setdefault("ogb", _stub("ogb"))
    sys.modules.setdefault("ogb.nodeproppred", _stub("ogb.nodeproppred", PygNodePropPredDataset=None))


def _stub(name: str, **attrs: object) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    module.__dict__.update(attrs)
    return module


def reference_cora_model(ref_dir: Path, in_dim: int) -> torch.nn.Module:
    """The reference PreModel built with its configs.yml values for Cora."""
    return reference_model(ref_dir, None, in_dim)


def reference_model(ref_dir: Path, cfg: Any, in_dim: int) -> torch.nn.Module:
    """The reference PreModel at the sizes of our GraphMAEConfig ``cfg`` (None: its configs.yml values for Cora)."""
    import_reference(ref_dir)
    from graphmae.models import build_model

    def get(name: str, default: Any) -> Any:
        return default if cfg is None else getattr(cfg, name)

    norm = get("norm", "none")
    return build_model(
        Namespace(
            num_heads=get("num_heads", 4),
            num_out_heads=get("num_out_heads", 1),
            num_hidden=get("num_hidden", 512),
            num_layers=get("num_layers", 2),
            residual=get("residual", False),
            attn_drop=get("attn_drop", 0.1),
            in_drop=get("in_drop", 0.2),
            norm=None if norm == "none" else norm,
            negative_slope=0.2,
            encoder=get("encoder", "gat"),
            decoder=get("decoder", "gat"),
            mask_rate=get("mask_rate", 0.5),
            drop_edge_rate=get("drop_edge_rate", 0.0),
            replace_rate=get("replace_rate", 0.05),
            activation=get("activation", "prelu"),
            loss_fn=get("loss_fn", "sce"),
            alpha_l=get("alpha_l", 3),
            concat_hidden=get("concat_hidden", False),
            num_features=in_dim,
        )
    )


def reference_step(ref_dir: Path, cfg: Any, batch: dict[str, torch.Tensor], in_dim: int) -> Callable[[], torch.Tensor]:
    """One step of the reference's main_transductive.py loop on our full-graph batch: forward (its masking,
    encoder, decoder and SCE loss), backward, Adam (lr 1e-3, weight decay 2e-4, as its Cora config)."""
    x, edge_index = batch["x"], batch["edge_index"]
    model = reference_model(ref_dir, cfg, in_dim).to(x.device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=2e-4)

    def step() -> torch.Tensor:
        loss, _ = model(x, edge_index)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step
