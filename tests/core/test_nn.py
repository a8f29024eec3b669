"""Shared building blocks: EMA teacher, masking indices, means, NT-Xent, the transformer block, LR schedule, seeded
data order (``ssl_domains.nn``, ``ssl_domains.data``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ssl_domains.data import EpochShuffleSampler, LengthGroupedSampler, mix_seed, random_split_indices
from ssl_domains.module import warmup_cosine
from ssl_domains.nn import (
    EMATeacher,
    TransformerBlock,
    attention_mask,
    lowest_ranks,
    masked_mean,
    momentum_at,
    nt_xent,
    per_sample_mask,
    random_keep,
    random_subset,
)


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


def test_length_grouped_sampler_groups_lengths_and_stays_a_seeded_permutation():
    lengths = np.random.default_rng(0).integers(10, 500, size=1000)
    sampler = LengthGroupedSampler(lengths.tolist(), batch_size=20, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(1000))
    spread = np.mean([np.ptp(lengths[order[i : i + 20]]) for i in range(0, 1000, 20)])
    assert spread < 0.1 * np.ptp(lengths)  # random batches would spread over nearly the whole range
    assert list(LengthGroupedSampler(lengths.tolist(), batch_size=20, seed=3)) == order
    sampler.set_epoch(1)
    assert list(sampler) != order
    shards = [list(LengthGroupedSampler(lengths.tolist(), 10, 3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(1000))


def test_nt_xent_known_values():
    eye = torch.eye(4)
    # each pair aligned and orthogonal to the rest: the loss goes to 0 as the temperature falls
    assert nt_xent(eye, eye, 0.01).item() < 1e-6
    same = torch.ones(4, 8)  # everything identical: a uniform choice among the 2N - 1 others
    assert nt_xent(same, same, 0.5).item() == pytest.approx(math.log(7), rel=1e-5)


def test_lowest_ranks_random_keep_and_masked_mean():
    scores = torch.tensor([[0.3, 0.1, 0.2, 0.9], [0.5, 0.4, 0.0, 0.7]])
    assert lowest_ranks(scores, torch.tensor([2, 1])).tolist() == [
        [False, True, True, False],
        [False, False, True, False],
    ]
    torch.manual_seed(0)
    keep, masked = random_keep(5, 16, 0.75, "cpu")
    assert keep.shape == (5, 4) and (keep.diff(dim=1) > 0).all()  # 25 % kept, in raster order
    assert masked.sum(1).tolist() == [12] * 5 and not masked.gather(1, keep).any()
    states = torch.arange(12.0).view(2, 3, 2)
    valid = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_mean(states, valid).tolist() == [[1.0, 2.0], [0.0, 0.0]]  # padding left out; empty row 0


def _attention_by_hand(block: TransformerBlock, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    b, n, c = x.shape
    h = block.heads
    q, k, v = block.qkv(x).view(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(c // h)
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
    return block.proj(out)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_transformer_block_is_attention_and_feed_forward_with_residuals(norm):
    torch.manual_seed(0)
    block = TransformerBlock(16, 4, 32, norm=norm).eval()
    x = torch.randn(2, 5, 16)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with torch.no_grad():
        if norm == "pre":
            y = x + _attention_by_hand(block, block.norm1(x), valid)
            expected = y + block.ff(block.norm2(y))
        else:
            y = block.norm1(x + _attention_by_hand(block, x, valid))
            expected = block.norm2(y + block.ff(y))
        out = block(x, attention_mask(valid))
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        # a padded position's content never reaches a real one
        changed = x.clone()
        changed[1, 3:] = 100.0
        torch.testing.assert_close(block(changed, attention_mask(valid))[1, :3], out[1, :3])
    with pytest.raises(ValueError, match="context"):
        block(x, context=x)
    with pytest.raises(ValueError, match="divisible"):
        TransformerBlock(10, 4, 8)


def test_at_least_float32_upcasts_half_precision_only() -> None:
    from ssl_domains.nn import at_least_float32

    for dtype, expected in [(torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                            (torch.float32, torch.float32), (torch.float64, torch.float64)]:  # fmt: skip
        assert at_least_float32(torch.ones(2, dtype=dtype)).dtype == expected


def test_transformer_block_without_qkv_bias() -> None:
    block = TransformerBlock(16, 4, 32, cross=True, qkv_bias=False)
    assert block.qkv.bias is None and block.q_cross.bias is None and block.kv_cross.bias is None
    assert block.proj.bias is not None and block.proj_cross.bias is not None
    x = torch.randn(2, 5, 16)
    assert block(x, context=torch.randn(2, 3, 16)).shape == x.shape
