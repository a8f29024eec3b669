"""Neighbour sampling (GraphSAGE-style, Hamilton et al. 2017) for graphs that do not fit a full-batch step.

Pure torch on a CSR index, vectorised over the whole frontier: no per-node Python loop, no pyg-lib or
torch-sparse needed (their wheels are not on PyPI). Memory is the graph's CSR plus one int64 map of its nodes.
"""

from __future__ import annotations

import torch

from ssl_domains.arrayfile import NpyRows

__all__ = ["NeighborSampler"]


class NeighborSampler:
    """Samples, for a batch of seed nodes, up to ``fanouts[k]`` in-neighbours per node at hop ``k``.

    The returned subgraph lists the seeds first, so row ``i < len(seeds)`` of any node tensor is seed ``i``.
    Edges follow PyG's convention: ``edge_index[0]`` is the source (the neighbour), ``edge_index[1]`` the target.
    """

    def __init__(self, edge_index: torch.Tensor, num_nodes: int, fanouts: list[int]) -> None:
        self._use(*self.csr(edge_index, num_nodes), fanouts)

    @classmethod
    def from_csr(
        cls, rowptr: torch.Tensor, col: torch.Tensor, fanouts: list[int], col_rows: NpyRows | None = None
    ) -> NeighborSampler:
        """A sampler over a CSR built before (:meth:`csr`; memory-mapped from the graph store). With ``col_rows``
        (the same ``col`` in a file) each hop reads its frontier's neighbour lists, one read a node, instead of
        gathering from the map: the map's pages would stay in the process (see :class:`NpyRows`)."""
        sampler = cls.__new__(cls)
        sampler._use(rowptr, col, fanouts, col_rows)
        return sampler

    def _use(
        self, rowptr: torch.Tensor, col: torch.Tensor, fanouts: list[int], col_rows: NpyRows | None = None
    ) -> None:
        self.rowptr, self.col, self.fanouts, self.col_rows = rowptr, col, list(fanouts), col_rows
        self.num_nodes = len(rowptr) - 1
        self._local = torch.full((self.num_nodes,), -1, dtype=torch.long)  # global -> local id, reset after use

    @staticmethod
    def csr(edge_index: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rowptr, col)``: node ``v``'s in-neighbours (sources of edges into ``v``) are
        ``col[rowptr[v]:rowptr[v + 1]]``, in their order in ``edge_index``."""
        src, dst = edge_index
        order = torch.argsort(dst, stable=True)
        rowptr = torch.zeros(num_nodes + 1, dtype=torch.long)
        rowptr[1:] = torch.bincount(dst, minlength=num_nodes).cumsum(0)
        return rowptr, src[order].contiguous()

    def _sample_hop(
        self, frontier: torch.Tensor, fanout: int, gen: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        start, deg = self.rowptr[frontier], self.rowptr[frontier + 1] - self.rowptr[frontier]
        owner = torch.repeat_interleave(torch.arange(len(frontier)), deg)
        offset = torch.arange(int(deg.sum())) - torch.repeat_interleave(deg.cumsum(0) - deg, deg)
        if fanout >= 0:
            # keep a uniform random subset of size min(deg, fanout) per node: rank random keys within each node
            keys = owner.double() + torch.rand(len(owner), generator=gen, dtype=torch.double) * 0.999
            order = torch.argsort(keys)
            rank = torch.empty_like(order)
            rank[order] = offset  # offsets enumerate 0..deg-1 within each node, in sorted-key order
            keep = rank < fanout
            owner, offset = owner[keep], offset[keep]
        if self.col_rows is not None:  # the frontier's lists, read whole; then the same picks within them
            lists = torch.from_numpy(self.col_rows.runs(start.numpy(), deg.numpy()))
            neighbors = lists[(deg.cumsum(0) - deg)[owner] + offset]
        else:
            neighbors = self.col[start[owner] + offset]
        return neighbors, frontier[owner]

    def sample(
        self, seeds: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(nodes, edge_index)``: global ids of the subgraph's nodes (seeds first) and local edges."""
        nodes = [seeds]
        self._local[seeds] = torch.arange(len(seeds))
        count = len(seeds)
        frontier = seeds
        edges_src, edges_dst = [], []
        for fanout in self.fanouts:
            if len(frontier) == 0:
                break
            src, dst = self._sample_hop(frontier, fanout, generator)
            new = torch.unique(src[self._local[src] < 0])
            self._local[new] = torch.arange(count, count + len(new))
            count += len(new)
            nodes.append(new)
            edges_src.append(self._local[src])
            edges_dst.append(self._local[dst])
            frontier = new
        all_nodes = torch.cat(nodes)
        self._local[all_nodes] = -1
        if edges_src:
            edge_index = torch.stack([torch.cat(edges_src), torch.cat(edges_dst)])
        else:
            edge_index = torch.empty(2, 0, dtype=torch.long)
        return all_nodes, edge_index
