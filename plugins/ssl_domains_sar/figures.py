"""Noisy amplitude, despeckled amplitude and ratio image side by side (Dalsasso et al. 2021, Figs. 8-10)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_despeckling(model, slc: np.ndarray, out: Path, device: str = "cpu") -> list[Path]:
    """Save the three panels for one SLC image; amplitudes share a display range (up to mean + 3 std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .denoise import despeckle_array

    estimate = despeckle_array(model, slc, device=str(device))
    noisy = np.abs(slc)
    ratio = noisy.astype(np.float64) ** 2 / np.maximum(estimate, 1e-30)
    top = noisy.mean() + 3 * noisy.std()
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    panels = (
        (noisy, "noisy amplitude |z|", 0, top),
        (np.sqrt(estimate), "MERLIN sqrt(R_hat)", 0, top),
        (ratio, "ratio |z|^2 / R_hat", 0, 3),
    )
    for ax, (image, title, low, high) in zip(axes, panels, strict=True):
        ax.imshow(image, cmap="gray", vmin=low, vmax=high)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return [Path(out)]
