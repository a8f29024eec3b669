"""Data-loading glue shared by plugins: seeded shuffling, loaders for dict batches, and splits.

Plugins build their own LightningDataModule (they know their formats); these helpers make the parts every
plugin needs behave the same way: the order of training items is a function of ``(seed, epoch)`` only, so a run
resumed from a checkpoint sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import operator
import os
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, overload

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torch.utils.data._utils.collate import default_collate

from .batchmemory import shared_storage

__all__ = [
    "DurationBatchSampler",
    "EpochShuffleSampler",
    "LengthGroupedSampler",
    "PackedList",
    "batch_tensor",
    "batch_tensors",
    "eval_loader",
    "mix_seed",
    "random_split_indices",
    "train_loader",
]


def mix_seed(*parts: int) -> int:
    """Combine integers into one 63-bit seed (SplitMix64-style), stable across processes and platforms."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


class EpochShuffleSampler(DistributedSampler):
    """Shuffles ``range(num_items)`` with a permutation that depends only on ``(seed, epoch)``, and shards it.

    Lightning calls :meth:`set_epoch` at the start of every epoch. The permutation is drawn lazily, on the first
    ``next()``, so it reflects the epoch even when the loader's iterator was created before ``set_epoch``
    (which is what happens on resume).

    Under DDP (a process group is initialised when Lightning asks for the training loader) rank ``r`` of ``W``
    takes positions ``r, r + W, ...`` of that permutation, padded by wrapping around to a multiple of ``W``. The
    local batches of one step are then together exactly the batch one process would train on with ``W`` times the
    batch size. It is a ``DistributedSampler`` so that Lightning keeps it instead of wrapping it in a sampler
    that would shuffle the order a second time.
    """

    def __init__(
        self, num_items: int, seed: int, shuffle: bool = True, num_replicas: int | None = None, rank: int | None = None
    ) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if distributed else 1
        if rank is None:
            rank = torch.distributed.get_rank() if distributed else 0
        super().__init__(range(int(num_items)), num_replicas=num_replicas, rank=rank, shuffle=False)  # type: ignore[arg-type]
        self.num_items = int(num_items)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation for ``epoch``."""
        self.epoch = int(epoch)

    def skip_next(self, items: int) -> None:
        """Make the next iteration start ``items`` positions into this rank's share (a mid-epoch resume)."""
        self._skip = max(int(items), 0)

    def order(self) -> np.ndarray:
        """This epoch's order of all items (int64), before sharding (subclasses may regroup it).

        An array, not a list: a list of Python ints costs ~36 bytes an item (400 MB for 11M table rows), and it
        is held for the whole epoch in the main process and in every worker."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            return torch.randperm(self.num_items, generator=gen).numpy()
        return np.arange(self.num_items, dtype=np.int64)

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        if self.num_replicas > 1 and len(order):
            # pad by repetition (as DistributedSampler does): every rank gets num_samples items, even when there
            # are fewer items than ranks, so no rank skips a step the others wait on
            order = np.resize(order, self.total_size)[self.rank : self.total_size : self.num_replicas]
        skip, self._skip = self._skip, 0
        yield from map(int, order[skip:])

    def __len__(self) -> int:
        return self.num_samples


class LengthGroupedSampler(EpochShuffleSampler):
    """An :class:`EpochShuffleSampler` whose batches hold items of similar length (variable-length sequences).

    The epoch's permutation is cut into windows of ``window_batches`` global batches; each window is sorted by
    length, cut into batches, and the batches of the whole epoch are shuffled (seeded by ``(seed, epoch)``). Padding
    to the longest item of a batch then wastes little compute, while every epoch still sees a fresh random order
    (the scheme of Hugging Face's ``LengthGroupedSampler`` and ESPnet's bucketing). Under DDP each global batch of
    ``batch_size * world`` consecutive items is dealt round-robin, so each rank's local batch is length-grouped too.
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, seed: int, window_batches: int = 50, **kwargs: Any
    ) -> None:
        super().__init__(len(lengths), seed, shuffle=True, **kwargs)
        self.lengths = np.asarray(lengths)
        self.global_batch = int(batch_size) * self.num_replicas
        self.window_batches = int(window_batches)

    def order(self) -> np.ndarray:
        order = super().order()
        window = self.global_batch * self.window_batches
        batches: list[np.ndarray] = []
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i : i + self.global_batch] for i in range(0, len(chunk), self.global_batch))
        gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 1))
        shuffled = torch.randperm(len(batches), generator=gen).tolist()
        # a short batch stays last, where drop_last can drop it
        short = [i for i in shuffled if len(batches[i]) < self.global_batch]
        shuffled = [i for i in shuffled if len(batches[i]) == self.global_batch] + short
        return np.concatenate([batches[i] for i in shuffled]) if batches else np.zeros(0, dtype=np.int64)


