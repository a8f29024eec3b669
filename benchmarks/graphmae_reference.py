"""The reference GraphMAE (THUDM/GraphMAE, branch pyg) on the same Cora tensors, for an accuracy baseline.

    git clone -b pyg https://github.com/THUDM/GraphMAE /tmp/graphmae_ref
    python benchmarks/graphmae_reference.py --reference /tmp/graphmae_ref --root datasets --name Cora --seeds 3

Runs the reference's own ``pretrain`` and ``node_classification_evaluation`` (main_transductive.py) with its
``configs.yml`` entry, seeded with its ``set_random_seed``. The graph is loaded exactly as its data_util does
(Planetoid raw files, NormalizeFeatures, self-loops removed then added), through our reader, because its loader
imports ogb and would try to download. Nothing of the reference is copied into this repository.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import types
from argparse import Namespace
from pathlib import Path

import numpy as np
import yaml

from _graphmae_ref import import_reference

from _common import emit, environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--root", default="datasets")
    parser.add_argument("--name", default="Cora")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    from ssl_domains import registry
    from ssl_domains.run import read_yaml, resolve_config

    import_reference(args.reference)
    from graphmae.evaluation import node_classification_evaluation
    from graphmae.models import build_model
    from graphmae.utils import create_optimizer, set_random_seed
    from main_transductive import pretrain

    plugin = registry.load("graphmae")
    data = Path(args.root) / args.name
    cfg = resolve_config(
        plugin, data if data.exists() else Path(args.root) / args.name.lower(), [read_yaml(args.name.lower(), plugin)]
    )
    dm = plugin.datamodule(cfg.method, cfg.data)
    dm.setup("fit")
    b = dm.full_batch
    graph = types.SimpleNamespace(
        edge_index=b["edge_index"],
        y=b["label"],
        train_mask=b["split"] == 0,
        val_mask=b["split"] == 1,
        test_mask=b["split"] == 2,
        to=lambda device: graph,
    )
    ref_cfg = yaml.safe_load((args.reference / "configs.yml").read_text())[args.name.lower()]
    defaults = dict(
        num_out_heads=1,
        residual=False,
        norm=None,
        negative_slope=0.2,
        concat_hidden=False,
        drop_edge_rate=0.0,
        replace_rate=0.0,
        max_epoch_f=30,
        lr_f=0.001,
        weight_decay_f=0.0,
    )
    ref_args = Namespace(**{**defaults, **ref_cfg, "num_features": dm.num_features})
    for key in ("lr", "weight_decay", "lr_f", "weight_decay_f"):
        setattr(ref_args, key, float(getattr(ref_args, key)))

    import torch

    epochs = ref_args.max_epoch
    estp, final = [], []
    for seed in range(args.seeds):
        set_random_seed(seed)
        model = build_model(ref_args)
        optimizer = create_optimizer(ref_args.optimizer, model, ref_args.lr, ref_args.weight_decay)
        scheduler = (
            torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: (1 + np.cos(e * np.pi / epochs)) * 0.5)
            if ref_args.scheduler
            else None
        )
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            model = pretrain(
                model,
                graph,
                b["x"],
                optimizer,
                epochs,
                "cpu",
                scheduler,
                int(b["label"].max()) + 1,
                ref_args.lr_f,
                ref_args.weight_decay_f,
                ref_args.max_epoch_f,
                True,
                None,
            )
            model.eval()
            final_acc, estp_acc = node_classification_evaluation(
                model,
                graph,
                b["x"],
                int(b["label"].max()) + 1,
                ref_args.lr_f,
                ref_args.weight_decay_f,
                ref_args.max_epoch_f,
                "cpu",
                True,
                mute=True,
            )
        estp.append(estp_acc)
        final.append(final_acc)
        emit({"seed": seed, "reference_estp_test_acc": estp_acc, "reference_final_test_acc": final_acc})
    emit(
        {
            "benchmark": "graphmae_reference",
            "dataset": args.name,
            "seeds": args.seeds,
            "reference_test_acc_mean": float(np.mean(estp)),
            "reference_test_acc_std": float(np.std(estp)),
            "reference_final_test_acc_mean": float(np.mean(final)),
            **environment(),
        }
    )


if __name__ == "__main__":
    main()
