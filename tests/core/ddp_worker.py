"""One training run for the DDP equivalence test (tests/core/test_ddp.py), launched directly or under ``torchrun``.

    python tests/core/ddp_worker.py PLUGIN DATA OUT --batch-size B --steps K               # one process
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/core/ddp_worker.py ... --batch-size B/2 --ddp

Trains through ``ssl_domains.run.train`` (the product path) and writes each rank's training losses to
``OUT/losses_rank{R}.json`` and the gradients it stepped with (after DDP's all-reduce, before the optimiser) to
``OUT/grads_rank{R}.safetensors`` (keys ``"<step>/<parameter>"``); rank 0 also writes the run's
``model.safetensors``.

Masks and views that a plugin draws on the device are independent per rank by design (each rank seeds its own
stream), so a 2-process run cannot draw the masks of a 1-process run. For T-JEPA the masks are therefore made a
function of the row ids here (``--id-masks``): what the test then compares is everything else that DDP touches,
namely the sharding of the sampler, the averaging of gradients, the EMA teacher's update on every rank, the loss
normalisation and the learning-rate schedule.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ssl_domains import registry
from ssl_domains.run import resolve_config, train

_CURRENT_IDS: dict[str, torch.Tensor] = {}


def _id_noise(ids: torch.Tensor, width: int, salt: float) -> torch.Tensor:
    """Uniform-looking noise ``[N, width]`` that depends only on the ids (same on any rank, in any batch)."""
    grid = ids.double()[:, None] * 12.9898 + torch.arange(width, device=ids.device, dtype=torch.double) * 78.233
    return torch.frac(torch.sin(grid + salt) * 43758.5453).abs().float()


def _tjepa_id_masks(batch_size: int, num_features: int, k_context: int, k_target: int, num_targets: int, device):
    ids = _CURRENT_IDS.get("id")
    if ids is None:  # a call outside training (the run's figure): the plugin's own random masks
        from ssl_domains_tabular.masking import context_and_targets

        return context_and_targets(batch_size, num_features, k_context, k_target, num_targets, device)
    context = _id_noise(ids, num_features, 0.0).argsort(dim=1)[:, :k_context]
    in_context = torch.zeros(batch_size, num_features, dtype=torch.bool, device=device)
    in_context.scatter_(1, context, True)
    noise = torch.stack([_id_noise(ids, num_features, 1.0 + t) for t in range(num_targets)], dim=1)
    noise = noise.masked_fill(in_context.unsqueeze(1), 2.0)
    return context, noise.argsort(dim=2)[:, :, :k_target]


def _recording(plugin: Any, losses: list[torch.Tensor]) -> Any:
    """The plugin, with an objective that records each training loss (and exposes the batch ids to the masks)."""
    inner_factory = plugin.objective

    class Recording:
        """The plugin's objective, recording each training loss; its other members (a figure's ``predict``) pass
        through."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def __call__(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
            _CURRENT_IDS["id"] = batch["id"]
            try:
                out = self.inner(model, batch)
            finally:
                _CURRENT_IDS.clear()
            if model.training:
                losses.append(out["loss"].detach().double())
            return out

    def objective(cfg: Any) -> Any:
        return Recording(inner_factory(cfg))

    plugin.objective = objective
    return plugin


def _record_gradients(grads: dict[str, torch.Tensor]) -> None:
    """Record every parameter's gradient at each optimiser step, as the optimiser sees it."""
    from ssl_domains.module import SSLModule

    def on_before_optimizer_step(self: SSLModule, optimizer: Any) -> None:
        for name, param in self.model.named_parameters():
            if param.grad is not None:
                grads[f"{self.global_step}/{name}"] = param.grad.detach().double().contiguous().clone()

    SSLModule.on_before_optimizer_step = on_before_optimizer_step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("plugin")
    parser.add_argument("data")
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--ddp", action="store_true")
    parser.add_argument("--id-masks", action="store_true")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()

    if args.id_masks:
        import ssl_domains_tabular.masking as masking
        import ssl_domains_tabular.objective as objective

        objective.context_and_targets = _tjepa_id_masks

        def fixed_sizes(num_features, context_share, target_share, generator=None):
            fixed = torch.Generator().manual_seed(0)  # the same sizes on every rank and at every step
            return masking.sample_set_sizes(num_features, context_share, target_share, generator=fixed)

        objective.sample_set_sizes = fixed_sizes

    losses: list[torch.Tensor] = []
    grads: dict[str, torch.Tensor] = {}
    _record_gradients(grads)
    plugin = _recording(registry.load(args.plugin), losses)
    section = plugin.name
    overrides = [
        *args.overrides,
        f"{section}.batch_size={args.batch_size}",
        f"trainer.max_steps={args.steps}",
        "trainer.accelerator=cpu",
        f"trainer.devices={2 if args.ddp else 1}",
        f"trainer.strategy={'ddp' if args.ddp else 'auto'}",
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1",
    ]
    cfg = resolve_config(plugin, args.data, [dict(plugin.example_overrides())], overrides, {"seed": 0})
    train(cfg, args.out / "run")
    rank = int(os.environ.get("RANK", 0))
    (args.out / f"losses_rank{rank}.json").write_text(json.dumps([float(v) for v in losses]))
    save_file(grads, str(args.out / f"grads_rank{rank}.safetensors"))


if __name__ == "__main__":
    sys.exit(main())