class DurationBatchSampler(EpochShuffleSampler):
    """Batches of variable size capped by their padded length: lhotse's ``max_duration`` for variable-length items.

    Yields lists of indices, one list per step. Each epoch's permutation (seeded by ``(seed, epoch)``) is cut into
    windows of about ``window_batches`` batches; each window is sorted by length and packed so that a batch's
    rows times its longest item stay within ``max_total`` (frames, tokens, ...) per rank, and the batches of the
    epoch are shuffled. Memory per step is then bounded whatever the mix of lengths, and short items come many to
    a batch instead of padding a fixed-size one. Under DDP a global batch of ``world × max_total`` is dealt
    round-robin; every rank gets the same number of batches. ``skip_next`` counts batches here, which is what
    :class:`ssl_domains.loader.ResumableDataLoader` hands it on resume.
    """

    yields_batches = True

    def __init__(
        self, lengths: Sequence[int], max_total: int, seed: int, window_batches: int = 50, **kwargs: Any
    ) -> None:
        super().__init__(len(lengths), seed, shuffle=True, **kwargs)
        self.lengths = np.maximum(np.asarray(lengths, dtype=np.int64), 1)
        self.max_total = int(max_total)
        if len(self.lengths) and int(self.lengths.max()) > self.max_total:
            raise ValueError(f"an item of length {int(self.lengths.max())} exceeds max_total {self.max_total}")
        typical = max(self.max_total // int(np.median(self.lengths)), 1) if len(self.lengths) else 1
        self.window_items = typical * self.num_replicas * int(window_batches)
        self._epoch_batches: tuple[int, list[np.ndarray]] | None = None

    def batches(self) -> list[np.ndarray]:
        """This epoch's global batches (each to be dealt over the ranks), in training order."""
        if self._epoch_batches is not None and self._epoch_batches[0] == self.epoch:
            return self._epoch_batches[1]
        order = super().order()
        batches: list[np.ndarray] = []
        for start in range(0, len(order), self.window_items):
            chunk = order[start : start + self.window_items]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            i = 0
            while i < len(chunk):  # longest first: a batch's first item sets its rows
                rows = (self.max_total // int(self.lengths[chunk[i]])) * self.num_replicas
                batches.append(chunk[i : i + rows])
                i += rows
        gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 2))
        batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
        self._epoch_batches = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:  # type: ignore[override]
        skip, self._skip = self._skip, 0
        for batch in self.batches()[skip:]:
            if len(batch) < self.num_replicas:  # too few for every rank: repeat items, as DistributedSampler pads
                batch = np.resize(batch, self.num_replicas)
            yield batch[self.rank :: self.num_replicas].tolist()

    def __len__(self) -> int:
        return len(self.batches())


T = TypeVar("T")


