"""GraphMAE graph classification on a TU dataset: pretrain on all graphs, pool, SVM under 10-fold CV.

    python benchmarks/graphmae_tu.py --root DIR --name MUTAG [--seeds 5]

DIR holds NAME/raw/NAME_A.txt ... (e.g. a copy of ../shared/datasets/tu). The preset for NAME (the reference
configs.yml values) is used when shipped. Protocol of the reference main_graph.py: pretrain on every graph
(no labels), embed, pool, then an RBF SVC with C in {1e-3, ..., 10} picked by inner 5-fold CV, scored by
StratifiedKFold(10, shuffle, random_state=0). One JSON line per seed, then ``acc_mean`` / ``acc_std`` (the mean
and population std over seeds of each seed's 10-fold mean accuracy, as the paper reports).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _common import emit, environment, pretrain_and_evaluate

PAPER = {"mutag": 88.19, "proteins": 75.30, "imdb-binary": 75.52, "nci1": 80.40}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], help="extra config overrides (key=value)")
    args = parser.parse_args()

    from ssl_domains import registry
    from ssl_domains.run import read_yaml

    plugin = registry.load("graphmae")
    preset = args.name.lower()
    layers = [read_yaml(preset, plugin)] if preset in plugin.presets() else [{"graphmae": {"level": "graph"}}]
    accs, secs = [], []
    for seed in range(args.seeds):
        metrics, seconds, _ = pretrain_and_evaluate(
            "graphmae", str(Path(args.root) / args.name), layers, args.set, seed
        )
        accs.append(metrics["svm_acc"])
        secs.append(seconds)
        emit({"seed": seed, **metrics, "train_seconds": seconds})
    emit(
        {
            "benchmark": "graphmae_tu",
            "dataset": args.name,
            "preset": preset if preset in plugin.presets() else None,
            "overrides": args.set,
            "seeds": args.seeds,
            "acc_mean": float(np.mean(accs)),
            "acc_std": float(np.std(accs)),
            "paper_acc": PAPER.get(preset),
            "train_seconds_mean": float(np.mean(secs)),
            "accs": accs,
            **environment(),
        }
    )


if __name__ == "__main__":
    main()
