r"""TERA or SSAST on FSDD (or any labelled clips): speaker-disjoint pretraining, then a frozen-encoder probe.

    python benchmarks/audio_fsdd.py --data ../shared/datasets/fsdd/recordings --plugin tera
    python benchmarks/audio_fsdd.py --data DIR --plugin ssast --test-speakers theo,yweweler
    python benchmarks/audio_fsdd.py --data DIR --plugin tera --label-regex '(?P<speaker>[a-z]+)-(?P<label>\w+)-.*'

Protocol (issue 5): 3-fold speaker-disjoint cross-validation with test folds {george, jackson}, {lucas, nicolas},
{theo, yweweler} (for other data: the sorted speakers cut into 3 folds). For each fold, the plugin pretrains on
the other speakers' clips only (the plugin's ``test_speakers`` keeps the fold out of its training loader), then
three representations of every clip are probed with the same speaker-disjoint probe
(:func:`ssl_domains.evaluation.group_disjoint_probe`: StandardScaler + logistic regression in float64,
``tol=1e-6``, C by leave-one-speaker-out CV on the training speakers, accuracy on the test fold):

- ``probe``: the pretrained encoder's embedding (``embed``: mean over the clip's frames or patches);
- ``random``: the same architecture, randomly initialised with the same seed, not trained;
- ``logmel``: 80 log-mel bands (no CMVN), mean and std over time.

Each line is the mean over folds (and over ``--seeds`` pretraining seeds within a fold). ``--test-speakers a,b``
runs one split instead. ``--config``/``--set`` pass presets and overrides to the plugin (default preset:
``<plugin>-fsdd``). ``--synthetic N`` writes N espeak-ng clips (``ssl_domains_audio.tts``, seed 0) and adds them,
unlabelled, to every fold's pretraining (the issue allows generated audio; never the test fold's). Prints a JSON
line per fold and a final line with ``probe_acc_mean``, ``logmel_acc_mean``, ``random_acc_mean`` and the
training clips/s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, emit_final

FSDD_FOLDS = [["george", "jackson"], ["lucas", "nicolas"], ["theo", "yweweler"]]


def folds_for(speakers: list[str]) -> list[list[str]]:
    """The issue's FSDD folds when the data has FSDD's speakers, else the sorted speakers cut into 3 folds."""
    if all(s in speakers for fold in FSDD_FOLDS for s in fold):
        return FSDD_FOLDS
    import numpy as np

    if len(speakers) < 3:
        raise SystemExit(f"need at least 3 speakers for 3 folds, found {speakers}; use --test-speakers")
    return [list(part) for part in np.array_split(sorted(speakers), 3)]


def run_fold(args: argparse.Namespace, test_speakers: list[str], seed: int) -> dict:
    """Pretrain with ``test_speakers`` held out, then probe the three representations."""
    import torch

    from ssl_domains import registry
    from ssl_domains.run import load_run, resolve_config, train
    from ssl_domains_audio.evaluation import clip_embeddings, pooled_logmel, speaker_probe

    plugin = registry.load(args.plugin)
    section = plugin.name
    overrides = [
        "trainer.progress_bar=false", f"{section}.test_speakers={test_speakers}",
        f"{section}.label_regex={args.label_regex!r}" if args.label_regex else None, *args.set,
    ]  # fmt: skip
    from ssl_domains.run import read_yaml

    layers = [read_yaml(c, plugin) for c in args.config]
    cfg = resolve_config(plugin, args.data, layers, [o for o in overrides if o], {"seed": seed})
    cs = list(cfg.method.eval_cs)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train(cfg, Path(tmp) / "run")
        seconds = time.perf_counter() - start
        run = load_run(Path(tmp) / "run")
        datamodule = run.datamodule
        vectors, labels, speakers, splits = clip_embeddings(run.model, datamodule, "cpu")
        ssl = speaker_probe(vectors, labels, speakers, splits, cs)
        torch.manual_seed(seed)
        untrained = plugin.model(run.config.method, datamodule)
        random = speaker_probe(*clip_embeddings(untrained.eval(), datamodule, "cpu"), cs)
        logmel = speaker_probe(pooled_logmel(datamodule), labels, speakers, splits, cs)
        train_clips = len(datamodule.train_indices) + args.synthetic  # a loaded run reads its source clips only
    epochs = cfg.trainer.max_epochs
    return {
        "test_speakers": test_speakers, "seed": seed,
        "probe_acc": ssl["probe_test_acc"], "probe_C": ssl["probe_C"], "probe_loso_acc": ssl["probe_val_acc"],
        "random_acc": random["probe_test_acc"], "random_loso_acc": random["probe_val_acc"],
        "logmel_acc": logmel["probe_test_acc"], "logmel_loso_acc": logmel["probe_val_acc"],
        "pretrain_s": round(seconds, 1), "epochs": epochs, "train_clips": train_clips,
        "train_clips_per_s": round(train_clips * epochs / seconds, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="folder of labelled clips (or a manifest CSV)")
    parser.add_argument("--plugin", choices=["tera", "ssast"], required=True)
    parser.add_argument("--label-regex", default=None, help="regex with (?P<label>) and (?P<speaker>) on file names")
    parser.add_argument("--test-speakers", default=None, help="comma-separated: run this one split")
    parser.add_argument("--seeds", type=int, default=1, help="pretraining seeds per fold")
    parser.add_argument("--config", action="append", default=None, help="plugin preset or YAML (repeatable)")
    parser.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    parser.add_argument(
        "--synthetic", type=int, default=0, help="espeak-ng clips added to every fold's pretraining (unlabelled)"
    )
    args = parser.parse_args()
    if args.config is None:
        args.config = [f"{args.plugin}-fsdd"]
    if args.synthetic:
        from ssl_domains_audio.tts import synthesize

        synthetic_dir = tempfile.TemporaryDirectory()  # lives until the process ends, as every fold reads it
        synthesize(Path(synthetic_dir.name), args.synthetic, seed=0)
        args.set = [f"{args.plugin}.unlabelled={[synthetic_dir.name]}", *args.set]

    from ssl_domains_audio.formats import find_clips
    from ssl_domains_audio.plugin import FSDD_NAMES

    clips = find_clips(Path(args.data), args.label_regex or FSDD_NAMES)
    speakers = sorted({c.speaker for c in clips if c.speaker})
    folds = [args.test_speakers.split(",")] if args.test_speakers else folds_for(speakers)
    started = time.perf_counter()
    results = []
    for fold in folds:
        for seed in range(args.seeds):
            result = run_fold(args, fold, seed)
            results.append(result)
            emit({"stage": "fold", "plugin": args.plugin, **result})

    import numpy as np

    def mean_std(key: str) -> tuple[float, float]:
        per_fold = [np.mean([r[key] for r in results if r["test_speakers"] == f]) for f in folds]
        return float(np.mean(per_fold)), float(np.std(per_fold))

    summary = {"stage": "final", "plugin": args.plugin, "folds": folds, "seeds": args.seeds, "config": args.config,
               "set": args.set, "synthetic_clips": args.synthetic}  # fmt: skip
    for key in ("probe_acc", "random_acc", "logmel_acc"):
        summary[f"{key}_mean"], summary[f"{key}_std"] = mean_std(key)
    summary["per_fold"] = [{k: r[k] for k in ("test_speakers", "seed", "probe_acc", "random_acc", "logmel_acc")}
                           for r in results]  # fmt: skip
    summary["train_clips_per_s"] = float(np.mean([r["train_clips_per_s"] for r in results]))
    emit_final(summary, started)


if __name__ == "__main__":
    main()
