"""The Python API and the run folder as a shareable model: load_encoder, Encoder.embed, config.json, the card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import yaml

import ssl_domains
from tests.conftest import run_cli, train_cli


def _trained(vectors: Path, out: Path) -> Path:
    train_cli("dae", vectors, out, "--max-epochs", "2")
    return out


def test_a_copied_run_folder_loads_and_embeds_like_the_cli(vectors: Path, tmp_path: Path):
    run = _trained(vectors, tmp_path / "run")
    shared = tmp_path / "downloaded" / "dae-model"
    shutil.copytree(run, shared, ignore=shutil.ignore_patterns("checkpoints", "*.ckpt", "tensorboard"))
    enc = ssl_domains.load_encoder(shared, data=vectors)
    model, datamodule = enc  # unpacks as before
    assert model is enc.model and datamodule is enc.datamodule and not model.training
    emb = enc.embed()
    assert emb.vectors.shape == (len(emb.ids), model.embed_dim) and np.isfinite(emb.vectors).all()
    out = tmp_path / "cli.npy"
    assert run_cli("embed", "--run", str(shared), "--data", str(vectors), "--out", str(out)).returncode == 0
    np.testing.assert_allclose(np.load(out), emb.vectors, rtol=1e-5, atol=1e-6)
    again = enc.embed(vectors.parent / vectors.name)  # the same data under another spelling: same vectors
    np.testing.assert_array_equal(again.vectors, emb.vectors)
    elsewhere = shutil.copytree(vectors.parent, tmp_path / "copied-data") / vectors.name  # new data, same rows
    np.testing.assert_allclose(enc.embed(elsewhere).vectors, emb.vectors, rtol=1e-6, atol=1e-7)


def test_the_run_folder_carries_config_json_and_a_model_card(vectors: Path, tmp_path: Path):
    run = _trained(vectors, tmp_path / "run")
    assert json.loads((run / "config.json").read_text()) == yaml.safe_load((run / "config.yaml").read_text())
    card = (run / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: ssl-domains") and "# dae:" in card
    assert "## Input the weights expect" in card and "ssl_domains.load_encoder" in card
    assert "train/loss_epoch" in card and "## Config" in card
    result = run_cli("evaluate", "--run", str(run), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["rankme"] > 1 and evaluation["data"] == str(vectors)
    assert "## Evaluation" in (run / "README.md").read_text() and "rankme" in (run / "README.md").read_text()
