"""The GPU sheet (``benchmarks/gpu_sheet.sh``): every plugin's ``base`` preset in bf16, eager and compiled, with its
reference, within a device-time budget; and its ``--dry-run``, the same on CPU at the ``tiny`` preset, one step.

1. Checks, on the CPU, before any device time: the imports (torch, the core, every plugin, the benchmark
   modules), the reference checkouts (``REF_<PLUGIN>=DIR`` overrides; defaults under ``$REF_ROOT``, by default
   ``~/.cache/ssl-domains-refs``), the old timm releases SSAST and SSL4EO-S12 need (``/tmp/timm045``,
   ``/tmp/timm049``), the output folder, and CUDA (unless ``--dry-run``). A missing import, CUDA or output folder
   stops the sheet (exit 2). A missing reference is not an error: it is named in ``notes.jsonl`` and on the
   console, and that plugin runs without its reference (no ``ratio``).
2. Runs (real): one ``speed.py`` process per plugin and mode, up to ``--parallel`` at once, so that compilation
   (CPU work) overlaps; the timed phases take an exclusive lock (``speed.py --lock``), so one run at a time
   uses the GPU for timing. Eager runs (with the references) go first, then compiled ones (``--skip-loader``:
   loader ÷ step comes from the eager run's loader rate). Each run is cut at ``--run-timeout`` and at the
   sheet's ``--budget``; cut or failed runs are recorded in ``notes.jsonl``, not fatal.
3. Output (``OUTDIR``): ``speed.jsonl`` (speed.py's records plus ``mode``), ``notes.jsonl``, ``summary.txt``.

Dry run: every workload in this one process (imports paid once) at ``tiny``, 1 warm-up and 1 timed step,
eager with its reference where present, then one compiled workload (the cheapest) when enough of the 2-minute
allowance is left; the summary says which.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# transformers first (the MFU aims), T-JEPA last (its compiled step recompiles as set sizes change)
ORDER = ("ssast", "croma", "ssl4eo", "tera", "contrastive3d", "alice", "merlin", "graphmae", "tjepa")
REFERENCES: dict[str, tuple[tuple[str, ...], str]] = {
    # plugin: (candidate folders, relative to $REF_ROOT unless absolute; a file or folder that must be inside)
    "graphmae": (("graphmae", "/tmp/graphmae_ref"), "graphmae"),
    "tjepa": (("t-jepa", "/tmp/tjepa_ref"), "src"),
    "tera": (("s3prl", "/tmp/s3prl_ref"), "s3prl/upstream/mockingjay/model.py"),
    "ssast": (("ssast", "/tmp/ssast_ref"), "src/models/ast_models.py"),
    "croma": (("croma",), "pretrain_croma.py"),
    "ssl4eo": (("ssl4eo/ssl4eo-s12",), "src/benchmark/pretrain_ssl/models/moco_v3/builder.py"),
    "contrastive3d": (("monai-tutorials",), "self_supervised_pretraining/vit_unetr_ssl/ssl_train.ipynb"),
    "alice": (("alice",), "loss.py"),
}
TIMM = {"ssast": ("0.4.5", "/tmp/timm045"), "ssl4eo": ("0.4.9", "/tmp/timm049")}
DRY_RUN_ALLOWANCE_S = 120.0
# dry-run sizes where the reference cannot take the tiny preset (MERLIN's reference U-Net has fixed widths)
DRY_RUN_SIZES = {"merlin": ["--preset", "small", "--set", "merlin.patch_size=64", "--set", "merlin.batch_size=2"]}
# modules a reference swaps in (timm 0.4.5 vs 0.4.9, stand-ins for torchvision / matplotlib): dropped after each
# in-process dry run, so that the next reference imports its own
SWAPPED = ("timm", "torchvision", "matplotlib")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", nargs="?", default=os.environ.get("OUT") or "gpu_sheet_out")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny preset, one step each: checks the sheet")
    parser.add_argument("--budget", type=float, default=440.0, help="seconds for all runs (the device allowance)")
    parser.add_argument("--run-timeout", type=float, default=240.0, help="seconds for one run")
    parser.add_argument("--parallel", type=int, default=4, help="runs at once (compiling while another times)")
    parser.add_argument("--plugins", default=",".join(ORDER), help="comma-separated subset")
    parser.add_argument("--no-compile", action="store_true", help="eager runs only")
    # for trying the sheet's orchestration (processes, lock, budget, notes) on a CPU: --device cpu --preset tiny
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="base", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="bf16-mixed", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def note(out: Path, **record: Any) -> None:
    print("note:", json.dumps(record), flush=True)
    with open(out / "notes.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def find_reference(plugin: str) -> tuple[str | None, str]:
    """(the ``--reference`` value, or None when missing; a sentence saying where it was looked for)."""
    if plugin == "merlin":
        import importlib.util

        found = importlib.util.find_spec("deepdespeckling") is not None
        return ("merlin" if found else None), "the deepdespeckling package (pip install deepdespeckling==0.8)"
    candidates, marker = REFERENCES[plugin]
    root = Path(os.environ.get("REF_ROOT", Path.home() / ".cache" / "ssl-domains-refs"))
    override = os.environ.get(f"REF_{plugin.upper()}")
    folders = [Path(override)] if override else [Path(c) if c.startswith("/") else root / c for c in candidates]
    for folder in folders:
        if (folder / marker).exists():
            if plugin in TIMM:
                version, where = TIMM[plugin]
                tdir = os.environ.get("TIMM_DIR", where)
                if not (Path(tdir) / "timm").is_dir():
                    install = f"pip install --no-deps --target {where} timm=={version}"
                    return None, f"timm {version} for {plugin}'s reference ({install})"
            return f"{plugin}={folder}", str(folder)
    return None, " or ".join(str(f / marker) for f in folders) + f" (set REF_{plugin.upper()}=DIR)"


def checks(args: argparse.Namespace, out: Path) -> dict[str, str | None]:
    """The sheet's prerequisites (see the module docstring); returns each plugin's ``--reference`` value."""
    sys.path.insert(0, str(HERE))
    problems = []
    try:
        import lightning  # noqa: F401 (before timm's stand-ins, as _timm.py asks)
        import speed  # noqa: F401
        import torch

        from ssl_domains import registry

        for name in args.plugins:
            registry.load(name)
    except Exception as exc:
        problems.append(f"import: {type(exc).__name__}: {exc}")
    if not args.dry_run and args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            problems.append("CUDA: torch.cuda.is_available() is False (use --dry-run on a CPU machine)")
    if problems:
        for p in problems:
            print("error:", p, file=sys.stderr)
        raise SystemExit(2)
    refs = {}
    for name in args.plugins:
        refs[name], where = find_reference(name)
        if refs[name] is None:
            note(out, plugin=name, note=f"reference missing: {where}; {name} runs without it (no ratio)")
    return refs


def dry_run(args: argparse.Namespace, out: Path, refs: dict[str, str | None], start: float) -> int:
    import speed
    import torch

    rows, failures = [], 0
    common = ["--steps", "1", "--warmup", "1", "--seconds", "0.2", "--rounds", "1", "--round-seconds", "0.01",
              "--skip-loader", "--quick", "--json"]  # fmt: skip
    compiled = [] if args.no_compile else ["graphmae"]
    jobs = [(p, False) for p in args.plugins] + [(p, True) for p in compiled if p in args.plugins]
    for plugin, compile_ in jobs:
        elapsed = time.perf_counter() - start
        if compile_ and elapsed > 0.6 * DRY_RUN_ALLOWANCE_S:
            note(out, plugin=plugin, mode="compiled", note=f"dry run: compiled check skipped ({elapsed:.0f} s used)")
            continue
        argv = ["--plugin", plugin, *DRY_RUN_SIZES.get(plugin, ["--preset", "tiny"]), *common]
        argv += ["--compile"] if compile_ else []
        argv += ["--reference", refs[plugin]] if refs.get(plugin) and not compile_ else []
        t0, path = time.perf_counter(), list(sys.path)
        try:
            torch.manual_seed(0)
            record = speed.measure(speed.parse_args(argv))
            record["mode"] = "compiled" if compile_ else "eager"
        except Exception as exc:
            failures += 1
            record = {
                "plugin": plugin,
                "mode": "compiled" if compile_ else "eager",
                "error": f"{type(exc).__name__}: {exc}",
            }
            traceback.print_exc()
        finally:
            sys.path[:] = path
            swapped = [m for m in SWAPPED if m == "timm" or getattr(sys.modules.get(m), "__file__", None) is None]
            for name in [m for m in sys.modules if m.split(".")[0] in swapped]:
                del sys.modules[name]
        record["wall_s"] = time.perf_counter() - t0
        rows.append(record)
        with open(out / "speed.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
    write_summary(out, rows, time.perf_counter() - start, dry=True)
    return 1 if failures else 0


def real_run(args: argparse.Namespace, out: Path, refs: dict[str, str | None], start: float) -> int:
    lock = out / ".timing.lock"
    base = [sys.executable, str(HERE / "speed.py"), "--preset", args.preset, "--device", args.device,
            "--precision", args.precision, "--json", "--seconds", "3", "--rounds", "2", "--round-seconds", "1.5",
            "--lock", str(lock)]  # fmt: skip
    queue = [(p, False) for p in args.plugins]
    if not args.no_compile:
        queue += [(p, True) for p in args.plugins]
    running: list[tuple[str, bool, subprocess.Popen, float, Any]] = []
    rows: list[dict[str, Any]] = []
    deadline = start + args.budget
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    while queue or running:
        while queue and len(running) < args.parallel and time.time() < deadline - 20:
            plugin, compile_ = queue.pop(0)
            cmd = [*base, "--plugin", plugin]
            cmd += ["--compile", "--warmup", "3", "--skip-loader"] if compile_ else ["--warmup", "2"]
            cmd += ["--reference", refs[plugin]] if refs.get(plugin) and not compile_ else []
            log = open(out / f"{plugin}_{'compiled' if compile_ else 'eager'}.log", "w")  # noqa: SIM115
            running.append((plugin, compile_, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                                               env=env, cwd=HERE), time.time(), log))  # fmt: skip
        if queue and not running and time.time() >= deadline - 20:
            for plugin, compile_ in queue:
                note(out, plugin=plugin, mode="compiled" if compile_ else "eager", note="skipped: sheet budget spent")
            queue = []
        time.sleep(1.0)
        for item in list(running):
            plugin, compile_, proc, t0, log = item
            mode = "compiled" if compile_ else "eager"
            over = time.time() - t0 > args.run_timeout or time.time() > deadline
            if proc.poll() is None and not over:
                continue
            cut = proc.poll() is None
            if cut:
                proc.kill()
                note(out, plugin=plugin, mode=mode, note=f"cut after {time.time() - t0:.0f} s (run timeout or budget)")
            stdout = proc.communicate()[0] or ""
            log.close()
            running.remove(item)
            lines = [line for line in stdout.splitlines() if line.startswith("{")]
            if cut:
                continue
            if proc.returncode != 0 or not lines:
                tail = (out / f"{plugin}_{mode}.log").read_text().strip().splitlines()[-1:]
                note(out, plugin=plugin, mode=mode, note=f"failed (rc {proc.returncode}): {tail}")
                continue
            record = {**json.loads(lines[-1]), "mode": mode, "wall_s": time.time() - t0}
            if not refs.get(plugin) and not compile_:
                record["reference_note"] = "reference missing (notes.jsonl)"
            rows.append(record)
            with open(out / "speed.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
    loader = {r["plugin"]: r.get("loader_samples_per_s") for r in rows if r["mode"] == "eager"}
    for r in rows:
        if r["mode"] == "compiled" and loader.get(r["plugin"]):
            r["loader_over_step"] = loader[r["plugin"]] / r["train_samples_per_s"]
            r["loader_from"] = "the eager run's loader rate"
    write_summary(out, rows, time.time() - start, dry=False)
    return 0


def write_summary(out: Path, rows: list[dict[str, Any]], seconds: float, dry: bool) -> None:
    head = f"{'plugin':14} {'mode':8} {'samples/s':>10} {'step ms':>9} {'peak GB':>8} {'GFLOP':>9} {'MFU':>7} "
    lines = [head + f"{'ratio':>6} {'loader÷step':>11} {'wall s':>7}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['plugin']:14} {r['mode']:8} error: {r['error'][:120]}")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        loader = f"{r['loader_over_step']:.1f}" if r.get("loader_over_step") else "-"
        lines.append(
            f"{r['plugin']:14} {r['mode']:8} {r['train_samples_per_s']:10.1f} {1e3 * r['step_s']:9.1f} "
            f"{r['peak_memory_gb']:8.2f} {r['gflop_per_step']:9.1f} {mfu:>7} {ratio:>6} {loader:>11} {r['wall_s']:7.1f}"
        )
    notes = (out / "notes.jsonl").read_text().splitlines() if (out / "notes.jsonl").exists() else []
    lines.append(f"{'dry run' if dry else 'sheet'}: {len(rows)} runs, {len(notes)} notes, {seconds:.1f} s wall")
    text = "\n".join(lines)
    (out / "summary.txt").write_text(text + "\n")
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    start_perf, start = time.perf_counter(), time.time()
    args = parse_args(argv)
    args.plugins = [p.strip() for p in args.plugins.split(",") if p.strip()]
    out = Path(args.outdir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in ("speed.jsonl", "notes.jsonl"):
        (out / name).unlink(missing_ok=True)
    refs = checks(args, out)
    print(f"checks passed in {time.perf_counter() - start_perf:.1f} s; output in {out}", flush=True)
    if args.dry_run:
        return dry_run(args, out, refs, start_perf)
    return real_run(args, out, refs, start)


if __name__ == "__main__":
    sys.exit(main())
