"""s3prl's TERA checkpoints in and out (``ssl_domains_audio.weights_tera``) through the real commands."""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from ssl_domains import registry
from ssl_domains.cli import main
from ssl_domains_audio.model import TERAModel
from ssl_domains_audio.weights_tera import to_ours, to_theirs

SIZES = {"dim": 32, "depth": 2, "heads": 2, "ff_dim": 64}
TRANSFORMER = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "share_layer": False,
    "pre_layer_norm": False,
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return registry.load("tera").make_example_data(tmp_path_factory.mktemp("clips"))


def _s3prl_file(path: Path, model: TERAModel, **changes) -> Path:
    """A file laid out as s3prl's runner saves it, with the two objects real ones hold: ``Args`` and a
    ``WarmupLinearSchedule`` inside the Lamb optimizer's param groups (a class of a module named ``optimizers``)."""
    transformer, head = to_theirs(model.state_dict(), SIZES["depth"])
    fake = types.ModuleType("optimizers")
    schedule = type("WarmupLinearSchedule", (), {"__module__": "optimizers"})
    fake.WarmupLinearSchedule = schedule
    sys.modules["optimizers"] = fake
    sched = schedule()
    sched.warmup, sched.t_total = 0.07, 1000.0
    states = {
        "Transformer": transformer, "SpecHead": head, "Step": 1234, "Args": argparse.Namespace(upstream="tera"),
        "Optimizer": {"state": {}, "param_groups": [{"lr": 2e-4, "schedule": sched, "params": [0]}]},
        "Upstream_Config": {"transformer": {**TRANSFORMER, **changes}, "task": {"sequence_length": 1500}},
    }  # fmt: skip
    try:
        torch.save(states, path)
    finally:
        del sys.modules["optimizers"]
    return path


def _model() -> TERAModel:
    torch.manual_seed(0)
    return TERAModel(80, **SIZES, dropout=0.0, max_frames=1024).eval()


def test_an_s3prl_checkpoint_imports_into_a_run_that_embeds_like_the_original(clips, tmp_path, capsys):
    original = _model()
    ckpt = _s3prl_file(tmp_path / "states-1234.ckpt", original)
    run = tmp_path / "run"
    assert main(["import", "--plugin", "tera", "--from", str(ckpt), "--data", str(clips), "--output", str(run)]) == 0
    record = yaml.safe_load((run / "imported.yaml").read_text())
    assert record["format"] == "s3prl" and len(record["sha256"]) == 64 and record["fresh"] == []
    config = yaml.safe_load((run / "config.yaml").read_text())["tera"]
    assert {k: config[k] for k in SIZES} == SIZES and config["crop_frames"] == 1500
    from ssl_domains import load_encoder

    model, dm = load_encoder(run, clips)
    batch = next(iter(dm.predict_dataloader()))
    with torch.no_grad():
        assert torch.allclose(model.embed(batch), original.embed(batch), atol=1e-6)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    assert "--init-from" in capsys.readouterr().err  # an imported run has no training state to continue


def test_legacy_names_and_a_missing_head(clips, tmp_path):
    model = _model()
    transformer, _head = to_theirs(model.state_dict(), 2)
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in transformer.items()}  # fmt: skip
    torch.save({"Transformer": legacy, "Config": {"transformer": TRANSFORMER}}, tmp_path / "old.ckpt")
    run = tmp_path / "run"
    args = ["import", "--plugin", "tera", "--from", str(tmp_path / "old.ckpt"), "--data", str(clips)]
    assert main([*args, "--output", str(run)]) == 0
    record = yaml.safe_load((run / "imported.yaml").read_text())
    assert record["fresh"] and all(k.startswith("head.") for k in record["fresh"])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s["Transformer"].update(extra=torch.zeros(1)), "does not know: extra"),
        (lambda s: s["Upstream_Config"]["transformer"].update(pre_layer_norm=True), "pre_layer_norm=True"),
        (lambda s: s.pop("Transformer"), "no 'Transformer' state dict"),
    ],
)
def test_files_it_cannot_hold_are_one_error_and_leave_nothing(clips, tmp_path, capsys, mutate, message):
    path = _s3prl_file(tmp_path / "s.ckpt", _model())
    sys.modules["optimizers"] = types.ModuleType("optimizers")  # only to re-save the edited file
    sys.modules["optimizers"].WarmupLinearSchedule = type("WarmupLinearSchedule", (), {"__module__": "optimizers"})
    try:
        states = torch.load(path, weights_only=False)
        mutate(states)
        torch.save(states, path)
    finally:
        del sys.modules["optimizers"]
    capsys.readouterr()
    args = ["import", "--plugin", "tera", "--from", str(path), "--data", str(clips), "--output", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_sizes_that_contradict_the_file_name_the_mismatched_keys(clips, tmp_path, capsys):
    path = _s3prl_file(tmp_path / "s.ckpt", _model())
    args = ["import", "--plugin", "tera", "--from", str(path), "--data", str(clips), "--output", str(tmp_path / "r")]
    assert main([*args, "--set", "tera.ff_dim=32"]) == 2
    err = capsys.readouterr().err
    assert "shape mismatch" in err and "blocks.0.ff.0.weight: file (64, 32), model (32, 32)" in err
    assert not (tmp_path / "r").exists()


def test_export_writes_what_s3prl_loads(clips, tmp_path):
    original = _model()
    ckpt = _s3prl_file(tmp_path / "s.ckpt", original)
    run = tmp_path / "run"
    assert main(["import", "--plugin", "tera", "--from", str(ckpt), "--data", str(clips), "--output", str(run)]) == 0
    out = tmp_path / "exported.ckpt"
    assert main(["export", "--run", str(run), "--format", "s3prl", "--output", str(out)]) == 0
    states = torch.load(out, weights_only=True)  # plain tensors and dicts only
    assert {"Transformer", "SpecHead", "Upstream_Config"} <= set(states)
    assert states["Upstream_Config"]["transformer"]["num_hidden_layers"] == 2
    assert states["Upstream_Config"]["audio"]["input"] == {"feat_type": "mel", "log": True, "delta": 0, "cmvn": True,
                                                           "channel": 0}  # fmt: skip
    back = to_ours(states["Transformer"], states["SpecHead"], 2)
    assert all(torch.equal(back[k], v) for k, v in original.state_dict().items() if k in back)
    assert set(back) == set(original.state_dict())
