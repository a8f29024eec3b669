"""Run-directory figures: a clip's input, its altered or masked version, and the model's reconstruction."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .data import AudioDataModule
    from .model import SSASTModel, TERAModel
    from .objective import SSASTObjective, TERAObjective


def _example_batch(datamodule: AudioDataModule, device: torch.device | str) -> dict[str, torch.Tensor]:
    loader = datamodule.predict_dataloader()  # ordered by length: the middle batch holds typical clips
    batch = next(b for i, b in enumerate(loader) if i >= len(loader) // 2)
    longest = int(batch["length"].argmax())
    return {k: v[longest : longest + 1].to(device) for k, v in batch.items()}


def _save(panels: list[tuple[str, torch.Tensor]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), sharey=True)
    for ax, (title, image) in zip(axes, panels, strict=True):
        ax.imshow(image.float().cpu().T.numpy(), origin="lower", aspect="auto", cmap="magma")
        ax.set_title(title)
        ax.set_xlabel("frame (10 ms)")
    axes[0].set_ylabel("mel bin")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


@torch.no_grad()
def plot_tera(
    model: TERAModel, datamodule: AudioDataModule, objective: TERAObjective, out: Path, device: torch.device | str
) -> Path:
    """Input log-mel, TERA's altered version, and the reconstruction, for the longest clip of the first batch."""
    was_training = model.training
    model.eval()
    batch = _example_batch(datamodule, device)
    torch.manual_seed(0)
    x, lengths = batch["features"], batch["length"]
    altered, _ = objective.alter(x, lengths)
    reconstruction = model(altered, lengths)
    model.train(was_training)
    n = int(lengths[0])
    return _save([("input", x[0, :n]), ("altered", altered[0, :n]), ("reconstruction", reconstruction[0, :n])], out)


@torch.no_grad()
def plot_ssast(
    model: SSASTModel, datamodule: AudioDataModule, objective: SSASTObjective, out: Path, device: torch.device | str
) -> Path:
    """Input fbank, its masked patches (blanked), and the generative head's patches in their place."""
    was_training = model.training
    model.eval()
    batch = _example_batch(datamodule, device)
    torch.manual_seed(0)
    x, lengths = batch["features"], batch["length"]
    valid = model.patch_validity(lengths, x.shape[1])
    mask = objective.mask(model, valid, x.shape[1])
    layers, _ = model.encode(x, lengths, mask)
    generated = model.generative_head(layers[-1])
    patches = model.patchify(x)
    masked = patches.masked_fill(mask[:, :, None], float(x.min()))
    filled = torch.where(mask[:, :, None], generated.to(patches.dtype), patches)
    model.train(was_training)
    n = int(lengths[0])
    panels = [
        ("input", x),
        ("masked", unpatchify(model, masked, x.shape)),
        ("reconstruction", unpatchify(model, filled, x.shape)),
    ]
    return _save([(title, image[0, :n]) for title, image in panels], out)


def unpatchify(model: SSASTModel, patches: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The inverse of ``model.patchify``: ``[B, P, patch]`` back to ``[B, T, F]``."""
    b, t, f = shape
    pf, pt = model.patch
    spec = patches.reshape(b, f // pf, t // pt, pf, pt).permute(0, 1, 3, 2, 4).reshape(b, f, t)
    return spec.transpose(1, 2)
