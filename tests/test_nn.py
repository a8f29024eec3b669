"""Shared building blocks: EMA teacher, masking indices, LR schedule, seeded data order."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ssl_domains.data import EpochShuffleSampler, mix_seed, random_split_indices
from ssl_domains.module import warmup_cosine
from ssl_domains.nn import EMATeacher, momentum_at, per_sample_mask, random_subset


def test_ema_update_is_the_convex_combination():
    student = nn.Linear(3, 2)
    teacher = EMATeacher(student, momentum_start=0.9, momentum_end=0.9)
    before = teacher.module.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    teacher.update(student, progress=0.3)
    assert torch.allclose(teacher.module.weight, 0.9 * before + 0.1 * student.weight)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_ema_buffers_are_copied_and_momentum_one_freezes():
    student = nn.BatchNorm1d(4)
    teacher = EMATeacher(student, momentum_start=1.0, momentum_end=1.0)
    student.running_mean.fill_(5.0)
    with torch.no_grad():
        student.weight.fill_(7.0)
    teacher.update(student, progress=0.5)
    assert torch.equal(teacher.module.running_mean, student.running_mean)
    assert torch.equal(teacher.module.weight, torch.ones(4))


def test_momentum_schedules():
    assert momentum_at(0.0, 0.996, 1.0, "cosine") == pytest.approx(0.996)
    assert momentum_at(1.0, 0.996, 1.0, "cosine") == pytest.approx(1.0)
    assert momentum_at(0.5, 0.996, 1.0, "cosine") == pytest.approx(0.998)
    assert momentum_at(0.25, 0.996, 1.0, "linear") == pytest.approx(0.997)


def test_per_sample_mask_has_exact_counts_per_row():
    mask = per_sample_mask(64, 50, 15, "cpu")
    assert mask.shape == (64, 50) and (mask.sum(1) == 15).all()
    counts = torch.randint(0, 51, (64,))
    assert torch.equal(per_sample_mask(64, 50, counts, "cpu").sum(1), counts)
    # positions are uniform: every column is masked in about 30% of 20k rows
    freq = per_sample_mask(20000, 50, 15, "cpu").float().mean(0)
    assert torch.allclose(freq, torch.full((50,), 0.3), atol=0.02)


def test_random_subset_is_a_partition():
    chosen, rest = random_subset(100, 37, "cpu")
    assert len(chosen) == 37 and sorted(torch.cat([chosen, rest]).tolist()) == list(range(100))


def test_warmup_cosine_values():
    f = warmup_cosine(total_steps=110, warmup_steps=10, schedule="cosine", min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1)
    assert warmup_cosine(100, 0, "constant", 0.0)(50) == 1.0
    # GraphMAE's reference schedule: (1 + cos(pi * epoch / max_epoch)) / 2, one step per epoch
    g = warmup_cosine(1500, 0, "cosine", 0.0)
    assert g(0) == 1.0 and g(750) == pytest.approx(0.5)


def test_epoch_sampler_depends_only_on_seed_and_epoch():
    a, b = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(5)
    assert list(a) != list(b)
    assert list(EpochShuffleSampler(5, seed=0, shuffle=False)) == [0, 1, 2, 3, 4]


def test_mix_seed_is_stable_and_spreads():
    assert mix_seed(1, 2) == mix_seed(1, 2) and mix_seed(1, 2) != mix_seed(2, 1)
    assert 0 <= mix_seed(2**70, -5) < 2**63


def test_stratified_split_keeps_every_class_in_every_part():
    labels = torch.tensor([0] * 10 + [1] * 5).numpy()
    parts = random_split_indices(15, (0.6, 0.2, 0.2), seed=0, stratify=labels)
    assert sum(len(p) for p in parts) == 15
    assert all(set(labels[p]) == {0, 1} for p in parts)


def test_sharded_epoch_sampler_splits_each_global_batch_between_ranks():
    # rank r of W takes every W-th position: the local batches of a step make up the single-process batch of
    # W times the size, and every item is seen once per epoch (padding only fills the last step)
    single = list(EpochShuffleSampler(23, seed=4))
    shards = [list(EpochShuffleSampler(23, seed=4, num_replicas=2, rank=r)) for r in range(2)]
    assert [len(s) for s in shards] == [12, 12]
    local = 3
    for step in range(3):
        union = {i for s in shards for i in s[step * local : (step + 1) * local]}
        assert union == set(single[step * 2 * local : (step + 1) * 2 * local])
    assert set(shards[0]) | set(shards[1]) == set(range(23))


def test_sharded_sampler_gives_every_rank_items_even_with_fewer_items_than_ranks():
    shards = [list(EpochShuffleSampler(3, seed=0, num_replicas=8, rank=r)) for r in range(8)]
    assert all(len(s) == 1 for s in shards)  # len() and the items agree: no rank waits on the others
    assert {s[0] for s in shards} == {0, 1, 2}
