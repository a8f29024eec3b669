"""Training throughput of each first-party plugin, its data loader, and the reference implementation beside it.

For one plugin (``--plugin P``) or all (``--all``, one subprocess each, so memory peaks are per plugin), at a size
preset (``base`` = the published configuration, the default; see ``_speed_workloads.py``):

* ``train_samples_per_s``: optimisation steps (objective with its masking, backward, optimiser, EMA hook) on
  batches already on the device, timed after ``--warmup`` steps, with one device sync at the end;
* ``forward_share`` / ``backward_share`` / ``optimizer_share``: the step split, from steps synced between phases;
* ``loader_samples_per_s``: the plugin's training DataLoader alone at ``num_workers`` = the core count, and its
  ratio to the step rate (``loader_over_step``; the aim is >= 3);
* ``peak_memory_gb``: CUDA peak allocated (on cuda) or the process's peak resident memory (on cpu);
* ``gflop_per_step`` (``torch.utils.flop_counter``) and, on cuda in bf16, ``mfu``: achieved FLOP/s over the GPU's
  dense bf16 peak;
* with ``--reference NAME=DIR`` (or ``NAME`` for a reference installed as a package): the reference's training step
  on the same batch and model size, alternating with ours in rounds in this process, and ``ratio`` = ours /
  reference in samples/s (Alice: both sides restricted to the parts of the reference that run; see
  ``reference_scope``); with ``--profile N`` also ``torch.profiler``'s top operators of N steps of each side.

``--set KEY=VALUE`` overrides the config (``--set ssl4eo.objective=mae``); ``--quick`` makes a one-step check
(``benchmarks/gpu_sheet.sh --dry-run``); ``--lock FILE`` serialises the timed phases of parallel runs (the sheet).

    python benchmarks/speed.py --all --json
    python benchmarks/speed.py --all --json --reference graphmae=/tmp/graphmae_ref --reference tjepa=/tmp/tjepa_ref \
        --reference merlin
    python benchmarks/speed.py --all --device cuda --precision bf16-mixed --compile
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _speed_tools import profile, summary, timing_lock

from _common import emit, environment, peak_rss_gb
from _speed_workloads import PRESETS, WORKLOADS

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, in TFLOP/s; matched on the device name.
BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--plugin", choices=sorted(WORKLOADS))
    which.add_argument("--all", action="store_true", help="every first-party plugin, one subprocess each")
    parser.add_argument(
        "--preset", choices=PRESETS, help="default: base (small on a CPU where base is a GPU configuration)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("32", "bf16-mixed"), default="32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the step, as trainer.compile=true")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (0: as many as fit in --seconds)")
    parser.add_argument("--seconds", type=float, default=20.0, help="time budget of each timed phase")
    parser.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="NAME[=DIR]",
        help="time the reference implementation of plugin NAME too (DIR: its checkout)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. ssl4eo.objective=mae"
    )
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds, ours vs reference")
    parser.add_argument("--round-seconds", type=float, default=8.0, help="time budget of each side in a round")
    parser.add_argument(
        "--quick", action="store_true", help="a check, not a measurement: one batch, one step per phase and round"
    )
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="torch.profiler over N steps of each side: top ops"
    )
    parser.add_argument("--skip-loader", action="store_true", help="leave the DataLoader rate out")
    parser.add_argument(
        "--lock",
        metavar="FILE",
        help="hold an exclusive lock on FILE while timing (runs sharing one GPU, "
        "compiling in parallel, time one at a time: benchmarks/gpu_sheet.sh)",
    )
    parser.add_argument("--json", action="store_true", help="JSON lines only (no summary table)")
    return parser.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def batch_size_of(batch: dict[str, Any], per_item: int = 1) -> int:
    return int(batch["id"].shape[0]) * per_item


def timed(fn: Callable[[], Any], device: torch.device, n: int) -> float:
    """Seconds per call of ``fn`` over ``n`` calls, synced once at the end."""
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - start) / n


def steps_within(seconds_per_step: float, budget: float, cap: int = 200, least: int = 2) -> int:
    return max(least, min(cap, int(budget / max(seconds_per_step, 1e-6))))


def loader_rate(plugin: Any, cfg: Any, seconds: float, per_item: int) -> dict[str, float]:
    """The training DataLoader alone, with ``num_workers`` = the core count where the plugin has the option."""
    workers = os.cpu_count() or 1
    if hasattr(cfg.method, "num_workers"):
        cfg.method.num_workers = workers
    dm = plugin.datamodule(cfg.method, cfg.data)
    dm.setup("fit")
    loader = dm.train_dataloader()
    start = time.perf_counter()
    it = iter(loader)
    first = next(it)
    startup = time.perf_counter() - start
    samples, start = 0, time.perf_counter()
    del first
    while time.perf_counter() - start < seconds:
        try:
            samples += batch_size_of(next(it), per_item)
        except StopIteration:
            it = iter(loader)
    return {
        "loader_workers": loader.num_workers,
        "loader_startup_s": startup,
        "loader_samples_per_s": samples / (time.perf_counter() - start),
    }


def flops_per_step(step_forward_backward: Callable[[], None]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step_forward_backward()
    return float(counter.get_total_flops())


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Build the plugin's workload and time ours (and the reference's) training step."""
    from ssl_domains import registry
    from ssl_domains.module import build_optimizer, compile_objective
    from ssl_domains.run import resolve_config

    device = torch.device(args.device)
    workload = WORKLOADS[args.plugin]
    preset = args.preset or ("small" if workload.gpu_base and device.type == "cpu" else "base")
    plugin = registry.load(args.plugin)
    scratch_dir = tempfile.TemporaryDirectory(prefix="ssl_speed_")
    scratch = Path(scratch_dir.name)
    cfg = resolve_config(plugin, workload.data(scratch), workload.layers(plugin, preset), args.set, {"seed": 0})
    torch.manual_seed(0)
    dm = plugin.datamodule(cfg.method, cfg.data)
    dm.setup("fit")
    model = plugin.model(cfg.method, dm).to(device).train()
    objective = plugin.objective(cfg.method)
    step_fn = compile_objective(objective) if args.compile else objective
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg.optim)
    clip = cfg.optim.gradient_clip_val
    batches = [dm.on_after_batch_transfer(to_device(b, device), 0)  # as Lightning hands them to the step
               for b in itertools.islice(dm.train_dataloader(), 1 if args.quick else 4)]
    cycle = itertools.cycle(batches)
    bf16 = args.precision == "bf16-mixed"

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def forward(batch: dict[str, Any]) -> torch.Tensor:
        with autocast():
            return step_fn(model, batch)["loss"]

    def update(batch: dict[str, Any]) -> None:
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if hasattr(model, "after_step"):  # the teacher's update is part of a step
            model.after_step(0.5)

    def train_step(batch: dict[str, Any] | None = None) -> None:
        batch = next(cycle) if batch is None else batch
        forward(batch).backward()
        update(batch)

    result: dict[str, Any] = {
        "benchmark": "speed",
        "plugin": args.plugin,
        "preset": preset,
        "precision": args.precision,
        "compile": args.compile,
        "unit": workload.unit,
        "batch_size": batch_size_of(batches[0]),
        "samples_per_step": batch_size_of(batches[0], workload.samples_per_item),
        "parameters": sum(p.numel() for p in params),
        **environment(),
    }

    # FLOPs of eager forward + backward steps, averaged over the benchmark's batches (a plugin may draw sizes per
    # step, as T-JEPA's set sizes); counted on the first warm-up steps, as the counter cannot see inside compiled
    # graphs (with --compile these are extra eager steps).
    def eager_forward_backward(batch: dict[str, Any]) -> None:
        with autocast():
            loss = objective(model, batch)["loss"]
        loss.backward()
        update(batch)

    start = time.perf_counter()
    flops = statistics.mean(flops_per_step(lambda b=b: eager_forward_backward(b)) for b in batches)
    for _ in range(max(args.warmup - (0 if args.compile else len(batches)), 0)):
        train_step()
    sync(device)
    result["warmup_s"] = time.perf_counter() - start
    lock = timing_lock(args.lock)
    result["lock_wait_s"] = lock.waited
    estimate = timed(train_step, device, 1) if not args.steps else 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    n = args.steps or steps_within(estimate, args.seconds)

    phases = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}

    def phased_step() -> None:
        batch = next(cycle)
        sync(device)
        t0 = time.perf_counter()
        loss = forward(batch)
        sync(device)
        t1 = time.perf_counter()
        loss.backward()
        sync(device)
        t2 = time.perf_counter()
        update(batch)
        sync(device)
        phases["forward"] += t1 - t0
        phases["backward"] += t2 - t1
        phases["optimizer"] += time.perf_counter() - t2

    if device.type == "cuda":  # syncs between phases would slow the GPU: time throughput without them
        per_step = timed(train_step, device, n)
        for _ in range(min(n, 20)):
            phased_step()
    else:  # a CPU has nothing to sync: the same steps give both figures
        per_step = timed(phased_step, device, n)
    total = sum(phases.values())
    result.update({f"{k}_share": v / total for k, v in phases.items()})
    samples = statistics.mean(batch_size_of(b, workload.samples_per_item) for b in batches)
    result.update(timed_steps=n, step_s=per_step, train_samples_per_s=samples / per_step)
    result["peak_memory_gb"] = (
        torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else peak_rss_gb()
    )
    result["gflop_per_step"] = flops / 1e9
    result["mfu"] = None
    if device.type == "cuda" and bf16:
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        if peak is not None:
            result["mfu"] = flops / per_step / (peak * 1e12)
            result["peak_tflops_bf16"] = peak

    if not args.skip_loader:
        result.update(loader_rate(plugin, cfg, min(args.seconds, 10.0), workload.samples_per_item))
        result["loader_over_step"] = result["loader_samples_per_s"] / result["train_samples_per_s"]

    references = dict(r.partition("=")[::2] for r in args.reference)
    if args.plugin in references and workload.build_reference is not None:
        ref_dir = Path(references[args.plugin]) if references[args.plugin] else None
        if workload.reference_needs_checkout and ref_dir is None:
            raise SystemExit(f"--reference {args.plugin}=DIR: give the checkout of {workload.reference}")
        build = workload.build_reference
        if workload.reference_context:  # the whole config (optim too) and our model
            build = functools.partial(lambda b, d, batch, dm, f: f(d, cfg, batch, dm, model), f=build)
        else:
            build = functools.partial(lambda b, d, batch, dm, f: f(d, cfg.method, batch, dm), f=build)
        result.update(compare_with_reference(build, workload, ref_dir, dm, batches[0], train_step, autocast, device,
                                             args.rounds, args.round_seconds, 1 if args.quick else 2,
                                             args.profile))  # fmt: skip
    lock.release()
    scratch_dir.cleanup()
    return result


