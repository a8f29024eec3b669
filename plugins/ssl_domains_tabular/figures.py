"""Run-directory figure: how well the predictor recovers each feature's target-encoder token.

A feature whose error stays high is one the other columns say little about; one near zero is nearly redundant.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .data import TableDataModule
    from .model import TJEPAModel
    from .objective import TJEPAObjective


def feature_prediction_errors(
    model: TJEPAModel,
    datamodule: TableDataModule,
    objective: TJEPAObjective,
    device: torch.device | str,
    rounds: int = 8,
    max_rows: int = 4096,
) -> torch.Tensor:
    """Mean squared prediction error per feature ``[D]``, over ``rounds`` random maskings of up to ``max_rows``."""
    rows = torch.as_tensor(datamodule.train_rows[:max_rows])
    batch = {k: v.to(device) for k, v in datamodule.collate(rows.tolist()).items()}
    total = torch.zeros(model.num_features, device=device)
    count = torch.zeros(model.num_features, device=device)
    generator_state = torch.get_rng_state()
    torch.manual_seed(0)
    for _ in range(rounds):
        predictions, targets, features = objective.predict(model, batch)
        error = ((predictions - targets) ** 2).mean(-1).flatten().to(total.dtype)  # a float64 run: float32 sums
        features = features.flatten()
        keep = features >= 0  # mask_indexing=reference can make a [REG] token the target (index < 0): not a feature
        total.scatter_add_(0, features[keep], error[keep])
        count.scatter_add_(0, features[keep], torch.ones_like(error[keep]))
    torch.set_rng_state(generator_state)
    return total / count.clamp(min=1)


def plot_feature_errors(
    model: TJEPAModel, datamodule: TableDataModule, objective: TJEPAObjective, path: Path, device: torch.device | str
) -> Path:
    """Bar chart of :func:`feature_prediction_errors`, sorted, saved at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    errors = feature_prediction_errors(model, datamodule, objective, device).cpu().tolist()
    names = datamodule.feature_names
    order = sorted(range(len(names)), key=lambda j: errors[j])
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(names) + 1.2))
    ax.barh([names[j] for j in order], [errors[j] for j in order], color="tab:blue")
    ax.set_xlabel("T-JEPA target-prediction MSE")
    ax.set_title("Per-feature prediction error (training rows)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
