"""Linear probe on frozen embeddings: logistic regression, C selected on validation, reported on test."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

__all__ = ["linear_probe"]

DEFAULT_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def linear_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    cs: Sequence[float] = DEFAULT_CS,
    max_iter: int = 2000,
) -> dict[str, float]:
    """Fit a multinomial logistic regression for each C on ``train``, keep the C with the best validation
    accuracy, and report that model's test accuracy. Features are standardised with training statistics.

    Returns ``{"probe_val_acc", "probe_test_acc", "probe_C"}``.
    """
    scaler = StandardScaler().fit(train[0])
    xtr, xva, xte = (scaler.transform(x.astype(np.float64)) for x in (train[0], val[0], test[0]))
    best: tuple[float, float, LogisticRegression] | None = None
    for c in cs:
        clf = LogisticRegression(C=c, max_iter=max_iter).fit(xtr, train[1])
        acc = float((clf.predict(xva) == val[1]).mean())
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    assert best is not None
    val_acc, c, clf = best
    return {"probe_val_acc": val_acc, "probe_test_acc": float((clf.predict(xte) == test[1]).mean()), "probe_C": c}
