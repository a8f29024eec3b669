r"""Few-label brain tissue segmentation and label-free landmark matching: SSL initialisation vs random init.

    python benchmarks/medical_fewshot.py --plugin contrastive3d
    python benchmarks/medical_fewshot.py --plugin alice
    python benchmarks/medical_fewshot.py --plugin alice --pretrain-minutes 10 --seeds 0 --set alice.mask_ratio=0.5
    python benchmarks/medical_fewshot.py --plugin alice --validation-only --set alice.teacher_temp=0.04   # selection

Data (``../shared/reference/medical3d.md`` §6). Pseudo-subjects are warped copies of the real MNI ICBM152 2009a T1
template shipped in ``datasets/medical3d`` (2 mm): each is one random affine + elastic deformation (MONAI
``Rand3DElastic``: ~7 degrees, 8 % scale, 3-voxel shift, elastic part ~1.6 mm) of the T1 and of its grey- and
white-matter probability maps, then a random bias field, gamma contrast and Gaussian noise on the T1 (MONAI
``RandBiasField``, ``RandAdjustContrast``, ``RandGaussianNoise``). Labels: 1 grey matter (p > 0.5 after warping),
2 white matter, 0 else. Disjoint seeds give:

- the **unlabelled pool**: ``--pool-subjects`` pseudo-subjects plus the real brain MRIs of ``--real`` (if
  present: NiiVue's T1 and FLAIR in ``../shared/datasets/medical3d``), read by the plugin from a folder;
- the **labelled set**: 2 training, 2 validation and 8 test pseudo-subjects, never in the pool.

Protocol. The plugin pretrains once on the pool (seed 0, ``--pretrain-minutes`` of wall time, its preset
``<plugin>-cpu``). Then for every seed in ``--seeds``:

- **Dice**: a UNETR with the pretrained weights (encoder and decoder; a new 3-class head) and one with random
  init (the same seed) are fine-tuned on the 2 training volumes for ``--finetune-steps`` steps (DiceCE, AdamW,
  2 crops of 64^3 per step, same crops for both); the step with the best validation Dice (checked every
  ``--eval-every`` steps) is kept, and its test Dice (mean of GM and WM over the 8 test volumes) is reported;
- **landmarks**: 100 foreground points per pair of test subjects (pairs 0-1, 2-3, 4-5, 6-7) are matched from B
  to A by nearest-neighbour cosine similarity of point embeddings (the mean encoder token of the 64^3 crop
  centred on a point) against A's foreground on a 6-voxel (12 mm) grid; the error is the distance (mm) to the
  true corresponding point, known from the two deformations. ``landmark_dense_*`` is the same matching with
  dense multi-scale decoder features (sliding window, 1/2 resolution), a secondary figure. Random init is the
  seed's untrained network. ``landmark_mm_intensity`` matches the crops themselves (average-pooled to 8^3, no
  network): what intensity layout alone gives.

Prints a JSON line per seed and a final one with ``dice_ssl_mean``, ``dice_random_mean``, ``landmark_mm_ssl``,
``landmark_mm_random`` (means over seeds, with ``_std``), the dense landmark figures, the pretraining minutes
and steps, and the peak memory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, emit_final, peak_rss_gb

ROOT = Path(__file__).resolve().parents[1]
REAL_DEFAULT = ROOT.parent / "shared" / "datasets" / "medical3d"
REAL_BRAINS = ("niivue/chris_t1.nii.gz", "niivue/FLAIR.nii.gz")
LABELLED_SEED, POOL_SEED = 1000, 2000


def make_subjects(template: Path, out: Path, seeds: list[int], labelled: bool) -> list[dict]:
    """Write one warped pseudo-subject per seed into ``out`` (``images/`` and, if ``labelled``, ``labels/``)."""
    import nibabel as nib
    import torch
    from monai.transforms import RandAdjustContrast, RandBiasField, RandGaussianNoise

    from ssl_domains_medical.evaluation import warp_with_coordinates

    t1_image = nib.load(template / "images" / "mni152_t1_2mm.nii.gz")
    affine = t1_image.affine
    maps = [np.asarray(t1_image.dataobj, dtype=np.float32)]
    maps += [
        np.asarray(nib.load(template / "labels" / f"mni152_{k}_2mm.nii.gz").dataobj, np.float32) / 255
        for k in ("gm", "wm")
    ]
    subjects = []
    for seed in seeds:
        warped, source, valid = warp_with_coordinates(np.stack(maps), seed)
        image = warped[:1]
        for step, aug in enumerate((RandBiasField(prob=1.0, coeff_range=(0.1, 0.3)),
                                    RandAdjustContrast(prob=1.0, gamma=(0.7, 1.4)),
                                    RandGaussianNoise(prob=1.0, std=4.0))):  # fmt: skip
            aug.set_random_state(seed * 10 + step)
            image = torch.as_tensor(aug(image.clamp_min(0) if step == 1 else image))
        name = f"subject_{seed}"
        (out / "images").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(image[0].numpy(), affine), out / "images" / f"{name}.nii.gz")
        record = {"name": name, "seed": seed, "source": torch.where(valid[None], source, float("nan")),
                  "affine": affine, "image": out / "images" / f"{name}.nii.gz"}  # fmt: skip
        if labelled:
            label = np.zeros(image.shape[1:], dtype=np.uint8)
            label[warped[1].numpy() > 0.5] = 1
            label[warped[2].numpy() > 0.5] = 2
            (out / "labels").mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(label, affine), out / "labels" / f"{name}.nii.gz")
            record["label"] = out / "labels" / f"{name}.nii.gz"
        subjects.append(record)
    return subjects


def preprocess(cfg, subjects: list[dict]) -> list[tuple]:
    """The plugin's own MONAI preprocessing of ``(image, label)`` -> MetaTensors with their affines."""
    from ssl_domains_medical.transforms import preprocessing

    chain = preprocessing(cfg, ("image", "label"))
    return [
        (d["image"], d["label"])
        for d in (chain({"image": str(s["image"]), "label": str(s["label"])}) for s in subjects)
    ]


