"""The flat array file behind the decoded-pixel caches: exact round trips, windows, limits and truncation."""

from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_domains.arrayfile import ArrayFile, ArrayFileWriter, NpyRows, NpyWriter, release_pages, will_need


def _arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 65535, (13, 64, 48), dtype=np.uint16),
        rng.normal(size=(2, 64, 48)).astype(np.float32),
        rng.normal(size=(5, 7)),  # float64, two dimensions
    ]


def test_arrays_come_back_exactly_whole_and_by_window(tmp_path: Path) -> None:
    arrays = _arrays()
    with ArrayFileWriter(tmp_path / "a.bin") as writer:
        refs = [writer.append(a) for a in arrays]
    assert writer.size == sum(a.nbytes for a in arrays) == (tmp_path / "a.bin").stat().st_size
    store = ArrayFile(tmp_path / "a.bin")
    for a, ref in zip(arrays, refs, strict=True):
        assert ref.dtype == a.dtype.name and ref.shape == a.shape
        np.testing.assert_array_equal(store.read(ref), a)
    for top, left, h, w in [(0, 0, 64, 48), (10, 3, 20, 17), (63, 47, 1, 1)]:
        for a, ref in zip(arrays[:2], refs[:2], strict=True):
            window = store.read_window(ref, top, left, h, w)
            np.testing.assert_array_equal(window, a[:, top : top + h, left : left + w])
    np.testing.assert_array_equal(store.read_window(refs[2], 1, 2, 3, 4), arrays[2][1:4, 2:6])
    with pytest.raises(ValueError, match="outside"):
        store.read_window(refs[0], 50, 0, 20, 10)


def test_windows_fill_a_given_array_and_planes_are_read_across_in_one_pass(tmp_path: Path) -> None:
    """``out=`` takes the window in place (cast to its dtype); a window of most rows reads all planes in one pass
    (the rows between them dropped), 600 planes included (more buffers than one preadv takes)."""
    rng = np.random.default_rng(1)
    tall = rng.integers(0, 65535, (13, 40, 30), dtype=np.uint16)
    many = rng.integers(0, 65535, (600, 4, 4), dtype=np.uint16)
    with ArrayFileWriter(tmp_path / "a.bin") as writer:
        refs = [writer.append(tall), writer.append(many)]
    store = ArrayFile(tmp_path / "a.bin")
    for ref, a, (top, left, h, w) in [(refs[0], tall, (5, 3, 32, 24)), (refs[0], tall, (0, 0, 40, 30)),
                                      (refs[0], tall, (2, 1, 8, 8)), (refs[1], many, (1, 1, 3, 2))]:  # fmt: skip
        expected = a[:, top : top + h, left : left + w]
        np.testing.assert_array_equal(store.read_window(ref, top, left, h, w), expected)
        out = np.zeros((2, *expected.shape), dtype=np.float32)
        target = out[1]
        assert store.read_window(ref, top, left, h, w, out=target) is target
        np.testing.assert_array_equal(out[1], expected.astype(np.float32))
        assert not out[0].any()
    first = store.read_window(refs[0], 0, 0, 4, 4)
    store.read_window(refs[0], 10, 10, 4, 4)
    np.testing.assert_array_equal(first, tall[:, :4, :4])  # a window returned is not the reused buffer


def test_a_copy_for_a_worker_opens_its_own_descriptor(tmp_path: Path) -> None:
    (a, *_) = _arrays()
    with ArrayFileWriter(tmp_path / "a.bin") as writer:
        ref = writer.append(a)
    store = ArrayFile(tmp_path / "a.bin")
    store.read(ref)
    copy = pickle.loads(pickle.dumps(store))  # what a spawned DataLoader worker receives
    assert copy._fd is None
    np.testing.assert_array_equal(copy.read_window(ref, 5, 5, 10, 10), a[:, 5:15, 5:15])
    store.close()
    copy.close()


