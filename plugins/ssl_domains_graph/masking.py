"""GraphMAE's feature masking with a learnable [MASK] token and random replacement (Hou et al. 2022, §3.2).

Everything is batched on the features' device: three ``randperm`` calls and indexed writes, no loop over nodes
or graphs, no host sync (all counts come from tensor shapes).
"""

from __future__ import annotations

import torch

from ssl_domains.nn import random_subset


def mask_node_features(
    x: torch.Tensor, mask_token: torch.Tensor, mask_rate: float, replace_rate: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask ``int(mask_rate * N)`` random nodes of ``x`` (``[N, F]``); return ``(masked_x, mask_nodes, keep_nodes)``.

    Of the masked nodes, ``int(replace_rate * num_mask)`` take the features of uniformly drawn nodes (noise), and
    the rest have their features replaced by the learnable ``mask_token`` (``[1, F]``). The loss is taken over
    all masked nodes.

    Deviation from the reference code, on purpose: ``edcoder.py`` rounds both shares down, so one or two
    masked nodes per step keep their own features (e.g. on Cora 1,353 of 1,354); and with a rounded noise count
    of 0 its slice ``perm[-0:]`` selects *every* masked node as noise. Here the token share is the exact
    complement of the noise share, as the paper defines it.
    """
    num_nodes = x.shape[0]
    num_mask = int(mask_rate * num_nodes)
    mask_nodes, keep_nodes = random_subset(num_nodes, num_mask, x.device)
    num_noise = int(replace_rate * num_mask)
    token_nodes = mask_nodes[num_noise:]  # mask_nodes is already a random order: its head can be the noise
    out = x.index_copy(0, token_nodes, mask_token.to(x.dtype).expand(len(token_nodes), -1))
    if num_noise > 0:
        noise_nodes = mask_nodes[:num_noise]
        sources = torch.randperm(num_nodes, device=x.device)[:num_noise]
        out = out.index_copy(0, noise_nodes, x.index_select(0, sources))
    return out, mask_nodes, keep_nodes


def drop_edges(edge_index: torch.Tensor, rate: float) -> torch.Tensor:
    """Per-edge keep weights (float ``[E]``): each non-self-loop edge is dropped with probability ``rate``.

    Returned as weights instead of a filtered ``edge_index`` so that the edge count stays fixed (no host sync);
    layers ignore dropped edges. Self-loops are always kept, as the reference re-adds them after dropout_edge.
    """
    keep = torch.rand(edge_index.shape[1], device=edge_index.device) >= rate
    keep |= edge_index[0] == edge_index[1]
    return keep.float()
