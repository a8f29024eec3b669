"""Batch memory the training loader's workers reuse (ssl_domains.batchmemory): reused once let go, never while
any view of a batch is alive in the main process."""

from __future__ import annotations

import gc
import time
from multiprocessing.reduction import ForkingPickler

import torch
from torch.utils.data import Dataset

from ssl_domains import DataError
from ssl_domains.batchmemory import BatchSlots
from ssl_domains.data import batch_tensors, train_loader

ITEMS, BATCH = 96, 4


class _Batches(Dataset):
    """Batches built with batch_tensors; ``before`` is what the memory held before the batch was written: zeros
    for a fresh segment, an earlier batch's ids for a reused slot."""

    def __init__(self, bad: int | None = None, read_s: float = 0.0) -> None:
        self.bad, self.read_s = bad, read_s

    def __len__(self) -> int:
        return ITEMS

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        n = len(indices)
        time.sleep(self.read_s)  # the reads a real batch waits for before its first tensor
        out = batch_tensors({"id": ((n,), torch.int64), "x": ((n, 2048), torch.float32), "before": ((n,), torch.int64)})
        out["before"].copy_(out["id"])
        if self.bad in indices:
            raise DataError(f"item {self.bad} is unreadable")
        out["id"].copy_(torch.tensor(indices))
        out["x"].copy_(out["id"][:, None].float().expand(-1, 2048))
        return out


def _loader(bad: int | None = None, read_s: float = 0.0) -> torch.utils.data.DataLoader:
    return train_loader(_Batches(bad, read_s), batch_size=BATCH, seed=0, num_workers=1, shuffle=False)


def _intact(batch: dict[str, torch.Tensor], ids: list[int]) -> bool:
    return batch["id"].tolist() == ids and torch.equal(batch["x"], batch["id"][:, None].float().expand(-1, 2048))


def test_a_worker_reuses_the_memory_of_batches_the_main_process_let_go():
    # a worker slower than the loop, the case reuse is for: the main process has let an earlier batch go by
    # the time the worker starts the next one. (A worker as fast as a loop doing nothing races the loop's
    # freeing of a slot, and takes fresh memory when it wins: 16 of 24 batches reused in one loaded CI run.)
    loader = _loader(read_s=0.02)
    reused = []
    for step, batch in enumerate(loader):  # each batch dropped before the next arrives
        assert _intact(batch, list(range(step * BATCH, (step + 1) * BATCH)))
        earlier = batch["before"]
        if bool(earlier.any()):
            reused.append(step)
            # the slot held a batch the loop had already finished with, at least two batches back
            assert int(earlier[0]) % BATCH == 0 and int(earlier[0]) // BATCH <= step - 2
    assert len(reused) >= ITEMS // BATCH - 6, reused  # all but the first few batches: no fresh segment
    assert loader.slots is not None and loader.slots.per_worker == 4


def test_batches_kept_by_the_main_process_are_never_overwritten():
    loader = _loader()
    kept = list(loader)  # every batch alive: the worker finds no free slot and takes fresh memory
    assert all(_intact(b, list(range(i * BATCH, (i + 1) * BATCH))) for i, b in enumerate(kept))
    # a slice of a batch keeps its slot in use, though the batch itself is gone
    slices, it = [], iter(_loader())
    for step in range(ITEMS // BATCH):
        batch = next(it)
        slices.append((step, batch["x"][1:3]))
        del batch
        gc.collect()
    assert all(torch.equal(x, torch.full((2, 2048), float(step * BATCH + 1)).add_(torch.tensor([[0.0], [1.0]])))
               for step, x in slices)  # fmt: skip


def test_a_batch_read_again_item_by_item_frees_its_slot_and_keeps_its_values():
    loader = _loader(bad=9)
    loader.on_error = "skip"
    ids = [b["id"].tolist() for b in loader]
    assert ids[2] == [8, 10, 10, 11] and loader.skipped == 1
    assert [i for batch in ids for i in batch] == [i if i != 9 else 10 for i in range(ITEMS)]


def test_slots_travel_to_a_spawned_worker_as_shared_flags():
    slots = BatchSlots(workers=2, per_worker=3)
    copy = ForkingPickler.loads(ForkingPickler.dumps(slots))  # as multiprocessing hands a spawned worker its dataset
    assert copy.per_worker == 3 and copy.free.shape == (6,) and bool(copy.free.all())
    assert not copy._storages and not copy._held
    copy.flags[4] = False  # a worker takes a slot: the main process sees it
    assert slots.free.tolist() == [True] * 4 + [False, True]
