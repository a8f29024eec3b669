"""Domain-free building blocks that several plugins share."""

from .ema import EMATeacher, momentum_at
from .masking import per_sample_mask, random_subset

__all__ = ["EMATeacher", "momentum_at", "per_sample_mask", "random_subset"]
