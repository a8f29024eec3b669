r"""The live monitor's cost: each plugin trained with the monitor off and on, on its example data.

    python benchmarks/monitor_overhead.py                       # all nine plugins, 200 steps each
    python benchmarks/monitor_overhead.py --plugins tjepa,tera --steps 400 --every 10

Protocol (declared before the run). Each plugin trains ``--steps`` optimiser steps on ``make_example_data`` with
its ``example_overrides`` (the conformance kit's model), seed 0, after one untimed warm-up run: once with
``monitor.every_n_steps=0`` and once with ``monitor.every_n_steps=--every`` (default 20: 25x more often than the
default 500, the stress case) and the default ``monitor.max_overhead`` (2 %). Reported per plugin:

- ``share``: the monitor's own time (the sum of its ``monitor/seconds``) over the monitored run's ``train()``
  wall time: the figure the bar (<= 2 %) is on;
- ``wall_ratio``: monitored / unmonitored wall time (on a shared 2-core machine this also carries run-to-run
  noise of a few per cent, so it is reported, not judged);
- ``calls``: how many times the monitor ran (the budget spaces the calls out).

One JSON line per plugin, then a summary with the largest share.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, emit_final

PLUGINS = "tera,ssast,graphmae,alice,contrastive3d,croma,ssl4eo,merlin,tjepa"


def _train(name: str, root: Path, steps: int, every: int) -> tuple[float, list[dict[str, str]]]:
    from ssl_domains import registry
    from ssl_domains.run import resolve_config, train

    plugin = registry.load(name)
    data = plugin.make_example_data(root / "data") if not (root / "data").exists() else None
    data = data or Path(json.loads((root / "data.json").read_text()))
    (root / "data.json").write_text(json.dumps(str(data)))
    overrides = [
        f"trainer.max_steps={steps}", "trainer.max_epochs=-1", "trainer.progress_bar=false",
        "trainer.loggers=[csv]", f"monitor.every_n_steps={every}", "trainer.checkpoint_every_n_minutes=0",
    ]  # fmt: skip
    cfg = resolve_config(plugin, data, [dict(plugin.example_overrides())], overrides, {"seed": 0})
    run = root / f"run-{every}"
    start = time.perf_counter()
    train(cfg, run)
    seconds = time.perf_counter() - start
    with (run / "metrics.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("monitor/seconds")]
    return seconds, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plugins", default=PLUGINS)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    args = parser.parse_args()
    started = time.perf_counter()
    results = []
    for name in args.plugins.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            _train(name, Path(tmp) / "warm-up", args.steps, 0)  # imports, caches and data files, not timed
            off, _ = _train(name, Path(tmp), args.steps, 0)
            on, rows = _train(name, Path(tmp), args.steps, args.every)
        spent = sum(float(r["monitor/seconds"]) for r in rows)
        record = {
            "stage": "plugin", "plugin": name, "steps": args.steps, "every": args.every, "calls": len(rows),
            "off_s": round(off, 2), "on_s": round(on, 2), "monitor_s": round(spent, 3),
            "share": spent / on, "wall_ratio": on / off, "items": float(rows[0]["monitor/items"]) if rows else 0,
        }  # fmt: skip
        emit(record)
        results.append(record)
    worst = max(results, key=lambda r: r["share"])
    summary = {
        "stage": "final",
        "plugins": [r["plugin"] for r in results],
        "max_share": worst["share"],
        "max_share_plugin": worst["plugin"],
        "mean_wall_ratio": sum(r["wall_ratio"] for r in results) / len(results),
    }
    emit_final(summary, started)


if __name__ == "__main__":
    main()
