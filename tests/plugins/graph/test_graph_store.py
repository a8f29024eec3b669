"""GraphMAE's graph store: a text graph parsed once and memory-mapped; neighbour batches from the store equal the
batches of the graph prepared whole in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ssl_domains import DataError
from ssl_domains_graph import data as graph_data
from ssl_domains_graph import store
from ssl_domains_graph.data import GraphDataModule
from ssl_domains_graph.plugin import GraphMAEConfig


def _write_table(folder: Path, n: int = 300, seed: int = 0) -> Path:
    """edges.csv (string node ids) and nodes.csv with 6 features (shifted: a negative minimum), labels, a split."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    ids = [f"n{i:04d}" for i in range(n)]
    src = rng.integers(0, n, 4 * n)
    dst = (src + rng.integers(1, n, 4 * n)) % n
    pd.DataFrame({"source": [ids[i] for i in src], "target": [ids[i] for i in dst]}).to_csv(folder / "edges.csv")
    nodes = pd.DataFrame(rng.normal(size=(n, 6)) * 3 - 1, columns=[f"f{j}" for j in range(6)])
    nodes.insert(0, "node_id", ids)
    nodes["label"] = rng.integers(0, 4, n)
    nodes["split"] = rng.choice(["train", "val", "test"], n)
    nodes.to_csv(folder / "nodes.csv", index=False)
    return folder


def _module(path: Path, **overrides) -> GraphDataModule:
    dm = GraphDataModule(path, GraphMAEConfig(**{"node_batching": "neighbor", "batch_size": 32, **overrides}))
    dm.setup("fit")
    return dm


def _batches(dm: GraphDataModule, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(seed)  # the sampler draws from torch's generator
    return [dm._neighbor_collate(list(range(i, i + 32))) for i in range(0, 96, 32)]


@pytest.mark.parametrize("overrides", [{"feature_norm": "row"}, {"feature_norm": "standardize"},
                                       {"degree_features": True, "feature_norm": "standardize"}])  # fmt: skip
def test_batches_from_the_store_equal_batches_of_the_graph_prepared_in_memory(tmp_path, monkeypatch, overrides):
    folder = _write_table(tmp_path / "g")
    stored = _module(folder, **overrides)
    assert stored.lazy and stored.graphs[0].x.shape == (300, 6)  # the matrix as read: prepared per batch
    monkeypatch.setattr(graph_data, "text_graph_files", lambda path: None)  # today's path: all in memory
    whole = _module(folder, **overrides)
    assert not whole.lazy
    for key in ("mean", "std", "degree_width", "num_features"):
        if key in whole.fitted:
            torch.testing.assert_close(torch.as_tensor(stored.fitted[key]), torch.as_tensor(whole.fitted[key]))
    for a, b in zip(_batches(stored), _batches(whole), strict=True):
        assert a.keys() == b.keys() and torch.equal(a["edge_index"], b["edge_index"])
        assert torch.equal(a["id"], b["id"]) and torch.equal(a["label"], b["label"])
        torch.testing.assert_close(a["x"], b["x"], rtol=1e-5, atol=1e-6)  # float64 statistics in the store
    if overrides == {"feature_norm": "row"}:
        low = pd.read_csv(folder / "nodes.csv")[[f"f{j}" for j in range(6)]].to_numpy(np.float32).min()
        assert float(stored._low) == low < 0  # NormalizeFeatures subtracts the whole matrix's minimum
    assert list(stored.provenance(np.array([0, 299]))["node_id"]) == ["n0000", "n0299"]


def test_a_warm_setup_maps_the_store_without_parsing(tmp_path, monkeypatch):
    folder = _write_table(tmp_path / "g")
    first = _module(folder)
    monkeypatch.setattr(store, "read_graph_source", lambda path: pytest.fail("parsed again"))
    second = _module(folder)
    assert isinstance(second.graphs[0].x, torch.Tensor) and torch.equal(second.graphs[0].x, first.graphs[0].x)
    assert torch.equal(second.sampler.col, first.sampler.col) and second.fitted.keys() == first.fitted.keys()
    assert float(second._low) == float(first._low) and "low" not in first.fitted  # per graph, as in memory
    full = GraphDataModule(folder, GraphMAEConfig(node_batching="full"))
    full.setup("fit")  # a full-batch step from the same store: the whole graph prepared in memory
    assert not full.lazy and full.full_batch["x"].shape == (300, 6)
    nodes = pd.read_csv(folder / "nodes.csv")
    nodes.loc[0, "f0"] = 99.0
    nodes.to_csv(folder / "nodes.csv", index=False)  # an edited file: parsed again
    monkeypatch.undo()
    assert float(_module(folder).graphs[0].x[0, 0]) == 99.0


def test_a_bad_graph_is_refused_each_time_and_leaves_no_store(tmp_path):
    folder = _write_table(tmp_path / "g")
    edges = pd.read_csv(folder / "edges.csv", index_col=0)
    edges.loc[len(edges)] = ["n0001", "n9999"]
    edges.to_csv(folder / "edges.csv")
    for _ in range(2):
        with pytest.raises(DataError, match=r"edges\.csv: 1 edges point outside the 300 nodes"):
            _module(folder)


def test_a_cache_that_cannot_be_written_reads_the_graph_into_memory(tmp_path, monkeypatch, caplog):
    folder = _write_table(tmp_path / "g")
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("SSL_DOMAINS_CACHE", str(tmp_path / "a-file" / "cache"))  # not a folder: mkdir fails
    with caplog.at_level("WARNING", logger="ssl_domains_graph.data"):
        dm = _module(folder)
    assert "the graph store cannot be written" in caplog.text and not dm.lazy
    assert dm.graphs[0].x.shape == (300, 6) and len(dm._neighbor_collate(list(range(32)))["id"]) == 32
