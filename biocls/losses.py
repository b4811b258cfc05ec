"""Losses shared by the models. Unknown labels are coded ``-1`` and never count as negatives.

Two families:

- :func:`masked_cross_entropy`: one softmax label per cell (cell type, single-label state).
- :func:`partial_label_loss`: several independent yes/no labels per cell (multi-label states),
  each positive (1), negative (0) or unknown (-1), with the three ways of treating unknowns
  compared by Ben-Baruch et al. 2022, "Multi-label classification with partial annotations using
  class-aware selective loss" (CSL, CVPR 2022): ``ignore``, ``negative`` and ``selective``.

The selective loss follows the paper's rule; where its defaults or details differ from the
authors' reference code (github.com/Alibaba-MIIL/PartialLabelingCSL, read for this note), that is
deliberate:

- **likelihood_topk** is a fraction per cell (0.5: half as many unknown entries as cells in the
  batch are ignored as "probably present"); the reference takes an integer per image (5, times
  the batch size). It was written for 80–600 labels per image; a cell has a handful of state
  labels, and 5 per cell would ignore nearly every unknown entry.
- **The top-k is taken after the prior rule**: among unknown entries the prior did not already
  ignore. The reference ranks all unknown entries, so some of its k slots can fall on entries
  the prior rule ignored anyway.
- **prior_threshold 0.5** follows the reference README's recipes; its argparse default is 0.05.
- **γ₊ = 0, γ₋ = 1, γᵤ = 2** are the reference's argparse defaults; its README recipes use
  γ₋ up to 4 and γᵤ = 4. The reference's probability clip (``clip``, default 0 there) is not
  implemented.
- **Priors** are the mean predicted probability, on the training cells, of a first model trained
  with unknown entries ignored and early-stopped on the same validation patients
  (:class:`biocls.estimators.CellClassifier`); the reference averages the predictions seen
  during a first training run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn import functional as F

__all__ = ["PARTIAL_MODES", "masked_cross_entropy", "partial_label_loss", "selective_weights"]

PARTIAL_MODES = ("ignore", "negative", "selective")
_EPS = 1e-8


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over ``[B, C]`` logits, skipping targets ``< 0`` (unknown).

    Returns 0 (with a gradient path) when every target in the batch is unknown, so a batch
    without annotations neither crashes nor produces NaN.
    """
    known = target >= 0
    if not bool(known.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[known], target[known])


def selective_weights(prob: torch.Tensor, target: torch.Tensor, *,
                      priors: torch.Tensor | Sequence[float] | None = None,
                      prior_threshold: float = 0.5, likelihood_topk: float = 0.5) -> torch.Tensor:
    """Which unknown entries the selective loss treats as negative (1) or ignores (0).

    ``prob`` and ``target`` are ``[B, L]``. Annotated entries always get weight 1. An unknown
    entry of label ``j`` is ignored when ``priors[j] > prior_threshold`` (a common label is too
    likely to be present to be assumed absent), or when it is among the
    ``round(likelihood_topk * B)`` unknown entries of the batch with the highest predicted
    probability (the model is confident it is present; CSL's "top-k likelihood"); every other
    unknown entry counts as a negative. Computed without gradients.
    """
    with torch.no_grad():
        unknown = target < 0
        weight = torch.ones_like(prob)
        if priors is not None:
            pri = torch.as_tensor(priors, dtype=prob.dtype, device=prob.device)
            common = (pri > prior_threshold).expand_as(prob)
            weight[unknown & common] = 0.0
        k = int(round(likelihood_topk * prob.shape[0]))
        cand = unknown & (weight > 0)
        n = int(cand.sum())
        if k > 0 and n > 0:
            scores = torch.where(cand, prob, torch.full_like(prob, -1.0)).flatten()
            top = torch.topk(scores, min(k, n)).indices
            weight.view(-1)[top] = 0.0
    return weight


def partial_label_loss(logits: torch.Tensor, target: torch.Tensor, *, mode: str = "selective",
                       gamma_pos: float = 0.0, gamma_neg: float = 1.0, gamma_unann: float = 2.0,
                       priors: torch.Tensor | Sequence[float] | None = None,
                       prior_threshold: float = 0.5, likelihood_topk: float = 0.5) -> torch.Tensor:
    """Asymmetric binary cross-entropy over ``[B, L]`` logits, partially known ``[B, L]`` targets.

    ``target`` holds 1 (present), 0 (absent) or -1 (unknown). With ``p = sigmoid(logit)``, each
    entry contributes

    - positive: ``-(1 - p)**gamma_pos * log(p)``;
    - negative: ``-p**gamma_neg * log(1 - p)``;
    - unknown: ``-w * p**gamma_unann * log(1 - p)``, where ``w`` depends on ``mode``:
      ``"ignore"`` → 0 (unknowns carry no gradient), ``"negative"`` → 1 (every unknown is
      taken as absent), ``"selective"`` → :func:`selective_weights` (CSL's class-aware rule:
      ignored when the class prior exceeds ``prior_threshold`` or the entry is in the batch's
      top-k likelihood, negative otherwise).

    The focusing factors ``(1 - p)**γ`` and ``p**γ`` are treated as constants (no gradient), as
    in CSL. The loss is summed over labels and averaged over cells, so its scale does not depend
    on how many entries a mode ignores. Defaults γ₊=0, γ₋=1, γᵤ=2 follow the paper. Works on any
    device: every tensor is created on ``logits.device``.
    """
    if mode not in PARTIAL_MODES:
        raise ValueError(f"mode must be one of {PARTIAL_MODES}, got {mode!r}")
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    target = target.to(logits.device)
    pos, neg, unk = target == 1, target == 0, target < 0
    p = torch.sigmoid(logits)
    log_p = F.logsigmoid(logits).clamp_min(math.log(_EPS))
    log_q = F.logsigmoid(-logits).clamp_min(math.log(_EPS))
    with torch.no_grad():
        focus = torch.where(pos, (1 - p).pow(gamma_pos),
                            torch.where(neg, p.pow(gamma_neg), p.pow(gamma_unann)))
        if mode == "ignore":
            w_unk = torch.zeros_like(p)
        elif mode == "negative":
            w_unk = torch.ones_like(p)
        else:
            w_unk = selective_weights(p, target, priors=priors, prior_threshold=prior_threshold,
                                      likelihood_topk=likelihood_topk)
        weight = torch.where(unk, w_unk, torch.ones_like(p)) * focus
    per_entry = torch.where(pos, -log_p, -log_q) * weight
    return per_entry.sum() / max(1, logits.shape[0])
