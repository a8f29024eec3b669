"""Orthogonal slices (axial, coronal, sagittal through the crop's centre) of a training crop, the masked or
corrupted input the network saw, and its reconstruction."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .masking import column_mask

if TYPE_CHECKING:
    from .data import MedicalDataModule
    from .model import AliceModel, Contrastive3DModel
    from .plugin import AliceConfig, Contrastive3DConfig


def _slices(volume: torch.Tensor) -> list[np.ndarray]:
    """Axial (z), coronal (y) and sagittal (x) centre slices of ``[X, Y, Z]`` (RAS), oriented for display."""
    v = volume.float().numpy()
    cx, cy, cz = (s // 2 for s in v.shape)
    return [np.rot90(v[:, :, cz]), np.rot90(v[:, cy, :]), np.rot90(v[cx, :, :])]


@torch.no_grad()
def crop_panels(
    model: AliceModel | Contrastive3DModel,
    datamodule: MedicalDataModule,
    cfg: AliceConfig | Contrastive3DConfig,
    mode: str,
    device: torch.device | str,
) -> tuple[list[str], list[torch.Tensor]]:
    """Column titles and ``[X, Y, Z]`` volumes (on the host): the clean crop, the network's input and its output."""
    torch.manual_seed(0)
    batch = {k: v.to(device) for k, v in next(iter(datamodule.train_dataloader())).items() if torch.is_tensor(v)}
    batch = datamodule.on_after_batch_transfer(batch, 0)  # the views, as the training step gets them
    model.eval()
    if mode == "pairs":
        crop = batch["query"][:1]
        hidden = column_mask(1, crop.shape[-1], cfg.mask_patch, cfg.mask_ratio, crop.device)
        shown = crop.masked_fill(hidden[:, None], 0.0)
        recon = model.net(shown, hidden)["output"]
        titles = ["crop", f"masked ({cfg.mask_ratio:.0%} columns)", "reconstruction"]
    else:
        crop, shown = batch["image"][:1], batch["view1"][:1]
        recon = model.net(shown)["output"]
        titles = ["crop", "view (in/out-painting + shuffle)", "reconstruction"]
    return titles, [v.float().cpu() for v in (crop[0, 0], shown[0, 0], recon[0, 0].clamp(0, 1))]


def plot_reconstruction(
    model: AliceModel | Contrastive3DModel,
    datamodule: MedicalDataModule,
    cfg: AliceConfig | Contrastive3DConfig,
    mode: str,
    out_dir: Path,
    device: torch.device | str,
) -> list[Path]:
    """Save ``reconstruction.png``: rows = axial / coronal / sagittal, columns = crop / input / reconstruction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles, volumes = crop_panels(model, datamodule, cfg, mode, device)
    views = [_slices(v) for v in volumes]
    fig, axes = plt.subplots(3, len(volumes), figsize=(3 * len(volumes), 9), squeeze=False)
    for col, (title, slices) in enumerate(zip(titles, views, strict=True)):
        for row, (plane, image) in enumerate(zip(("axial", "coronal", "sagittal"), slices, strict=True)):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
            if col == 0:
                ax.set_ylabel(plane)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "reconstruction.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
