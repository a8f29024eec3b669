"""Losses under DDP: on 2 gloo processes the DDP gradient (per-rank loss, gradients averaged over ranks) equals
the single-process gradient on the global batch.

- InfoNCE with negatives gathered across ranks (:func:`ssl_domains.nn.info_nce`), and known values on one process;
- means over a count that differs between ranks (:func:`ssl_domains.nn.global_mean`): TERA's L1 and SSAST's
  InfoNCE + MSE on clips of different lengths, with the masks held fixed (drawn once for the global batch).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ssl_domains.nn import global_mean, info_nce

GLOBAL, DIM = 8, 5


def test_info_nce_known_values():
    # orthogonal unit keys, each query equal to its key: logits 1/t on the diagonal, 0 elsewhere
    eye = torch.eye(4)
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 3))
    assert float(info_nce(eye, eye, t)) == pytest.approx(expected, rel=1e-6)
    # scale does not matter (the rows are normalised), and the loss is symmetric in this case
    assert float(info_nce(3 * eye, eye, t)) == pytest.approx(expected, rel=1e-6)


def _setup() -> tuple[torch.nn.Linear, torch.nn.Linear, torch.Tensor]:
    torch.manual_seed(0)
    return torch.nn.Linear(DIM, 4), torch.nn.Linear(DIM, 4), torch.randn(GLOBAL, DIM)


def _grads(a: torch.nn.Linear, b: torch.nn.Linear) -> list[torch.Tensor]:
    return [p.grad.clone() for p in (*a.parameters(), *b.parameters())]


def _worker(rank: int, world: int, store: str, gathered: bool, out: dict) -> None:
    # a file store: no TCP port to pick and race for
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    a, b, x = _setup()
    local = x.chunk(world)[rank]
    if gathered:
        loss = info_nce(a(local), b(local), 0.1)
    else:  # the usual mistake: negatives from a gradient-free all_gather
        keys = [torch.empty(len(local), 4) for _ in range(world)]
        dist.all_gather(keys, b(local).detach())
        keys[rank] = b(local)
        q = torch.nn.functional.normalize(a(local), dim=-1)
        k = torch.nn.functional.normalize(torch.cat(keys), dim=-1)
        loss = torch.nn.functional.cross_entropy(q @ k.T / 0.1, torch.arange(len(local)) + rank * len(local))
    loss.backward()
    for p in (*a.parameters(), *b.parameters()):  # what DDP does: average the gradients over ranks
        dist.all_reduce(p.grad)
        p.grad /= world
    if rank == 0:
        out["grads"] = _grads(a, b)
    dist.barrier()  # no rank leaves while another still uses gloo
    # leave without running destructors: tearing gloo down aborted a rank now and then in CI ("terminate called
    # without an active exception", about 1 run in 5), after every result had been handed back
    os._exit(0)


def _ddp_grads(gathered: bool, tmp_path: Path) -> list[torch.Tensor]:
    store = tmp_path / f"store-{gathered}"
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, str(store), gathered, out), nprocs=2, join=True)
    return list(out["grads"])


def test_gathered_info_nce_under_ddp_gives_the_single_process_gradient(tmp_path):
    a, b, x = _setup()
    info_nce(a(x), b(x), 0.1).backward()
    single = _grads(a, b)
    for ddp, ref in zip(_ddp_grads(True, tmp_path), single, strict=True):
        torch.testing.assert_close(ddp, ref, rtol=1e-5, atol=1e-6)
    # and the check has teeth: without gradients through the gather the step differs
    naive = _ddp_grads(False, tmp_path)
    assert any(not torch.allclose(n, r, atol=1e-4) for n, r in zip(naive, single, strict=True))


def _ranked(fn, tmp_path: Path, name: str, *args) -> list[torch.Tensor]:
    """Rank 0's averaged gradients after ``fn(rank, world, *args)`` computed the loss on 2 gloo processes."""
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_loss_worker, args=(2, str(tmp_path / f"store-{name}"), fn, args, out), nprocs=2, join=True)
    return list(out["grads"])


