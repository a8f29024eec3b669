"""The authors' ``sentinel_tops`` MERLIN weights on the shipped real Sentinel-1 IW SLC crops.

    python benchmarks/merlin_real_s1.py [--data datasets/sar_slc/sentinel1_iw_vv] [--figure PATH]

Imports the weights with ``ssl-domains run merlin import-weights`` (needs deepdespeckling 0.8), despeckles each
crop with ``ssl-domains run merlin denoise`` (64-pixel tiles: the crops are 84 rows high), and reports ENL on
the five flattest 16 x 16 windows (chosen on a Lee-filtered image) for the input, boxcar 7x7, Lee 7x7 and
MERLIN, with the ratio-image statistics. With and without spectrum centring.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import emit, environment

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "datasets" / "sar_slc" / "sentinel1_iw_vv")
    parser.add_argument(
        "--figure",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "tmp" / "merlin_real_s1" / "merlin_s1_sentinel_tops.png",
        help="where the figure goes (default: an ignored folder; the one in docs/figures comes from"
        " --figure docs/figures/merlin_s1_sentinel_tops.png on the default data)",
    )
    args = parser.parse_args()

    from ssl_domains_sar.evaluation import boxcar, enl, homogeneous_windows, lee, ratio_statistics

    emit({"environment": environment()})
    work = Path(tempfile.mkdtemp(prefix="merlin_s1_"))
    cli = [sys.executable, "-m", "ssl_domains", "run", "merlin"]
    subprocess.run([*cli, "import-weights", "--weights", "sentinel_tops", "--out", str(work / "run")], check=True)
    records = []
    for path in sorted(args.data.glob("*.npy")):
        z = np.load(path)
        intensity = np.abs(z).astype(np.float64) ** 2
        windows = homogeneous_windows(intensity, 16)
        row = {
            "crop": path.name,
            "enl_noisy": enl(intensity, windows),
            "enl_boxcar7": enl(boxcar(intensity, 7), windows),
            "enl_lee7": enl(lee(intensity, 7), windows),
        }
        for centre in (False, True):
            out = work / f"{path.stem}_{int(centre)}.npy"
            extra = ["--centre-spectrum"] if centre else []
            subprocess.run(
                [
                    *cli,
                    "denoise",
                    "--run",
                    str(work / "run"),
                    str(path),
                    str(out),
                    "--patch",
                    "64",
                    "--stride",
                    "32",
                    *extra,
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            estimate = np.load(out).astype(np.float64) ** 2
            tag = "merlin_centred" if centre else "merlin"
            row[f"enl_{tag}"] = enl(estimate, windows)
            row.update({f"{k}_{tag}": v for k, v in ratio_statistics(z, estimate).items()})
            if centre and path == sorted(args.data.glob("*.npy"))[0]:
                _figure(z, estimate, args.figure)
        records.append(row)
        emit({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    keys = [k for k in records[0] if k != "crop"]
    emit({f"{k}_mean": round(float(np.mean([r[k] for r in records])), 4) for k in keys})


def _figure(z: np.ndarray, estimate: np.ndarray, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noisy = np.abs(z)
    top = noisy.mean() + 3 * noisy.std()
    fig, axes = plt.subplots(3, 1, figsize=(9, 7))
    panels = (
        (noisy, "Sentinel-1 IW SLC, VV: |z|", top),
        (np.sqrt(estimate), "MERLIN sentinel_tops: sqrt(R_hat)", top),
        (noisy**2 / estimate, "ratio |z|^2 / R_hat", 3),
    )
    for ax, (image, title, high) in zip(axes, panels, strict=True):
        ax.imshow(image, cmap="gray", vmin=0, vmax=high, aspect="auto")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
