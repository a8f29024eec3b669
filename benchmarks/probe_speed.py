r"""Wall time of the FSDD protocol's probe, today's against a baseline revision, with identical results asserted.

    python benchmarks/probe_speed.py --data ../shared/datasets/fsdd/recordings --baseline-rev 5a2188b

The FSDD protocol (``benchmarks/audio_fsdd.py``) probes three representations per fold and seed with
:func:`ssl_domains.evaluation.group_disjoint_probe`. This script builds each fold's datamodule as that benchmark
does (``tera-fsdd`` preset, the fold's speakers held out), and probes two of the three representations without
pretraining anything: the 160-d pooled log-mel baseline, and the embedding of the randomly initialised TERA (seed
0), the same arrays the protocol's ``logmel`` and ``random`` columns probe. Each is probed by the baseline
revision's ``group_disjoint_probe`` (its ``ssl_domains/evaluation/probe.py`` read with ``git show REV:...`` and
loaded as a module) and by this checkout's, in the same process, and the two results must be equal
(``probe_test_acc``, ``probe_val_acc``, ``probe_C``). The final line gives both wall times and their ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from audio_fsdd import FSDD_FOLDS

from _common import emit, emit_final

REPO = Path(__file__).resolve().parents[1]


def baseline_probe(rev: str) -> Callable[..., dict[str, float]]:
    """``group_disjoint_probe`` as it was at ``rev``."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:ssl_domains/evaluation/probe.py"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "probe_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("probe_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.group_disjoint_probe


def fold_arrays(data: Path, test_speakers: list[str]) -> tuple[dict[str, tuple], list[float]]:
    """``{"logmel": (x, labels, speakers, splits), "random": ...}`` for one fold, nothing trained, and the
    preset's probe C grid (``eval_cs``), as the protocol uses it."""
    import torch

    from ssl_domains import registry
    from ssl_domains.run import read_yaml, resolve_config
    from ssl_domains_audio.evaluation import clip_embeddings, pooled_logmel

    plugin = registry.load("tera")
    overrides = ["trainer.progress_bar=false", f"tera.test_speakers={test_speakers}"]
    cfg = resolve_config(plugin, data, [read_yaml("tera-fsdd", plugin)], overrides, {"seed": 0})
    datamodule = plugin.datamodule(cfg.method, cfg.data)
    datamodule.setup("fit")
    torch.manual_seed(0)
    model = plugin.model(cfg.method, datamodule).eval()
    vectors, labels, speakers, splits = clip_embeddings(model, datamodule, "cpu")
    arrays = {
        "logmel": (pooled_logmel(datamodule), labels, speakers, splits),
        "random": (vectors, labels, speakers, splits),
    }
    return arrays, list(cfg.method.eval_cs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="FSDD recordings folder")
    parser.add_argument("--baseline-rev", default="5a2188b", help="git revision whose probe is the baseline")
    args = parser.parse_args()
    from ssl_domains import SPLIT_TEST, SPLIT_TRAIN
    from ssl_domains.evaluation import group_disjoint_probe

    old_probe = baseline_probe(args.baseline_rev)
    started = time.perf_counter()
    seconds = {"baseline": 0.0, "current": 0.0}
    for fold in FSDD_FOLDS:
        arrays, cs = fold_arrays(args.data, fold)
        for name, (x, labels, speakers, splits) in arrays.items():
            train, test = (splits == SPLIT_TRAIN) & (labels >= 0), (splits == SPLIT_TEST) & (labels >= 0)
            inputs = ((x[train], labels[train], speakers[train]), (x[test], labels[test]))
            results = {}
            for side, probe in (("baseline", old_probe), ("current", group_disjoint_probe)):
                t0 = time.perf_counter()
                results[side] = probe(*inputs, cs=cs)
                seconds[side] += time.perf_counter() - t0
            if results["baseline"] != results["current"]:
                raise SystemExit(f"fold {fold} {name}: results differ: {results}")
            emit(
                {"stage": "fold", "test_speakers": fold, "features": name, "dim": int(x.shape[1]), **results["current"]}
            )
    summary = {
        "benchmark": "probe_speed", "baseline_rev": args.baseline_rev, "probes": 2 * len(FSDD_FOLDS),
        "identical": True, "baseline_s": round(seconds["baseline"], 2), "current_s": round(seconds["current"], 2),
        "speedup": round(seconds["baseline"] / seconds["current"], 1),
    }  # fmt: skip
    emit_final(summary, started)


if __name__ == "__main__":
    main()
