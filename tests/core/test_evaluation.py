"""RankMe, the linear probe and kNN give the values their definitions imply."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from ssl_domains.evaluation import (
    Embeddings,
    evaluate_embeddings,
    group_disjoint_probe,
    knn_probe,
    linear_probe,
    rankme,
)


def test_rankme_of_orthogonal_equal_directions_is_their_number():
    assert rankme(np.eye(16) * 3.0) == pytest.approx(16.0, rel=1e-4)


def test_rankme_of_a_collapsed_representation_is_one():
    z = np.outer(np.arange(1, 101), np.ones(8))  # rank one
    assert rankme(z) == pytest.approx(1.0, abs=1e-3)


def test_rankme_matches_the_formula_on_known_singular_values():
    z = np.diag([4.0, 2.0, 1.0, 1.0])
    p = np.array([4, 2, 1, 1]) / 8 + 1e-7
    assert rankme(z) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-6)


def test_rankme_rejects_bad_shapes():
    with pytest.raises(ValueError):
        rankme(np.zeros((0, 3)))


def blobs(n_per_class: int = 60, classes: int = 3, dim: int = 8, spread: float = 0.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, dim))
    y = np.repeat(np.arange(classes), n_per_class)
    return (centres[y] + rng.normal(0, spread, (len(y), dim))).astype(np.float32), y


def test_probe_and_knn_separate_separable_classes_and_fail_on_noise():
    x, y = blobs()
    idx = np.random.default_rng(1).permutation(len(y))
    parts = [idx[:100], idx[100:140], idx[140:]]
    split = [(x[p], y[p]) for p in parts]
    assert linear_probe(*split)["probe_test_acc"] == 1.0
    assert knn_probe(*split)["knn_test_acc"] == 1.0
    noise = np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
    shuffled = [(noise[p], y[p]) for p in parts]
    assert linear_probe(*shuffled)["probe_test_acc"] < 0.7  # chance is 1/3


def test_probe_selects_c_on_validation_not_test():
    x, y = blobs(spread=3.0)
    parts = [np.arange(0, 180, 3), np.arange(1, 180, 3), np.arange(2, 180, 3)]
    result = linear_probe(*[(x[p], y[p]) for p in parts], cs=(1e-4, 1.0))
    assert result["probe_C"] in (1e-4, 1.0) and 0 <= result["probe_val_acc"] <= 1


def test_evaluate_uses_the_data_split_when_present_and_ignores_unlabelled_items():
    x, y = blobs()
    labels = y.copy()
    labels[:10] = -1
    splits = np.tile([0, 0, 0, 1, 2], len(y) // 5)
    metrics = evaluate_embeddings(Embeddings(np.arange(len(y)), x, labels, splits))
    assert metrics["split"] == "data" and metrics["probe_test_acc"] == 1.0
    metrics = evaluate_embeddings(Embeddings(np.arange(len(y)), x, y, None), seed=3)
    assert metrics["split"].startswith("stratified 60/20/20")


def test_evaluate_without_labels_gives_rankme_only():
    x, _ = blobs()
    metrics = evaluate_embeddings(Embeddings(np.arange(len(x)), x))
    assert set(metrics) == {"num_items", "embed_dim", "rankme"}


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_collected_embeddings_do_not_keep_their_batches_alive():
    import torch

    from ssl_domains.evaluation import collect_embeddings

    class SeedRows(torch.nn.Module):
        """embed returns the first rows of a big per-batch tensor, as neighbour-sampled graph models do."""

        def embed(self, batch):
            return torch.ones(5_000_000, 8)[: len(batch["id"])]  # 160 MB per batch

    start = current_rss_mb()
    peak = []

    def batches():
        for _ in range(8):
            peak.append(current_rss_mb() - start)
            yield {"id": torch.arange(4)}

    emb = collect_embeddings(SeedRows(), batches())
    assert emb.vectors.shape == (32, 8)
    assert max(peak) < 500, f"memory grew by {max(peak):.0f} MB: embeddings hold views of whole batch tensors"


def test_position_embeddings_leave_out_padding_and_keep_ids_labels_and_order(tmp_path):
    import pyarrow.parquet as pq
    import torch

    from ssl_domains import UserError
    from ssl_domains.evaluation import collect_position_embeddings, write_embeddings

    class Frames(torch.nn.Module):
        """Position t of item i is the vector [i, t]; items are 3, 1 and 2 positions long in a 4-wide batch."""

        def embed_positions(self, batch):
            n = len(batch["id"])
            grid = torch.stack(torch.meshgrid(batch["id"].float(), torch.arange(4.0), indexing="ij"), -1)
            return grid.reshape(n, 4, 2), batch["length"]

    batches = [
        {"id": torch.tensor([10, 11]), "length": torch.tensor([3, 1]), "label": torch.tensor([0, 1])},
        {"id": torch.tensor([12]), "length": torch.tensor([2]), "label": torch.tensor([1])},
    ]
    emb = collect_position_embeddings(Frames(), batches)
    assert emb.ids.tolist() == [10, 10, 10, 11, 12, 12]
    assert emb.positions.tolist() == [0, 1, 2, 0, 0, 1]
    assert emb.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert emb.vectors.tolist() == [[10, 0], [10, 1], [10, 2], [11, 0], [12, 0], [12, 1]]
    (path,) = write_embeddings(emb, tmp_path / "frames.parquet")
    table = pq.read_table(path).to_pydict()
    assert table["position"] == emb.positions.tolist() and table["id"] == emb.ids.tolist()
    written = write_embeddings(emb, tmp_path / "frames.npy")
    assert np.load(tmp_path / "frames.positions.npy").tolist() == emb.positions.tolist() and len(written) == 4
    assert pq.read_table(tmp_path / "frames.rows.parquet").to_pydict()["label"] == emb.labels.tolist()

    class ClipsOnly(torch.nn.Module):
        def embed(self, batch):
            return torch.zeros(len(batch["id"]), 2)

    with pytest.raises(UserError, match=r"ClipsOnly gives one embedding per item only.*--per-position"):
        collect_position_embeddings(ClipsOnly(), batches)


def test_group_disjoint_probe_selects_on_held_out_groups():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(5), 100)
    labels = rng.integers(0, 3, 500)
    signal = np.eye(3)[labels] + 0.3 * rng.normal(size=(500, 3))
    group_shift = np.eye(5)[groups] @ rng.normal(size=(5, 20)) * 3  # features that only name the group
    x = np.hstack([signal, group_shift + 0.1 * rng.normal(size=(500, 20))])
    train = groups < 4
    out = group_disjoint_probe((x[train], labels[train], groups[train]), (x[~train], labels[~train]))
    assert out["probe_test_acc"] > 0.9 and out["probe_val_acc"] > 0.9
    with pytest.raises(ValueError, match="two training groups"):
        group_disjoint_probe((x[:100], labels[:100], groups[:100]), (x, labels))
