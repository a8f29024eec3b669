"""Readers for the graph formats GraphMAE accepts, and their validation.

Each reader returns a :class:`GraphSource`: one graph (node-level data) or a list of graphs (graph-level data),
never modified on disk (PyG datasets would write ``processed/`` next to ``raw/``; we read the raw files with
PyG's own parsers instead). Every problem is a :class:`~ssl_domains.DataError` that names the file and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset

from ssl_domains import DataError

PLANETOID_PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
SPLIT_CODES = {"train": 0, "val": 1, "valid": 1, "validation": 1, "test": 2}


@dataclass
class GraphSource:
    """Graphs read from ``origin``: ``graphs`` has one Data for node-level data, many for graph-level data."""

    graphs: list[Data]
    origin: Path
    kind: str  # planetoid | tu | pt | table
    node_ids: np.ndarray | None = None  # the node table's own node_id column, row-aligned with the nodes

    @property
    def is_collection(self) -> bool:
        return self.kind == "tu" or len(self.graphs) > 1


def read_graph_source(path: Path) -> GraphSource:
    """Detect the format of ``path`` and read it (see ``GraphMAEPlugin.data_formats``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if path.is_file():
        if path.suffix == ".pt":
            return GraphSource(_read_pt(path), path, "pt")
        raise DataError(f"{path}: a single file must be a .pt file; for CSV data pass the folder holding edges.csv")
    ogb = _ogb_edges(path)
    if ogb is not None:
        graph, node_ids = _read_ogb(path, ogb)
        return GraphSource([graph], path, "ogb", node_ids)
    for raw in (path / "raw", path):
        if list(raw.glob("ind.*.x")):
            return GraphSource([_read_planetoid(raw)], raw, "planetoid")
        tu = sorted(raw.glob("*_A.txt"))
        if tu:
            return GraphSource(_read_tu(raw, tu[0].name[: -len("_A.txt")]), raw, "tu")
    if (path / "edges.csv").is_file():
        graph, node_ids = _read_table(path)
        return GraphSource([graph], path, "table", node_ids)
    raise DataError(
        f"{path}: no graph found. Expected a Planetoid folder (raw/ind.NAME.x ...), a TU folder (raw/NAME_A.txt ...), "
        "an extracted OGB node dataset (ogbn_NAME/raw/edge.csv.gz ...), a .pt file, or a folder with edges.csv and "
        "nodes.csv/nodes.parquet"
    )


def is_text_graph(path: Path) -> bool:
    """Whether :func:`read_graph_source` reads ``path`` as one graph kept as text: an extracted OGB dataset, or
    ``edges.csv`` with a node table (and no Planetoid or TU files, which it would read first)."""
    if not path.is_dir():
        return False
    if _ogb_edges(path) is not None:
        return True
    binary = any(list(raw.glob("ind.*.x")) or list(raw.glob("*_A.txt")) for raw in (path / "raw", path))
    return not binary and (path / "edges.csv").is_file()


def is_ogb_dataset(path: Path) -> bool:
    """Whether ``path`` is an extracted OGB node dataset (``raw/edge.csv.gz``)."""
    return _ogb_edges(path) is not None


def _ogb_edges(path: Path) -> Path | None:
    """``raw/edge.csv.gz`` (or ``.csv``) of an extracted OGB node-property dataset (``ogbn_arxiv/``)."""
    return ogb_file(path / "raw", "edge")


def ogb_file(folder: Path, name: str) -> Path | None:
    """``folder/<name>.csv.gz`` (or ``.csv``) of an extracted OGB dataset, or None when it has no such file."""
    return next((p for p in (folder / f"{name}.csv.gz", folder / f"{name}.csv") if p.is_file()), None)


def ogb_split_scheme(root: Path) -> Path | None:
    """The dataset's one ``split/<scheme>/`` folder (train / valid / test node lists), if any."""
    schemes = sorted(p for p in (root / "split").glob("*") if p.is_dir()) if (root / "split").is_dir() else []
    return schemes[0] if schemes else None


def ogb_mapping(root: Path) -> Path | None:
    """``mapping/nodeidx2*.csv.gz``: each node's id in the source database (the ``node_id`` that ``embed`` writes)."""
    mapping = sorted((root / "mapping").glob("nodeidx2*.csv*")) if (root / "mapping").is_dir() else []
    return mapping[0] if mapping else None


def refuse_heterogeneous_ogb(root: Path) -> None:
    """A heterogeneous OGB graph (ogbn-mag) is a DataError: GraphMAE reads homogeneous graphs."""
    raw = root / "raw"
    if (raw / "edge_reltype.csv.gz").is_file() or (raw / "relations").is_dir():
        raise DataError(f"{root}: a heterogeneous OGB graph (ogbn-mag); GraphMAE reads homogeneous graphs only")


def _ogb_table(raw: Path, name: str, dtype: Any = None) -> Any:
    """``raw/<name>.csv.gz`` (headerless, as OGB ships them), or None when the dataset has no such file."""
    import pandas as pd

    path = ogb_file(raw, name)
    if path is None:
        return None
    try:
        return pd.read_csv(path, header=None, dtype=dtype).to_numpy()
    except Exception as exc:
        raise DataError(f"{path}: cannot be read as OGB's CSV ({type(exc).__name__}: {exc})") from None


def _read_ogb(root: Path, edges_path: Path) -> tuple[Data, np.ndarray | None]:
    """An OGB node-property dataset as extracted from its zip, read without the ``ogb`` package or a download:
    ``raw/edge.csv.gz`` (made undirected: GraphMAE's ``to_bidirected`` for ogbn-arxiv, OGB's inverse edges
    for ogbn-products), ``raw/node-feat.csv.gz``, ``raw/node-label.csv.gz``, the one ``split/<scheme>/``
    (train / valid / test node lists) and the ids of ``mapping/nodeidx2*.csv.gz``."""
    import pandas as pd
    from torch_geometric.utils import to_undirected

    raw = root / "raw"
    refuse_heterogeneous_ogb(root)
    edges = _ogb_table(raw, "edge", np.int64)
    if edges is None or edges.ndim != 2 or edges.shape[1] != 2 or len(edges) == 0:
        raise DataError(f"{edges_path}: needs one 'source,target' pair of node indices per line")
    features = _ogb_table(raw, "node-feat", np.float32)
    counts = _ogb_table(raw, "num-node-list", np.int64)
    n = int(counts[0, 0]) if counts is not None else len(features) if features is not None else int(edges.max()) + 1
    if edges.min() < 0 or edges.max() >= n:
        raise DataError(f"{edges_path}: edges name nodes outside 0..{n - 1}")
    data = Data(edge_index=to_undirected(torch.from_numpy(edges.T.copy()), num_nodes=n), num_nodes=n)
    if features is not None:
        if len(features) != n:
            raise DataError(f"{raw / 'node-feat.csv.gz'}: {len(features)} rows for {n} nodes")
        data.x = torch.from_numpy(features)
    labels = _ogb_table(raw, "node-label")
    if labels is not None:
        if labels.shape[1] != 1:
            raise DataError(
                f"{raw / 'node-label.csv.gz'}: {labels.shape[1]} labels per node (multi-label, as ogbn-proteins); "
                "the node probe needs one class per node"
            )
        data.y = torch.from_numpy(np.nan_to_num(labels[:, 0].astype(np.float64), nan=-1).astype(np.int64))
    scheme = ogb_split_scheme(root)
    if scheme is not None:
        split = np.full(n, -1, np.int64)
        for name, code in (("train", 0), ("valid", 1), ("test", 2)):
            nodes = _ogb_table(scheme, name, np.int64)
            if nodes is not None:
                split[nodes[:, 0]] = code
        data.split = torch.from_numpy(split)
    mapping = ogb_mapping(root)
    node_ids = pd.read_csv(mapping).iloc[:, 1].to_numpy() if mapping is not None else None
    return data, node_ids if node_ids is not None and len(node_ids) == n else None


def _read_planetoid(raw: Path) -> Data:
    prefix = sorted(raw.glob("ind.*.x"))[0].name.split(".")[1]
    missing = [p for p in PLANETOID_PARTS if not (raw / f"ind.{prefix}.{p}").is_file()]
    if missing:
        raise DataError(
            f"{raw}: Planetoid files missing for '{prefix}': {', '.join(f'ind.{prefix}.{m}' for m in missing)}"
        )
    from torch_geometric.io import read_planetoid_data

    try:
        data = read_planetoid_data(str(raw), prefix)
    except Exception as exc:
        raise DataError(
            f"{raw}: cannot parse the Planetoid files of '{prefix}' ({type(exc).__name__}: {exc}); "
            "are they the original pickles (they need scipy)?"
        ) from None
    data.split = _split_from_masks(data)
    return data


def _read_tu(raw: Path, name: str) -> list[Data]:
    from torch_geometric.io import read_tu_data

    try:
        data, slices, sizes = read_tu_data(str(raw), name)
    except Exception as exc:
        raise DataError(f"{raw}: cannot parse the TU files of '{name}' ({type(exc).__name__}: {exc})") from None
    dataset = InMemoryDataset()
    dataset.data, dataset.slices = data, slices
    graphs = []
    n_attr = int(sizes.get("num_node_attributes", 0))
    for i in range(len(dataset)):
        g = dataset[i]
        if g.x is not None and n_attr > 0:
            # as TUDataset(use_node_attr=False), what GraphMAE's reference loads: node labels, not attributes
            g.x = g.x[:, n_attr:] if g.x.shape[1] > n_attr else None
        graphs.append(Data(x=g.x, edge_index=g.edge_index, y=g.y, num_nodes=g.num_nodes))
    return graphs


def _pyg_safe_globals() -> list:
    """PyG's plain data-holder classes that a pickled Data references (nothing that runs code on load)."""
    from torch_geometric.data import storage
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr

    return [Data, DataEdgeAttr, DataTensorAttr, storage.GlobalStorage, storage.NodeStorage, storage.EdgeStorage]


def _read_pt(path: Path) -> list[Data]:
    try:
        with torch.serialization.safe_globals(_pyg_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(
            f"{path}: cannot be loaded safely ({type(exc).__name__}: {str(exc).splitlines()[0]}). Save a "
            "torch_geometric Data, a list of Data, or InMemoryDataset.save(...) output with torch.save"
        ) from None
    if isinstance(obj, Data):
        return [obj]
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(g, Data) for g in obj):
        return list(obj)
    if isinstance(obj, tuple) and len(obj) in (2, 3, 4) and isinstance(obj[0], (dict, Data)):
        # InMemoryDataset processed file: (data or data.to_dict(), slices[, sizes][, data_cls])
        cls = obj[-1] if isinstance(obj[-1], type) else Data
        dataset = InMemoryDataset()
        dataset.data = cls.from_dict(obj[0]) if isinstance(obj[0], dict) else obj[0]
        dataset.slices = obj[1]
        return [dataset[i] for i in range(len(dataset))] if obj[1] else [dataset.data]
    if isinstance(obj, dict) and "edge_index" in obj:
        return [Data(**obj)]
    raise DataError(f"{path}: holds a {type(obj).__name__}, not a torch_geometric Data, list of Data or dataset")


def _read_table(folder: Path) -> tuple[Data, np.ndarray | None]:
    import pandas as pd

    edges_path = folder / "edges.csv"
    nodes_path = next((p for p in (folder / "nodes.parquet", folder / "nodes.csv") if p.is_file()), None)
    if nodes_path is None:
        raise DataError(f"{folder}: edges.csv needs a node table, nodes.csv or nodes.parquet, beside it")
    edges = _read_frame(edges_path)
    nodes = _read_frame(nodes_path)
    if not {"source", "target"} <= set(edges.columns):
        raise DataError(f"{edges_path}: needs columns 'source' and 'target', found {list(edges.columns)}")
    if len(nodes) == 0:
        raise DataError(f"{nodes_path}: the node table is empty (an empty graph)")
    if len(edges) == 0:
        raise DataError(f"{edges_path}: the graph has no edges; GraphMAE reconstructs nodes from neighbours")
    if "node_id" in nodes:
        if nodes["node_id"].duplicated().any():
            raise DataError(f"{nodes_path}: node_id values must be unique")
        index = pd.Index(nodes["node_id"])
        src, dst = index.get_indexer(edges["source"]), index.get_indexer(edges["target"])
    else:
        src, dst = _as_index(edges["source"], edges_path), _as_index(edges["target"], edges_path)
    bad = (src < 0) | (dst < 0) | (src >= len(nodes)) | (dst >= len(nodes))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{edges_path}: {int(bad.sum())} edges point outside the {len(nodes)} nodes of {nodes_path.name} "
            f"(first: line {row + 2}, {edges['source'].iloc[row]} -> {edges['target'].iloc[row]}); "
            "edges must use node_id values, or 0-based row numbers when there is no node_id column"
        )
    reserved = {"node_id", "label", "split"}
    feature_cols = [c for c in nodes.columns if c not in reserved]
    non_numeric = [c for c in feature_cols if not pd.api.types.is_numeric_dtype(nodes[c])]
    if non_numeric:
        raise DataError(f"{nodes_path}: feature columns must be numeric; not numeric: {non_numeric[:5]}")
    data = Data(edge_index=torch.as_tensor(np.stack([src, dst]), dtype=torch.long), num_nodes=len(nodes))
    if feature_cols:
        data.x = torch.tensor(nodes[feature_cols].to_numpy(dtype=np.float32))
    labels = nodes.get("label", None)
    labels_path = folder / "labels.csv"
    if labels is None and labels_path.is_file():
        labels = _read_frame(labels_path).iloc[:, -1]
        if len(labels) != len(nodes):
            raise DataError(
                f"{labels_path}: {len(labels)} labels for {len(nodes)} nodes in {nodes_path.name}; "
                "give one label per node, in node order"
            )
    if labels is not None:
        codes = labels.astype("category").cat.codes if not pd.api.types.is_integer_dtype(labels) else labels
        data.y = torch.from_numpy(np.array(codes, dtype=np.int64))  # a copy: pandas may hand out read-only arrays
    if "split" in nodes:
        unknown = set(nodes["split"].dropna().astype(str).str.lower()) - set(SPLIT_CODES)
        if unknown:
            raise DataError(f"{nodes_path}: split values must be train/val/test, found {sorted(unknown)[:5]}")
        codes = nodes["split"].astype(str).str.lower().map(SPLIT_CODES).fillna(-1)
        data.split = torch.from_numpy(codes.to_numpy(dtype=np.int64, copy=True))
    return data, nodes["node_id"].to_numpy() if "node_id" in nodes else None


