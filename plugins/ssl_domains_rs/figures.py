"""RGB composites (B04, B03, B02) of chips, their masked version and the reconstruction."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .bands import RGB
from .masking import croma_masks, random_keep
from .model import patchify, unpatchify
from .objective import augment

if TYPE_CHECKING:
    from .data import RSDataModule
    from .model import CROMA, SSL4EOModel
    from .resnet import SSL4EOResNetModel


def _rgb(image: torch.Tensor, bands: tuple[str, ...]) -> np.ndarray:
    """``[C, H, W]`` -> ``[H, W, 3]`` in [0, 1], stretched between the 2nd and 98th percentiles."""
    idx = [bands.index(b) for b in RGB] if all(b in bands for b in RGB) else [0, 0, 0]
    rgb = image[idx].float().cpu().permute(1, 2, 0).numpy()
    lo, hi = np.percentile(rgb, 2), np.percentile(rgb, 98)
    return np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1)


def _paste(pred: torch.Tensor, target: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Predicted patches (un-normalised with the true patch's mean and std, as MAE's figures do) at masked places."""
    mean, std = target.mean(-1, keepdim=True), (target.var(-1, keepdim=True, unbiased=False) + 1e-6).sqrt()
    return torch.where(masked[..., None], pred * std + mean, target)


@torch.no_grad()
def _panels(
    model: CROMA | SSL4EOModel | SSL4EOResNetModel, datamodule: RSDataModule, rows: int, device: Any
) -> tuple[list[str], list[list[np.ndarray]]]:
    batch = {k: v.to(device) for k, v in next(iter(datamodule.predict_dataloader())).items() if torch.is_tensor(v)}
    bands = datamodule.s2_bands
    torch.manual_seed(0)
    if "optical" in batch:
        optical, radar = batch["optical"][:rows], batch["radar"][:rows]
        b, c, h, w = optical.shape
        p = model.patch
        grid = (h // p, w // p)
        (keep_r, _), (keep_o, masked_o) = croma_masks(b, grid[0] * grid[1], 0.75, optical.device)
        out = model(radar, optical, keep_r, keep_o)
        pred = model.decoder(out["joint"], keep_r, grid)
        target = patchify(torch.cat([optical, radar], 1), p)
        recon = unpatchify(_paste(pred, target, masked_o), c + radar.shape[1], grid, p)[:, :c]
        shown = unpatchify(patchify(optical, p) * (~masked_o)[..., None], c, grid, p)
        titles = ["S2 input", "S2 masked (75%)", "reconstruction", "S1 VV"]
        vv = radar[:, :1].float().cpu().permute(0, 2, 3, 1).numpy()
        images = [[_rgb(optical[i], bands), _rgb(shown[i], bands), _rgb(recon[i], bands),
                   np.repeat(vv[i], 3, axis=2)] for i in range(b)]  # fmt: skip
        return titles, images
    x1, x2 = batch["view1"][:rows], batch["view2"][:rows]
    if model.key_encoder is not None:  # MoCo: show the two dates and one augmented view of each
        a1, a2 = augment(x1), augment(x2)
        titles = ["date 1", "date 2", "date 1 augmented", "date 2 augmented"]
        return titles, [[_rgb(v[i], bands) for v in (x1, x2, a1, a2)] for i in range(len(x1))]
    b, c, h, w = x1.shape
    p = model.patch
    grid = (h // p, w // p)
    keep, masked = random_keep(b, grid[0] * grid[1], 0.75, x1.device)
    pred = model.decoder(model.backbone(x1, keep)[:, 1:], keep, grid)
    target = patchify(x1, p)
    recon = unpatchify(_paste(pred, target, masked), c, grid, p)
    shown = unpatchify(target * (~masked)[..., None], c, grid, p)
    titles = ["input", "masked (75%)", "reconstruction"]
    return titles, [[_rgb(v[i], bands) for v in (x1, shown, recon)] for i in range(b)]


def plot_reconstruction(
    model: CROMA | SSL4EOModel | SSL4EOResNetModel, datamodule: RSDataModule, out_dir: Path, device: Any, rows: int = 3
) -> list[Path]:
    """Save ``reconstruction.png`` (RGB composites) under ``out_dir`` and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    titles, images = _panels(model, datamodule, rows, device)
    fig, axes = plt.subplots(len(images), len(titles), figsize=(2.2 * len(titles), 2.2 * len(images)), squeeze=False)
    for r, row in enumerate(images):
        for c, image in enumerate(row):
            axes[r, c].imshow(image, interpolation="nearest")
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(titles[c], fontsize=9)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "reconstruction.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]
