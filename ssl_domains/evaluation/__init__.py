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
from .export import EmbeddingPredictionWriter, ExportSummary, export_embeddings
from .knn import knn_predict, knn_probe
from .probe import group_disjoint_probe, linear_probe, single_threaded_blas
from .rankme import rankme
from .writer import EmbeddingWriter, NpyStream, shard_path, wkb_polygons

__all__ = [
    "EmbeddingPredictionWriter",
    "EmbeddingWriter",
    "Embeddings",
    "ExportSummary",
    "NpyStream",
    "collect_embeddings",
    "collect_position_embeddings",
    "embeddings_once",
    "evaluate_embeddings",
    "export_embeddings",
    "group_disjoint_probe",
    "knn_predict",
    "knn_probe",
    "linear_probe",
    "predict_embeddings",
    "rankme",
    "shard_path",
    "single_threaded_blas",
    "wkb_polygons",
    "write_embeddings",
]
