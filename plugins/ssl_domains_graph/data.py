"""GraphMAE data: feature preparation and the LightningDataModule yielding dict batches.

Batches carry ``x`` (float32 ``[N, F]``), ``edge_index`` (int64 ``[2, E]``, PyG convention: row 0 = source),
``batch`` (int64 ``[N]``, the graph of each node), ``id`` (the items ``embed`` returns: nodes, or graphs) and,
when known, ``label`` and ``split``. Node-level neighbour batches list the seed nodes first; ``id`` holds their
global ids, so ``len(id)`` seeds lead the node tensors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch_geometric.data import Batch, Data
from torch_geometric.utils import add_self_loops, degree, remove_self_loops

from ssl_domains import DataError
from ssl_domains.data import eval_loader, train_loader
from ssl_domains.datamodule import FittedDataModule

from .formats import GraphSource, read_graph_source, validate_graph
from .plugin import GraphMAEConfig
from .sampling import NeighborSampler
from .store import StoreReads, cached_graph, text_graph_files

_FIT_BLOCK = 65_536  # rows read at a time when the statistics of a stored graph are fitted
log = logging.getLogger(__name__)
NEIGHBOR_THRESHOLD = 500_000  # node_batching auto: sampled subgraphs beyond this many nodes (ogbn-products: 2.4M)


def _with_self_loops(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    return add_self_loops(remove_self_loops(edge_index)[0], num_nodes=num_nodes)[0]


def _row_normalize(x: torch.Tensor, low: torch.Tensor | None = None) -> torch.Tensor:
    # torch_geometric.transforms.NormalizeFeatures, which GraphMAE applies to Planetoid data: the matrix's minimum
    # (``low``, for rows of a larger matrix) is subtracted, then each row divided by its sum
    x = x - (x.min() if low is None else low)
    return x / x.sum(dim=-1, keepdim=True).clamp(min=1.0)


class _Single(Dataset):
    """One prebuilt batch (the whole graph); one step per epoch, as in full-batch GraphMAE."""

    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.batch


class _Indices(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class GraphDataModule(FittedDataModule[GraphMAEConfig]):
    """Reads any accepted graph format; serves full graphs, neighbour-sampled subgraphs or graph mini-batches."""

    def input_spec(self) -> dict[str, Any]:
        """The node features the encoder reads: width, source, normalisation (with its statistics) and edges."""
        norm: Any = {"row": "each node's features divided by their sum (torch_geometric NormalizeFeatures)",
                     "none": "none"}.get(self.cfg.feature_norm)  # fmt: skip
        if norm is None:
            norm = {"standardize": "(x - mean) / std", "mean": self.fitted["mean"].tolist(),
                    "std": self.fitted["std"].tolist()}  # fmt: skip
        width = self.fitted.get("degree_width")
        return {
            "level": self.level,
            "num_node_features": self.num_features,
            "node_features": f"one-hot node degree, degrees >= {width - 1} in the last slot"
            if width is not None
            else "the graph's own node features (PyG Data.x)",
            "feature_norm": norm,
            "edges": "self-loops removed, then one per node added" if self.cfg.add_self_loops else "as given",
        }

    @property
    def num_features(self) -> int:
        return int(self.fitted["num_features"])

    @property
    def level(self) -> str:
        return str(self.fitted["level"])

    def read(self, stage: str | None) -> None:
        files = text_graph_files(self.data)
        csr: dict[str, torch.Tensor] | None = None
        self._reads: StoreReads | None = None  # how batches read the store (pread, and maps released)
        if files is not None:  # a graph kept as text: parsed once, then memory-mapped from the cache (store.py)
            try:
                source, csr, self._reads = cached_graph(self.data, files)
            except OSError as exc:  # a cache that cannot be written (read-only, full): the graph in memory
                log.warning("%s: the graph store cannot be written (%s); reading the graph into memory", self.data, exc)
        if csr is None:
            source = read_graph_source(self.data)
        self.node_batching = "full"  # resolved below for one graph
        auto = "graph" if source.is_collection else "node"
        level = self.fit("level", lambda: auto if self.cfg.level == "auto" else self.cfg.level)
        if level == "node" and len(source.graphs) != 1:
            raise DataError(
                f"{source.origin}: node-level GraphMAE needs one graph, found {len(source.graphs)}; "
                "set graphmae.level=graph for a collection of graphs"
            )
        if csr is None:  # a stored graph was validated before it was stored
            for i, g in enumerate(source.graphs):
                validate_graph(g, source.origin, "the graph" if len(source.graphs) == 1 else f"graph {i}")
        if level == "node":
            self.node_batching = self.cfg.node_batching
            if self.node_batching == "auto":  # a whole large graph per step outgrows a GPU (and its activations)
                self.node_batching = "neighbor" if source.graphs[0].num_nodes > NEIGHBOR_THRESHOLD else "full"
        # a stored graph sampled by neighbours stays mapped: each batch reads and prepares its subgraph's rows
        self.lazy = csr is not None and level == "node" and self.node_batching == "neighbor"
        self.graphs = self._prepare(source, csr)
        self.node_ids = source.node_ids
        if level == "node":
            g = self.graphs[0]
            if g.edge_index.shape[1] == 0:
                raise DataError(f"{source.origin}: the graph has no edges; GraphMAE reconstructs nodes from neighbours")
            if self.node_batching == "full":
                self.full_batch = self._node_batch(g)
            elif csr is not None:
                col_rows = self._reads.col if self._reads is not None else None
                self.sampler = NeighborSampler.from_csr(csr["rowptr"], csr["col"], self.cfg.num_neighbors, col_rows)
            else:
                edges = remove_self_loops(g.edge_index)[0]
                self.sampler = NeighborSampler(edges, g.num_nodes, self.cfg.num_neighbors)

    def provenance(self, ids: np.ndarray) -> dict[str, Any]:
        """The node table's ``node_id`` of each embedded node, when it has one (ids are rows of the table)."""
        if self.level == "node" and self.node_ids is not None:
            return {"node_id": self.node_ids[ids]}
        return {}

    def _prepare(self, source: GraphSource, csr: dict[str, torch.Tensor] | None) -> list[Data]:
        cfg, graphs = self.cfg, source.graphs
        use_degree = cfg.degree_features or any(g.x is None for g in graphs)
        if use_degree:
            # one-hot degree, capped (reference data_util.py, MAX_DEGREES = 400); width fixed by the training data
            degs = [csr["degree"]] if csr is not None else [degree(g.edge_index[0], num_nodes=g.num_nodes).long()
                                                             for g in graphs]  # fmt: skip
            self.fit(
                "degree_width", lambda: min(max(int(d.max()) if d.numel() else 0 for d in degs), cfg.max_degree) + 1
            )
        if self.lazy:  # node level, one graph: statistics in one pass over blocks of rows, features per batch
            g = graphs[0]
            self._check_width(source, self.fitted["degree_width"] if use_degree else g.x.shape[1])
            out = Data(x=g.x, edge_index=g.edge_index, num_nodes=g.num_nodes, gid=torch.tensor([0]))
            if use_degree:
                out.node_degree = degs[0]
            for name in ("y", "split"):
                if getattr(g, name, None) is not None:
                    setattr(out, name, getattr(g, name).view(-1))
            self._fit_streaming(out)
            return [out]
        xs = [self._one_hot_degree(d) for d in degs] if use_degree else [g.x.float() for g in graphs]
        if cfg.feature_norm == "row":
            xs = [_row_normalize(x) for x in xs]
        elif cfg.feature_norm == "standardize":
            if "mean" not in self.fitted:
                stacked = torch.cat(xs)
                self.fitted["mean"], self.fitted["std"] = stacked.mean(0), stacked.std(0).clamp_min(1e-6)
            xs = [(x - self.fitted["mean"]) / self.fitted["std"] for x in xs]
        self._check_width(source, xs[0].shape[1])
        out = []
        for i, (g, x) in enumerate(zip(graphs, xs, strict=False)):
            ei = _with_self_loops(g.edge_index, g.num_nodes) if cfg.add_self_loops else g.edge_index
            d = Data(x=x.contiguous(), edge_index=ei, num_nodes=g.num_nodes, gid=torch.tensor([i]))
            if getattr(g, "y", None) is not None:
                d.y = g.y.view(-1).long()
            if getattr(g, "split", None) is not None:
                d.split = g.split
            out.append(d)
        return out

    def _check_width(self, source: GraphSource, width: int) -> None:
        expected = self.fitted.setdefault("num_features", width)
        if width != expected:
            raise DataError(f"{source.origin}: {width} node features, but the run was trained with {expected}")

    def _one_hot_degree(self, degrees: torch.Tensor) -> torch.Tensor:
        width = self.fitted["degree_width"]
        return torch.nn.functional.one_hot(degrees.clamp(max=width - 1), width).float()

    def _raw_features(self, g: Data, nodes: torch.Tensor) -> torch.Tensor:
        if getattr(g, "node_degree", None) is not None:
            return self._one_hot_degree(g.node_degree[nodes])
        return self._feature_rows(g, nodes).float()

    def _feature_rows(self, g: Data, nodes: torch.Tensor) -> torch.Tensor:
        """``g.x[nodes]``; from a store, read (one read per run of consecutive nodes), not gathered from its map."""
        if self._reads is not None and self._reads.x is not None:
            return torch.from_numpy(self._reads.x.take(nodes.numpy()))
        return g.x[nodes]

    def _fit_streaming(self, g: Data) -> None:
        """What ``feature_norm`` needs of the whole graph, in one pass over blocks of rows: this graph's minimum
        for ``row`` (NormalizeFeatures subtracts the matrix's minimum, per graph, as the in-memory path does),
        the fitted column mean and (unbiased) standard deviation for ``standardize``, summed in float64 about
        the first block's mean. One-hot degrees are counted instead (a one-hot column's sum is its square's)."""
        norm, n = self.cfg.feature_norm, int(g.num_nodes)
        if norm == "none" or (norm == "standardize" and "mean" in self.fitted):
            return
        if getattr(g, "node_degree", None) is not None:
            width = self.fitted["degree_width"]
            counts = torch.bincount(g.node_degree.clamp(max=width - 1), minlength=width).double()
            low = torch.tensor(0.0 if bool((counts < n).any()) else 1.0, dtype=torch.float64)
            shift, total, squares = 0.0, counts, counts
        else:
            low, shift, total, squares = None, None, 0.0, 0.0
            for start in range(0, n, _FIT_BLOCK):
                x = self._feature_rows(g, torch.arange(start, min(start + _FIT_BLOCK, n))).double()
                shift = x.mean(0) if shift is None else shift
                low = x.min() if low is None else torch.minimum(low, x.min())
                total, squares = total + (x - shift).sum(0), squares + ((x - shift) ** 2).sum(0)
        if norm == "row":
            self._low = low.float()
            return
        mean = total / n
        var = (squares - n * mean * mean) / max(n - 1, 1)
        self.fitted["mean"] = (mean + shift).float()
        self.fitted["std"] = var.clamp_min(0).sqrt().float().clamp_min(1e-6)

    def node_features(self, g: Data, nodes: torch.Tensor) -> torch.Tensor:
        """The encoder's input rows of ``nodes``: the graph's features (or one-hot degree), then ``feature_norm``
        with the statistics of the whole graph; the same rows as preparing the whole matrix first."""
        if not self.lazy:
            return g.x[nodes]
        x = self._raw_features(g, nodes)
        if self.cfg.feature_norm == "row":
            return _row_normalize(x, self._low)
        if self.cfg.feature_norm == "standardize":
            return (x - self.fitted["mean"]) / self.fitted["std"]
        return x

    @staticmethod
    def _node_batch(g: Data) -> dict[str, torch.Tensor]:
        batch = {
            "x": g.x,
            "edge_index": g.edge_index,
            "batch": torch.zeros(g.num_nodes, dtype=torch.long),
            "id": torch.arange(g.num_nodes),
        }
        if getattr(g, "y", None) is not None and g.y.numel() == g.num_nodes:
            batch["label"] = g.y
        if getattr(g, "split", None) is not None:
            batch["split"] = g.split
        return batch

    def _graph_collate(self, items: list[int]) -> dict[str, torch.Tensor]:
        b = Batch.from_data_list([self.graphs[i] for i in items])
        out = {"x": b.x, "edge_index": b.edge_index, "batch": b.batch, "id": b.gid.view(-1)}
        if getattr(b, "y", None) is not None:
            out["label"] = b.y.view(-1)
        return out

    def _neighbor_collate(self, seeds: list[int]) -> dict[str, torch.Tensor]:
        g = self.graphs[0]
        nodes, edge_index = self.sampler.sample(torch.as_tensor(seeds, dtype=torch.long))
        edge_index = add_self_loops(edge_index, num_nodes=len(nodes))[0]
        out = {
            "x": self.node_features(g, nodes),
            "edge_index": edge_index,
            "batch": torch.zeros(len(nodes), dtype=torch.long),
            "id": nodes[: len(seeds)],
        }
        if getattr(g, "y", None) is not None:
            out["label"] = g.y[nodes[: len(seeds)]]
        if getattr(g, "split", None) is not None:
            out["split"] = g.split[nodes[: len(seeds)]]
        if self._reads is not None:  # the pages of the store's maps (offsets, labels) this batch touched leave the
            self._reads.release()  # process (they stay in the page cache): a worker does not grow toward the files
        return out

    def _loader(self, train: bool) -> DataLoader:
        cfg = self.cfg
        if self.level == "graph":
            items = _Indices(len(self.graphs))
            if train:
                return train_loader(
                    items,
                    batch_size=cfg.batch_size,
                    collate_fn=self._graph_collate,
                    num_workers=cfg.num_workers,
                    shuffle=cfg.shuffle,
                )
            return eval_loader(
                items, batch_size=cfg.batch_size, collate_fn=self._graph_collate, num_workers=cfg.num_workers
            )
        if self.node_batching == "neighbor":
            items = _Indices(self.graphs[0].num_nodes)
            if train:
                return train_loader(
                    items, batch_size=cfg.batch_size, collate_fn=self._neighbor_collate, num_workers=cfg.num_workers
                )
            return eval_loader(
                items, batch_size=cfg.batch_size, collate_fn=self._neighbor_collate, num_workers=cfg.num_workers
            )
        return DataLoader(_Single(self.full_batch), batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader(train=True)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(train=False)

    def sample_batches(self, max_items: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
        """Predict batches covering at most ``max_items`` random items (for figures on large graphs)."""
        if self.level == "graph" or self.node_batching == "full":
            return list(self.predict_dataloader())
        n = self.graphs[0].num_nodes
        ids = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_items].sort().values
        return [self._neighbor_collate(chunk.tolist()) for chunk in ids.split(self.cfg.batch_size)]


def write_example_graph(root: Path, nodes_per_class: int = 30, classes: int = 3, features: int = 16) -> Path:
    """A small stochastic-block-model graph in the edge-list CSV format, with labels and a split."""
    import pandas as pd

    rng = np.random.default_rng(0)
    n = nodes_per_class * classes
    labels = np.repeat(np.arange(classes), nodes_per_class)
    same = labels[:, None] == labels[None, :]
    adj = np.triu(rng.random((n, n)) < np.where(same, 0.25, 0.02), k=1)
    src, dst = np.nonzero(adj | adj.T)
    centres = rng.random((classes, features)) * 2
    x = np.clip(centres[labels] + rng.normal(0, 0.3, (n, features)), 0, None)
    out = Path(root) / "sbm_graph"
    out.mkdir(parents=True, exist_ok=True)
    node_id = np.array([f"node{i:05d}" for i in range(n)])  # the user's own ids: edges name nodes by them
    pd.DataFrame({"source": node_id[src], "target": node_id[dst]}).to_csv(out / "edges.csv", index=False)
    table = pd.DataFrame(x, columns=[f"f{i}" for i in range(features)])
    table.insert(0, "node_id", node_id)
    table["label"] = labels
    table["split"] = np.array(["train", "val", "test"])[rng.integers(0, 3, n)]
    table.to_csv(out / "nodes.csv", index=False)
    return out
