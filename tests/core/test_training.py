"""The trainer: bit-identical resume after kill -9, DDP on CPU, NaN detection, bf16."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import QUIET, run_cli


def dae_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--plugin", "dae", "--data", str(data), "--output", str(out), *QUIET, *extra]


def test_resume_after_kill_9_mid_epoch_gives_bit_identical_weights(tmp_path: Path):
    from ssl_domains_template.data import write_example_data

    vectors = write_example_data(tmp_path / "data", rows=1024)
    extra = ["--max-epochs", "6", "--set", "dae.batch_size=4"]  # 231 steps per epoch: slow enough to kill mid-epoch
    reference = run_cli(*dae_args(vectors, tmp_path / "straight", *extra))
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssl_domains", *dae_args(vectors, out, *extra)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    ckpt = out / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        if ckpt.is_file() and torch.load(ckpt, weights_only=True)["finished_epochs"] >= 2:
            time.sleep(0.3)  # into the next epoch
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait() == -signal.SIGKILL
    assert not (out / "model.safetensors").exists(), "the killed run must not have finished"
    resumed_from = torch.load(ckpt, weights_only=True)["finished_epochs"]
    assert 2 <= resumed_from < 6

    result = run_cli("train", "--resume", str(out))
    assert result.returncode == 0, result.stderr
    straight, resumed = load_file(tmp_path / "straight" / "model.safetensors"), load_file(out / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        gap = (straight[key] - resumed[key]).abs().max()
        assert torch.equal(straight[key], resumed[key]), f"{key} differs by {gap} (resumed from epoch {resumed_from})"
    # metrics of the epochs replayed after the kill appear once, not twice
    rows = [line.split(",") for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    column = header.index("train/loss_epoch")  # set once per epoch
    assert sorted(int(r[0]) for r in rows if r[column] != "") == list(range(6))


def test_same_seed_same_weights_different_seed_different_weights(vectors: Path, tmp_path: Path):
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert run_cli(*dae_args(vectors, tmp_path / name, "--max-epochs", "1", "--seed", seed)).returncode == 0
    a, b, c = (load_file(tmp_path / n / "model.safetensors") for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_ddp_with_two_cpu_processes(vectors: Path, tmp_path: Path):
    out = tmp_path / "ddp"
    result = run_cli(
        *dae_args(vectors, out, "--max-epochs", "2", "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu")
    )
    assert result.returncode == 0, result.stderr
    ckpt = torch.load(out / "last.ckpt", weights_only=True)
    # 230 training rows split over 2 ranks -> 115 each -> 2 batches of 64 per epoch -> 4 optimiser steps
    assert ckpt["global_step"] == 4 and ckpt["finished_epochs"] == 2
    assert (out / "model.safetensors").is_file()
    written = sorted(p.name for p in tmp_path.iterdir() if p != vectors.parent and p != vectors)
    assert written == [out.name], f"worker processes must write into the same run directory, found {written}"


def test_nan_loss_stops_the_run_naming_the_step(vectors: Path, tmp_path: Path):
    out = tmp_path / "nan"
    result = run_cli(
        *dae_args(vectors, out, "--max-epochs", "3", "--set", "optim.lr=1e30", "--set", "trainer.log_every_n_steps=1")
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: the loss became") and "at training step" in lines[-1]
    assert "(epoch 0)" in lines[-1]
    assert not (out / "last.ckpt").exists() and not (out / "model.safetensors").exists()


@pytest.mark.parametrize("precision", ["bf16-mixed"])
def test_mixed_precision_on_cpu(vectors: Path, tmp_path: Path, precision: str):
    out = tmp_path / "bf16"
    result = run_cli(*dae_args(vectors, out, "--max-epochs", "2", "--precision", precision))
    assert result.returncode == 0, result.stderr
    weights = load_file(out / "model.safetensors")
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in weights.values())


def test_after_step_runs_once_per_optimiser_step_under_accumulation(vectors: Path, tmp_path: Path, monkeypatch):
    from ssl_domains import registry
    from ssl_domains.run import resolve_config, train
    from ssl_domains_template.model import DenoisingAutoencoder

    plugin = registry.load("dae")
    progress_seen: list[float] = []
    monkeypatch.setattr(DenoisingAutoencoder, "after_step", lambda self, p: progress_seen.append(p), raising=False)
    overrides = ["trainer.progress_bar=false", "trainer.accumulate_grad_batches=2", "trainer.max_epochs=2"]
    train(resolve_config(plugin, vectors, [], overrides, {"seed": 0}), tmp_path / "run")
    steps = int(torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["global_step"])
    batches = int(torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["loops"]["fit_loop"][
        "epoch_loop.batch_progress"]["total"]["completed"])  # fmt: skip
    assert batches >= 2 * steps - 2 > 0, "two micro-batches per optimiser step"
    # an EMA teacher must move once per optimiser step, not once per micro-batch
    assert len(progress_seen) == steps
    assert progress_seen == sorted(set(progress_seen))
