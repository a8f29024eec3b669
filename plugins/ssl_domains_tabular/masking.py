"""T-JEPA's context and target feature sets (Thimonier et al. 2024, §3.2; reference ``src/mask.py::MaskCollator``).

Per batch, the context size and the target size are drawn from the configured share ranges (so that every
sample in the batch has the same number of tokens and no padding is needed). Per sample, one context set is
drawn, then ``num_targets`` target sets, each from the features *outside* the context (targets may overlap each
other, as ``allow_overlap=False`` only separates them from the context in the reference).

Indices here are feature indices ``0..D-1``; the model adds the number of [REG] tokens when it gathers tokens.
The reference draws ``arange(D)`` (``src/mask.py:139``) but gathers from the token sequence ``[REG] * R +
features`` (``src/encoder.py:283-284``, ``src/utils/train_utils.py:208-217``), so its indices ``0..R-1`` are the
[REG] tokens and its last ``R`` features are never context or target (the card's off-by-one). We index features,
as the paper describes, and always keep the [REG] tokens in the context. ``mask_indexing: reference`` reproduces
the reference for the equivalence check: the same draws read as token indices (the objective does the rest), and
the set sizes drawn as :func:`reference_set_sizes` does.

Everything is batched on the device: one ``argsort`` of uniform noise for the context and one for all target
sets; the counts come from a CPU generator, so nothing waits on the device.
"""

from __future__ import annotations

import torch


def sample_set_sizes(
    num_features: int,
    context_share: tuple[float, float],
    target_share: tuple[float, float],
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """``(k_context, k_target)`` for one batch: shares drawn uniformly from their ranges, times ``num_features``.

    Both are at least 1, and the target size is capped by the features left outside the context.
    """
    if num_features < 2:
        raise ValueError("T-JEPA needs at least two features: one for the context, one to predict")
    u = torch.rand(2, generator=generator).tolist()  # CPU draw: no device sync
    ctx_share = context_share[0] + (context_share[1] - context_share[0]) * u[0]
    trg_share = target_share[0] + (target_share[1] - target_share[0]) * u[1]
    k_context = min(max(1, round(ctx_share * num_features)), num_features - 1)
    k_target = min(max(1, round(trg_share * num_features)), num_features - k_context)
    return k_context, k_target


def reference_set_sizes(
    num_features: int,
    context_share: tuple[float, float],
    target_share: tuple[float, float],
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """``(k_context, k_target)`` as the reference's ``MaskCollator`` draws them (``src/mask.py:46-54, 97-104,
    152-163``): bounds ``round(share * D)``, a size ``lo + round((hi - lo) * u)`` for each, redrawn together until
    ``k_context + k_target <= D``. Sizes are kept at least 1 (the reference asserts it instead)."""
    if num_features < 2:
        raise ValueError("T-JEPA needs at least two features: one for the context, one to predict")
    lo_c, hi_c = (max(1, round(num_features * s)) for s in context_share)
    lo_t, hi_t = (max(1, round(num_features * s)) for s in target_share)
    for _ in range(1000):
        u = torch.rand(2, generator=generator).tolist()
        k_context = lo_c + round((hi_c - lo_c) * u[0])
        k_target = lo_t + round((hi_t - lo_t) * u[1])
        if k_context + k_target <= num_features:
            return k_context, k_target
    return min(lo_c, num_features - 1), max(1, min(lo_t, num_features - min(lo_c, num_features - 1)))


def context_and_targets(
    batch_size: int, num_features: int, k_context: int, k_target: int, num_targets: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample feature sets: context ``[B, k_context]`` and targets ``[B, num_targets, k_target]``.

    The context is the ``k_context`` lowest ranks of uniform noise; each target set is the ``k_target`` lowest
    ranks of fresh noise in which the context features are pushed past every other feature.
    """
    context = torch.rand(batch_size, num_features, device=device).argsort(dim=1)[:, :k_context]
    in_context = torch.zeros(batch_size, num_features, dtype=torch.bool, device=device)
    in_context.scatter_(1, context, True)
    noise = torch.rand(batch_size, num_targets, num_features, device=device)
    noise = noise.masked_fill(in_context.unsqueeze(1), 2.0)  # uniform noise is < 1: context features rank last
    targets = noise.argsort(dim=2)[:, :, :k_target]
    return context, targets
