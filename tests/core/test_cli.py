"""The command line: one clear error line and exit code 2 for bad input; a train -> embed -> evaluate round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import run_cli, train_cli


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "--plugin", "nope", "--data", "."], ["unknown plugin 'nope'", "Installed plugins:"]),
        (["train", "--plugin", "dae", "--data", ".", "--set", "optim.lrr=1"], ["optim.lrr", "did you mean 'optim.lr'"]),
        (["train", "--plugin", "dae", "--data", ".", "--set", "optim.lr=fast"], ["optim.lr must be a number"]),
        (
            ["train", "--plugin", "dae", "--data", ".", "--set", "dae.hidden_dim=1.5"],
            ["dae.hidden_dim must be an integer"],
        ),
        (["train", "--plugin", "dae", "--data", ".", "--set", "novalue"], ["--set expects key=value"]),
        (["train", "--plugin", "dae", "--data", "/no/such/path"], ["data path /no/such/path does not exist"]),
        (["train", "--plugin", "dae"], ["no data given"]),
        (["train", "--data", "."], ["which plugin?"]),
        (["train", "--plugin", "dae", "--data", ".", "--config", "nopreset"], ["neither a file nor a preset"]),
        (["train", "--plugin", "dae", "--data", ".", "--devices", "two"], ["--devices must be an integer"]),
        (["train", "--plugin", "dae", "--data", ".", "--max-epochs", "x"], ["invalid int value"]),
        (["frobnicate"], ["invalid choice"]),
        (["embed", "--run", "/no/run", "--data", ".", "--out", "x.npy"], ["not a run directory"]),
        (["run", "graphmae", "nothing"], ["has no command 'nothing'"]),
        (["info", "nope"], ["unknown plugin"]),
    ],
)
def test_bad_input_is_one_error_line_with_exit_code_2(args, fragments):
    assert_one_line_error(run_cli(*args), *fragments)


def test_wrong_types_and_keys_in_yaml_files(tmp_path: Path):
    bad_type = write(tmp_path / "a.yaml", "optim:\n  lr: fast\n")
    assert_one_line_error(
        run_cli("train", "--plugin", "dae", "--data", ".", "--config", str(bad_type)), "optim.lr must be a number"
    )
    bad_key = write(tmp_path / "b.yaml", "optimizer:\n  lr: 0.1\n")
    assert_one_line_error(
        run_cli("train", "--plugin", "dae", "--data", ".", "--config", str(bad_key)),
        "unknown top-level config key 'optimizer'",
    )
    broken = write(tmp_path / "c.yaml", "optim: [lr: 1\n")
    assert_one_line_error(
        run_cli("train", "--plugin", "dae", "--data", ".", "--config", str(broken)), "c.yaml is not valid YAML at line"
    )
    other = write(tmp_path / "d.yaml", "plugin: graphmae\n")
    assert_one_line_error(
        run_cli("train", "--plugin", "dae", "--data", ".", "--config", str(other)),
        "the config is for plugin 'graphmae'",
    )


def test_bad_data_is_one_error_line(tmp_path: Path):
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan], [0.0, 1.0]], dtype=np.float32))
    assert_one_line_error(
        run_cli("train", "--plugin", "dae", "--data", str(tmp_path / "nan.npy")), "nan.npy: 1 rows hold NaN or inf"
    )
    (tmp_path / "corrupt.npy").write_bytes(b"not numpy at all")
    assert_one_line_error(
        run_cli("train", "--plugin", "dae", "--data", str(tmp_path / "corrupt.npy")),
        "corrupt.npy is not a readable .npy file",
    )


def test_existing_run_directory_is_never_overwritten(vectors: Path, tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert_one_line_error(
        run_cli("train", "--plugin", "dae", "--data", str(vectors), "--output", str(out)), "already holds files"
    )
    assert (out / "notes.txt").read_text() == "keep me"


def test_print_config_round_trips(tmp_path: Path, vectors: Path):
    first = run_cli("train", "--plugin", "dae", "--data", str(vectors), "--set", "optim.lr=0.01", "--print-config")
    assert first.returncode == 0, first.stderr
    resolved = yaml.safe_load(first.stdout)
    assert resolved["optim"]["lr"] == 0.01 and resolved["plugin"] == "dae"
    saved = write(tmp_path / "resolved.yaml", first.stdout)
    again = run_cli("train", "--config", str(saved), "--print-config")
    assert yaml.safe_load(again.stdout) == resolved


def test_info_shows_paper_formats_presets_and_config():
    out = run_cli("info", "graphmae").stdout
    assert "GraphMAE" in out and "arxiv.org/abs/2205.10803" in out
    assert "presets (--config NAME): citeseer, cora, imdb-binary, mutag, nci1, ogbn-arxiv, proteins, pubmed" in out
    assert "graphmae.mask_rate: float = 0.5" in out
    assert "optim.name: 'adamw' | 'adam' | 'sgd' = \"adam\"" in out  # the plugin's default, not the core's
    assert "Planetoid" in out and "edges.csv" in out
    assert "input the weights expect" in out and "  feature_norm: how node features are normalised" in out


def test_train_embed_evaluate_round_trip(vectors: Path, tmp_path: Path):
    run = tmp_path / "run"
    train_cli("dae", vectors, run, "--max-epochs", "3")
    for name in ("config.yaml", "last.ckpt", "metrics.csv", "model.safetensors", "data_state.pt"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    epochs = {line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]}
    assert epochs == {"0", "1", "2"}

    result = run_cli("embed", "--run", str(run), "--data", str(vectors), "--out", str(tmp_path / "emb.npy"))
    assert result.returncode == 0, result.stderr
    emb, ids = np.load(tmp_path / "emb.npy"), np.load(tmp_path / "emb.ids.npy")
    assert emb.shape == (256, 32) and emb.dtype == np.float32
    assert np.array_equal(ids, np.arange(256))

    result = run_cli("embed", "--run", str(run), "--data", str(vectors), "--out", str(tmp_path / "emb.parquet"))
    table = pq.read_table(tmp_path / "emb.parquet")
    assert table.column_names == ["id", "embedding", "label"] and table.num_rows == 256
    assert np.allclose(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), emb, atol=1e-6)

    result = run_cli("evaluate", "--run", str(run), "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert 1.0 <= metrics["rankme"] <= 32.0
    # four well-separated clusters: both probes must be far above chance (25%)
    assert metrics["probe_test_acc"] > 0.9 and metrics["knn_test_acc"] > 0.9


def test_embed_rejects_data_of_another_shape(vectors: Path, tmp_path: Path):
    run = tmp_path / "run"
    train_cli("dae", vectors, run, "--fast-dev-run")
    np.save(tmp_path / "wide.npy", np.zeros((4, 7), dtype=np.float32))
    assert_one_line_error(
        run_cli("embed", "--run", str(run), "--data", str(tmp_path / "wide.npy"), "--out", str(tmp_path / "e.npy")),
        "7 features, but the run was trained on 24",
    )
    assert not (tmp_path / "e.npy").exists()


def test_plugin_commands_are_listed_and_run(vectors: Path, tmp_path: Path):
    assert "reconstruct: denoise rows" in run_cli("info", "dae").stdout
    run = tmp_path / "run"
    train_cli("dae", vectors, run)
    result = run_cli(
        "run", "dae", "reconstruct", "--run", str(run), "--data", str(vectors), "--out", str(tmp_path / "rec.npy")
    )
    assert result.returncode == 0, result.stderr
    original = np.load(vectors / "features.npy")
    rec = np.load(tmp_path / "rec.npy")
    assert rec.shape == original.shape
    # the reconstruction is far closer to each row than the data mean is
    assert np.mean((rec - original) ** 2) < 0.5 * np.mean((original - original.mean(0)) ** 2)
    assert_one_line_error(
        run_cli(
            "run", "dae", "reconstruct", "--run", str(run), "--data", str(vectors), "--out", str(tmp_path / "rec.txt")
        ),
        "--out must be a .npy file",
    )


def test_an_externally_launched_rank_must_be_given_the_run_directory(vectors, tmp_path):
    # torchrun / srun start every rank at once: a timestamped default directory could differ between ranks
    result = run_cli(
        "train", "--plugin", "dae", "--data", str(vectors), env={"WORLD_SIZE": "2", "RANK": "1"}, cwd=tmp_path
    )
    assert_one_line_error(result, "--output", "torchrun")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("env", "worker"),
    [({}, False), ({"RANK": "1"}, True), ({"LOCAL_RANK": "0", "RANK": "4"}, True), ({"SLURM_PROCID": "2"}, True),
     ({"LOCAL_RANK": "1"}, True), ({"RANK": "0", "LOCAL_RANK": "0", "SLURM_PROCID": "0"}, False)],
)  # fmt: skip
def test_worker_processes_are_every_rank_but_global_zero(env, worker, monkeypatch):
    from ssl_domains.run import is_worker_process

    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert is_worker_process() is worker
