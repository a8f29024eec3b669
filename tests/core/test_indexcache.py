"""The on-disk index cache: built once, reused while the files and the key are the same, rebuilt otherwise."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from ssl_domains.indexcache import cache_root, cached_index, tree_signature


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SSL_DOMAINS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    (root / "a" / "b").mkdir(parents=True)
    for name in ("a/x.tif", "a/b/y.tif", "z.tif"):
        (root / name).write_bytes(b"0" * 10)
    return root


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict[str, int]:
        self.calls += 1
        return {"items": self.calls}


def test_signature_counts_every_file_and_changes_with_one(corpus: Path) -> None:
    files, first = tree_signature(corpus)
    assert files == 3
    assert tree_signature(corpus) == (3, first)
    os.utime(corpus / "a" / "b" / "y.tif", ns=(1, 1))
    assert tree_signature(corpus)[1] != first


def test_built_once_then_read(corpus: Path) -> None:
    build = Counter()
    assert cached_index(corpus, {"chip": 120}, build) == {"items": 1}
    assert cached_index(corpus, {"chip": 120}, build) == {"items": 1}
    assert build.calls == 1
    assert len(list((cache_root() / "index").glob("*.pkl"))) == 1


@pytest.mark.parametrize("change", ["add", "remove", "touch", "resize", "key"])
def test_rebuilt_when_files_or_key_change(corpus: Path, change: str) -> None:
    build = Counter()
    cached_index(corpus, {"chip": 120}, build)
    key = {"chip": 120}
    if change == "add":
        (corpus / "a" / "new.tif").write_bytes(b"1")
    elif change == "remove":
        (corpus / "z.tif").unlink()
    elif change == "touch":
        os.utime(corpus / "z.tif", ns=(10**18, 10**18))
    elif change == "resize":
        (corpus / "z.tif").write_bytes(b"0" * 11)
    else:
        key = {"chip": 96}
    assert cached_index(corpus, key, build) == {"items": 2}
    assert build.calls == 2


def test_disabled_builds_every_time_and_writes_nothing(corpus: Path) -> None:
    build = Counter()
    cached_index(corpus, {}, build, enabled=False)
    cached_index(corpus, {}, build, enabled=False)
    assert build.calls == 2
    assert not (cache_root() / "index").exists()


def test_corrupt_cache_is_rebuilt(corpus: Path, caplog: pytest.LogCaptureFixture) -> None:
    build = Counter()
    cached_index(corpus, {}, build)
    (entry,) = (cache_root() / "index").glob("*.pkl")
    entry.write_bytes(b"not a pickle")
    with caplog.at_level(logging.WARNING):
        assert cached_index(corpus, {}, build) == {"items": 2}
    assert "cannot be read" in caplog.text
    assert cached_index(corpus, {}, build) == {"items": 2}  # and the rebuilt entry is good


def test_unwritable_cache_is_a_warning(corpus: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    blocker = corpus.parent / "file-not-folder"
    blocker.write_text("")
    monkeypatch.setenv("SSL_DOMAINS_CACHE", str(blocker))  # mkdir under a file fails
    build = Counter()
    with caplog.at_level(logging.WARNING):
        assert cached_index(corpus, {}, build) == {"items": 1}
    assert "could not cache the index" in caplog.text


def test_cached_arrays_come_back_memory_mapped_and_follow_the_files(corpus: Path) -> None:
    import numpy as np

    from ssl_domains.indexcache import cached_arrays

    calls = []

    def build() -> dict[str, np.ndarray]:
        calls.append(1)
        return {"points": np.arange(12, dtype=np.int16).reshape(4, 3), "counts": np.array([1, 2, 3, 4])}

    first = cached_arrays(corpus, {"v": 1}, build)
    assert isinstance(first["points"], np.memmap) and not first["points"].flags.writeable
    again = cached_arrays(corpus, {"v": 1}, build)
    assert len(calls) == 1 and np.array_equal(again["points"], np.arange(12).reshape(4, 3))
    assert again["points"].dtype == np.int16 and again["counts"].tolist() == [1, 2, 3, 4]
    cached_arrays(corpus, {"v": 2}, build)  # another key
    (corpus / "new.tif").write_bytes(b"1")  # another file
    cached_arrays(corpus, {"v": 1}, build)
    assert len(calls) == 3
    plain = cached_arrays(corpus, {"v": 1}, build, enabled=False)
    assert len(calls) == 4 and not isinstance(plain["points"], np.memmap)
    assert not list((cache_root() / "index").glob(".*"))  # no temporary folder left behind