def compare_with_reference(
    build: Callable[..., Callable[[], Any]],
    workload: Any,
    ref_dir: Path | None,
    dm: Any,
    batch: dict[str, Any],
    our_step: Callable[[dict[str, Any]], None],
    autocast: Callable[[], contextlib.AbstractContextManager],
    device: torch.device,
    rounds: int,
    round_seconds: float = 8.0,
    min_steps: int = 2,
    profile_steps: int = 0,
) -> dict[str, Any]:
    """Ours and the reference on the same batch, alternating in rounds; medians of the per-round step times.
    Where the reference closure carries ``ours`` (Alice: only parts of the reference run), that restricted step
    of ours is timed instead of our full step."""
    torch.manual_seed(0)
    reference = build(None, ref_dir, batch, dm)
    own = getattr(reference, "ours", None)
    ours_per_step = batch_size_of(batch, workload.samples_per_item)
    samples_per_ref_step = getattr(reference, "samples_per_step", ours_per_step)

    def ref_step() -> None:
        with autocast():
            reference()

    def ours() -> None:
        if own is not None:
            with autocast():
                own()
        else:
            our_step(batch)

    for fn in (ours, ref_step) if min_steps > 1 else ():  # warm-up (none in a --quick check)
        timed(fn, device, min_steps)
    per_round = steps_within(timed(ref_step, device, 1), round_seconds, cap=50, least=min_steps)
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for _ in range(rounds):
        times["ours"].append(timed(ours, device, per_round))
        times["reference"].append(timed(ref_step, device, per_round))
    profiles = {
        f"profile_{k}": profile(fn, device, profile_steps) for k, fn in (("ours", ours), ("reference", ref_step))
    }
    ours_rate = ours_per_step / statistics.median(times["ours"])
    ref_rate = samples_per_ref_step / statistics.median(times["reference"])
    return {
        "reference": workload.reference,
        "reference_scope": getattr(reference, "scope", "full step"),
        "reference_samples_per_step": samples_per_ref_step,
        "ours_samples_per_s_same_batch": ours_rate,
        "reference_samples_per_s": ref_rate,
        "ratio": ours_rate / ref_rate,
        **(profiles if profile_steps else {}),
    }


def run_all(args: argparse.Namespace, argv: list[str]) -> list[dict[str, Any]]:
    """Each plugin in its own process (clean peak memory, no compile caches shared); their JSON lines."""
    import json

    base, skip = [], False
    for a in argv:  # all but --all and the --set overrides, which go to their own plugin only
        if not skip and a != "--all" and not a.startswith("--set"):
            base.append(a)
        skip = a == "--set"
    records = []
    for name in sorted(WORKLOADS):
        sets = [f"--set={s}" for s in args.set if s.split(".", 1)[0] in (name, "trainer", "optim")]
        proc = subprocess.run(
            [sys.executable, __file__, "--plugin", name, "--json", *base, *sets],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            record = {"benchmark": "speed", "plugin": name, "error": proc.stderr.strip().splitlines()[-1:]}
        else:
            record = json.loads(lines[-1])
        emit(record)
        records.append(record)
    return records


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.all:
        records = run_all(args, argv)
    else:
        records = [measure(args)]
        emit(records[0])
    if not args.json:
        summary(records)
    if any("error" in r for r in records):
        sys.exit(1)


if __name__ == "__main__":
    main()
