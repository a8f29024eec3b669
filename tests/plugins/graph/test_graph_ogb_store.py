"""The bounded-memory build of an OGB graph's store (ogbstore.py) equals parsing the graph whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from torch_geometric.utils import degree, remove_self_loops

from ssl_domains import DataError
from ssl_domains_graph import ogbstore
from ssl_domains_graph.formats import read_graph_source
from ssl_domains_graph.sampling import NeighborSampler
from ssl_domains_graph.store import cached_graph, text_graph_files


def _write_ogb(root: Path, n: int = 300, seed: int = 0, ids: str = "strings") -> Path:
    """An extracted ogbn-style folder whose edges repeat, point both ways, loop on a node and leave nodes out;
    heavy-tailed targets, so that one node's list outgrows a small bucket."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, n, 6 * n)
    dst = (n * rng.random(6 * n) ** 3).astype(np.int64)  # node 0 is a hub
    src, dst = np.concatenate([src, dst[:50], [7, 7, 11]]), np.concatenate([dst, src[:50], [7, 7, 12]])
    src[src == n - 1], dst[dst == n - 1] = 1, 1  # the last node: isolated
    raw, split = root / "raw", root / "split" / "sales_ranking"
    raw.mkdir(parents=True)
    split.mkdir(parents=True)
    (root / "mapping").mkdir()
    pd.DataFrame({"a": src, "b": dst}).to_csv(raw / "edge.csv.gz", header=False, index=False)
    x = rng.normal(size=(n, 7)).astype(np.float32)
    pd.DataFrame(x).to_csv(raw / "node-feat.csv.gz", header=False, index=False, float_format="%.9g")
    labels = rng.integers(0, 5, n).astype(float)
    labels[::9] = np.nan  # unlabelled nodes, as in papers100M
    pd.DataFrame(labels).to_csv(raw / "node-label.csv.gz", header=False, index=False)
    pd.DataFrame([n]).to_csv(raw / "num-node-list.csv.gz", header=False, index=False)
    order = rng.permutation(n)
    for name, part in (("train", order[:30]), ("valid", order[30:60]), ("test", order[60:])):
        pd.DataFrame(part).to_csv(split / f"{name}.csv.gz", header=False, index=False)
    values = [f"B{i:07d}" for i in range(n)] if ids == "strings" else list(9000 + np.arange(n))
    pd.DataFrame({"node idx": range(n), "id": values}).to_csv(root / "mapping" / "nodeidx2id.csv.gz", index=False)
    return root


def _stored(root: Path, folder: Path) -> dict[str, np.ndarray]:
    folder.mkdir()
    ogbstore.write_ogb_store(root, folder)
    assert not (folder / "build").exists()  # the build's scratch files are gone
    return {p.stem: np.load(p) for p in folder.glob("*.npy")}


@pytest.mark.parametrize("bucket", [64, 1 << 24])  # many buckets, a hub alone in one; and a single bucket
def test_the_streamed_store_equals_the_graph_parsed_whole(tmp_path: Path, monkeypatch, bucket: int):
    root = _write_ogb(tmp_path / "ogbn_toy")
    monkeypatch.setattr(ogbstore, "BUCKET_ENTRIES", bucket)
    monkeypatch.setattr(ogbstore, "READ_BLOCK", 4096)  # many CSV blocks
    monkeypatch.setattr(ogbstore, "_PAIRS", 100)
    got = _stored(root, tmp_path / "store")
    source = read_graph_source(root)
    g = source.graphs[0]
    rowptr, col = NeighborSampler.csr(remove_self_loops(g.edge_index)[0], g.num_nodes)
    want = {"edge_index": g.edge_index, "rowptr": rowptr, "col": col, "x": g.x, "y": g.y, "split": g.split,
            "degree": degree(g.edge_index[0], num_nodes=g.num_nodes).long()}  # fmt: skip
    for name, value in want.items():
        assert got[name].dtype == value.numpy().dtype, name
        np.testing.assert_array_equal(got[name], value.numpy(), err_msg=name)
    assert (got["y"] == -1).sum() == 34 and got["degree"][-1] == 0 and got["degree"][0] > 64
    assert got["node_ids"].dtype.kind == "U" and list(got["node_ids"][[0, 299]]) == list(source.node_ids[[0, 299]])


def test_numeric_node_ids_stay_integers_as_pandas_reads_them(tmp_path: Path):
    root = _write_ogb(tmp_path / "ogbn_toy", ids="integers")
    got = _stored(root, tmp_path / "store")
    assert got["node_ids"].dtype == np.int64
    np.testing.assert_array_equal(got["node_ids"], read_graph_source(root).node_ids)


@pytest.mark.parametrize(
    ("file", "lines", "message"),
    [("raw/edge.csv.gz", "3,300\n", r"edge\.csv\.gz: edges name nodes outside 0\.\.299"),
     ("raw/edge.csv.gz", "3,x\n", r"edge\.csv\.gz: cannot be read as OGB's CSV"),
     ("raw/node-feat.csv.gz", None,
      r"node-feat\.csv\.gz: the graph has NaN or inf features in 1 nodes \(first: node 5\)"),
     ("raw/node-label.csv.gz", "1,2\n", r"node-label\.csv\.gz: cannot be read|labels per node")],
)  # fmt: skip
def test_a_bad_file_is_named_and_leaves_no_store(
    tmp_path: Path, monkeypatch, file: str, lines: str | None, message: str
) -> None:
    monkeypatch.setenv("SSL_DOMAINS_CACHE", str(tmp_path / "cache"))
    root = _write_ogb(tmp_path / "ogbn_toy")
    path = root / file
    frame = pd.read_csv(path, header=None)
    if lines is None:
        frame.iloc[5, 3] = np.nan
        frame.to_csv(path, header=False, index=False)
    else:
        text = frame.to_csv(header=False, index=False) + lines
        pd.DataFrame([line.split(",") for line in text.splitlines()]).to_csv(path, header=False, index=False)
    with pytest.raises(DataError, match=message):
        cached_graph(root, text_graph_files(root))
    assert not list((tmp_path / "cache").rglob("*.npy"))  # nothing stored, not even in part
