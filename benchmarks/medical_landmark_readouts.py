r"""Why the landmark figure favours random init: the landmark error under several point read-outs, for a kept
pretraining run and its random-init twin, on the few-shot benchmark's pairs.

    python benchmarks/medical_fewshot.py --plugin contrastive3d --validation-only --keep-run runs/c3d-bench
    python benchmarks/medical_landmark_readouts.py --run runs/c3d-bench
    python benchmarks/medical_landmark_readouts.py --run runs/c3d-bench --read-outs mean,grid --pairs test

The pairs are ``medical_fewshot.py``'s labelled pseudo-subjects, regenerated from the same seeds: the validation
pair (default; no test subject is read) or the 4 test pairs, with the benchmark's landmark points (seed = the
pair's first index). For each read-out of :data:`ssl_domains_medical.evaluation.POINT_READ_OUTS` (``mean`` is
the protocol's; ``block:K`` follows the mean token through the network, ``block:0`` being the patch
embeddings), the trained network and a random-init twin (seed 0) are scored with
:func:`ssl_domains_medical.evaluation.landmark_error`; the crops themselves (8^3 average pool) and the floor
(the distance from each true point to the nearest candidate, what a perfect descriptor gets on the 6-voxel grid)
are printed once. One JSON line per (network, read-out), then a final line with every figure. This is a
diagnosis, not a selection: the protocol's read-out stays ``mean``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from medical_fewshot import LABELLED_SEED, ROOT, IntensityDescriptor, correspondence, make_subjects, preprocess

from _common import emit, emit_final

DEFAULT_READ_OUTS = "mean,centre,grid,block:0,block:3,block:6,block:9,block:12"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a kept pretraining run (medical_fewshot --keep-run)")
    parser.add_argument("--template", type=Path, default=ROOT / "datasets" / "medical3d")
    parser.add_argument("--read-outs", default=DEFAULT_READ_OUTS, help="comma-separated POINT_READ_OUTS")
    parser.add_argument("--pairs", choices=["val", "test"], default="val")
    parser.add_argument("--points", type=int, default=100, help="landmarks per pair")
    args = parser.parse_args()
    read_outs = args.read_outs.split(",")
    started = time.perf_counter()

    import torch

    from ssl_domains.run import load_run
    from ssl_domains_medical.evaluation import landmark_error
    from ssl_domains_medical.model import VolumeNet

    run = load_run(args.run, args.template / "images")  # the shipped volumes stand in for the pool, gone with tmp
    method = run.config.method
    torch.manual_seed(0)
    nets = {"ssl": run.model.net, "random": VolumeNet.from_config(method)}
    seeds = [LABELLED_SEED + 2, LABELLED_SEED + 3] if args.pairs == "val" else [LABELLED_SEED + i for i in range(4, 12)]
    with tempfile.TemporaryDirectory() as tmp:
        subjects = make_subjects(args.template, Path(tmp), seeds, labelled=True)
        volumes = [image for image, _ in preprocess(method, subjects)]
        pairs = [(i, i + 1) for i in range(0, len(volumes) - 1, 2)]
        maps = {p: correspondence(subjects[p[0]], subjects[p[1]], volumes[p[0]], volumes[p[1]]) for p in pairs}

        def score(net: object, read_out: str) -> dict[str, float]:
            results = [landmark_error(net, volumes[a], volumes[b], maps[(a, b)], method.spacing, points=args.points,
                                      seed=a, read_out=read_out) for a, b in pairs]  # fmt: skip
            return {key: float(np.mean([r[key] for r in results])) for key in ("landmark_mm", "landmark_floor_mm")}

        intensity = score(IntensityDescriptor(method.roi), "mean")
        summary = {"run": str(args.run), "pairs": args.pairs, "floor_mm": intensity["landmark_floor_mm"],
                   "intensity_mm": intensity["landmark_mm"]}  # fmt: skip
        emit({"stage": "reference", **summary})
        for read_out in read_outs:
            for name, net in nets.items():
                mm = score(net, read_out)["landmark_mm"]
                summary[f"{name}_{read_out}_mm"] = mm
                emit({"stage": "read_out", "net": name, "read_out": read_out, "landmark_mm": mm})
    emit_final({"stage": "final", **summary}, started)


if __name__ == "__main__":
    main()
