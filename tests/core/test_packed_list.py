"""PackedList: a list kept as pickles in two arrays, which forked loader workers share without copying."""

from __future__ import annotations

import gc
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from ssl_domains.data import PackedList


def _records(n: int) -> list[dict]:
    return [{"path": f"/data/s2c/{i:07d}/B01.tif", "shape": (264, 264), "date": "20200915"} for i in range(n)]


def test_a_packed_list_gives_back_its_items_by_index_slice_and_iteration():
    records = _records(50)
    packed = PackedList(iter(records))  # a generator is enough: it is consumed once
    assert len(packed) == 50
    assert packed[0] == records[0] and packed[49] == records[49] and packed[-1] == records[-1]
    assert packed[10:13] == records[10:13] and packed[::20] == records[::20]
    assert list(packed) == records
    with pytest.raises(IndexError):
        packed[50]
    with pytest.raises(IndexError):
        packed[-51]
    assert len(PackedList()) == 0 and list(PackedList()) == []
    assert packed[np.int64(3)] == records[3]  # NumPy integers index it, as they index a list
    for wrong in ("1", 1.5):
        with pytest.raises(TypeError):
            packed[wrong]
    assert packed == PackedList(records) and packed != PackedList(records[:-1]) and packed != records


def test_a_packed_list_pickles_as_its_two_arrays():
    records = _records(1000)
    packed = PackedList(records)
    again = pickle.loads(pickle.dumps(packed, protocol=pickle.HIGHEST_PROTOCOL))
    assert list(again) == records
    assert sorted(vars(again)) == ["_data", "_ends"]
    assert all(isinstance(v, np.ndarray) for v in vars(again).values())
    # the pickle is the items' pickles and 8 bytes of offset each, not a pickle of 1,000 objects
    assert len(pickle.dumps(again)) < packed.nbytes + 1_000
    assert packed.nbytes == sum(len(pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL)) for r in records) + 8 * 1000


def _dirty_mb_in_a_fork(items) -> float:
    """Private memory a forked process (as a DataLoader worker is) copies while it reads every item and
    collects garbage."""

    def private_dirty() -> float:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1]) / 1e3
        raise AssertionError("no Private_Dirty")

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            start = private_dirty()
            for i in range(len(items)):
                _ = items[i]["path"]  # the item and its path string: both reference counts are written
            gc.collect()
            os.write(write, json.dumps(private_dirty() - start).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        dirty = json.loads(pipe.read())
    os.waitpid(pid, 0)
    return dirty


def test_a_forked_worker_shares_a_packed_list_but_copies_a_list():
    baseline = _dirty_mb_in_a_fork([])  # what a collection copies of everything else in the process
    as_list = _records(300_000)
    copied = _dirty_mb_in_a_fork(as_list) - baseline
    del as_list  # else the collector in the second fork visits it too
    gc.collect()
    shared = _dirty_mb_in_a_fork(PackedList(iter(_records(300_000)))) - baseline
    # the list's 300k dicts and path strings are about 38 MB of objects, and touching one writes its page; how
    # many pages a process copies also depends on what it allocated before (the suite's CI run copied half of
    # what a lone run does), so the bounds are loose and the ratio is the claim
    assert copied > 10
    assert shared < 1.5 and shared < 0.1 * copied
