"""GraphMAE on a generated graph with millions of edges: neighbour-sampled mini-batches in bounded memory.

    python benchmarks/graphmae_large.py --nodes 300000 --avg-degree 8

Generates a stochastic-block-model-like graph (each node draws ``avg_degree / 2`` partners, 80% inside its own
community, then edges are symmetrised), community-dependent node features, labels and a 10/10/80 split;
saves it as a torch_geometric ``Data`` .pt file; pretrains GraphMAE through ``ssl_domains.run.train`` in
``node_batching=neighbor`` mode; embeds every node through the same sampler; and runs the node probe.
Reports edges, seed nodes per second during training, peak resident memory of the whole process (data
generation included), and the probe accuracy against the raw features' accuracy.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import emit, environment, peak_rss_gb


def generate_graph(nodes: int, avg_degree: int, features: int, classes: int, seed: int):
    from torch_geometric.data import Data
    from torch_geometric.utils import coalesce, to_undirected

    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (nodes,), generator=gen)
    by_class = torch.argsort(labels)
    starts = torch.searchsorted(labels[by_class], torch.arange(classes))
    sizes = torch.bincount(labels, minlength=classes)
    per_node = max(avg_degree // 2, 1)
    src = torch.arange(nodes).repeat_interleave(per_node)
    inside = torch.rand(len(src), generator=gen) < 0.8
    own = labels[src]
    pick = starts[own] + (torch.rand(len(src), generator=gen) * sizes[own]).long()
    dst = torch.where(inside, by_class[pick], torch.randint(0, nodes, (len(src),), generator=gen))
    edge_index = coalesce(to_undirected(torch.stack([src, dst])), num_nodes=nodes)
    edge_index = edge_index[:, edge_index[0] != edge_index[1]]
    centres = torch.randn(classes, features, generator=gen)
    # weak class signal in the features: neighbourhoods (80% same-community) must carry the rest
    x = centres[labels] * 0.15 + torch.randn(nodes, features, generator=gen)
    split = torch.from_numpy(np.random.default_rng(seed).choice(3, nodes, p=[0.1, 0.1, 0.8]))
    return Data(x=x, edge_index=edge_index, y=labels, num_nodes=nodes, split=split)


def time_steps(plugin, cfg, steps: int) -> float:
    """Optimiser steps per second over the neighbour loader (after 3 warm-up steps): sampling, masking,
    forward, backward and Adam, as in training, without the trainer's fixed start-up cost."""
    dm = plugin.datamodule(cfg.method, cfg.data)
    dm.setup("fit")
    model = plugin.model(cfg.method, dm).train()
    objective = plugin.objective(cfg.method)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    batches = iter(dm.train_dataloader())
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        loss = objective(model, next(batches))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=300_000)
    parser.add_argument("--avg-degree", type=int, default=8)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--fanouts", default="10,5,5", help="neighbours per hop: 2 encoder layers + decoder")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit-batches", type=int, default=0, help="train on this many batches per epoch (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timed-steps", type=int, default=30)
    args = parser.parse_args()

    from ssl_domains import registry
    from ssl_domains.run import load_run, resolve_config, train
    from ssl_domains_graph.evaluation import node_linear_probe

    t0 = time.perf_counter()
    graph = generate_graph(args.nodes, args.avg_degree, args.features, args.classes, args.seed)
    num_edges = int(graph.edge_index.shape[1])
    plugin = registry.load("graphmae")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "graph.pt"
        torch.save(graph, data)
        gen_seconds = time.perf_counter() - t0
        overrides = [
            "trainer.progress_bar=false",
            "trainer.log_every_n_steps=20",
            "graphmae.node_batching=neighbor",
            f"graphmae.batch_size={args.batch_size}",
            f"graphmae.num_neighbors=[{args.fanouts}]",
            f"graphmae.num_hidden={args.hidden}",
            "graphmae.feature_norm=standardize",
            "graphmae.replace_rate=0.0",
            "optim.weight_decay=0.0",
            "graphmae.max_epoch_f=200",
        ]
        if args.limit_batches:
            overrides.append(f"trainer.limit_train_batches={args.limit_batches}")
        cfg = resolve_config(plugin, data, [], overrides, {"max_epochs": args.epochs, "seed": args.seed})
        steps_per_s = time_steps(plugin, cfg, steps=args.timed_steps)
        run_dir = Path(tmp) / "run"
        start = time.perf_counter()
        train(cfg, run_dir)
        train_seconds = time.perf_counter() - start
        run = load_run(run_dir)
        start = time.perf_counter()
        metrics = plugin.evaluate(run.model, run.datamodule, run.config.method, "cpu") or {}
        embed_seconds = time.perf_counter() - start
    raw = node_linear_probe(graph.x.numpy(), graph.y.numpy(), graph.split.numpy(), 0.01, 1e-4, 200)
    emit(
        {
            "benchmark": "graphmae_large",
            "nodes": args.nodes,
            "edges": num_edges,
            "features": args.features,
            "fanouts": args.fanouts,
            "batch_size": args.batch_size,
            "hidden": args.hidden,
            "epochs": args.epochs,
            "train_nodes_per_s": steps_per_s * args.batch_size,
            "train_steps_per_s": steps_per_s,
            "end_to_end_train_seconds": train_seconds,
            "limit_batches": args.limit_batches,
            "generate_seconds": gen_seconds,
            "embed_and_probe_seconds": embed_seconds,
            "probe_test_acc": metrics.get("test_acc"),
            "raw_features_test_acc": raw["test_acc"],
            "peak_rss_gb": peak_rss_gb(),
            "memory_bar_gb": 6.0,
            **environment(),
        }
    )


if __name__ == "__main__":
    main()
