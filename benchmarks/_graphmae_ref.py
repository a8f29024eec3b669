"""Importing the reference GraphMAE code (THUDM/GraphMAE, branch ``pyg``) from a checkout, for comparisons.

The reference is never part of this repository: pass the directory of a checkout
(``git clone -b pyg https://github.com/THUDM/GraphMAE``).
"""

from __future__ import annotations

import sys
import types
from argparse import Namespace
from pathlib import Path

import torch


def import_reference(ref_dir: Path) -> None:
    """Put the checkout on ``sys.path``, with empty stand-ins for imports the reference never uses here."""
    sys.path.insert(0, str(ref_dir))
    # graphmae/utils.py imports tensorboardX for a logger, and graphmae/datasets ogb for OGB loaders
    sys.modules.setdefault("tensorboardX", types.SimpleNamespace(SummaryWriter=None))
    sys.modules.setdefault("ogb", types.ModuleType("ogb"))
    sys.modules.setdefault("ogb.nodeproppred", types.SimpleNamespace(PygNodePropPredDataset=None))


def reference_cora_model(ref_dir: Path, in_dim: int) -> torch.nn.Module:
    """The reference PreModel built with its configs.yml values for Cora."""
    import_reference(ref_dir)
    from graphmae.models import build_model

    return build_model(
        Namespace(
            num_heads=4,
            num_out_heads=1,
            num_hidden=512,
            num_layers=2,
            residual=False,
            attn_drop=0.1,
            in_drop=0.2,
            norm=None,
            negative_slope=0.2,
            encoder="gat",
            decoder="gat",
            mask_rate=0.5,
            drop_edge_rate=0.0,
            replace_rate=0.05,
            activation="prelu",
            loss_fn="sce",
            alpha_l=3,
            concat_hidden=False,
            num_features=in_dim,
        )
    )
