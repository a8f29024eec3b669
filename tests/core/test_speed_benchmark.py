"""benchmarks/speed.py measures what it says: one JSON line with consistent figures (tiny preset, a few steps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "speed.py"


@pytest.mark.slow
def test_speed_prints_one_consistent_line_per_plugin():
    cmd = [sys.executable, str(SCRIPT), "--plugin", "graphmae", "--preset", "tiny", "--seconds", "0.5", "--json"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    r = json.loads(lines[0])
    assert (r["plugin"], r["preset"], r["unit"]) == ("graphmae", "tiny", "nodes")
    assert r["samples_per_step"] == r["batch_size"] > 0  # full-graph Cora: every node in every step
    assert r["train_samples_per_s"] == pytest.approx(r["samples_per_step"] / r["step_s"], rel=1e-6)
    assert sum(r[f"{k}_share"] for k in ("forward", "backward", "optimizer")) == pytest.approx(1.0)
    assert r["timed_steps"] >= 2 and r["gflop_per_step"] > 0 and r["peak_memory_gb"] > 0
    assert r["loader_over_step"] == pytest.approx(r["loader_samples_per_s"] / r["train_samples_per_s"])
    assert r["mfu"] is None  # only defined on a GPU in bf16
