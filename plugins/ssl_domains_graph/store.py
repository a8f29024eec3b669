"""A graph read from text (an extracted OGB dataset, or ``edges.csv`` with a node table), parsed once and kept as
arrays in the core's index cache, memory-mapped on every later run.

OGB's own loaders do the same: ``PygNodePropPredDataset`` parses ``raw/*.csv.gz`` once into ``processed/`` and
reloads that. Here nothing is written next to the data; the arrays go under ``$SSL_DOMAINS_CACHE``
(:func:`ssl_domains.indexcache.cached_array_folder`), keyed by every file's size and mtime, so an edited or
replaced file is parsed again. Parsing ogbn-products' 1.3 GB of gzipped CSV takes minutes; mapping the arrays
takes milliseconds. The store holds the graph as read (edges made undirected, validated) and its CSR of
in-neighbours without self-loops (:class:`.sampling.NeighborSampler`'s index), so neighbour sampling reads only
the rows and neighbour lists of each batch's subgraph, and the features are prepared per batch
(:meth:`.data.GraphDataModule.node_features`): the process does not hold the graph in its own memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.utils import degree, remove_self_loops

from ssl_domains.arrayfile import NpyRows, release_pages
from ssl_domains.indexcache import cached_array_folder

from .formats import GraphSource, is_ogb_dataset, is_text_graph, read_graph_source, validate_graph
from .ogbstore import write_ogb_store
from .sampling import NeighborSampler

STORE_VERSION = 2  # bump when a text graph is read differently: the key covers only the files


def text_graph_files(path: Path) -> list[Path] | None:
    """The files of a graph kept as text at ``path`` (what keys its store), or None for the other formats."""
    path = Path(path).resolve()  # the same folder reached another way keys the same store
    if not is_text_graph(path):
        return None
    return sorted(p for p in path.rglob("*") if p.is_file())


@dataclass
class StoreReads:
    """How a batch reads the store: the large arrays it gathers from by ``pread`` (:class:`NpyRows`: nothing
    mapped), and the mapped arrays whose touched pages it drops after each batch (:func:`release_pages`)."""

    x: NpyRows | None  # the feature matrix
    col: NpyRows  # the CSR's neighbour lists
    mapped: list[np.ndarray]

    def release(self) -> None:
        release_pages(self.mapped)


def cached_graph(path: Path, files: list[Path]) -> tuple[GraphSource, dict[str, torch.Tensor], StoreReads]:
    """The graph at ``path`` (validated when it was parsed) with memory-mapped tensors, its CSR (``rowptr``,
    ``col``) and ``degree`` (as :func:`torch_geometric.utils.degree` of ``edge_index[0]``), and how batches read
    it. An extracted OGB dataset is built in bounded memory (:mod:`.ogbstore`); an edge table is parsed whole."""

    def write(folder: Path) -> None:
        if is_ogb_dataset(path):
            write_ogb_store(path, folder)
            np.save(folder / "kind.npy", np.array("ogb"))
            return
        source = read_graph_source(path)
        g = source.graphs[0]
        validate_graph(g, source.origin)  # before anything is written: a bad file leaves no cache entry
        n = int(g.num_nodes)
        rowptr, col = NeighborSampler.csr(remove_self_loops(g.edge_index)[0], n)
        arrays = {"edge_index": g.edge_index, "rowptr": rowptr, "col": col,
                  "degree": degree(g.edge_index[0], num_nodes=n).long(), "x": g.x,
                  "y": getattr(g, "y", None), "split": getattr(g, "split", None)}  # fmt: skip
        for name, value in arrays.items():
            if value is not None:
                np.save(folder / f"{name}.npy", np.ascontiguousarray(value.numpy()))  # C order: rows are read
        if source.node_ids is not None:  # strings as fixed-width unicode, which maps (missing ids read "nan")
            ids = source.node_ids
            np.save(folder / "node_ids.npy", ids if ids.dtype != object else ids.astype(str))
        np.save(folder / "kind.npy", np.array(source.kind))

    arrays = cached_array_folder(Path(path).resolve(), {"graph": STORE_VERSION}, write, files=files, mmap_mode="c")
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items() if k not in ("node_ids", "kind")}
    n = len(tensors["rowptr"]) - 1
    g = Data(edge_index=tensors["edge_index"], num_nodes=n)
    for name in ("x", "y", "split"):
        if name in tensors:
            setattr(g, name, tensors[name])
    source = GraphSource([g], path, str(arrays["kind"]), arrays.get("node_ids"))
    folder = Path(arrays["rowptr"].filename).parent
    reads = StoreReads(NpyRows(folder / "x.npy") if "x" in arrays else None, NpyRows(folder / "col.npy"),
                       [v for k, v in arrays.items() if k != "kind"])  # fmt: skip
    return source, {k: tensors[k] for k in ("rowptr", "col", "degree")}, reads
