"""Faults and what they leave: bad input before any work, unreadable items mid-epoch, full disks, and the run
directory's life cycle (docs/reliability.md has one row per fault, each pinned by a test here or named there)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ssl_domains import DataError, registry
from ssl_domains.cli import main
from ssl_domains.errors import PREEMPTED_EXIT_CODE
from tests.conftest import QUIET

BATCH, STEPS_PER_EPOCH = 16, 116  # the template's example data: 1,843 training rows of 2,048


def training_rows(position: int) -> int:
    """The row of the template's example data that the first epoch (seed 0) trains on at ``position``."""
    from ssl_domains.data import EpochShuffleSampler, random_split_indices

    train, _ = random_split_indices(2048, (0.9, 0.1), seed=0)
    return int(train[EpochShuffleSampler(len(train), seed=0).order()[position]])


@pytest.fixture(scope="module")
def vectors(tmp_path_factory) -> Path:
    return registry.load("dae").make_example_data(tmp_path_factory.mktemp("vectors"))


def dae(data: Path, out: Path, *extra: str) -> list[str]:
    args = ["train", "--plugin", "dae", "--data", str(data), "--output", str(out), "--max-epochs", "2"]
    return [*args, "--set", f"dae.batch_size={BATCH}", "--set", "trainer.checkpoint_every_n_steps=25", *QUIET, *extra]


def unreadable_row(monkeypatch, rows: set[int]) -> None:
    """Make the template's dataset raise a DataError for the given rows, as a reader of a corrupt file does."""
    from ssl_domains_template import data

    original = data._Rows.__getitem__

    def getitem(self, i: int) -> int:
        row = original(self, i)
        if row in rows:
            raise DataError(f"rows.bin: row {row} cannot be decoded; re-export the file or remove the row")
        return row

    monkeypatch.setattr(data._Rows, "__getitem__", getitem)