class PackedList(Sequence[T]):
    """A read-only list of picklable items kept as one byte array of their pickles and an array of offsets.

    A Python list of objects costs its objects' headers and pointers (an index of a million file paths, several
    GB), and a forked DataLoader worker that touches an object writes its reference count, so each worker
    copies every page of objects it visits, and a garbage collection visits them all (PyTorch issue 13246).
    Here the items are bytes in two NumPy arrays: the list costs what its pickles take, the workers share it
    without copying, and it pickles (to an index cache) as two arrays. ``items`` is consumed once, so a
    generator builds it without the objects ever being held together. An item is unpickled on each access
    (a few microseconds for a small dataclass): keep what the hot path needs, and make items pickle compactly.
    """

    def __init__(self, items: Iterable[T] = ()) -> None:
        data, ends = bytearray(), []
        for item in items:
            data += pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
            ends.append(len(data))
        self._data = np.frombuffer(data, dtype=np.uint8) if data else np.zeros(0, dtype=np.uint8)
        self._ends = np.asarray(ends, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ends)

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = operator.index(index)  # an int or a NumPy integer, as a list takes
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"PackedList index {index} out of range for {len(self)} items")
        start = int(self._ends[i - 1]) if i else 0
        return pickle.loads(self._data[start : int(self._ends[i])])

    def __iter__(self) -> Iterator[T]:
        return (self[i] for i in range(len(self)))

    @property
    def nbytes(self) -> int:
        """The bytes of its pickles and offsets (a list just built may hold up to 1/8 more in spare capacity; one
        read back from a pickle does not)."""
        return self._data.nbytes + self._ends.nbytes

    def __eq__(self, other: object) -> bool:
        """Equal to a PackedList whose items pickle to the same bytes (not to a list: compare ``list(packed)``)."""
        if not isinstance(other, PackedList):
            return NotImplemented
        return np.array_equal(self._ends, other._ends) and np.array_equal(self._data, other._data)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PackedList({len(self)} items, {self.nbytes / 1e6:.1f} MB)"


