"""GraphMAE's objective: reconstruct masked node features, scored by the scaled cosine error."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ssl_domains.nn import global_mean

from .masking import drop_edges, mask_node_features


def scaled_cosine_error(x_hat: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-node scaled cosine error ``(1 - cos(x_hat_i, x_i)) ** alpha`` (Hou et al. 2022, eq. 2).

    ``alpha >= 1`` down-weights easy nodes (high similarity), as a focal loss does. Computed in float32 even
    under bf16 autocast, so the small differences near cos = 1 are not rounded away.
    """
    cos = (F.normalize(x_hat.float(), dim=-1) * F.normalize(x.float(), dim=-1)).sum(dim=-1)
    return (1.0 - cos).pow(alpha)


def sce_loss(x_hat: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """The SCE loss: the mean of :func:`scaled_cosine_error` over the given nodes."""
    return scaled_cosine_error(x_hat, x, alpha).mean()


class GraphMAEObjective:
    """Mask -> encode -> re-mask -> decode -> loss on the masked nodes (Hou et al. 2022, Fig. 2).

    In neighbour-sampled batches (seed nodes first) only masked *seed* nodes count: their sampled receptive
    field is complete, the outer nodes' is not. ``mask_rate`` of the nodes are masked, ``replace_rate`` of those
    get another node's features instead of [MASK] (§3.2); ``alpha_l`` is the SCE exponent γ (Eq. 2).
    """

    def __init__(
        self, *, mask_rate: float, replace_rate: float, alpha_l: float, loss_fn: Literal["sce", "mse"] = "sce",
        drop_edge_rate: float = 0.0,
    ) -> None:  # fmt: skip
        self.mask_rate, self.replace_rate, self.alpha_l = mask_rate, replace_rate, alpha_l
        self.loss_fn, self.drop_edge_rate = loss_fn, drop_edge_rate

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, edge_index = batch["x"], batch["edge_index"]
        masked_x, mask_nodes, keep_nodes = mask_node_features(
            x, model.enc_mask_token, self.mask_rate, self.replace_rate
        )
        edge_weight = drop_edges(edge_index, self.drop_edge_rate) if self.drop_edge_rate > 0 else None
        x_hat = model(masked_x, edge_index, mask_nodes, keep_nodes, edge_weight)
        target = x.index_select(0, mask_nodes)
        if self.loss_fn == "sce":
            per_node = scaled_cosine_error(x_hat, target, self.alpha_l)
        else:
            per_node = (x_hat.float() - target.float()).pow(2).mean(dim=-1)
        num_seeds = batch["id"].shape[0]
        if model.level == "node" and num_seeds < x.shape[0]:
            weight = (mask_nodes < num_seeds).float()
            loss = global_mean((per_node * weight).sum(), weight.sum())
        else:  # over the masked nodes of the global batch (a rank's own count would reweigh them under DDP)
            loss = global_mean(per_node.sum(), per_node.shape[0])
        return {"loss": loss}
