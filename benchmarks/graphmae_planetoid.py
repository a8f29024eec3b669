"""GraphMAE node classification on a Planetoid dataset: pretrain, then the paper's linear probe.

    python benchmarks/graphmae_planetoid.py --root DIR --name Cora --seeds 3

DIR holds NAME/raw/ind.name.* (e.g. a copy of ../shared/datasets/planetoid). The shipped preset for NAME
(cora, citeseer, pubmed: the reference configs.yml values) is used when there is one. For each seed the
encoder is pretrained through ``ssl_domains.run.train``, then a logistic-regression layer is trained on the
frozen embeddings over the public train split; the test accuracy is read at the epoch with the best
validation accuracy. Prints one JSON line per seed and a final line with ``test_acc_mean`` and ``test_acc_std``
(population std over seeds, as the reference scripts print). ``--first-seed K`` runs seeds K .. K + seeds - 1, to
extend a study without repeating the seeds already run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _common import emit, environment, pretrain_and_evaluate

PAPER = {"cora": 84.2, "citeseer": 73.4, "pubmed": 81.1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--set", action="append", default=[], help="extra config overrides (key=value)")
    parser.add_argument("--precision", default=None)
    args = parser.parse_args()

    from ssl_domains import registry
    from ssl_domains.run import read_yaml

    plugin = registry.load("graphmae")
    data = Path(args.root) / args.name
    preset = args.name.lower()
    layers = [read_yaml(preset, plugin)] if preset in plugin.presets() else []
    flags = {"precision": args.precision} if args.precision else {}
    accs, vals, finals, secs = [], [], [], []
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    for seed in seeds:
        metrics, seconds, epochs = pretrain_and_evaluate("graphmae", str(data), layers, args.set, seed, flags)
        accs.append(metrics["test_acc"])
        vals.append(metrics["val_acc"])
        finals.append(metrics["final_test_acc"])
        secs.append(seconds / epochs)
        emit({"seed": seed, **metrics, "train_seconds": seconds, "s_per_epoch": seconds / epochs})
    emit(
        {
            "benchmark": "graphmae_planetoid",
            "dataset": args.name,
            "preset": preset if layers else None,
            "overrides": args.set,
            "seeds": args.seeds,
            "seed_list": seeds,
            "test_acc_mean": float(np.mean(accs)),
            "test_acc_std": float(np.std(accs)),
            "val_acc_mean": float(np.mean(vals)),
            "final_epoch_test_acc_mean": float(np.mean(finals)),
            "paper_test_acc": PAPER.get(preset),
            "s_per_epoch_mean": float(np.mean(secs)),
            "test_accs": accs,
            **environment(),
        }
    )


if __name__ == "__main__":
    main()
