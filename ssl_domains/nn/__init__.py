"""Domain-free building blocks that several plugins share."""

from .contrastive import gather_with_grad, info_nce
from .ema import EMATeacher, momentum_at
from .masking import per_sample_mask, random_subset

__all__ = ["EMATeacher", "gather_with_grad", "info_nce", "momentum_at", "per_sample_mask", "random_subset"]
