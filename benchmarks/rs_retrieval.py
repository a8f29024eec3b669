r"""CROMA (S1 -> S2) or SSL4EO (date -> date) retrieval of held-out chips, against the random-init encoder.

    python benchmarks/rs_retrieval.py --data ../shared/datasets/sentinel_s1s2 --plugin croma
    python benchmarks/rs_retrieval.py --data ../shared/datasets/sentinel_s1s2 --plugin ssl4eo
    python benchmarks/rs_retrieval.py --data DIR --plugin croma --folds 0,1,2,3 --set croma.chip=48

Protocol (issue 7). Spatial hold-out: fold k holds quadrant k of *every* location out of pretraining (no training
window touches it; see ``holdout_quadrant`` in ``ssl_domains_rs/data.py``), and the evaluation chips tile that
quadrant without overlap. Fold k pretrains with seed k. The plugin's preset (default ``<plugin>-tiny``) fixes
the model and the chip size. For each fold:

- ``recall1``/``recall5``: the pretrained encoder; the query is the S1 chip (CROMA) or the first date (SSL4EO),
  the gallery every held-out chip of the other view; cosine similarity; exactly one true match per query;
- ``recall1_random``: the same architecture with the same seed, randomly initialised, not trained;
- ``recall1_2x`` and ``recall1_240``: the held-out chips resized (bilinear) to twice the training size and to
  240², and embedded by the same encoder (ALiBi / sin-cos positions extrapolate to the larger grid). The paired
  scenes here are 120² and 264², so no held-out area holds native 240² pairs; a model trained on native 120²
  chips embedding 240² chips is checked in ``tests/plugins/rs/test_rs_model.py``.

Each figure is the mean over folds (± std). ``chance`` is the mean of 1/N. Prints a JSON line per fold and a final
line with ``recall1_mean``, ``recall5_mean``, ``recall1_random_mean``, ``chance`` and the pretraining minutes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, emit_final


def run_fold(args: argparse.Namespace, fold: int) -> dict:
    """Pretrain with quadrant ``fold`` held out; evaluate the trained and the random-init encoder."""
    import torch

    from ssl_domains import registry
    from ssl_domains.run import load_run, read_yaml, resolve_config, train
    from ssl_domains_rs.evaluation import evaluate_retrieval

    plugin = registry.load(args.plugin)
    layers = [read_yaml(c, plugin) for c in args.config]
    overrides = ["trainer.progress_bar=false", f"{plugin.name}.holdout_quadrant={fold}", *args.set]
    cfg = resolve_config(plugin, args.data, layers, overrides, {"seed": fold})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train(cfg, Path(tmp) / "run")
        seconds = time.perf_counter() - start
        run = load_run(Path(tmp) / "run")
        datamodule = run.datamodule
        chip = run.config.method.chip
        trained = evaluate_retrieval(run.model, datamodule, "cpu")
        trained_2x = evaluate_retrieval(run.model, datamodule, "cpu", size=2 * chip)
        trained_240 = evaluate_retrieval(run.model, datamodule, "cpu", size=240)
        torch.manual_seed(fold)
        untrained = plugin.model(run.config.method, datamodule)
        random = evaluate_retrieval(untrained, datamodule, "cpu")
        train_chips = len(datamodule.train_items)
    return {
        "fold": fold, "seed": fold, "chip": chip,
        "recall1": trained["recall1"], "recall5": trained["recall5"],
        "recall1_reverse": trained["recall1_reverse"], "rankme": trained["rankme"],
        "recall1_random": random["recall1"], "recall5_random": random["recall5"],
        "recall1_2x": trained_2x["recall1"], "recall5_2x": trained_2x["recall5"], "size_2x": 2 * chip,
        "recall1_240": trained_240["recall1"], "recall5_240": trained_240["recall5"],
        "chance": trained["chance"], "n_chips": int(trained["n_chips"]), "train_chips": train_chips,
        "locations": len(datamodule.scenes), "pretrain_s": round(seconds, 1), "epochs": cfg.trainer.max_epochs,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="folder of Sentinel-1/2 GeoTIFFs in a supported layout")
    parser.add_argument("--plugin", choices=["croma", "ssl4eo"], required=True)
    parser.add_argument("--folds", default="0,1,2", help="held-out quadrants, comma-separated (seed = fold)")
    parser.add_argument("--config", action="append", default=None, help="plugin preset or YAML (repeatable)")
    parser.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    args = parser.parse_args()
    if args.config is None:
        args.config = [f"{args.plugin}-tiny"]
    folds = [int(f) for f in args.folds.split(",")]
    started = time.perf_counter()
    results = []
    for fold in folds:
        result = run_fold(args, fold)
        results.append(result)
        emit({"stage": "fold", "plugin": args.plugin, **result})

    import numpy as np

    summary = {"stage": "final", "plugin": args.plugin, "folds": folds, "config": args.config, "set": args.set}
    for key in ("recall1", "recall5", "recall1_random", "recall5_random", "recall1_2x", "recall5_2x",
                "recall1_240", "recall5_240", "recall1_reverse", "rankme", "chance"):  # fmt: skip
        values = [r[key] for r in results]
        summary[f"{key}_mean"], summary[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
    summary["chance"] = summary.pop("chance_mean")
    summary["n_chips"] = [r["n_chips"] for r in results]
    summary["pretrain_minutes"] = round(sum(r["pretrain_s"] for r in results) / 60, 1)
    emit_final(summary, started)


if __name__ == "__main__":
    main()
