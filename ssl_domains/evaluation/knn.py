"""Weighted cosine kNN classifier on frozen embeddings (Wu et al. 2018, as used by DINO and lightly)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["knn_accuracy", "knn_predict", "knn_probe"]


def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    k: int,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 4096,
) -> torch.Tensor:
    """Predict a class per query: the top-``k`` cosine neighbours in ``bank`` vote with weight ``exp(sim / T)``."""
    bank = F.normalize(bank.float(), dim=1)
    num_classes = int(bank_labels.max()) + 1 if num_classes is None else num_classes
    k = min(k, bank.shape[0])
    preds = []
    for start in range(0, queries.shape[0], chunk):
        q = F.normalize(queries[start : start + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(q.shape[0], num_classes, dtype=q.dtype, device=q.device)
        votes.scatter_add_(1, bank_labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_accuracy(bank: np.ndarray, bank_labels: np.ndarray, x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Accuracy of :func:`knn_predict` on ``(x, y)``."""
    pred = knn_predict(torch.as_tensor(bank), torch.as_tensor(bank_labels).long(), torch.as_tensor(x), k)
    return float((pred.numpy() == y).mean())


def knn_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    ks: Sequence[int] = (1, 5, 10, 20, 50),
) -> dict[str, float]:
    """Choose k on validation with the training set as the bank; report test accuracy with that k."""
    scores = {k: knn_accuracy(train[0], train[1], val[0], val[1], k) for k in ks}
    best_k = max(scores, key=lambda k: (scores[k], -k))
    return {
        "knn_val_acc": scores[best_k],
        "knn_test_acc": knn_accuracy(train[0], train[1], test[0], test[1], best_k),
        "knn_k": best_k,
    }
