"""GraphMAE data: every accepted format reads as PyG would, and bad input gets one error naming the file."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch_geometric.data import Data, InMemoryDataset

from ssl_domains import DataError
from ssl_domains_graph.data import GraphDataModule
from ssl_domains_graph.formats import read_graph_source
from ssl_domains_graph.plugin import GraphMAEConfig
from ssl_domains_graph.sampling import NeighborSampler


def setup(path: Path, **overrides) -> GraphDataModule:
    cfg = GraphMAEConfig(**overrides)
    dm = GraphDataModule(path, cfg)
    dm.setup("fit")
    return dm


def test_planetoid_cora_reads_offline_with_the_public_split(cora: Path):
    before = sorted(p.name for p in cora.rglob("*"))
    source = read_graph_source(cora)
    g = source.graphs[0]
    assert source.kind == "planetoid" and not source.is_collection
    assert (g.num_nodes, g.edge_index.shape[1], g.x.shape[1]) == (2708, 10556, 1433)
    assert [(g.split == s).sum().item() for s in (0, 1, 2)] == [140, 500, 1000]
    assert sorted(p.name for p in cora.rglob("*")) == before, "reading must not write processed/ files"


def test_cora_batch_is_row_normalised_with_one_self_loop_per_node(cora: Path):
    dm = setup(cora)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (2708, 1433) and dm.level == "node"
    nonzero_rows = batch["x"].sum(1) > 0
    assert torch.allclose(batch["x"].sum(1)[nonzero_rows], torch.ones(int(nonzero_rows.sum())))
    ei = batch["edge_index"]
    assert ei.shape[1] == 10556 + 2708 and int((ei[0] == ei[1]).sum()) == 2708
    assert torch.equal(batch["id"], torch.arange(2708)) and batch["label"].max() == 6


def test_tu_mutag_is_a_graph_collection(mutag: Path):
    source = read_graph_source(mutag)
    assert source.kind == "tu" and len(source.graphs) == 188
    labels = torch.cat([g.y for g in source.graphs])
    assert labels.bincount().tolist() == [63, 125]
    dm = setup(mutag, feature_norm="none", batch_size=64)
    batch = next(iter(dm.predict_dataloader()))
    assert dm.level == "graph" and dm.num_features == 7
    assert batch["id"].tolist() == list(range(64)) and batch["batch"].max() == 63
    assert torch.equal(batch["x"].sum(1), torch.ones(len(batch["x"])))  # one-hot node labels


def test_degree_features_replace_missing_features(tmp_path: Path):
    graphs = [
        Data(edge_index=torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]]), num_nodes=3, y=torch.tensor([0])),
        Data(edge_index=torch.tensor([[0, 1], [1, 0]]), num_nodes=2, y=torch.tensor([1])),
    ]
    torch.save(graphs, tmp_path / "g.pt")
    dm = setup(tmp_path / "g.pt", feature_norm="none")
    assert dm.level == "graph" and dm.num_features == 3  # degrees 0..2
    x = dm.graphs[0].x
    assert x.argmax(1).tolist() == [1, 2, 1]


def test_pt_formats(tmp_path: Path):
    g = Data(x=torch.rand(5, 3), edge_index=torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]]), y=torch.arange(5))
    torch.save(g, tmp_path / "one.pt")
    assert read_graph_source(tmp_path / "one.pt").graphs[0].num_nodes == 5
    InMemoryDataset.save([g, g], str(tmp_path / "ds.pt"))
    source = read_graph_source(tmp_path / "ds.pt")
    assert len(source.graphs) == 2 and source.is_collection
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(DataError, match=re.escape("other.pt: holds a dict")):
        read_graph_source(tmp_path / "other.pt")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(DataError, match=re.escape("bad.pt: cannot be loaded safely")):
        read_graph_source(tmp_path / "bad.pt")


def write_table(folder: Path, edges: dict, nodes: dict, parquet: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(edges).to_csv(folder / "edges.csv", index=False)
    table = pd.DataFrame(nodes)
    table.to_parquet(folder / "nodes.parquet") if parquet else table.to_csv(folder / "nodes.csv", index=False)
    return folder


def test_table_format_with_node_ids_string_labels_and_split(tmp_path: Path):
    folder = write_table(
        tmp_path / "t",
        {"source": ["a", "b", "c"], "target": ["b", "c", "a"]},
        {
            "node_id": ["c", "a", "b"],
            "f0": [1.0, 2.0, 3.0],
            "label": ["x", "y", "x"],
            "split": ["train", "val", "test"],
        },
        parquet=True,
    )
    g = read_graph_source(folder).graphs[0]
    assert g.edge_index.tolist() == [[1, 2, 0], [2, 0, 1]]  # ids mapped to rows of the node table
    assert g.y.tolist() == [0, 1, 0] and g.split.tolist() == [0, 1, 2]
    assert read_graph_source(folder).node_ids.tolist() == ["c", "a", "b"]  # embed writes them beside the vectors


@pytest.mark.parametrize(
    ("edges", "nodes", "message"),
    [
        (
            {"source": [0, 5], "target": [1, 0]},
            {"f0": [1.0, 2.0]},
            "edges.csv: 1 edges point outside the 2 nodes of nodes.csv (first: line 3, 5 -> 0)",
        ),
        ({"source": [0], "target": [1]}, {"f0": [1.0, np.nan]}, "NaN or inf features in 1 nodes"),
        ({"source": [0], "target": [1]}, {"f0": ["a", "b"]}, "feature columns must be numeric"),
        ({"from": [0], "to": [1]}, {"f0": [1.0, 2.0]}, "needs columns 'source' and 'target'"),
        ({"source": [0], "target": [1]}, {"f0": [1.0, 2.0], "split": ["train", "dev"]}, "split values must be"),
        ({"source": [], "target": []}, {"f0": [1.0, 2.0]}, "the graph has no edges"),
    ],
)
def test_bad_tables_name_the_file(tmp_path: Path, edges, nodes, message):
    folder = write_table(tmp_path / "t", edges, nodes)
    with pytest.raises(DataError) as info:
        setup(folder)
    assert message in str(info.value) and str(folder) in str(info.value)


def test_empty_node_table_and_label_count_mismatch(tmp_path: Path):
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "edges.csv").write_text("source,target\n0,1\n")
    (folder / "nodes.csv").write_text("f0\n")
    with pytest.raises(DataError, match="node table is empty"):
        setup(folder)
    (folder / "nodes.csv").write_text("f0\n1.0\n2.0\n")
    (folder / "labels.csv").write_text("label\n0\n1\n1\n")
    with pytest.raises(DataError, match=re.escape("labels.csv: 3 labels for 2 nodes")):
        setup(folder)


def test_unknown_folder_and_feature_width_mismatch(tmp_path: Path, cora: Path):
    with pytest.raises(DataError, match="no graph found"):
        read_graph_source(tmp_path)
    dm = setup(cora)
    other = write_table(tmp_path / "t", {"source": [0], "target": [1]}, {"f0": [1.0, 2.0]})
    again = GraphDataModule(other, GraphMAEConfig())
    again.load_state_dict(dm.state_dict())
    with pytest.raises(DataError, match="1 node features, but the run was trained with 1433"):
        again.setup("predict")


def test_out_of_range_edges_in_a_pt_file(tmp_path: Path):
    torch.save(Data(x=torch.rand(3, 2), edge_index=torch.tensor([[0, 7], [1, 2]])), tmp_path / "g.pt")
    with pytest.raises(DataError, match=re.escape("g.pt: the graph has 1 edges whose node index is outside 0..2")):
        setup(tmp_path / "g.pt")


def test_neighbor_sampler_returns_real_edges_seeds_first_and_respects_fanout(cora: Path):
    g = read_graph_source(cora).graphs[0]
    sampler = NeighborSampler(g.edge_index, g.num_nodes, [3, 2])
    seeds = torch.tensor([5, 17, 300])
    nodes, local = sampler.sample(seeds)
    assert torch.equal(nodes[:3], seeds) and len(set(nodes.tolist())) == len(nodes)
    real = set(map(tuple, g.edge_index.t().tolist()))
    assert all((int(nodes[s]), int(nodes[d])) in real for s, d in local.t().tolist())
    indeg = torch.bincount(local[1], minlength=len(nodes))
    assert int(indeg[:3].max()) <= 3
    # a fanout above every degree gives each seed its complete neighbourhood
    full, local = NeighborSampler(g.edge_index, g.num_nodes, [1000]).sample(seeds)
    for i, seed in enumerate(seeds.tolist()):
        expected = set(g.edge_index[0][g.edge_index[1] == seed].tolist())
        assert {int(full[s]) for s, d in local.t().tolist() if d == i} == expected
    assert (sampler._local == -1).all(), "the sampler's scratch map must be reset"


def test_neighbor_mode_batches(cora: Path):
    dm = setup(cora, node_batching="neighbor", batch_size=128, num_neighbors=[5, 5, 5])
    batch = next(iter(dm.train_dataloader()))
    assert batch["id"].shape == (128,) and batch["x"].shape[0] > 128
    assert batch["label"].shape == (128,)
    ids = torch.cat([b["id"] for b in dm.predict_dataloader()])
    assert torch.equal(ids, torch.arange(2708))


def _write_ogb(root: Path, n: int = 40, seed: int = 0) -> Path:
    """An extracted ogbn-style folder: headerless gzipped CSVs, directed edges, one split scheme, a node mapping."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, n, 120)
    dst = (src + rng.integers(1, n, 120)) % n
    raw, split = root / "raw", root / "split" / "time"
    raw.mkdir(parents=True)
    split.mkdir(parents=True)
    (root / "mapping").mkdir()
    pd.DataFrame({"a": src, "b": dst}).to_csv(raw / "edge.csv.gz", header=False, index=False)
    pd.DataFrame(rng.normal(size=(n, 5)).astype(np.float32)).to_csv(raw / "node-feat.csv.gz", header=False, index=False)
    pd.DataFrame(rng.integers(0, 3, n)).to_csv(raw / "node-label.csv.gz", header=False, index=False)
    pd.DataFrame([n]).to_csv(raw / "num-node-list.csv.gz", header=False, index=False)
    order = rng.permutation(n)
    for name, part in (("train", order[:20]), ("valid", order[20:30]), ("test", order[30:])):
        pd.DataFrame(part).to_csv(split / f"{name}.csv.gz", header=False, index=False)
    pd.DataFrame({"node idx": range(n), "paper id": 9000 + np.arange(n)}).to_csv(
        root / "mapping" / "nodeidx2paperid.csv.gz", index=False
    )
    return root


