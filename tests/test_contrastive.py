"""InfoNCE with negatives gathered across DDP ranks: known values on one process, and on 2 gloo processes the
DDP gradient (per-rank loss, gradients averaged) equals the single-process gradient on the global batch."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ssl_domains.nn import info_nce

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
