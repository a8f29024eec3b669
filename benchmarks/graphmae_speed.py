"""Seconds per GraphMAE epoch on Cora: ours against the reference (THUDM/GraphMAE, branch pyg), same run.

Both models use the reference's Cora config (GAT, 512 hidden, 4 heads, 2 layers, mask 0.5, replace 0.05,
SCE alpha 3, Adam 1e-3 / 2e-4) on the same graph tensors. Epochs alternate in rounds between the two so
that both see the same machine load; the medians are reported. The reference is not part of this
repository; get it with

    git clone -b pyg https://github.com/THUDM/GraphMAE /tmp/graphmae_ref

    python benchmarks/graphmae_speed.py --root datasets --name Cora --reference /tmp/graphmae_ref

Without --reference only our figures are printed. ``--trainer-epochs N`` also times N epochs through the
full ``ssl-domains train`` path (Lightning loop, logging, checkpoints).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _graphmae_ref import reference_step

from _common import emit, environment


def time_epochs(step, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="datasets", help="folder holding NAME/raw/ (Planetoid layout)")
    parser.add_argument("--name", default="Cora")
    parser.add_argument("--reference", type=Path, help="checkout of THUDM/GraphMAE, branch pyg")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--epochs-per-round", type=int, default=5)
    parser.add_argument("--trainer-epochs", type=int, default=100)
    args = parser.parse_args()

    from ssl_domains import registry
    from ssl_domains.run import read_yaml, resolve_config, train

    torch.manual_seed(0)
    plugin = registry.load("graphmae")
    data = Path(args.root) / args.name
    if not data.exists():
        data = Path(args.root) / args.name.lower()
    cfg = resolve_config(plugin, data, [read_yaml("cora", plugin)])
    dm = plugin.datamodule(cfg.method, cfg.data)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    ours = plugin.model(cfg.method, dm).train()
    objective = plugin.objective(cfg.method)
    opt = torch.optim.Adam(ours.parameters(), lr=1e-3, weight_decay=2e-4)

    def our_step() -> None:
        loss = objective(ours, batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    steps = {"ours": our_step}
    if args.reference:
        steps["reference"] = reference_step(args.reference, cfg.method, batch, dm.num_features)
    for step in steps.values():  # warm-up
        time_epochs(step, 3)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name] += time_epochs(step, args.epochs_per_round)
    result = {"benchmark": "graphmae_speed", "dataset": args.name, **environment()}
    for name, ts in times.items():
        result[f"{name}_s_per_epoch"] = statistics.median(ts)
    if args.reference:
        result["speedup"] = result["reference_s_per_epoch"] / result["ours_s_per_epoch"]

    if args.trainer_epochs:
        with tempfile.TemporaryDirectory() as tmp:
            full = resolve_config(
                plugin,
                data,
                [read_yaml("cora", plugin)],
                ["trainer.progress_bar=false"],
                {"max_epochs": args.trainer_epochs},
            )
            t = time.perf_counter()
            train(full, Path(tmp) / "run")
            result["trainer_s_per_epoch"] = (time.perf_counter() - t) / args.trainer_epochs
            result["trainer_epochs"] = args.trainer_epochs
    emit(result)


if __name__ == "__main__":
    main()
