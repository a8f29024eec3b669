"""Label-free and label-based evaluation of embeddings from any plugin."""

from .embeddings import (
    Embeddings,
    collect_embeddings,
    collect_position_embeddings,
    embeddings_once,
    evaluate_embeddings,
    predict_embeddings,
    write_embeddings,
)
from .knn import knn_predict, knn_probe
from .probe import group_disjoint_probe, linear_probe, single_threaded_blas
from .rankme import rankme

__all__ = [
    "Embeddings",
    "collect_embeddings",
    "collect_position_embeddings",
    "embeddings_once",
    "evaluate_embeddings",
    "group_disjoint_probe",
    "knn_predict",
    "knn_probe",
    "linear_probe",
    "predict_embeddings",
    "rankme",
    "single_threaded_blas",
    "write_embeddings",
]
