"""Batch memory that the training loader's workers reuse: shared-memory slots, each taken for one batch and free
again once the main process holds no view of it.

**Why.** A batch built in a worker lives in shared memory (:func:`ssl_domains.data.batch_tensors`), so that
sending it copies nothing. A fresh segment per batch costs a page fault for every 4 kB page in the worker that
fills it, and the kernel zeroes each page first: on a 2-core VM about 0.6 µs a page, 0.8 ms for one 13-band 224²
view, more than reading that view from the page cache. A slot that is reused is already faulted in. One SSL4EO
worker went from about 490 to about 820 items/s from the page cache (``benchmarks/scale.py``, docs/scaling.md).

**How.** :class:`ssl_domains.loader.ResumableDataLoader` makes one :class:`BatchSlots` for its workers: a table of
flags in shared memory, ``per_worker`` slots per worker. While a worker builds a batch, the first
:func:`shared_storage` call (made by ``batch_tensors``) takes one of the worker's free slots and the batch is carved
from it. The batch reaches the main process with a note of its slot, and the main process keeps a weak reference
to the slot's storage (``StorageWeakRef``). Each time a batch arrives, the slots whose storage no tensor views any
more are marked free: so a slot is not reused before the training step, the copy into pinned memory, a callback
that kept the batch, or a slice of it has let go. A worker with no free slot allocates a fresh segment, as before:
it never waits and never overwrites a batch in use.

**Cost.** Up to ``per_worker`` batches of shared memory per worker for as long as the workers live (the loader's
workers persist): by default ``prefetch_factor + 2``, the batches one worker can have in flight. A container's
``/dev/shm`` must hold them (Docker: ``--shm-size`` or ``--ipc=host``, as for any PyTorch loader with workers).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.data import get_worker_info

__all__ = ["BatchSlots", "shared_storage"]

_building: BatchSlots | None = None  # in a worker: the slots of the batch being built, from fetch to collate


def shared_storage(nbytes: int) -> torch.UntypedStorage:
    """``nbytes`` (or more) of shared memory for a batch built in a loader worker: a free slot of the training
    loader's :class:`BatchSlots` for the first call of a batch, otherwise a fresh segment."""
    if _building is not None:
        storage = _building.take(nbytes)
        if storage is not None:
            return storage
    return torch.UntypedStorage._new_shared(nbytes)


Lease = tuple[int, str]  # (slot, the batch's key whose tensor views it)


class BatchSlots:
    """Shared-memory slots for the batches of ``workers`` loader workers (see the module docstring).

    Worker side: :meth:`begin` before a batch's items are read, :meth:`finish` once it is collated. Main side:
    :meth:`hold` for every batch received. The flags are shared; the slots' storages live in each worker.
    """

    def __init__(self, workers: int, per_worker: int) -> None:
        self.per_worker = per_worker
        self.free = torch.ones(workers * per_worker, dtype=torch.bool).share_memory_()
        self._flags: np.ndarray | None = None
        self._storages: dict[int, torch.UntypedStorage] = {}  # worker side: this worker's slots
        self._taken: int | None = None  # worker side: the slot of the batch being built
        self._held: dict[int, StorageWeakRef] = {}  # main side: slots sent and not yet seen free

    def __getstate__(self) -> dict[str, Any]:  # a spawned worker gets the shared flags, nothing process-local
        return {"per_worker": self.per_worker, "free": self.free}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.per_worker, self.free = state["per_worker"], state["free"]
        self._flags, self._storages, self._taken, self._held = None, {}, None, {}

    @property
    def flags(self) -> np.ndarray:
        if self._flags is None:
            self._flags = self.free.numpy()
        return self._flags

    # ---- worker side -----------------------------------------------------------------------------------------
    def begin(self) -> None:
        """A batch is about to be read in this worker: its first :func:`shared_storage` call may take a slot."""
        global _building
        if self._taken is not None:  # the last batch failed before its collate: its slot was never sent
            self.flags[self._taken] = True
            self._taken = None
        _building = self if get_worker_info() is not None else None

    def take(self, nbytes: int) -> torch.UntypedStorage | None:
        """A free slot of this worker holding at least ``nbytes``, now taken; ``None`` when the batch has one
        already or every slot is in use."""
        info = get_worker_info()
        if self._taken is not None or info is None:
            return None
        first = info.id * self.per_worker
        for slot in range(first, first + self.per_worker):
            if self.flags[slot]:
                storage = self._storages.get(slot)
                if storage is None or storage.nbytes() < nbytes:  # a slot grows to the largest batch it held
                    storage = self._storages[slot] = torch.UntypedStorage._new_shared(nbytes)
                self.flags[slot] = False
                self._taken = slot
                return storage
        return None

    def finish(self, batch: Any) -> Lease | None:
        """The batch is built: the lease it travels with, or ``None`` (and the slot free again) when it does not
        use its slot (a batch read again item by item, or a slot taken for a scratch buffer)."""
        global _building
        _building = None
        slot, self._taken = self._taken, None
        if slot is None:
            return None
        address = self._storages[slot].data_ptr()
        if isinstance(batch, dict):
            for key, value in batch.items():
                if torch.is_tensor(value) and value.untyped_storage().data_ptr() == address:
                    return slot, key
        self.flags[slot] = True
        return None

    # ---- main side -------------------------------------------------------------------------------------------
    def hold(self, lease: Lease | None, storage: StorageWeakRef | None) -> None:
        """A batch arrived (``lease`` and a weak reference to its slot's storage, if it has one): free the slots
        whose earlier batches are gone, and keep this one until it is."""
        for slot, ref in list(self._held.items()):
            if ref.expired():
                del self._held[slot]
                self.flags[slot] = True
        if lease is not None and storage is not None:
            self._held[lease[0]] = storage


def storage_ref(batch: Any, lease: Lease | None) -> StorageWeakRef | None:
    """A weak reference to the storage of the leased slot in ``batch`` (in the main process)."""
    if lease is None:
        return None
    return StorageWeakRef(batch[lease[1]].untyped_storage())
