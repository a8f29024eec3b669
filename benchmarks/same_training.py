"""Does a change alter training? Train every plugin with two checkouts of the repository, compare bit for bit.

    git worktree add /tmp/before COMMIT
    python benchmarks/same_training.py --before /tmp/before [--plugins tera,graphmae] [--batches 3]

For each plugin, the example data (``make_example_data`` of this checkout) is written once, then ``ssl-domains
train`` runs on it for one epoch of ``--batches`` batches, with the same ``--set`` overrides (this checkout's
``example_overrides()``), in two subprocesses whose ``PYTHONPATH`` puts one checkout's packages first. Prints one
JSON line per plugin: whether every weight tensor is equal (``torch.equal``), the largest difference, and the
logged training losses of both runs. A refactor that claims to change no science should print ``identical`` for
every plugin. The check is only meaningful on one machine and one torch build (both runs here).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import emit, environment

HERE = Path(__file__).resolve().parents[1]


def python_path(tree: Path) -> str:
    return os.pathsep.join(str(tree / p) for p in (".", "plugins", "examples/plugin-template/src"))


def train(tree: Path, plugin: str, data: Path, out: Path, sets: list[str], batches: int) -> list[float]:
    """Train in a subprocess that imports ``tree``'s code; return the logged per-step training losses."""
    argv = ["train", "--plugin", plugin, "--data", str(data), "--output", str(out), "--max-epochs", "1",
            "--seed", "0", "--set", "trainer.progress_bar=false", "--set", f"trainer.limit_train_batches={batches}",
            "--set", "trainer.log_every_n_steps=1", *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    code = (
        "import sys, ssl_domains; from ssl_domains.cli import main; "
        f"assert ssl_domains.__file__.startswith({str(tree.resolve())!r}), ssl_domains.__file__; "
        f"sys.exit(main({argv!r}))"
    )
    env = {**os.environ, "PYTHONPATH": python_path(tree.resolve()), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=out.parent)
    if done.returncode != 0:
        raise SystemExit(f"{plugin} with {tree}: exit {done.returncode}\n{done.stderr[-3000:]}")
    with open(out / "metrics.csv") as fh:
        return [float(r["train/loss_step"]) for r in csv.DictReader(fh) if r.get("train/loss_step")]


def compare(before: Path, after: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    a, b = load_file(before / "model.safetensors"), load_file(after / "model.safetensors")
    if a.keys() != b.keys():
        return {"identical": False, "keys_only_before": sorted(a.keys() - b.keys())[:5],
                "keys_only_after": sorted(b.keys() - a.keys())[:5]}  # fmt: skip
    diff = max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)
    return {"identical": all(torch.equal(a[k], b[k]) for k in a), "max_abs_diff": diff, "tensors": len(a)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the commit to compare against")
    parser.add_argument("--plugins", default=None, help="comma-separated (default: every installed plugin)")
    parser.add_argument("--batches", type=int, default=3, help="training batches per run")
    args = parser.parse_args()

    from ssl_domains import registry
    from ssl_domains.testing import _overrides

    names = args.plugins.split(",") if args.plugins else list(registry.discover())
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            plugin = registry.load(name)
            data = plugin.make_example_data(Path(tmp) / name / "data")
            sets = _overrides(plugin)
            runs = {}
            for label, tree in (("before", args.before), ("after", HERE)):
                runs[label] = train(tree, name, data, Path(tmp) / name / label, sets, args.batches)
            record = {"plugin": name, **compare(Path(tmp) / name / "before", Path(tmp) / name / "after"),
                      "losses_before": runs["before"], "losses_after": runs["after"]}  # fmt: skip
            emit(record)
            results.append(record)
    same = [r["plugin"] for r in results if r["identical"]]
    emit({"identical": same, "different": [r["plugin"] for r in results if not r["identical"]],
          "before": str(args.before), "batches": args.batches, **environment()})  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
