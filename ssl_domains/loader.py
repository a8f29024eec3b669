"""The training DataLoader of every plugin: resumable mid-epoch, and explicit about unreadable items.

:class:`ResumableDataLoader` is what :func:`ssl_domains.data.train_loader` returns. Lightning saves its
``state_dict()`` inside every checkpoint and hands it back through ``load_state_dict()`` on ``--resume``
(Lightning's ``_Stateful`` protocol, the one torchdata's ``StatefulDataLoader`` follows). The state is:

* the epoch and the number of batches this rank has consumed in it, so the resumed iterator starts at the next
  batch without reading the consumed ones (the core's samplers skip indices; other samplers are drawn through);
* the host RNG streams (torch, NumPy, ``random``, and CUDA where used) at the last step boundary, per rank, so
  the masks, crops and dropout drawn after the resume point are the ones the uninterrupted run drew. Worker
  processes are seeded from the loader's own generator, reseeded from ``(seed, epoch, rank)`` at every epoch.

With ``num_workers = 0`` a resumed run is bit-identical to an uninterrupted one. With workers, the order and
position are exact, and so is randomness that a dataset keys by item (as MERLIN's patches are); a dataset that
draws from a worker's global RNG draws fresh numbers after the resume point.

**Unreadable items.** A :class:`~ssl_domains.errors.DataError` raised by the dataset for one item is caught
here, in the worker. With ``on_error="skip"`` the item is replaced by the next readable item of the dataset (so
batch shapes and the number of steps per rank stay the same), the file is named in the log, and the count is
kept in :attr:`ResumableDataLoader.skipped`. With ``on_error="stop"`` the error reaches the training loop as one
``DataError`` naming the file; in one process it is raised before the batch is trained on, so the checkpoint
written then holds exactly the steps before it. Under DDP the failing rank cannot stop alone (the others wait
in the gradient all-reduce), so it trains that one step on the substitute and :attr:`pending_error` is agreed
on by all ranks at the step's end (see ``ssl_domains.checkpointing``).

**Batches read whole.** A plugin's dataset may define ``__getitems__(indices)`` (PyTorch's batched fetch) and
return the finished batch as a dict, read in place into tensors from :func:`ssl_domains.data.batch_tensor`; the
collate function is then skipped. A batch that raises :class:`~ssl_domains.errors.DataError` is read again item
by item through ``__getitem__``, each item guarded as above, and collated. With workers, the first such tensor of
a batch comes from a slot of batch memory the worker reuses once this process has let go of it
(:mod:`ssl_domains.batchmemory`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .batchmemory import BatchSlots, Lease, storage_ref
from .data import BatchOrCollate, mix_seed
from .errors import DataError

__all__ = ["ResumableDataLoader", "capture_rng", "restore_rng"]

log = logging.getLogger("ssl_domains")

MAX_SUBSTITUTES = 32  # readable items tried after an unreadable one before giving up on the batch
MAX_KEPT_MESSAGES = 10_000  # skipped items listed in skipped_items.txt (the count is always complete)


def capture_rng() -> dict[str, Any]:
    """The process's host RNG states: torch (CPU and every initialised CUDA device), NumPy's and ``random``'s."""
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # as tensors and numbers, so that checkpoints load with weights_only=True
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore states written by :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    saved = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": saved["key"].numpy().astype(np.uint32), "pos": saved["pos"]},
            "has_gauss": saved["has_gauss"],
            "gauss": saved["gauss"],
        }
    )
    random.setstate(_as_python_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(value: Any) -> tuple:
    # random.getstate() is (version, tuple_of_ints, gauss); a checkpoint round trip may turn tuples into lists
    version, internal, gauss = value
    return int(version), tuple(int(v) for v in internal), gauss


_UNREADABLE: list[str] = []  # this process's messages since the last collate (each worker has its own list)


@dataclass
class _Collated:
    """What a worker hands the main process: the plugin's batch, what was unreadable while building it, and the
    batch memory slot it was built in (:mod:`ssl_domains.batchmemory`), if any."""

    batch: Any
    skipped: list[str]
    lease: Lease | None = None
    slot_storage: Any = None  # main side: a weak reference to the slot's storage, taken before pinning copies it

    def pin_memory(self) -> _Collated:  # DataLoader(pin_memory=True) calls this on custom batch types
        from torch.utils.data._utils.pin_memory import pin_memory

        return _Collated(pin_memory(self.batch), self.skipped, self.lease, storage_ref(self.batch, self.lease))


class _Guarded(Dataset):
    """``dataset[i]``, or the next readable item when item ``i`` raises :class:`DataError`.

    Items are returned unchanged, so ``loader.dataset[i]`` reads like the plugin's dataset (other attributes are
    forwarded to it too). The messages of unreadable items go to a per-process list that the collate function,
    which the DataLoader calls right after the batch's items in the same process, hands on with the batch.
    """

    def __init__(self, dataset: Dataset, slots: BatchSlots | None = None) -> None:
        self.dataset, self.slots = dataset, slots

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "slots"):  # not set yet (unpickling in a worker): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitems__(self, indices: list[int]) -> Any:
        """A batch's items; or, when the plugin's dataset has ``__getitems__`` (reading a whole batch in place,
        returning the batch as a dict or its items as a list), what that returns. A batch that holds an unreadable
        item is read again item by item, each guarded."""
        if self.slots is not None:  # the batch's first shared buffer may be a reused slot
            self.slots.begin()
        if getattr(type(self.dataset), "__getitems__", None) is None:
            return [self[i] for i in indices]
        try:
            return self.dataset.__getitems__(indices)  # type: ignore[attr-defined]
        except DataError:
            return [self[i] for i in indices]

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, list):  # a whole batch from a sampler that yields batches
            return self.__getitems__(index)
        try:
            return self.dataset[index]
        except DataError as exc:
            if not isinstance(index, (int, np.integer)):
                raise
            messages = [str(exc)]
        n = len(self)
        for step in range(1, min(MAX_SUBSTITUTES, n)):
            try:
                item = self.dataset[(int(index) + step) % n]
            except DataError as exc:
                messages.append(str(exc))
                continue
            _UNREADABLE.extend(messages)
            return item
        raise DataError(f"{len(messages)} items in a row are unreadable; the first: {messages[0]}")


