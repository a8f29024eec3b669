"""The core of ``ssl-domains import`` / ``export`` and ``train --init-from``: strict loading, safe reading, and
starting a run from another run's weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ssl_domains import UserError
from ssl_domains.cli import main
from ssl_domains.transfer import ImportedWeights, load_strict, read_checkpoint


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)


def test_load_strict_lists_every_problem_in_one_error():
    net = _Net()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["body.weight"] = torch.zeros(5, 4)  # wrong shape
    state.pop("head.bias")  # missing
    state["extra.weight"] = torch.zeros(1)  # unexpected
    with pytest.raises(UserError) as err:
        load_strict(net, ImportedWeights({}, state), Path("x.pt"))
    text = str(err.value)
    assert "missing (1): head.bias" in text
    assert "unexpected (1): extra.weight" in text
    assert "body.weight: file (5, 4), model (3, 4)" in text


def test_load_strict_loads_and_reports_fresh_keys():
    source, target = _Net(), _Net()
    state = {k: v for k, v in source.state_dict().items() if k.startswith("body.")}
    head_before = target.head.weight.clone()
    fresh = load_strict(target, ImportedWeights({}, state, fresh=("head.",)), Path("x.pt"))
    assert fresh == ["head.bias", "head.weight"]
    assert torch.equal(target.body.weight, source.body.weight)
    assert torch.equal(target.head.weight, head_before)  # left at its initialisation


def test_read_checkpoint_refuses_pickled_objects_and_names_the_file(tmp_path: Path):
    path = tmp_path / "objects.pt"
    torch.save({"model": _Net()}, path)  # a pickled module: would run code under weights_only=False
    with pytest.raises(UserError, match=r"objects\.pt cannot be read as a checkpoint.*weights_only=True"):
        read_checkpoint(path)
    with pytest.raises(UserError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(UserError, match="not a mapping"):
        read_checkpoint(tmp_path / "list.pt")


def test_train_init_from_starts_from_the_run_weights(vectors: Path, tmp_path: Path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    base = ["--plugin", "dae", "--data", str(vectors), "--max-epochs", "1", "--set", "trainer.progress_bar=false"]
    assert main(["train", *base, "--output", str(first)]) == 0
    # a learning rate far below float32's resolution: the weights cannot move, so they must be the first run's
    args = ["train", "--init-from", str(first), "--data", str(vectors), "--max-epochs", "1", "--output", str(second)]
    assert main([*args, "--set", "optim.lr=1e-30", "--set", "optim.warmup_steps=0"]) == 0
    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "first" in (second / "initialised_from.yaml").read_text()
    capsys.readouterr()
    assert main(["train", "--init-from", str(first), "--resume", str(first)]) == 2
    assert "give one" in capsys.readouterr().err


def test_import_and_export_need_a_plugin_with_that_format(vectors: Path, tmp_path: Path, capsys):
    code = main(["import", "--plugin", "dae", "--from", str(tmp_path / "w.pt"), "--data", str(vectors),
                 "--output", str(tmp_path / "run")])  # fmt: skip
    assert code == 2
    assert "imports no published weight format" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
