"""Shared fixtures: the repository root, small shipped data, and running the real console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT / "datasets"


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run ``ssl-domains ARGS`` in a fresh interpreter, as a user would."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ssl_domains", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


QUIET = ("--set", "trainer.progress_bar=false")


def train_cli(
    plugin: str, data: Path, out: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``ssl-domains train --plugin PLUGIN --data DATA --output OUT ARGS`` without a progress bar; asserts it
    succeeded (the end of stderr is the failure message)."""
    result = run_cli("train", "--plugin", plugin, "--data", str(data), "--output", str(out), *QUIET, *args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture
def vectors(tmp_path: Path) -> Path:
    """The template plugin's example data: 256 labelled feature vectors."""
    from ssl_domains_template.data import write_example_data

    return write_example_data(tmp_path / "data")


@pytest.fixture(scope="session")
def cora() -> Path:
    path = DATASETS / "cora"
    assert (path / "raw" / "ind.cora.x").is_file(), "datasets/cora is part of the repository"
    return path


@pytest.fixture(scope="session")
def mutag() -> Path:
    path = DATASETS / "mutag"
    assert (path / "raw" / "MUTAG_A.txt").is_file(), "datasets/mutag is part of the repository"
    return path


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Index caches go to a folder of this test session (also for the CLI's subprocesses), never ~/.cache."""
    os.environ["SSL_DOMAINS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
