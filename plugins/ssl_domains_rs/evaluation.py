"""Label-free evaluation: cross-modal (S1 -> S2) or cross-date retrieval of held-out chips, and RankMe.

Every held-out chip has exactly one true match in the gallery (the same window in the other view), so chance
recall@1 is ``1 / N`` for a gallery of ``N`` chips. Similarity is the cosine of the embeddings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ssl_domains import DataError
from ssl_domains.evaluation.rankme import rankme

from .model import resize_to

if TYPE_CHECKING:
    from ssl_domains import SSLModel

    from .data import RSDataModule
    from .model import CROMA, SSL4EOModel
    from .resnet import SSL4EOResNetModel


@torch.no_grad()
def retrieval_embeddings(
    model: CROMA | SSL4EOModel | SSL4EOResNetModel,
    datamodule: RSDataModule,
    device: torch.device | str,
    size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and gallery embeddings ``[N, D]`` of the held-out chips (every chip when nothing is held out).

    CROMA: the radar and optical contrastive embeddings (the space its InfoNCE aligns). SSL4EO: the backbone
    representation of the first and the second date. ``size`` resizes the chips first (bilinear), e.g. to embed
    120² chips at 240².
    """
    model.eval()
    if datamodule.single_view is not None:
        raise DataError(
            f"{datamodule.data}: retrieval compares two views of each location (S1 and S2, or two dates); these "
            f"chips have one ({datamodule.single_view}), which `embed` takes but `evaluate` cannot"
        )
    queries, gallery = [], []
    for batch in datamodule.predict_dataloader():
        keys = ("radar", "optical") if "radar" in batch else ("view1", "view2")
        a, b = (batch[k].to(device) for k in keys)
        if size is not None:
            a, b = resize_to(a, size), resize_to(b, size)
        if keys[0] == "radar":
            za, zb = model.global_embeddings(model.radar(a)[0], model.optical(b)[0])
        else:
            za, zb = model.features(a), model.features(b)
        queries.append(za.float().cpu())
        gallery.append(zb.float().cpu())
    return torch.cat(queries), torch.cat(gallery)


def recall_at_k(queries: torch.Tensor, gallery: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Recall@k of query ``i`` finding gallery item ``i`` among all gallery items, by cosine similarity."""
    q = torch.nn.functional.normalize(queries.double(), dim=-1)
    g = torch.nn.functional.normalize(gallery.double(), dim=-1)
    sim = q @ g.T
    true = sim.diagonal()[:, None]
    rank = (sim > true).sum(dim=1)  # how many gallery items beat the true match
    return {f"recall{k}": float((rank < k).double().mean()) for k in ks}


@torch.no_grad()
def knn_by_location(
    model: SSLModel, datamodule: RSDataModule, device: torch.device | str, k: int = 5
) -> dict[str, float]:
    """kNN (cosine, ``k`` neighbours) accuracy of ``embed`` on chips whose location carries a class (EuroSAT
    folder names, single-label BigEarthNet patches), leave-one-location-out so that no chip is classified by
    chips of its own scene. Empty when fewer than two locations per class are labelled."""
    from sklearn.neighbors import KNeighborsClassifier

    labels = [s.label for s in datamodule.scenes]
    model.eval()
    vectors, classes, groups = [], [], []
    for batch in datamodule.predict_dataloader():
        keep = [i for i, loc in enumerate(batch["location"].tolist()) if labels[loc] is not None]
        if not keep:
            continue
        z = model.embed({k_: v.to(device) if torch.is_tensor(v) else v for k_, v in batch.items()})
        vectors.append(torch.nn.functional.normalize(z[keep].float(), dim=-1).cpu().numpy())
        classes += [labels[loc] for loc in batch["location"][keep].tolist()]
        groups += batch["location"][keep].tolist()
    if not vectors:
        return {}
    x, y, g = np.concatenate(vectors), np.array(classes), np.array(groups)
    names, counts = np.unique([labels[loc] for loc in set(groups)], return_counts=True)
    if len(names) < 2 or counts.min() < 2:
        return {}
    correct = 0
    for loc in np.unique(g):
        train, test = g != loc, g == loc
        knn = KNeighborsClassifier(n_neighbors=min(k, int(train.sum())), metric="cosine").fit(x[train], y[train])
        correct += int((knn.predict(x[test]) == y[test]).sum())
    return {"knn_acc": correct / len(y), "knn_chips": float(len(y)), "knn_classes": float(len(names))}


def evaluate_retrieval(
    model: CROMA | SSL4EOModel | SSL4EOResNetModel,
    datamodule: RSDataModule,
    device: torch.device | str,
    size: int | None = None,
) -> dict[str, float]:
    """Recall@1/5 in both directions, chance, gallery size, RankMe, and a kNN probe where locations are labelled.
    Chips with one view (:attr:`RSDataModule.single_view`: S2-only chips for CROMA, single dates for SSL4EO) have
    no retrieval task: only the kNN probe (empty when fewer than two labelled locations per class)."""
    if datamodule.single_view is not None:
        return {"n_chips": float(len(datamodule.test_items)), **knn_by_location(model, datamodule, device)}
    queries, gallery = retrieval_embeddings(model, datamodule, device, size)
    n = len(queries)
    if n < 2:
        return {"n_chips": float(n), **knn_by_location(model, datamodule, device)}
    forward = recall_at_k(queries, gallery)
    backward = recall_at_k(gallery, queries)
    return {
        **forward,
        "recall1_reverse": backward["recall1"],
        "recall5_reverse": backward["recall5"],
        "chance": 1.0 / n,
        "n_chips": float(n),
        "rankme": rankme(np.concatenate([queries.numpy(), gallery.numpy()])),
        **(knn_by_location(model, datamodule, device) if size is None else {}),
    }
