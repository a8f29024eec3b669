"""Helpers of ``speed.py``: the timing lock of parallel runs, the profile of a step, the summary table."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


class timing_lock:
    """An exclusive ``flock`` on ``path`` (none when ``path`` is None), taken now; ``waited``: seconds it took."""

    def __init__(self, path: str | None) -> None:
        self.file, start = None, time.perf_counter()
        if path:
            import fcntl

            self.file = open(path, "a")  # noqa: SIM115 (held until release)
            fcntl.flock(self.file, fcntl.LOCK_EX)
        self.waited = time.perf_counter() - start

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing drops the lock
            self.file = None


def profile(fn: Callable[[], Any], device: torch.device, steps: int, top: int = 10) -> dict[str, Any]:
    """Where ``steps`` calls of ``fn`` spend their time (``torch.profiler``): the ``top`` operators by self time
    (device time on cuda), as shares of the total, and the optimiser step's share (its ``Optimizer.step`` range)."""
    if steps <= 0:
        return {}
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events) or 1.0
    ops = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]
    step_time = max((e.cpu_time_total for e in events if e.key.startswith("ProfilerStep")), default=0.0)
    wall = sum(e.self_cpu_time_total for e in events) or 1.0
    optimizer = sum(e.cpu_time_total for e in events if e.key.startswith("Optimizer.step#"))
    return {
        "top_ops": {e.key: round(getattr(e, key) / total, 3) for e in ops},
        "optimizer_step_share": round(optimizer / (step_time or wall), 3),
    }


def summary(records: list[dict[str, Any]]) -> None:
    header = ("plugin", "unit", "samples/s", "fwd/bwd/opt %", "loader x", "peak GB", "ratio")
    print("\n{:10} {:8} {:>10} {:>15} {:>9} {:>8} {:>6}".format(*header))
    for r in records:
        if "error" in r:
            print(f"{r['plugin']:10} error: {r['error']}")
            continue
        split = "/".join(f"{100 * r[f'{k}_share']:.0f}" for k in ("forward", "backward", "optimizer"))
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        print(
            f"{r['plugin']:10} {r['unit']:8} {r['train_samples_per_s']:10.1f} {split:>15} "
            f"{r.get('loader_over_step', float('nan')):9.1f} {r['peak_memory_gb']:8.2f} {ratio:>6}"
        )
