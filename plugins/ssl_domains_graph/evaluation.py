"""GraphMAE's downstream protocols (reference ``evaluation.py`` and ``main_graph.py``).

Node level: a logistic-regression layer trained with Adam on frozen embeddings over the standard train mask;
the test accuracy is read at the epoch with the best validation accuracy. Graph level: pooled embeddings, an
SVM with C chosen by inner cross-validation, under stratified 10-fold cross-validation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ssl_domains import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL
from ssl_domains.evaluation import predict_embeddings, single_threaded_blas

if TYPE_CHECKING:
    from .data import GraphDataModule
    from .model import GraphMAE
    from .plugin import GraphMAEConfig


def node_linear_probe(
    emb: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    lr: float,
    weight_decay: float,
    epochs: int,
    seed: int | None = None,
) -> dict[str, float]:
    """Train ``nn.Linear`` on the train nodes; select the epoch on validation, report test (and last-epoch test).

    The layer's initial weights come from ``seed`` when given, else from torch's global generator, which
    ``ssl-domains evaluate --seed`` and the benchmarks seed with the run's seed (as the reference seeds each run),
    so that repeated runs do not all share one probe initialisation.
    """
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    x, y = torch.as_tensor(emb, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.long)
    masks = [torch.as_tensor(split == s) for s in (SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST)]
    num_classes = int(y.max()) + 1
    linear = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():  # nn.Linear's default init, drawn from our generator for reproducibility
        bound = 1.0 / x.shape[1] ** 0.5
        linear.weight.uniform_(-bound, bound, generator=gen)
        linear.bias.uniform_(-bound, bound, generator=gen)
    opt = torch.optim.Adam(linear.parameters(), lr=lr, weight_decay=weight_decay)
    best_val, test_at_best, best_epoch = -1.0, 0.0, 0
    for epoch in range(epochs):
        loss = F.cross_entropy(linear(x[masks[0]]), y[masks[0]])
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            pred = linear(x).argmax(1)
            val_acc = float((pred[masks[1]] == y[masks[1]]).float().mean())
            test_acc = float((pred[masks[2]] == y[masks[2]]).float().mean())
        if val_acc >= best_val:  # ties go to the later epoch, as in the reference
            best_val, test_at_best, best_epoch = val_acc, test_acc, epoch
    return {"val_acc": best_val, "test_acc": test_at_best, "final_test_acc": test_acc, "best_epoch": best_epoch}


def graph_svm_cv(emb: np.ndarray, labels: np.ndarray, seed: int = 0, folds: int = 10) -> dict[str, float]:
    """Mean and std over stratified folds of an RBF SVC whose C is picked by inner 5-fold CV on each training part."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.svm import SVC

    scores = []
    with single_threaded_blas():
        for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(emb, labels):
            clf = GridSearchCV(SVC(random_state=42), {"C": [1e-3, 1e-2, 1e-1, 1.0, 10.0]}, n_jobs=1)
            clf.fit(emb[train], labels[train])
            scores.append(float((clf.predict(emb[test]) == labels[test]).mean()))
    return {"svm_acc": float(np.mean(scores)), "svm_acc_std": float(np.std(scores))}


def evaluate_graphmae(
    model: GraphMAE, datamodule: GraphDataModule, cfg: GraphMAEConfig, device: torch.device | str
) -> dict[str, float] | None:
    """The paper's protocol for the data at hand, or None (the core's generic probe) when it does not apply."""
    emb = predict_embeddings(model, datamodule, device)
    if emb.labels is None:
        return None
    if datamodule.level == "graph":
        return graph_svm_cv(emb.vectors, emb.labels)
    if emb.splits is None or not {SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST} <= set(np.unique(emb.splits)):
        return None
    order = np.argsort(emb.ids)
    return node_linear_probe(
        emb.vectors[order], emb.labels[order], emb.splits[order], cfg.lr_f, cfg.weight_decay_f, cfg.max_epoch_f
    )
