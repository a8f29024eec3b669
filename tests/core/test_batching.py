"""Batches capped by length (DurationBatchSampler), their resume, batches a dataset reads whole, and the memory
budget caches are chosen against."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from ssl_domains import DataError, memory
from ssl_domains.data import DurationBatchSampler, batch_tensor, batch_tensors, train_loader


def _lengths(n: int = 500, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 400, n)


def test_duration_batches_respect_the_cap_and_cover_every_item_once():
    lengths = _lengths()
    sampler = DurationBatchSampler(lengths, max_total=1200, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # a permutation of the epoch
    for batch in batches:
        assert len(batch) * lengths[batch].max() <= 1200  # padded size within the cap
    sizes = [len(b) for b in batches]
    assert min(sizes) < 5 < max(sizes)  # short items come many to a batch, long ones few
    # packing is tight: padding and the cap leave at most a third of the capacity unused
    assert lengths.sum() / (len(batches) * 1200) > 0.66


def test_duration_batches_are_a_function_of_seed_and_epoch():
    lengths = _lengths()
    a, b = DurationBatchSampler(lengths, 1200, seed=3), DurationBatchSampler(lengths, 1200, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert list(DurationBatchSampler(lengths, 1200, seed=4)) != first


def test_duration_batches_are_dealt_over_ranks_with_equal_counts():
    lengths = _lengths(301) // 2
    ranks = [DurationBatchSampler(lengths, 300, seed=1, num_replicas=2, rank=r) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])
    together = sorted(i for r in ranks for b in r for i in b)
    assert set(together) == set(range(301))  # every item, a few repeated to fill a short last batch
    for batch in (b for r in ranks for b in r):
        assert len(batch) * lengths[batch].max() <= 300


def test_an_item_longer_than_the_cap_is_refused():
    with pytest.raises(ValueError, match="length 400 exceeds max_total 300"):
        DurationBatchSampler([10, 400], 300, seed=0)


class _Lengths(Dataset):
    def __init__(self, lengths: np.ndarray, bad: int | None = None) -> None:
        self.lengths, self.bad = lengths, bad

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == self.bad:
            raise DataError(f"item {i} is unreadable")
        return torch.full((int(self.lengths[i]),), float(i))


def _collate(items: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"id": torch.tensor([int(t[0]) for t in items]), "rows": torch.tensor(len(items))}


def test_a_loader_of_duration_batches_resumes_at_the_next_batch_and_guards_each_item():
    lengths = _lengths(120)
    make = lambda: train_loader(  # noqa: E731
        _Lengths(lengths, bad=7), batch_size=4, seed=0, collate_fn=_collate,
        sampler=DurationBatchSampler(lengths, 800, seed=0),
    )  # fmt: skip
    loader = make()
    loader.on_error = "skip"
    full = [b["id"].tolist() for b in loader]
    assert len(full) == len(loader.sampler) and loader.skipped == 1  # item 7 replaced by its neighbour
    assert sum(len(b) for b in full) == len(lengths)
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    resumed = make()
    resumed.on_error = "skip"
    resumed.load_state_dict(state)
    assert [b["id"].tolist() for b in resumed] == full[3:]


class _WholeBatches(_Lengths):
    """Reads a batch at once into a tensor it allocates with batch_tensor, as the RS pixel cache does."""

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        if self.bad in indices:
            raise DataError(f"item {self.bad} is unreadable")
        ids = batch_tensor((len(indices),), torch.int64)
        ids[:] = torch.tensor(indices)
        return {"id": ids, "rows": torch.tensor(len(indices)), "shared": torch.tensor(ids.is_shared())}


@pytest.mark.parametrize("workers", [0, 1])
def test_a_dataset_reading_whole_batches_hands_them_on_and_falls_back_to_guarded_items(workers: int):
    """``__getitems__`` returning a dict is the batch (built in shared memory in a worker); a batch with an
    unreadable item is read again item by item, the item replaced as ``on_error="skip"`` says."""
    lengths = _lengths(40)
    loader = train_loader(_WholeBatches(lengths, bad=9), batch_size=4, seed=0, collate_fn=_collate,
                          num_workers=workers, shuffle=False)  # fmt: skip
    loader.on_error = "skip"
    batches = list(loader)
    assert [b["id"].tolist() for b in batches[:2]] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert all(bool(b["shared"]) == (workers == 1) for b in batches if "shared" in b)
    fallback = [b for b in batches if "shared" not in b]  # the batch holding item 9, collated from its items
    assert [b["id"].tolist() for b in fallback] == [[8, 10, 10, 11]] and loader.skipped == 1


class _OneSegmentBatches(_Lengths):
    """Builds a three-field batch in one storage with batch_tensors, as T-JEPA's rows are gathered."""

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        n = len(indices)
        out = batch_tensors({"x": ((n, 3), torch.float32), "id": ((n,), torch.int64), "flag": ((n,), torch.int8)})
        out["id"][:] = torch.tensor(indices)
        out["x"][:] = out["id"][:, None].float() / 2
        out["flag"][:] = out["id"] % 2
        return out


@pytest.mark.parametrize("workers", [0, 1])
def test_batch_tensors_reach_the_main_process_as_one_shared_segment(workers: int):
    """The fields are views of one storage, each on a 64-byte boundary, shared (one segment) from a worker,
    and carry the values written into them."""
    loader = train_loader(_OneSegmentBatches(_lengths(12)), batch_size=5, seed=0, collate_fn=_collate,
                          num_workers=workers, shuffle=False)  # fmt: skip
    batches = list(loader)
    assert [b["id"].tolist() for b in batches] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    for b in batches:
        storages = {t.untyped_storage().data_ptr() for t in b.values()}
        assert len(storages) == 1 and all(t.is_shared() == (workers == 1) for t in b.values())
        assert all((t.data_ptr() - t.untyped_storage().data_ptr()) % 64 == 0 for t in b.values())
        assert torch.equal(b["x"], b["id"][:, None].float().expand(-1, 3) / 2)
        assert b["flag"].tolist() == [i % 2 for i in b["id"].tolist()] and b["flag"].dtype == torch.int8
    assert batch_tensors({"empty": ((0, 4), torch.float32)})["empty"].shape == (0, 4)


def test_memory_budget_reads_sizes_and_the_environment(monkeypatch):
    assert memory.parse_size("8G") == 8 * 2**30
    assert memory.parse_size("500MiB") == 500 * 2**20
    assert memory.parse_size("1.5k") == 1536
    assert memory.parse_size("1024") == 1024
    monkeypatch.setenv(memory.BUDGET_ENV, "2G")
    assert memory.memory_budget() == 2 * 2**30
    assert memory.fits_in_memory(2**31, "x") and not memory.fits_in_memory(2**31 + 1, "x")
    monkeypatch.setenv(memory.BUDGET_ENV, "lots")
    with pytest.raises(Exception, match="SSL_DOMAINS_MEMORY_BUDGET='lots' is not a size"):
        memory.memory_budget()
    monkeypatch.delenv(memory.BUDGET_ENV)
    assert 0 < memory.memory_budget() == int(0.25 * memory.usable_memory())
    monkeypatch.setattr(memory, "_cgroup_limit", lambda: 2**30)  # a scheduler's limit below the RAM wins
    assert memory.usable_memory() == 2**30
