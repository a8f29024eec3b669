"""Masking on the device, batched over clips of different lengths: TERA's alterations and SSAST's patch masks.

TERA (Liu, Li, Lee, "TERA: Self-Supervised Learning of Transformer Encoder Representation for Speech",
IEEE/ACM TASLP 2021, §III-A; s3prl ``pretrain/mockingjay/task.py::generate_masked_acoustic_model_data``):

- *time*: ``round(0.15 L / 7)`` blocks of 7 consecutive frames per clip (at least one), starts drawn without
  replacement, blocks may overlap. One draw per clip decides the alteration: < 0.8 zero the frames, 0.8-0.9
  replace them with another random 7-frame segment of the same clip, else keep them. All chosen frames are
  predicted in every case.
- *frequency*: one block of ``U[0, 0.2 F]`` consecutive bins per clip, zeroed over all frames and predicted.
- *magnitude*: with probability ``noise_prob``, Gaussian noise (σ = 0.2) is added to the whole batch (s3prl's
  ``noise_proportion``; one draw per batch, as the reference).

SSAST (Gong, Lai, Chung, Glass, "SSAST: Self-Supervised Audio Spectrogram Transformer", AAAI 2022, §2.2; reference
``src/models/ast_models.py::gen_maskid_patch`` / ``gen_maskid_frame``): a share of the clip's patches is masked,
as unions of ``k × k`` squares (``k`` in 3..5, drawn once per clip) grown from random anchors (cluster masking,
patch mode) or at random (frame mode). Anchors are drawn in sequence and patches are taken in the order their
first square covers them until the count is reached; squares are clipped at the grid's edges (the reference's
flat indexing wraps a square that crosses the time edge onto the next frequency row). Only patches holding audio
are masked, and anchors are placed only where there is audio.

No Python loop over clips: every draw is one tensor op over the batch, with no host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_domains.nn import lowest_ranks


def valid_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, size]`` True where position < length."""
    return torch.arange(size, device=lengths.device) < lengths[:, None]


def tera_time_blocks(lengths: torch.Tensor, size: int, ratio: float, width: int) -> torch.Tensor:
    """``[B, size]`` block starts: ``max(1, round(ratio L / width))`` distinct starts in ``[0, L - width]``."""
    counts = torch.clamp(torch.round(lengths * ratio / width), min=1).long()
    last_start = torch.clamp(lengths - width, min=0)
    scores = torch.rand(lengths.shape[0], size, device=lengths.device)
    allowed = torch.arange(size, device=lengths.device) <= last_start[:, None]
    scores = scores.masked_fill(~allowed, 2.0)
    counts = torch.minimum(counts, last_start + 1)
    return lowest_ranks(scores, counts)


def tera_alter(
    x: torch.Tensor, lengths: torch.Tensor, *, time_ratio: float = 0.15, block: int = 7, freq_max: float = 0.2,
    noise_prob: float = 0.0, noise_std: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """TERA's altered input and the boolean ``[B, T, F]`` positions to predict, for features ``x`` ``[B, T, F]``."""
    b, t, f = x.shape
    device = x.device
    valid = valid_mask(lengths, t)
    starts = tera_time_blocks(lengths, t, time_ratio, block)
    # covered[t'] = some start s in (t' - block, t']: a max-pool over the last `block` positions
    covered = F.max_pool1d(F.pad(starts.float()[:, None], (block - 1, 0)), block, stride=1)[:, 0].bool() & valid
    positions = torch.arange(t, device=device).expand(b, -1)
    last_start = torch.where(starts, positions, -1).cummax(dim=1).values
    offset = (positions - last_start).clamp(min=0)
    # replacement source: another random block of the same clip, the same offset into it
    random_start = (torch.rand(b, t, device=device) * (lengths - block + 1).clamp(min=1)[:, None]).long()
    source_start = random_start.gather(1, last_start.clamp(min=0))
    source = (source_start + offset).clamp(max=(lengths - 1).clamp(min=0)[:, None])
    replaced = x.gather(1, source[:, :, None].expand(-1, -1, f))
    dice = torch.rand(b, 1, device=device)
    zero, swap = dice < 0.8, (dice >= 0.8) & (dice < 0.9)
    time_mask = covered[:, :, None]
    altered = torch.where(time_mask & zero[:, :, None], torch.zeros_like(x), x)
    altered = torch.where(time_mask & swap[:, :, None], replaced, altered)
    width = (torch.rand(b, 1, device=device) * (int(freq_max * f) + 1)).long()
    freq_start = (torch.rand(b, 1, device=device) * (f - width + 1)).long()
    bins = torch.arange(f, device=device)
    freq_mask = ((bins >= freq_start) & (bins < freq_start + width))[:, None, :] & valid[:, :, None]
    altered = altered.masked_fill(freq_mask, 0.0)
    if noise_prob > 0:
        coin = (torch.rand((), device=device) < noise_prob).to(x.dtype)
        altered = altered + coin * noise_std * torch.randn_like(x) * valid[:, :, None]
    predict = (time_mask | freq_mask) & valid[:, :, None]
    return altered, predict


def patch_mask(
    valid: torch.Tensor, grid: tuple[int, int], ratio: float, cluster: bool, max_size: int = 5, min_size: int = 3
) -> torch.Tensor:
    """``[B, P]`` masked patches, ``round(ratio · valid patches)`` per clip, clustered or at random.

    ``valid`` ``[B, P]`` marks patches that hold audio; ``grid`` is ``(rows, cols)`` with ``P = rows · cols`` in
    row-major order (frequency rows, time columns; frame mode is ``(1, P)``).
    """
    b, p = valid.shape
    rows, cols = grid
    device = valid.device
    counts = torch.round(valid.sum(1) * ratio).long().clamp(min=1)
    tie_break = torch.rand(b, p, device=device)
    if cluster:
        anchors = 4 * p // (min_size * min_size) + 8  # enough squares to cover any share of the grid
        anchor_row = torch.randint(0, rows, (b, anchors, 1), device=device)
        # anchors only where there is audio: squares grown in the padding would leave the count to the random fill
        audio_cols = valid.view(b, rows, cols)[:, 0].sum(1).clamp(min=1)
        anchor_col = (torch.rand(b, anchors, 1, device=device) * audio_cols[:, None, None]).long()
        size = torch.randint(
            min_size, max_size + 1, (b, 1, 1), device=device
        )  # one square side per clip, as the reference
        patch_row = torch.arange(p, device=device) // cols
        patch_col = torch.arange(p, device=device) % cols
        inside = (
            (patch_row >= anchor_row) & (patch_row < anchor_row + size)
            & (patch_col >= anchor_col) & (patch_col < anchor_col + size)
        )  # fmt: skip
        order = torch.arange(anchors, device=device, dtype=torch.float32)[None, :, None]
        first = torch.where(inside, order, float(anchors)).amin(dim=1)  # uncovered: after every square, at random
        scores = first + tie_break
    else:
        scores = tie_break
    scores = scores.masked_fill(~valid, float("inf"))
    return lowest_ranks(scores, counts) & valid
