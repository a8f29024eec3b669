"""Entry-point discovery: sorted, lazy, duplicates warned, failures isolated and explained."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ssl_domains import registry
from ssl_domains.errors import PluginError
from tests.conftest import run_cli, train_cli

PLUGIN_CLASS = """
from ssl_domains import ModalityPlugin


class {cls}(ModalityPlugin):
    name = "{name}"
    description = "a test plugin"
    paper = "none"
    extra = {extra!r}
    requires = {requires!r}

    config = object

    def datamodule(self, cfg, data): ...
    def model(self, cfg, dm): ...
    def objective(self, cfg): ...
    def make_example_data(self, root): ...
"""


def fake_distribution(root: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """Install a distribution the way pip would leave it: a dist-info folder and modules on sys.path."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[ssl_domains.plugins]\n{lines}\n")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def third_party(tmp_path: Path) -> Path:
    """A broken plugin, one that exits on import, one whose extra is missing."""
    fake_distribution(
        tmp_path,
        "broken-plugin-pkg",
        {"broken": "broken_mod:Plugin"},
        {"broken_mod": "raise RuntimeError('boom at import')\n"},
    )
    fake_distribution(
        tmp_path, "exiting-plugin-pkg", {"exiting": "exiting_mod:Plugin"}, {"exiting_mod": "import sys\nsys.exit(3)\n"}
    )
    fake_distribution(
        tmp_path,
        "needs-extra-pkg",
        {"needsextra": "needs_mod:NeedsExtra"},
        {
            "needs_mod": PLUGIN_CLASS.format(
                cls="NeedsExtra", name="needsextra", extra="fancy", requires=("surely_missing_module_xyz",)
            )
        },
    )
    return tmp_path


def test_first_party_plugins_come_from_entry_points_sorted():
    records = registry.discover()
    assert list(records) == sorted(records)
    graph = records["graphmae"]
    assert graph.distribution == "ssl-domains"
    assert graph.target == "ssl_domains_graph.plugin:GraphMAEPlugin"
    assert records["dae"].distribution == "ssl-domains-plugin-template"


def test_list_isolates_broken_plugins_and_explains_missing_extras(third_party: Path):
    result = run_cli("list", env={"PYTHONPATH": str(third_party)})
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert "broken" in rows["broken"] and "RuntimeError: boom at import" in rows["broken"]
    assert "broken" in rows["exiting"] and "SystemExit" in rows["exiting"]
    assert "missing extra" in rows["needsextra"]
    assert 'pip install "needs-extra-pkg[fancy]"' in rows["needsextra"]
    assert rows["graphmae"].split()[2] == "ok" and rows["dae"].split()[2] == "ok"


def test_a_broken_plugin_does_not_stop_another_from_training(third_party: Path, vectors: Path, tmp_path: Path):
    train_cli("dae", vectors, tmp_path / "run", "--fast-dev-run", env={"PYTHONPATH": str(third_party)})


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        ("broken", "failed to load: RuntimeError: boom at import"),
        (
            "needsextra",
            'needs surely_missing_module_xyz, which is not installed. Run: pip install "needs-extra-pkg[fancy]"',
        ),
    ],
)
def test_using_a_broken_or_incomplete_plugin_is_one_clear_error(third_party: Path, plugin: str, message: str):
    result = run_cli("train", "--plugin", plugin, "--data", ".", env={"PYTHONPATH": str(third_party)})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_duplicate_names_warn_naming_both_distributions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    source = PLUGIN_CLASS.format(cls="Twin", name="twin", extra=None, requires=())
    fake_distribution(tmp_path, "dup-a", {"twin": "twin_a:Twin"}, {"twin_a": source})
    fake_distribution(tmp_path, "dup-b", {"twin": "twin_b:Twin"}, {"twin_b": source})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(RuntimeWarning, match=r"'dup-a' \(twin_a:Twin\) and 'dup-b' \(twin_b:Twin\); using 'dup-a'"):
        records = registry.discover()
    assert records["twin"].distribution == "dup-a"


def test_disabled_plugins_are_skipped(third_party: Path):
    result = run_cli("list", env={"PYTHONPATH": str(third_party), "SSL_DOMAINS_DISABLE_PLUGINS": "broken,exiting"})
    names = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert "broken" not in names and "exiting" not in names and "graphmae" in names


def test_unknown_plugin_suggests_the_closest_name():
    with pytest.raises(PluginError, match="Did you mean 'graphmae'"):
        registry.load("graphma")


@pytest.mark.parametrize("command", [["list"], ["info", "graphmae"], ["info", "dae"], ["--help"]])
def test_light_commands_never_import_torch(command: list[str]):
    code = (
        "import sys\nfrom ssl_domains.cli import main\n"
        f"try:\n    main({command!r})\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'lightning', 'torch_geometric') if m in sys.modules]\n"
        "assert not heavy, heavy\nprint('clean')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and "clean" in result.stdout, result.stderr


FIRST_CONTRACT_PLUGIN = """
from ssl_domains import ModalityPlugin


class OldPlugin(ModalityPlugin):
    name = "oldstyle"
    description = "written for the first contract"
    paper = "none"
    test_overrides = {"oldstyle": {"dim": 4}}

    def default_config(self): ...
    def datamodule(self, cfg, data): ...
    def model(self, cfg, dm): ...
    def objective(self, cfg): ...
    def make_example_data(self, root): ...
    def on_train_batch_end(self, model, batch, progress): ...
    def visualize(self, model, datamodule, out_dir): ...
"""


def test_a_plugin_of_the_first_contract_gets_one_error_naming_every_change(tmp_path: Path):
    fake_distribution(tmp_path, "old-plugin-pkg", {"oldstyle": "old_mod:OldPlugin"}, {"old_mod": FIRST_CONTRACT_PLUGIN})
    result = run_cli("info", "oldstyle", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "first plugin contract" in message and "Traceback" not in result.stderr
    for change in ("def example_overrides(self)", "def after_step(self, progress", "config = MyConfig",
                   "`visualize` takes (model, datamodule, cfg, out_dir, device)"):  # fmt: skip
        assert change in message, f"{change!r} missing from: {message}"
    listed = run_cli("list", env={"PYTHONPATH": str(tmp_path)})
    assert "first plugin contract" in next(line for line in listed.stdout.splitlines() if line.startswith("oldstyle"))