def batch_tensor(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor for a collate function to fill in place: in shared memory when called in a
    DataLoader worker, as ``default_collate`` does, so that handing the batch to the main process copies nothing.

    A batch built as a plain tensor in a worker is copied into shared memory when it is sent (PyTorch's
    ``ForkingPickler``): for RS chips that copy, with the page faults of the new memory, halved a worker's rate.
    A batch of several tensors is best allocated at once with :func:`batch_tensors`.
    """
    return batch_tensors({"x": (shape, dtype)})["x"]


_ALIGN = 64  # bytes: every field starts on a cache line, so any dtype's elements are aligned


def batch_tensors(fields: Mapping[str, tuple[Sequence[int], torch.dtype]]) -> dict[str, torch.Tensor]:
    """Uninitialised CPU tensors for the fields of one batch (name -> ``(shape, dtype)``), carved from a single
    storage: in shared memory inside a DataLoader worker, so the batch reaches the main process as one segment.

    Each tensor sent from a worker costs a shared-memory segment of its own (created, its file descriptor passed,
    mapped and faulted in on both sides), whatever its size; for small batches that fixed cost is most of the trip.
    T-JEPA's batches of 512 rows (five tensors) went from 221,000 to 400,000 rows/s through one worker
    (``benchmarks/scale.py --plugin tjepa``, docs/plugins/tjepa.md). The tensors are views of the one storage,
    so they stay valid (and the storage alive) as long as any of them is referenced. In the training loader's
    workers the first call of a batch reuses a slot of memory already faulted in (:mod:`ssl_domains.batchmemory`).
    """
    offsets, end = [], 0
    for shape, dtype in fields.values():
        offsets.append(end)
        nbytes = int(np.prod(tuple(shape), dtype=np.int64)) * dtype.itemsize
        end += -(-nbytes // _ALIGN) * _ALIGN
    # in a worker: a reused slot of the training loader's batch memory, or a fresh segment
    storage = torch.UntypedStorage(end) if torch.utils.data.get_worker_info() is None else shared_storage(end)
    return {
        name: torch.empty(0, dtype=dtype).set_(storage, offset // dtype.itemsize, tuple(shape))
        for (name, (shape, dtype)), offset in zip(fields.items(), offsets, strict=True)
    }


def train_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int | None = None,
    collate_fn: Callable[[list[Any]], dict[str, Any]] | None = None,
    num_workers: int = 0,
    drop_last: bool | str = False,
    shuffle: bool = True,
    lengths: Sequence[int] | None = None,
    sampler: EpochShuffleSampler | None = None,
) -> DataLoader:
    """A training DataLoader with a seeded order (:class:`EpochShuffleSampler`) that resumes mid-epoch.

    ``seed`` defaults to the run's global seed (``trainer.seed``, exported by ``seed_everything``).
    ``drop_last="auto"`` drops the last partial batch only when this rank's share of the data holds more than
    one batch (under DDP each rank gets ``1/W`` of the items). With ``lengths`` (one per item), batches group
    items of similar length (:class:`LengthGroupedSampler`); ``sampler`` replaces the default order with another
    :class:`EpochShuffleSampler`; a sampler that yields whole batches (:class:`DurationBatchSampler`) makes
    ``batch_size`` unused, each step taking the batch the sampler drew. The loader is a
    :class:`ssl_domains.loader.ResumableDataLoader`: checkpoints hold its position and RNG streams, and a
    :class:`~ssl_domains.errors.DataError` raised for one item follows ``trainer.on_data_error``.
    """
    from .loader import ResumableDataLoader

    if seed is None:
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
    if sampler is None and lengths is not None and shuffle:
        sampler = LengthGroupedSampler(lengths, batch_size, seed)
    elif sampler is None:
        sampler = EpochShuffleSampler(len(dataset), seed, shuffle=shuffle)  # type: ignore[arg-type]
    whole_batches = getattr(sampler, "yields_batches", False)
    if whole_batches:  # the sampler sized every batch: nothing to drop
        drop_last = False
    elif drop_last == "auto":  # drop a partial last batch only when this rank's share holds a full one
        drop_last = len(sampler) > batch_size
    return ResumableDataLoader(
        dataset,
        seed=seed,
        batch_size=None if whole_batches else batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        drop_last=bool(drop_last),
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


class BatchOrCollate:
    """A collate function that passes on a batch the dataset built whole (a dict from ``__getitems__``); both
    loaders use it (:func:`train_loader` through :class:`ssl_domains.loader.ResumableDataLoader`)."""

    def __init__(self, collate: Callable[[list[Any]], Any] | None) -> None:
        self.collate = collate or default_collate

    def __call__(self, items: Any) -> Any:
        return items if isinstance(items, dict) else self.collate(items)


def eval_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    collate_fn: Callable[[list[Any]], dict[str, Any]] | None = None,
    num_workers: int = 0,
) -> DataLoader:
    """An in-order DataLoader for validation, embedding export and evaluation. As in :func:`train_loader`, a
    dataset whose ``__getitems__`` returns a dict has built the batch itself, and ``collate_fn`` is skipped."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=BatchOrCollate(collate_fn),
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
    )


def random_split_indices(
    num_items: int, fractions: Sequence[float], seed: int, stratify: np.ndarray | None = None
) -> list[np.ndarray]:
    """Split ``range(num_items)`` into parts of the given fractions (they must sum to 1), optionally stratified.

    With ``stratify`` (one label per item), every class is split in the same proportions, so small classes
    appear in every part.
    """
    if not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must sum to 1, got {list(fractions)}")
    rng = np.random.default_rng(seed)
    groups = (
        [np.arange(num_items)] if stratify is None else [np.flatnonzero(stratify == c) for c in np.unique(stratify)]
    )
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for group in groups:
        group = rng.permutation(group)
        bounds = np.round(np.cumsum(fractions) * len(group)).astype(int)
        start = 0
        for i, stop in enumerate(bounds):
            parts[i].append(group[start:stop])
            start = stop
    return [np.sort(np.concatenate(p)) if p else np.empty(0, dtype=int) for p in parts]
