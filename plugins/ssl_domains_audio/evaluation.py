"""Frozen-encoder evaluation on labelled clips, speaker-disjoint, and the log-mel baseline features.

Protocol (the issue's FSDD protocol; it holds for any corpus named by ``label_regex``): clips of ``test_speakers``
never enter pretraining. Embeddings of the other speakers' clips train a StandardScaler + multinomial logistic
regression (float64, ``tol=1e-6``) whose C is chosen by leave-one-speaker-out CV on the training speakers
(:func:`ssl_domains.evaluation.group_disjoint_probe`); its accuracy on the test speakers is reported. Folds that
share speakers with their training part rate every C at 0.93-0.98 on FSDD, against 0.34-0.40 on unseen speakers,
so they would select C for the wrong problem.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ssl_domains import SPLIT_TEST, SPLIT_TRAIN
from ssl_domains.evaluation import group_disjoint_probe, predict_embeddings, rankme

if TYPE_CHECKING:
    from .data import AudioDataModule
    from .model import SSASTModel, TERAModel
    from .plugin import AudioDataConfig


def speaker_probe(
    vectors: np.ndarray, labels: np.ndarray, speakers: np.ndarray, splits: np.ndarray, cs: list[float]
) -> dict[str, float]:
    """The speaker-disjoint probe on row-aligned arrays; without test speakers, only the selection score."""
    train = (splits == SPLIT_TRAIN) & (labels >= 0)
    test = (splits == SPLIT_TEST) & (labels >= 0)
    if len(np.unique(speakers[train])) < 2:
        return {}
    if not test.any():  # no held-out speakers: score the leave-one-speaker-out CV on everything labelled
        test = train
    out = group_disjoint_probe((vectors[train], labels[train], speakers[train]), (vectors[test], labels[test]), cs=cs)
    if test is train:
        out.pop("probe_test_acc")
    return out


@torch.no_grad()
def clip_embeddings(
    model: TERAModel | SSASTModel, datamodule: AudioDataModule, device: torch.device | str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(vectors, labels, speakers, splits)`` of every clip, ordered by clip id."""
    emb = predict_embeddings(model, datamodule, device)
    order = np.argsort(emb.ids)
    ids = emb.ids[order]
    assert emb.labels is not None and emb.splits is not None
    return emb.vectors[order], emb.labels[order], datamodule.speakers[ids], emb.splits[order]


def evaluate_clips(
    model: TERAModel | SSASTModel, datamodule: AudioDataModule, cfg: AudioDataConfig, device: torch.device | str
) -> dict[str, float]:
    """RankMe of all clip embeddings, and the speaker-disjoint probe when the clips carry labels and speakers."""
    datamodule.setup("predict")
    vectors, labels, speakers, splits = clip_embeddings(model, datamodule, device)
    metrics: dict[str, float] = {"num_clips": float(len(vectors)), "rankme": rankme(vectors)}
    metrics.update(speaker_probe(vectors, labels, speakers, splits, list(cfg.eval_cs)))
    return metrics


def pooled_logmel(datamodule: AudioDataModule, n_mels: int = 80) -> np.ndarray:
    """The baseline: mean and std over time of each clip's log-mel bands (no CMVN), ``[clips, 2 · n_mels]``."""
    from .features import SAMPLE_RATE, log_mel
    from .formats import read_audio

    rows = []
    for clip in datamodule.clips[: datamodule.num_source_clips]:  # the rows clip_embeddings gives
        feats = log_mel(read_audio(clip.path, SAMPLE_RATE, datamodule.cfg.min_seconds), n_mels, cmvn=False).double()
        rows.append(torch.cat([feats.mean(0), feats.std(0, unbiased=False)]).numpy())
    return np.stack(rows)