def _loss_worker(rank: int, world: int, store: str, fn, args: tuple, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    params = fn(rank, world, *args)
    for p in params:
        dist.all_reduce(p.grad)
        p.grad /= world
    if rank == 0:
        out["grads"] = [p.grad.clone() for p in params]
    dist.barrier()
    os._exit(0)  # see _worker


def _weighted(rank: int, world: int, local: bool) -> list[torch.Tensor]:
    """A loss that is a mean over positions whose count differs per rank (6 on rank 0, 2 on rank 1)."""
    torch.manual_seed(0)
    w = torch.randn(3, requires_grad=True)
    x = torch.randn(8, 3)
    keep = torch.tensor([1, 1, 1, 1, 1, 1, 0, 1], dtype=torch.bool)  # the global batch's positions to count
    part, mask = x.chunk(world)[rank] if world > 1 else x, keep.chunk(world)[rank] if world > 1 else keep
    per_item = (part @ w).pow(2) * mask
    loss = per_item.sum() / mask.sum() if local else global_mean(per_item.sum(), mask.sum())
    loss.backward()
    return [w]


def test_global_mean_gives_the_single_process_gradient_when_counts_differ(tmp_path):
    single = _weighted(0, 1, local=False)
    [ddp] = _ranked(_weighted, tmp_path, "global", False)
    torch.testing.assert_close(ddp, single[0].grad, rtol=1e-6, atol=1e-7)
    [naive] = _ranked(_weighted, tmp_path, "local", True)  # the rank's own count: the usual mistake
    assert not torch.allclose(naive, single[0].grad, atol=1e-3)
    assert float(global_mean(torch.tensor(6.0), 3)) == 2.0 and float(global_mean(torch.tensor(0.0), 0)) == 0.0


def _audio(rank: int, world: int, method: str) -> list[torch.Tensor]:
    """TERA or SSAST on 4 clips of 64..256 frames (rank 0 the short ones), masks drawn once for all 4."""
    from ssl_domains.config import from_mapping
    from ssl_domains_audio.masking import patch_mask, tera_alter
    from ssl_domains_audio.model import SSASTModel, TERAModel
    from ssl_domains_audio.plugin import SSASTConfig, SSASTPlugin, TERAConfig, TERAPlugin

    torch.manual_seed(0)
    lengths = torch.tensor([64, 96, 224, 256])
    features = torch.randn(4, 256, 80 if method == "tera" else 128)
    features[torch.arange(256)[None, :] >= lengths[:, None]] = 0.0
    size = {"dim": 32, "depth": 2, "heads": 2, "ff_dim": 64, "dropout": 0.0}
    share = slice(None) if world == 1 else slice(2 * rank, 2 * rank + 2)
    if method == "tera":
        model = TERAModel(80, dim=32, depth=2, heads=2, ff_dim=64, dropout=0.0, max_frames=256)
        objective = TERAPlugin().objective(from_mapping(TERAConfig, size, "tera"))
        altered, predict = tera_alter(features, lengths)
        objective.alter = lambda x, lens: (altered[share], predict[share])
    else:
        cfg = from_mapping(SSASTConfig, size, "ssast")
        model = SSASTModel(128, patch=cfg.patch(), dim=32, depth=2, heads=2, ff_dim=64, dropout=0.0, max_frames=256)
        objective = SSASTPlugin().objective(cfg)
        valid = model.patch_validity(lengths, 256)
        mask = patch_mask(valid, model.grid(256), cfg.mask_ratio, cluster=True)
        objective.mask = lambda m, v, frames: mask[share]
    objective(model, {"features": features[share], "length": lengths[share]})["loss"].backward()
    return [p for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("method", ["tera", "ssast"])
def test_audio_losses_under_ddp_give_the_single_process_gradient(method, tmp_path):
    single = [p.grad for p in _audio(0, 1, method)]
    ddp = _ranked(_audio, tmp_path, method, method)
    assert len(ddp) == len(single) > 0
    for d, s in zip(ddp, single, strict=True):
        torch.testing.assert_close(d, s, rtol=1e-4, atol=1e-6 * float(s.abs().max()))