def correspondence(a: dict, b: dict, volume_a, volume_b):
    """``b_to_a``: processed voxels of B -> the true processed voxels of A, through both deformations."""
    from scipy.spatial import cKDTree

    from ssl_domains_medical.evaluation import sample_map

    source_a = a["source"].numpy().reshape(3, -1).T
    valid_a = np.flatnonzero(np.isfinite(source_a).all(1))
    tree = cKDTree(source_a[valid_a])
    shape_a = a["source"].shape[1:]
    to_world_b, from_world_a = np.asarray(volume_b.affine), np.linalg.inv(np.asarray(volume_a.affine))
    from_world_file = np.linalg.inv(b["affine"])

    def b_to_a(points: np.ndarray) -> np.ndarray:
        homogeneous = np.c_[points, np.ones(len(points))]
        file_b = (from_world_file @ to_world_b @ homogeneous.T).T[:, :3]
        template = sample_map(b["source"], file_b)
        result = np.full_like(points, np.nan, dtype=np.float64)
        ok = np.isfinite(template).all(1)
        distance, index = tree.query(template[ok])
        file_a = np.stack(np.unravel_index(valid_a[index], shape_a), axis=1).astype(np.float64)
        world = a["affine"] @ np.c_[file_a, np.ones(len(file_a))].T
        mapped = (from_world_a @ world).T[:, :3]
        mapped[distance > 1.5] = np.nan  # the point left A's field of view
        result[ok] = mapped
        return result

    return b_to_a


class IntensityDescriptor:
    """A point's crop itself, average-pooled to 8^3, in the shape ``point_embeddings`` reads (a network-free
    landmark reference)."""

    def __init__(self, roi: int) -> None:
        self.roi = roi

    def eval(self) -> IntensityDescriptor:
        return self

    def encode(self, x: Any) -> tuple[Any, list]:
        import torch.nn.functional as F

        return F.adaptive_avg_pool3d(x, 8).flatten(1)[:, None], []


