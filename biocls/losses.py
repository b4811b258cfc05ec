"""Losses shared by the models. Unknown labels are coded ``-1`` and never count as negatives."""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["masked_cross_entropy"]


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over ``[B, C]`` logits, skipping targets ``< 0`` (unknown).

    Returns 0 (with a gradient path) when every target in the batch is unknown, so a batch
    without annotations neither crashes nor produces NaN.
    """
    known = target >= 0
    if not bool(known.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[known], target[known])