def test_the_limit_and_a_truncated_file_are_errors_naming_the_file(tmp_path: Path) -> None:
    (a, *_) = _arrays()
    writer = ArrayFileWriter(tmp_path / "a.bin", limit=a.nbytes + 10)
    writer.append(a)
    with pytest.raises(OSError, match=r"a\.bin: the cache would grow past its limit"):
        writer.append(a)
    writer.close()
    with ArrayFileWriter(tmp_path / "b.bin") as writer:
        ref = writer.append(a)
    with open(tmp_path / "b.bin", "r+b") as f:
        f.truncate(a.nbytes // 2)
    with pytest.raises(OSError, match=r"b\.bin: ends before byte .*truncated"):
        ArrayFile(tmp_path / "b.bin").read(ref)
    with pytest.raises(OSError, match=r"b\.bin: ends before byte .*truncated"):  # not a SIGBUS from the map
        ArrayFile(tmp_path / "b.bin").read_window(ref, 0, 0, 4, 4)


def test_reading_a_large_file_by_windows_keeps_nothing_resident(tmp_path: Path) -> None:
    """Unlike a long-lived memory map, windows mapped and copied one at a time leave the pages in the page cache,
    not in the process."""
    plane = np.ones((4, 1024, 1024), dtype=np.float32)  # 16 MB
    with ArrayFileWriter(tmp_path / "big.bin") as writer:
        refs = [writer.append(plane) for _ in range(32)]  # 512 MB
    store = ArrayFile(tmp_path / "big.bin")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for ref in refs:
        assert store.read_window(ref, 100, 100, 64, 64).sum() == 4 * 64 * 64
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1e3
    assert grown_mb < 64, f"peak RSS grew {grown_mb:.0f} MB reading windows of a 512 MB file"


def _build_once(args: tuple[str, str]) -> float:
    import os
    import time

    from ssl_domains.indexcache import cached_folder

    root, log = args
    os.environ["SSL_DOMAINS_CACHE"] = str(Path(root) / "cache")

    def write(folder: Path) -> None:
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(0.5)  # a long scan: the other process arrives while it runs
        (folder / "value").write_text("42")

    return float(cached_folder(Path(root) / "data", {"k": 1}, write, lambda f: (f / "value").read_text()))


def test_processes_setting_up_at_once_build_a_cache_entry_once(tmp_path: Path) -> None:
    """DDP ranks set up together: one builds (under a lock), the others wait and read what it wrote."""
    import multiprocessing

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f.txt").write_text("x")
    log = tmp_path / "built.log"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        values = pool.map(_build_once, [(str(tmp_path), str(log))] * 3)
    assert values == [42.0, 42.0, 42.0]
    assert log.read_text().count("built") == 1


def _drop_from_page_cache(path: Path) -> None:
    """Out of the page cache: the next read of ``path`` is the disk's."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _resident(address: int, length: int) -> list[bool]:
    """Whether each page of ``length`` bytes from ``address`` is in the page cache (``mincore``)."""
    page = mmap.PAGESIZE
    start = address - address % page
    pages = -(-(address + length - start) // page)
    flags = (ctypes.c_ubyte * pages)()
    assert ctypes.CDLL(None).mincore(ctypes.c_void_p(start), ctypes.c_size_t(pages * page), flags) == 0
    return [bool(f & 1) for f in flags]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and mincore: Linux")
def test_will_need_reads_a_mapped_views_pages_ahead_and_leaves_the_data(tmp_path):
    path = tmp_path / "volume.bin"
    volume = np.random.default_rng(0).random((64, 64, 64), dtype=np.float32)  # 1 MB, 16 KB a slice
    volume.tofile(path)
    _drop_from_page_cache(path)
    mapped = torch.from_file(str(path), size=volume.size, dtype=torch.float32).view(64, 64, 64)
    crop = mapped[8:24, 4:20, 2:18]  # 16 runs (one a slice) of 16 rows
    runs = [(crop[d].data_ptr(), (15 * 64 + 16) * 4) for d in range(16)]
    if all(all(_resident(*run)) for run in runs):
        pytest.fail("the file stayed in the page cache after POSIX_FADV_DONTNEED: nothing to measure")
    will_need(crop)
    deadline = time.monotonic() + 5
    while not all(all(_resident(*run)) for run in runs) and time.monotonic() < deadline:
        time.sleep(0.01)  # the reads run in the background
    assert all(all(_resident(*run)) for run in runs), "every page under the view was read ahead"
    assert torch.equal(crop, torch.from_numpy(volume[8:24, 4:20, 2:18]))
    will_need(torch.zeros(3, 0, 4))  # nothing to read; memory not a file's: no effect, no error
    will_need(torch.zeros(5))
    will_need(torch.tensor(3.0))


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="posix_fadvise")
def test_will_need_window_reads_a_windows_rows_ahead(tmp_path):
    scene = np.random.default_rng(1).integers(0, 65535, (13, 256, 256), dtype=np.uint16)  # 1.7 MB
    with ArrayFileWriter(tmp_path / "pixels.bin") as writer:
        ref = writer.append(scene)
    _drop_from_page_cache(tmp_path / "pixels.bin")
    with open(tmp_path / "pixels.bin", "rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ)  # to ask mincore; never read
    address = np.frombuffer(mapped, dtype=np.uint8).ctypes.data  # a view: reads no page
    plane, top, rows = 256 * 256 * 2, 100, 64
    spans = [(address + ref.offset + p * plane + top * 512, rows * 512) for p in range(13)]
    if all(all(_resident(*span)) for span in spans):
        pytest.fail("the file stayed in the page cache after POSIX_FADV_DONTNEED: nothing to measure")
    cache = ArrayFile(tmp_path / "pixels.bin")
    cache.will_need_window(ref, top, rows)
    deadline = time.monotonic() + 5
    while not all(all(_resident(*span)) for span in spans) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(all(_resident(*span)) for span in spans), "every plane's rows of the window were read ahead"
    assert np.array_equal(cache.read_window(ref, top, 30, rows, 200), scene[:, top : top + rows, 30:230])


def test_npy_writer_streams_rows_and_release_pages_drops_them_from_the_rss(tmp_path: Path):
    with NpyWriter(tmp_path / "a.npy", np.float32, (3,)) as writer:
        for start in range(0, 1 << 22, 1 << 20):
            writer.append(np.arange(start, start + (1 << 20), dtype=np.float32)[:, None].repeat(3, 1))
    mapped = np.load(tmp_path / "a.npy", mmap_mode="c")
    assert mapped.shape == (1 << 22, 3) and mapped[-1, 2] == (1 << 22) - 1

    def file_rss() -> int:
        lines = Path("/proc/self/status").read_text().splitlines()
        line = next(line for line in lines if line.startswith("RssFile"))
        return int(line.split()[1]) * 1024

    before = file_rss()
    assert float(torch.from_numpy(mapped)[:, 0].sum()) > 0  # touches all 48 MB
    touched = file_rss()
    release_pages([mapped, np.zeros(3)])  # arrays that are not mapped are left alone
    assert touched - before > 40e6 and file_rss() < before + 8e6
    assert mapped[7, 1] == 7  # read again from the page cache


def test_npy_rows_reads_runs_of_rows_without_mapping_them(tmp_path: Path):
    array = np.arange(200 * 5, dtype=np.float32).reshape(200, 5)
    np.save(tmp_path / "a.npy", array)
    rows = NpyRows(tmp_path / "a.npy")
    picks = np.array([7, 8, 9, 3, 3, 199, 0])  # a run, a repeat, the last and the first row
    np.testing.assert_array_equal(rows.take(picks), array[picks])
    np.testing.assert_array_equal(rows.runs(np.array([10, 50]), np.array([3, 0])), array[10:13])
    assert rows.take(np.array([], np.int64)).shape == (0, 5) and len(rows) == 200
    scattered = np.random.default_rng(0).integers(0, 200, 300)  # repeats, unsorted, spans merged across gaps
    for gap in (1, 100, 10_000):
        np.testing.assert_array_equal(rows.take(scattered, gap_bytes=gap), array[scattered])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(rows)).take(np.array([5])), array[[5]])  # a worker
    with pytest.raises(IndexError, match=r"rows outside 0\.\.199"):
        rows.take(np.array([200]))
    np.save(tmp_path / "f.npy", np.asfortranarray(array))
    with pytest.raises(ValueError, match="Fortran-ordered"):
        NpyRows(tmp_path / "f.npy")
