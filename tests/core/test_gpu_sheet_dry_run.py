"""benchmarks/gpu_sheet.sh's prerequisite checks: a missing reference is named with where it was looked for and
the variable that points at it, and found ones become ``speed.py --reference`` values. The dry run itself
(``bash benchmarks/gpu_sheet.sh --dry-run``, every workload one step on CPU) takes longer than a test may; it is
documented in docs/performance.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SHEET = Path(__file__).resolve().parents[2] / "benchmarks" / "_speed_sheet.py"


@pytest.fixture()
def sheet():
    spec = importlib.util.spec_from_file_location("_speed_sheet_under_test", SHEET)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_missing_reference_is_named_with_its_variable(sheet, tmp_path, monkeypatch):
    monkeypatch.setenv("REF_ROOT", str(tmp_path))
    monkeypatch.delenv("REF_CROMA", raising=False)
    value, where = sheet.find_reference("croma")
    assert value is None
    assert str(tmp_path / "croma" / "pretrain_croma.py") in where and "REF_CROMA=DIR" in where


def test_found_reference_becomes_a_reference_flag(sheet, tmp_path, monkeypatch):
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "loss.py").write_text("")
    monkeypatch.setenv("REF_ROOT", str(tmp_path))
    monkeypatch.delenv("REF_ALICE", raising=False)
    assert sheet.find_reference("alice") == (f"alice={tmp_path / 'alice'}", str(tmp_path / "alice"))
    other = tmp_path / "elsewhere"
    (other / "src" / "models").mkdir(parents=True)
    (other / "src" / "models" / "ast_models.py").write_text("")
    monkeypatch.setenv("REF_SSAST", str(other))
    monkeypatch.setenv("TIMM_DIR", str(tmp_path / "no_timm"))
    value, where = sheet.find_reference("ssast")  # the checkout is there, its timm is not
    assert value is None and "timm==0.4.5" in where


def test_the_sheet_covers_every_workload(sheet):
    bench = str(SHEET.parent)
    sys.path.insert(0, bench)
    try:
        from _speed_workloads import WORKLOADS
    finally:
        sys.path.remove(bench)
    assert set(sheet.ORDER) == set(WORKLOADS)
    assert set(sheet.REFERENCES) | {"merlin"} == set(WORKLOADS)  # MERLIN's reference is a package