def test_an_extracted_ogb_node_dataset_reads_without_the_ogb_package(tmp_path: Path):
    root = _write_ogb(tmp_path / "ogbn_toy")
    source = read_graph_source(root)
    g = source.graphs[0]
    assert source.kind == "ogb" and g.num_nodes == 40 and g.x.shape == (40, 5)
    edges = pd.read_csv(root / "raw" / "edge.csv.gz", header=None).to_numpy()
    pairs = set(map(tuple, g.edge_index.T.tolist()))
    assert all((a, b) in pairs and (b, a) in pairs for a, b in edges)  # made undirected
    assert sorted(pairs) == sorted({(a, b) for a, b in edges} | {(b, a) for a, b in edges})
    train = pd.read_csv(root / "split" / "time" / "train.csv.gz", header=None)[0].to_numpy()
    assert (g.split[train] == 0).all() and int((g.split == 1).sum()) == 10 and int((g.split == 2).sum()) == 10
    assert g.y.tolist() == pd.read_csv(root / "raw" / "node-label.csv.gz", header=None)[0].tolist()
    dm = setup(root)
    assert dm.provenance(np.array([0, 39])) == {"node_id": pytest.approx(np.array([9000, 9039]))}
    (root / "raw" / "node-label.csv.gz").unlink()
    pd.DataFrame(np.zeros((40, 2), int)).to_csv(root / "raw" / "node-label.csv.gz", header=False, index=False)
    with pytest.raises(DataError, match="2 labels per node"):
        read_graph_source(root)


def test_auto_node_batching_samples_neighbours_beyond_the_threshold(cora: Path, monkeypatch):
    assert GraphMAEConfig().node_batching == "auto" and setup(cora).node_batching == "full"
    monkeypatch.setattr("ssl_domains_graph.data.NEIGHBOR_THRESHOLD", 1000)  # Cora: 2,708 nodes
    dm = setup(cora, batch_size=64)
    assert dm.node_batching == "neighbor" and len(next(iter(dm.train_dataloader()))["id"]) == 64