def validation_landmarks(net: Any, method: Any, subjects: list[dict], volumes: list[tuple], args: Any) -> dict:
    """Point-embedding landmark errors (mm) on the validation pair only, for the pretrained network, a random
    init (seed 0) and the intensity descriptor: the figure to choose settings on, with no test subject read."""
    import torch

    from ssl_domains_medical.evaluation import landmark_error
    from ssl_domains_medical.model import VolumeNet

    b_to_a = correspondence(subjects[0], subjects[1], volumes[0][0], volumes[1][0])
    torch.manual_seed(0)
    nets = {"ssl": net, "random": VolumeNet.from_config(method), "intensity": IntensityDescriptor(method.roi)}
    return {f"val_landmark_mm_{name}": landmark_error(model, volumes[0][0], volumes[1][0], b_to_a, method.spacing,
                                                      points=args.points, seed=0)["landmark_mm"]
            for name, model in nets.items()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plugin", choices=["alice", "contrastive3d"], required=True)
    parser.add_argument("--template", type=Path, default=ROOT / "datasets" / "medical3d")
    parser.add_argument("--real", type=Path, default=REAL_DEFAULT, help="folder with extra real brain MRIs (optional)")
    parser.add_argument("--pool-subjects", type=int, default=16)
    parser.add_argument(
        "--pretrain-minutes", type=float, default=28.0, help="wall-time guard; the preset's max_steps sets the length"
    )
    parser.add_argument("--seeds", default="0,1,2", help="fine-tuning / random-init seeds")
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--finetune-lr", type=float, default=3e-4)
    parser.add_argument("--points", type=int, default=100, help="landmarks per pair")
    parser.add_argument(
        "--validation-only", action="store_true", help="pretrain, report the validation pair's landmark errors, stop"
    )
    parser.add_argument(
        "--keep-run", type=Path, default=None, help="pretrain into this (new) folder and keep it, to re-evaluate later"
    )
    parser.add_argument("--config", action="append", default=None, help="plugin preset or YAML (repeatable)")
    parser.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    args = parser.parse_args()
    args.config = args.config or [f"{args.plugin}-cpu"]
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()

    import torch

    from ssl_domains import registry
    from ssl_domains.run import load_run, read_yaml, resolve_config, train
    from ssl_domains_medical.evaluation import dense_landmark_error, finetune_segmentation, landmark_error
    from ssl_domains_medical.model import VolumeNet

    plugin = registry.load(args.plugin)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pool = make_subjects(args.template, tmp / "pool", [POOL_SEED + i for i in range(args.pool_subjects)], False)
        real = [args.real / r for r in REAL_BRAINS if (args.real / r).is_file()]
        for path in real:
            (tmp / "pool" / "images" / path.name).symlink_to(path.resolve())
        labelled = make_subjects(args.template, tmp / "labelled", [LABELLED_SEED + i for i in range(12)], True)
        emit({"stage": "data", "pool": len(pool) + len(real), "real_in_pool": [p.name for p in real],
              "labelled": {"train": 2, "val": 2, "test": 8}})  # fmt: skip

        layers = [read_yaml(c, plugin) for c in args.config]
        overrides = ["trainer.progress_bar=false", f"trainer.max_minutes={args.pretrain_minutes}", *args.set]
        cfg = resolve_config(plugin, tmp / "pool" / "images", layers, overrides, {"seed": 0})
        run_dir = args.keep_run or tmp / "run"
        start = time.perf_counter()
        train(cfg, run_dir)
        pretrain_minutes = (time.perf_counter() - start) / 60
        run = load_run(run_dir)
        method = run.config.method
        steps = int(torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)["global_step"])
        pretrain_rss = peak_rss_gb()
        emit({"stage": "pretrain", "plugin": args.plugin, "minutes": round(pretrain_minutes, 1), "steps": steps,
              "peak_rss_gb": round(pretrain_rss, 2), "config": args.config, "set": args.set})  # fmt: skip

        volumes = preprocess(method, labelled)
        train_set, val_set, test_set = volumes[:2], volumes[2:4], volumes[4:]
        if args.validation_only:
            emit_final(validation_landmarks(run.model.net, method, labelled[2:4], val_set, args), started)
            return
        test_subjects = labelled[4:]
        pairs = [(i, i + 1) for i in range(0, len(test_set) - 1, 2)]
        maps = {pair: correspondence(test_subjects[pair[0]], test_subjects[pair[1]], test_set[pair[0]][0],
                                     test_set[pair[1]][0]) for pair in pairs}  # fmt: skip

        def landmarks(net: VolumeNet) -> tuple[float, float]:
            """(point-embedding error, dense-feature error), mean over the test pairs, in mm."""
            errors = [(landmark_error(net, test_set[a][0], test_set[b][0], maps[(a, b)], method.spacing,
                                      points=args.points, seed=a)["landmark_mm"],
                       dense_landmark_error(net, test_set[a][0], test_set[b][0], maps[(a, b)], method.spacing,
                                            points=args.points, seed=a)["landmark_mm"]) for a, b in pairs]  # fmt: skip
            return float(np.mean([e[0] for e in errors])), float(np.mean([e[1] for e in errors]))

        pretrained = run.model.net
        landmark_ssl, dense_ssl = landmarks(pretrained)
        landmark_intensity = float(np.mean([landmark_error(IntensityDescriptor(method.roi), test_set[a][0],
                                                           test_set[b][0], maps[(a, b)], method.spacing,
                                                           points=args.points, seed=a)["landmark_mm"]
                                            for a, b in pairs]))  # fmt: skip
        emit({"stage": "landmarks", "landmark_mm_ssl": landmark_ssl, "landmark_dense_mm_ssl": dense_ssl,
              "landmark_mm_intensity": landmark_intensity})  # fmt: skip
        results = []
        for seed in seeds:
            torch.manual_seed(seed)
            untrained = VolumeNet.from_config(method)
            common = {"cfg": method, "train": train_set, "val": val_set, "test": test_set, "classes": 3,
                      "steps": args.finetune_steps, "eval_every": args.eval_every, "seed": seed,
                      "lr": args.finetune_lr}  # fmt: skip
            ssl = finetune_segmentation(init=pretrained.net.state_dict(), **common)
            random = finetune_segmentation(init=None, **common)
            landmark_random, dense_random = landmarks(untrained)
            result = {"seed": seed, "dice_ssl": ssl["test_dice"], "dice_random": random["test_dice"],
                      "dice_ssl_gm_wm": ssl["test_dice_per_class"], "dice_random_gm_wm": random["test_dice_per_class"],
                      "val_dice_ssl": ssl["val_dice"], "val_dice_random": random["val_dice"],
                      "step_ssl": ssl["step"], "step_random": random["step"],
                      "history_ssl": ssl["history"], "history_random": random["history"],
                      "landmark_mm_ssl": landmark_ssl, "landmark_mm_random": landmark_random,
                      "landmark_dense_mm_ssl": dense_ssl, "landmark_dense_mm_random": dense_random}  # fmt: skip
            results.append(result)
            emit({"stage": "seed", "plugin": args.plugin, **result})

    summary = {"stage": "final", "plugin": args.plugin, "seeds": seeds, "config": args.config, "set": args.set,
               "finetune_steps": args.finetune_steps, "finetune_lr": args.finetune_lr,
               "pretrain_minutes": round(pretrain_minutes, 1), "pretrain_steps": steps,
               "pretrain_peak_rss_gb": round(pretrain_rss, 2), "real_in_pool": [p.name for p in real],
               "landmark_mm_intensity": landmark_intensity}  # fmt: skip
    for key in ("dice_ssl", "dice_random", "landmark_mm_ssl", "landmark_mm_random", "landmark_dense_mm_ssl",
                "landmark_dense_mm_random"):  # fmt: skip
        values = [r[key] for r in results]
        name = key if key.startswith("landmark") else f"{key}_mean"
        summary[name], summary[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
    emit_final(summary, started)


if __name__ == "__main__":
    main()