def _read_frame(path: Path):
    import pandas as pd

    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:
        raise DataError(f"{path}: cannot be read as {path.suffix[1:].upper()} ({type(exc).__name__}: {exc})") from None


def _as_index(column, path: Path) -> np.ndarray:
    import pandas as pd

    if not pd.api.types.is_integer_dtype(column):
        raise DataError(f"{path}: without a node_id column in the node table, source/target must be integer rows")
    return column.to_numpy(dtype=np.int64)


def _split_from_masks(data: Data) -> torch.Tensor:
    split = torch.full((data.num_nodes,), -1, dtype=torch.long)
    for code, name in enumerate(("train_mask", "val_mask", "test_mask")):
        if getattr(data, name, None) is not None:
            split[getattr(data, name)] = code
    return split


def validate_graph(g: Data, origin: Path, what: str = "the graph") -> None:
    """Raise a DataError naming ``origin`` for an empty graph, bad edge indices, NaN features or bad labels."""
    n = int(g.num_nodes or 0)
    if n == 0:
        raise DataError(f"{origin}: {what} has no nodes (an empty graph)")
    ei = g.edge_index
    if ei is None or ei.ndim != 2 or ei.shape[0] != 2:
        raise DataError(f"{origin}: {what} needs an edge_index of shape [2, num_edges]")
    if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= n):
        bad = int(((ei < 0) | (ei >= n)).any(0).sum())
        raise DataError(f"{origin}: {what} has {bad} edges whose node index is outside 0..{n - 1}")
    if g.x is not None:
        if g.x.shape[0] != n:
            raise DataError(f"{origin}: {what} has {g.x.shape[0]} feature rows for {n} nodes")
        rows = (~torch.isfinite(g.x)).any(1)
        if rows.any():
            raise DataError(
                f"{origin}: {what} has NaN or inf features in {int(rows.sum())} nodes "
                f"(first: node {int(rows.nonzero()[0])}); impute or remove them"
            )
    y = getattr(g, "y", None)
    if y is not None and y.ndim >= 1 and y.shape[0] not in (n, 1):
        raise DataError(f"{origin}: {what} has {y.shape[0]} labels for {n} nodes; give one label per node")
