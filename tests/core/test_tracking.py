"""Experiment trackers chosen in the config: W&B offline and MLflow's file store write their run files, the
plugin's figures included; a resumed run continues the same tracked runs; a missing package is named first."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ssl_domains import UserError, registry
from ssl_domains.run import resolve_config, train
from tests.conftest import run_cli


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--plugin", "tjepa", "--data", str(data), "--output", str(out), "--set", "trainer.progress_bar=false",
        "--set", "trainer.loggers=[csv,tensorboard,wandb,mlflow]", "--set", "monitor.every_n_steps=2", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tracked")
    data = registry.load("tjepa").make_example_data(root / "data")
    result = run_cli(*_args(data, root / "run", "--max-epochs", "2"), env={"WANDB_MODE": "offline"}, cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    return data, root / "run"


def test_wandb_offline_run_holds_metrics_and_figures(tracked: tuple[Path, Path]):
    run = tracked[1]
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))
    assert list(offline[0].rglob("media/images/**/*.png"))  # the plugin's figures


def test_mlflow_file_store_holds_metrics_monitor_and_figures(tracked: tuple[Path, Path]):
    run = tracked[1]
    ids = yaml.safe_load((run / "trackers.yaml").read_text())
    runs = list((run / "mlruns").glob(f"*/{ids['mlflow']}"))
    assert len(runs) == 1
    metrics = {p.name for p in (runs[0] / "metrics").rglob("*") if p.is_file()}
    assert "loss_step" in metrics or any("loss" in m for m in metrics)
    assert {"rankme", "effective_rank", "collapsed"} <= metrics  # monitor/* land as metrics/monitor/<name>
    assert list((runs[0] / "artifacts" / "figures").glob("*.png"))


def test_tensorboard_gets_the_figures(tracked: tuple[Path, Path]):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked[1] / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert any(tag.startswith("figures/") for tag in events.Tags()["images"])


def test_resume_continues_the_same_tracked_runs(tracked: tuple[Path, Path], tmp_path: Path):
    _, run = tracked
    ids = yaml.safe_load((run / "trackers.yaml").read_text())
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "config.yaml").write_text((copy / "config.yaml").read_text().replace("max_epochs: 2", "max_epochs: 3"))
    result = run_cli("train", "--resume", str(copy), env={"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert yaml.safe_load((copy / "trackers.yaml").read_text()) == ids
    assert len(list((copy / "mlruns").glob(f"*/{ids['mlflow']}"))) == 1
    assert len(list((copy / "mlruns").glob("*/*/meta.yaml"))) == 1  # no second MLflow run


def test_a_missing_tracker_package_is_named_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import importlib.util

    plugin = registry.load("tjepa")
    data = plugin.make_example_data(tmp_path / "data")
    cfg = resolve_config(plugin, data, [], ["trainer.loggers=[csv,wandb]"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UserError, match=r"ssl-domains\[tracking\]"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_tracker_named_twice_is_a_config_error(tmp_path: Path):
    from ssl_domains import ConfigError

    with pytest.raises(ConfigError, match="twice"):
        resolve_config(registry.load("tjepa"), tmp_path, [], ["trainer.loggers=[csv,csv]"])