def weights_equal(a: Path, b: Path) -> bool:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def straight(vectors: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(dae(vectors, out)) == 0
    return out


def test_bad_config_and_bad_data_fail_before_the_run_directory_exists(vectors: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    # a cross-field check in the config classes (chip must be a multiple of patch), not in a factory
    assert (
        main(["train", "--plugin", "croma", "--data", str(vectors), "--output", str(out), "--set", "croma.chip=100"])
        == 2
    )
    assert "chip 100 is not a multiple of patch 8" in capsys.readouterr().err
    assert main(dae(tmp_path / "missing.npy", out)) == 2
    (tmp_path / "broken.npy").write_bytes(b"not a numpy file")
    assert main(dae(tmp_path / "broken.npy", out)) == 2
    assert "broken.npy is not a readable .npy file" in capsys.readouterr().err
    assert not out.exists(), "a run that failed on its input must leave no run directory"


def test_a_run_failing_before_its_first_checkpoint_removes_what_it_created(vectors: Path, tmp_path: Path, capsys):
    out = tmp_path / "nan"
    assert main(dae(vectors, out, "--set", "optim.lr=1e30", "--set", "trainer.log_every_n_steps=1")) == 1
    assert "the loss became" in capsys.readouterr().err
    assert not out.exists()
    # the same command, fixed, runs in the same place
    assert main(dae(vectors, out, "--max-epochs", "1")) == 0


def test_an_unreadable_item_mid_epoch_stops_at_a_checkpoint_and_resume_is_exact(
    vectors: Path, straight: Path, tmp_path: Path, monkeypatch, capsys
):
    out, bad = tmp_path / "run", training_rows(40 * BATCH + 3)  # in the 41st batch of the first epoch
    with monkeypatch.context() as patch:
        unreadable_row(patch, {bad})
        assert main(dae(vectors, out)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"error: rows.bin: row {bad} cannot be decoded"), lines[-1]
    assert "checkpoint written" in lines[-1] and f"--resume {out}" in lines[-1] and "on_data_error=skip" in lines[-1]
    # the 40 steps before the batch holding it, not one more and not one fewer
    assert torch.load(out / "last.ckpt", weights_only=True)["global_step"] == 40
    assert not (out / "model.safetensors").exists()
    # the file is fixed: the resumed run trains exactly the batches the uninterrupted run trained
    assert main(["train", "--resume", str(out)]) == 0
    assert weights_equal(straight, out)


def test_on_data_error_skip_replaces_the_item_and_counts_it(vectors: Path, tmp_path: Path, monkeypatch, capsys):
    out = tmp_path / "run"
    unreadable_row(monkeypatch, {training_rows(100), training_rows(1000)})
    assert main(dae(vectors, out, "--set", "trainer.on_data_error=skip", "--set", "trainer.log_every_n_steps=1")) == 0
    listed = (out / "skipped_items.txt").read_text().splitlines()
    assert len(listed) == 4 and all("cannot be decoded" in line for line in listed), "2 rows x 2 epochs"
    assert "skipped 4 unreadable items" in capsys.readouterr().out
    header, *rows = (out / "metrics.csv").read_text().splitlines()
    column = header.split(",").index("train/skipped_items")
    assert max(float(r.split(",")[column]) for r in rows if r.split(",")[column]) == 4


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_where(
    vectors: Path, straight: Path, tmp_path: Path, monkeypatch, capsys
):
    import ssl_domains.checkpoint as checkpoint

    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:  # the third checkpoint: half written, then the disk is full
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.torch, "save", save)
        assert main(dae(vectors, out)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: cannot write ") and "step-000000075.ckpt: No space left on device" in err
    assert f"the last good checkpoint is {out / 'last.ckpt'}" in err and f"--resume {out}" in err
    assert torch.load(out / "last.ckpt", weights_only=True)["global_step"] == 50
    assert not list(out.rglob("*.tmp")), "the partial file is removed"
    assert main(["train", "--resume", str(out)]) == 0
    assert weights_equal(straight, out)


def test_keep_checkpoints_keeps_the_newest(vectors: Path, tmp_path: Path):
    out = tmp_path / "run"
    assert main(dae(vectors, out, "--set", "trainer.keep_checkpoints=3")) == 0
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["epoch-0002-step-000000232.ckpt", "step-000000200.ckpt", "step-000000225.ckpt"]
    assert (out / "last.ckpt").samefile(out / "checkpoints" / "epoch-0002-step-000000232.ckpt")


def test_an_existing_run_directory_is_refused_with_the_way_on(vectors: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert main(dae(vectors, out, "--max-epochs", "1")) == 0
    assert main(dae(vectors, out, "--max-epochs", "1")) == 2
    assert f"continue it with `ssl-domains train --resume {out}`" in capsys.readouterr().err
    killed_early = tmp_path / "early"
    killed_early.mkdir()
    (killed_early / "config.yaml").write_text("plugin: dae\n")  # what a kill -9 before the first checkpoint leaves
    assert main(dae(vectors, killed_early)) == 2
    assert "saved no checkpoint" in capsys.readouterr().err
    assert main(dae(vectors, killed_early, "--max-epochs", "1", "--resume-if-exists")) == 0  # started over
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    assert main(dae(vectors, tmp_path / "mine", "--resume-if-exists")) == 2
    assert (tmp_path / "mine" / "notes.txt").is_file()


def test_resume_if_exists_refuses_a_run_of_another_config(vectors: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert main(dae(vectors, out, "--max-epochs", "1")) == 0
    assert main(dae(vectors, out, "--max-epochs", "1", "--resume-if-exists", "--set", "optim.lr=0.5")) == 2
    assert "optim.lr: the run has 0.001, the command 0.5" in capsys.readouterr().err


def test_every_plugin_requires_what_its_package_imports():
    import ast
    import sys

    core = {"torch", "lightning", "numpy", "yaml", "sklearn", "safetensors", "tensorboard", "pyarrow", "ssl_domains"}
    for name, record in registry.discover().items():
        plugin = record.load_class_instance()
        package = Path(sys.modules[type(plugin).__module__].__file__).parent
        needed: set[str] = set()
        for source in package.rglob("*.py"):
            tree = ast.parse(source.read_text())
            optional = {  # imports guarded by `except ImportError` raise their own install hint
                id(node)
                for t in ast.walk(tree)
                if isinstance(t, ast.Try)
                and any("ImportError" in ast.unparse(h.type or ast.Name("")) for h in t.handlers)
                for node in ast.walk(ast.Module(body=t.body, type_ignores=[]))
            }
            for node in ast.walk(tree):
                if id(node) in optional:
                    continue
                if isinstance(node, ast.Import):
                    needed |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    needed.add(node.module.split(".")[0])
        missing = needed - set(sys.stdlib_module_names) - core - {package.name} - set(plugin.requires)
        assert not missing, f"{name} imports {sorted(missing)} but its requires lists only {plugin.requires}"


def _preempt(args: list[str], out: Path, signum: int) -> subprocess.CompletedProcess:
    """Start ``ssl-domains ARGS``, send ``signum`` once it has trained past its first step checkpoint."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssl_domains", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any((out / "checkpoints").glob("step-*.ckpt")):
            time.sleep(0.2)  # between two step checkpoints
            proc.send_signal(signum)
            break
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_checkpoints_the_current_step_and_the_same_command_continues(
    vectors: Path, straight: Path, tmp_path: Path, signum: int
):
    out = tmp_path / "run"
    # 16 rows a batch, 2 epochs: long enough to be signalled mid-epoch; step checkpoints every 25 steps
    command = [*dae(vectors, out), "--resume-if-exists"]
    result = _preempt(command, out, signum)
    assert result.returncode == PREEMPTED_EXIT_CODE, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"preempted: stopped by {signal.Signals(signum).name}; checkpoint written: "), line
    stopped_at = torch.load(out / "last.ckpt", weights_only=True)["global_step"]
    assert stopped_at > 25, "written at the step the signal arrived, after the first periodic checkpoint"
    assert f"(step {stopped_at})" in line and not (out / "model.safetensors").exists()
    # a requeued job runs the same command again: it continues the run, and ends where the straight run ended
    again = subprocess.run([sys.executable, "-m", "ssl_domains", *command], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert weights_equal(straight, out)
    header, *rows = (out / "metrics.csv").read_text().splitlines()
    names = header.split(",")
    step, loss = names.index("step"), names.index("train/loss_step")
    logged = [int(r.split(",")[step]) for r in rows if r.split(",")[loss] != ""]
    assert logged == sorted(set(logged)), "a replayed step's metrics appear once, in order"


def test_a_signal_at_an_epochs_last_batch_checkpoints_after_its_validation(
    vectors: Path, straight: Path, tmp_path: Path, monkeypatch
):
    """Lightning resumes a checkpoint of an epoch's last batch in the next epoch, skipping the epoch's end: the
    resumed run trained one epoch short (found when a signal landed on step 116 under load)."""
    from ssl_domains.checkpointing import RunCheckpoints

    step_end = RunCheckpoints.on_train_batch_end

    def signal_at_the_last_batch(self, trainer, *args):
        if trainer.global_step == STEPS_PER_EPOCH and self.stop_reason is None:
            os.kill(os.getpid(), signal.SIGUSR1)  # handled by RunCheckpoints: sets the stop flag
        return step_end(self, trainer, *args)

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(RunCheckpoints, "on_train_batch_end", signal_at_the_last_batch)
        assert main(dae(vectors, out)) == PREEMPTED_EXIT_CODE
    # the write waited for the epoch's end: the epoch's validation ran before it, in the same process
    written = {p.name for p in (out / "checkpoints").glob("*.ckpt")}
    assert f"epoch-0001-step-{STEPS_PER_EPOCH:09d}.ckpt" in written
    assert f"step-{STEPS_PER_EPOCH:09d}.ckpt" not in written
    header, *rows = (out / "metrics.csv").read_text().splitlines()
    assert any(r.split(",")[header.split(",").index("val/loss")] != "" for r in rows)
    assert main(dae(vectors, out, "--resume-if-exists")) == 0
    assert weights_equal(straight, out)
    assert torch.load(out / "last.ckpt", weights_only=True)["global_step"] == 2 * STEPS_PER_EPOCH


def test_the_conformance_kit_raises_under_python_O():
    code = """
import tempfile
from pathlib import Path
from ssl_domains import registry
import ssl_domains.testing as kit
plugin = registry.load("dae")
type(plugin).description = ""
try:
    kit.check_metadata(plugin, Path(tempfile.mkdtemp()))
except kit.PluginCheckError as exc:
    print("RAISED", exc)
"""
    result = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True)
    assert result.stdout.startswith("RAISED check_metadata: description must be a non-empty string"), result


def test_a_missing_extra_is_one_error_before_any_work(vectors: Path, tmp_path: Path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'matplotlib':\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(hide), "PYTHONWARNINGS": "ignore"}
    listed = subprocess.run([sys.executable, "-m", "ssl_domains", "list"], capture_output=True, text=True, env=env)
    row = next(line for line in listed.stdout.splitlines() if line.startswith("tjepa "))
    assert "missing extra" in row and 'pip install "ssl-domains[tabular]"' in row
    data = registry.load("tjepa").make_example_data(tmp_path / "table")
    out = tmp_path / "out"
    train = subprocess.run(
        [sys.executable, "-m", "ssl_domains", "train", "--plugin", "tjepa", "--data", str(data), "--output", str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert train.returncode == 2 and "Traceback" not in train.stderr
    assert train.stderr.strip() == (
        "error: plugin 'tjepa' needs matplotlib, which is not installed. Run: pip install \"ssl-domains[tabular]\""
    )
    assert not out.exists()
