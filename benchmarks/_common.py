"""Shared helpers for the benchmark scripts: environment facts and the final JSON line."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from typing import Any


def environment() -> dict[str, Any]:
    """Versions, device and date, recorded with every result."""
    import torch

    return {
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
    }


def peak_rss_gb() -> float:
    """Peak resident memory of this process, in GB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def emit(record: dict[str, Any]) -> None:
    """Print one JSON line (the acceptance checks read the last one)."""
    print(json.dumps(record), flush=True)
    sys.stdout.flush()


def emit_final(summary: dict[str, Any], started: float) -> None:
    """Add wall minutes since ``started``, peak memory and the environment to ``summary``, and print it."""
    summary["minutes"] = round((time.perf_counter() - started) / 60, 1)
    summary["peak_rss_gb"] = round(peak_rss_gb(), 2)
    summary.update(environment())
    emit(summary)


def pretrain_and_evaluate(
    plugin_name: str, data: str, layers: list, overrides: list[str], seed: int, flags: dict | None = None
) -> tuple[dict, float, int]:
    """Train through the product path (``ssl_domains.run.train``), reload the run, run the plugin's evaluation.

    Returns ``(metrics, training_seconds, epochs)``.
    """
    import tempfile
    from pathlib import Path

    import torch

    from ssl_domains import registry
    from ssl_domains.run import load_run, resolve_config, train

    plugin = registry.load(plugin_name)
    cfg = resolve_config(
        plugin, data, layers, ["trainer.progress_bar=false", *overrides], {"seed": seed, **(flags or {})}
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train(cfg, Path(tmp) / "run")
        seconds = time.perf_counter() - start
        run = load_run(Path(tmp) / "run")
        torch.manual_seed(seed)  # as `ssl-domains evaluate --seed` does: the probe's draws follow the run's seed
        metrics = plugin.evaluate(run.model, run.datamodule, run.config.method, torch.device("cpu")) or {}
    return metrics, seconds, cfg.trainer.max_epochs