class _GuardedCollate:
    def __init__(self, collate: Callable[[list[Any]], Any] | None, slots: BatchSlots | None = None) -> None:
        self.collate = BatchOrCollate(collate)  # a dict: the dataset built the batch
        self.slots = slots

    def __call__(self, items: list[Any]) -> _Collated:
        skipped = list(_UNREADABLE)
        _UNREADABLE.clear()
        batch = self.collate(items)
        return _Collated(batch, skipped, self.slots.finish(batch) if self.slots is not None else None)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position, RNG streams and unreadable-item policy survive a checkpoint.

    Build it with :func:`ssl_domains.data.train_loader`. ``seed`` and ``rank`` seed the loader's generator per
    epoch (worker seeds); ``on_error`` is ``"stop"`` or ``"skip"`` (see the module docstring).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        seed: int,
        on_error: Literal["stop", "skip"] = "stop",
        collate_fn: Callable[[list[Any]], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.seed, self.on_error = int(seed), on_error
        self.user_collate_fn = collate_fn
        kwargs.setdefault("generator", torch.Generator())
        workers = int(kwargs.get("num_workers", 0))
        # batch memory the workers reuse: as many slots as batches one worker can have in flight
        per_worker = (kwargs.get("prefetch_factor") or 2) + 2
        self.slots = BatchSlots(workers, per_worker) if workers > 0 else None
        super().__init__(_Guarded(dataset, self.slots), collate_fn=_GuardedCollate(collate_fn, self.slots), **kwargs)
        self.skipped = 0  # items replaced on this rank since the run (or its resume) started
        self.pending_error: str | None = None  # a DDP rank's unreadable item in "stop" mode, until agreed on
        self._epoch = 0
        self._consumed = 0  # batches of the current epoch handed to the training loop
        self._boundary_rng: dict[str, Any] | None = None  # host RNG when the last fetch started
        self._failed_fetch = False
        self._finished = False  # the training loop ended this epoch (limit_train_batches may end it early)
        self._resume: dict[str, Any] | None = None
        self.skipped_messages: list[str] = []  # the first MAX_KEPT_MESSAGES of them

    # ---- Lightning's _Stateful protocol ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Epoch, consumed batches and every rank's host RNG at the last step boundary.

        Called by Lightning on every rank while it writes a checkpoint, so under DDP the RNG states are gathered
        (a collective) and each rank finds its own on resume.
        """
        rng = self._boundary_rng if self._failed_fetch and self._boundary_rng is not None else capture_rng()
        ranks = [rng]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, rng)
        return {"epoch": self._epoch, "consumed": self._consumed, "finished": self._finished, "rng": ranks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` at the next ``iter()``: the same epoch's next batch, or the next epoch."""
        self._resume = dict(state)
        self._set_epoch(int(state["epoch"]) + 1 if state.get("finished") else int(state["epoch"]))

    def follow_epoch(self, epoch: int) -> None:
        """Start ``epoch`` if the training loop resumed there past the loaded state's epoch.

        Lightning resumes a checkpoint taken at an epoch's last batch in the next epoch; the state's position (the
        end of the previous epoch) would otherwise make that epoch empty, and the run would end an epoch early.
        """
        if self._resume is not None and not self._resume.get("finished") and int(self._resume["epoch"]) < epoch:
            self._resume["finished"] = True
            self._set_epoch(epoch)

    def mark_epoch_end(self) -> None:
        """Called by the core when the training loop ends an epoch, before its checkpoint is written."""
        self._finished = True

    # ---- iteration -------------------------------------------------------------------------------------------
    def _set_epoch(self, epoch: int) -> None:
        for sampler in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if callable(getattr(sampler, "set_epoch", None)):
                sampler.set_epoch(epoch)

    def _current_epoch(self) -> int:
        for sampler in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if hasattr(sampler, "epoch"):
                return int(sampler.epoch)
        return self._epoch

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        resume, self._resume = self._resume, None
        self._finished = False
        self._epoch = self._current_epoch()
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if self.generator is not None:  # worker seeds: a function of (seed, epoch, rank), not of history
            self.generator.manual_seed(mix_seed(self.seed, self._epoch, rank, 0xDA7A))
        skip = 0
        if resume is not None and not resume.get("finished") and int(resume["epoch"]) == self._epoch:
            skip = int(resume["consumed"])
        samplers = [s for s in (self.sampler, getattr(self.batch_sampler, "sampler", None)) if s is not None]
        skippable = next((s for s in samplers if callable(getattr(s, "skip_next", None))), None)
        if skippable is not None and self.batch_size is None and not getattr(skippable, "yields_batches", False):
            skippable = None  # items of a batch_sampler's own sampler: how many a batch takes is not known here
        if skip and skippable is not None:  # indices only: nothing is read (a sampler of batches counts batches)
            skippable.skip_next(skip * (self.batch_size or 1))
        inner = super().__iter__()
        if skip and skippable is None:
            for _ in range(skip):  # a sampler that cannot skip: draw the batches and drop them
                next(inner)
        if resume is not None:
            ranks = resume["rng"]
            restore_rng(ranks[rank] if rank < len(ranks) else ranks[0])
        self._consumed = skip
        return self._batches(inner)

    def _batches(self, inner: Iterator[_Collated]) -> Iterator[Any]:
        while True:
            # With num_workers=0 a fetch runs the dataset in this process and may draw from its RNG, so a fetch that
            # fails needs the state from before it (~60 us, small beside reading items in this process). Workers
            # leave this process's RNG alone: the state at checkpoint time is the boundary's.
            self._boundary_rng = capture_rng() if self.num_workers == 0 else None
            self._failed_fetch = True
            try:
                collated = next(inner)
            except StopIteration:
                self._failed_fetch = False
                return
            if self.slots is not None:
                self.slots.hold(collated.lease, collated.slot_storage or storage_ref(collated.batch, collated.lease))
            if collated.skipped:
                self._account(collated.skipped)
            self._failed_fetch = False
            self._consumed += 1
            yield collated.batch

    def _account(self, messages: list[str]) -> None:
        if self.on_error == "skip":
            for message in messages:
                log.warning("skipped an unreadable item (trainer.on_data_error=skip): %s", message)
            self.skipped += len(messages)
            room = MAX_KEPT_MESSAGES - len(self.skipped_messages)
            self.skipped_messages.extend(messages[: max(room, 0)])
            return
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and torch.distributed.get_world_size() > 1:
            self.pending_error = self.pending_error or messages[0]
            return
        raise DataError(messages[0])
