"""Linear probe on frozen embeddings: logistic regression, C selected on validation, reported on test."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, LeaveOneGroupOut
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

__all__ = ["group_disjoint_probe", "linear_probe", "single_threaded_blas"]

DEFAULT_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def single_threaded_blas() -> threadpool_limits:
    """A context in which BLAS uses one thread: scikit-learn's solvers on probe-sized problems.

    Beside torch's OpenMP pool, a multi-threaded OpenBLAS oversubscribes the cores and each of the probe's small
    matrix products waits on thread hand-offs (scikit-learn #28883): on 2 cores the FSDD probe ran 10-50x
    slower than with one BLAS thread, with identical results (``benchmarks/probe_speed.py``).
    """
    return threadpool_limits(limits=1, user_api="blas")


def linear_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    cs: Sequence[float] = DEFAULT_CS,
    max_iter: int = 2000,
) -> dict[str, float]:
    """Fit a multinomial logistic regression for each C on ``train``, keep the C with the best validation
    accuracy, and report that model's test accuracy. Features are standardised with training statistics. The
    validation split is fixed, so this is a loop over C rather than a CV search; one BLAS thread
    (:func:`single_threaded_blas`).

    Returns ``{"probe_val_acc", "probe_test_acc", "probe_C"}``.
    """
    scaler = StandardScaler().fit(train[0])
    xtr, xva, xte = (scaler.transform(x.astype(np.float64)) for x in (train[0], val[0], test[0]))
    best: tuple[float, float, LogisticRegression] | None = None
    with single_threaded_blas():
        for c in cs:
            clf = LogisticRegression(C=c, max_iter=max_iter).fit(xtr, train[1])
            acc = float((clf.predict(xva) == val[1]).mean())
            if best is None or acc > best[0]:
                best = (acc, c, clf)
    assert best is not None
    val_acc, c, clf = best
    return {"probe_val_acc": val_acc, "probe_test_acc": float((clf.predict(xte) == test[1]).mean()), "probe_C": c}


def group_disjoint_probe(
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    cs: Sequence[float] = DEFAULT_CS,
    max_iter: int = 5000,
    tol: float = 1e-6,
) -> dict[str, float]:
    """Linear probe under a group shift (unseen speakers, sites, patients): C chosen by leave-one-group-out CV.

    ``train`` is ``(features, labels, groups)``; ``test`` holds items of groups absent from training. Folds that
    share groups with their training part overrate every C (on FSDD they score 0.93-0.98 where unseen speakers
    score 0.34-0.40), so each C is scored on one held-out training group at a time (scikit-learn's
    ``GridSearchCV`` with ``LeaveOneGroupOut``; ties go to the smaller C), and the model refitted on all training
    groups with the best C is reported on ``test``. Standardised float64 features and a tight ``tol``: the
    probe's accuracy otherwise moves by 1-2 points with solver tolerance and dtype. Runs with one BLAS thread
    (:func:`single_threaded_blas`).

    Returns ``{"probe_val_acc" (mean leave-one-group-out accuracy of the chosen C), "probe_test_acc", "probe_C"}``.
    """
    x, y, groups = train
    if len(np.unique(groups)) < 2:
        raise ValueError("group_disjoint_probe needs at least two training groups to select C")
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, tol=tol))
    search = GridSearchCV(
        pipeline, {"logisticregression__C": list(cs)}, scoring="accuracy", cv=LeaveOneGroupOut(), error_score="raise"
    )
    with single_threaded_blas():
        search.fit(x.astype(np.float64), y, groups=groups)
        test_acc = float((search.predict(test[0].astype(np.float64)) == test[1]).mean())
    best = int(search.best_index_)
    return {
        "probe_val_acc": float(search.cv_results_["mean_test_score"][best]),
        "probe_test_acc": test_acc,
        "probe_C": float(cs[best]),
    }
