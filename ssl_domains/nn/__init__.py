"""Domain-free building blocks that several plugins share."""

from .contrastive import gather_with_grad, info_nce, nt_xent
from .ema import EMATeacher, momentum_at
from .masking import lowest_ranks, per_sample_mask, random_keep, random_subset
from .reduction import at_least_float32, global_mean, masked_mean
from .transformer import TransformerBlock, attention_mask, sincos_positions, sincos_positions_2d

__all__ = [
    "EMATeacher",
    "TransformerBlock",
    "at_least_float32",
    "attention_mask",
    "gather_with_grad",
    "global_mean",
    "info_nce",
    "lowest_ranks",
    "masked_mean",
    "momentum_at",
    "nt_xent",
    "per_sample_mask",
    "random_keep",
    "random_subset",
    "sincos_positions",
    "sincos_positions_2d",
]
