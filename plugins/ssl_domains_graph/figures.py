"""A 2-D projection of the learned embeddings, coloured by class, saved with the run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ssl_domains.evaluation import collect_embeddings

if TYPE_CHECKING:
    from .data import GraphDataModule
    from .model import GraphMAE

MAX_POINTS = 3000


def plot_embedding_projection(model: GraphMAE, datamodule: GraphDataModule, out_dir: Path, device: Any) -> list[Path]:
    """t-SNE (after PCA to 50 dims) of up to 3,000 node or graph embeddings; colour = label when known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    emb = collect_embeddings(model, datamodule.sample_batches(MAX_POINTS), str(device))
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(len(emb.ids), MAX_POINTS, replace=False)) if len(emb.ids) > MAX_POINTS else slice(None)
    z = emb.vectors[keep]
    if len(z) < 5:
        return []
    if not np.isfinite(z).all() or float(np.ptp(z, axis=0).max()) <= 1e-12:
        # a collapsed model: t-SNE of identical points has nothing to show (and sklearn's crashes on them)
        print("graphmae: the embeddings are constant or not finite; no t-SNE figure drawn")
        return []
    z = PCA(min(50, *z.shape), random_state=0).fit_transform(z)
    xy = TSNE(2, perplexity=min(30.0, (len(z) - 1) / 3), init="pca", random_state=0).fit_transform(z)
    fig, ax = plt.subplots(figsize=(6, 6), dpi=120)
    colour = emb.labels[keep] if emb.labels is not None else None
    ax.scatter(xy[:, 0], xy[:, 1], c=colour, s=4, cmap="tab10" if colour is not None else None, alpha=0.8)
    what = "graph" if datamodule.level == "graph" else "node"
    ax.set_title(f"GraphMAE {what} embeddings (t-SNE){', coloured by class' if colour is not None else ''}")
    ax.set_xticks([])
    ax.set_yticks([])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{what}_embeddings_tsne.png"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return [path]
