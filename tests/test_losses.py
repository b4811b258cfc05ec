"""Partial-label losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from biocls.losses import masked_cross_entropy, partial_label_loss, selective_weights


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# one cell, three labels: positive, negative, unknown; logits 0, ln 3, ln 3 (p = 0.5, 0.75, 0.75)
LOGITS = [[0.0, math.log(3.0), math.log(3.0)]]
TARGET = [[1, 0, -1]]


def _loss(mode: str, **kw) -> float:
    return float(partial_label_loss(torch.tensor(LOGITS), torch.tensor(TARGET), mode=mode, **kw))


def test_ignore_mode_by_hand() -> None:
    # pos: -(1-0.5)^0 log 0.5 ; neg: -0.75^1 log 0.25 ; unknown: 0
    want = -math.log(0.5) - 0.75 * math.log(0.25)
    assert _loss("ignore") == pytest.approx(want, rel=1e-5)


def test_negative_mode_by_hand() -> None:
    # unknown counted as negative with gamma_unann = 2: -0.75^2 log 0.25
    want = -math.log(0.5) - 0.75 * math.log(0.25) - 0.75**2 * math.log(0.25)
    assert _loss("negative") == pytest.approx(want, rel=1e-5)


def test_gammas_change_the_focusing() -> None:
    want = -(0.5**2) * math.log(0.5) - math.log(0.25) - 0.75**3 * math.log(0.25)
    got = _loss("negative", gamma_pos=2.0, gamma_neg=0.0, gamma_unann=3.0)
    assert got == pytest.approx(want, rel=1e-5)


def test_selective_prior_threshold_ignores_common_class() -> None:
    base = -math.log(0.5) - 0.75 * math.log(0.25)
    # label 2 is common (prior 0.6 > 0.5): its unknown entry is ignored
    assert _loss("selective", priors=[0.1, 0.1, 0.6], likelihood_topk=0.0) == pytest.approx(base)
    # label 2 is rare: its unknown entry is a negative
    rare = _loss("selective", priors=[0.1, 0.1, 0.1], likelihood_topk=0.0)
    assert rare == pytest.approx(base - 0.75**2 * math.log(0.25), rel=1e-5)


def test_selective_topk_ignores_the_most_likely_unknowns() -> None:
    # 2 cells x 2 labels, all unknown; top-k = 0.5 * 2 cells = 1 entry: the most likely one
    logits = torch.tensor([[2.0, -1.0], [0.5, -2.0]])
    target = torch.full((2, 2), -1)
    w = selective_weights(torch.sigmoid(logits), target, likelihood_topk=0.5)
    assert w.tolist() == [[0.0, 1.0], [1.0, 1.0]]
    got = float(partial_label_loss(logits, target, mode="selective", likelihood_topk=0.5))
    want = -sum(sig(x) ** 2 * math.log(1 - sig(x)) for x in (-1.0, 0.5, -2.0)) / 2
    assert got == pytest.approx(want, rel=1e-5)
    # annotated entries are never selected, however likely
    target2 = torch.tensor([[0, -1], [-1, -1]])
    w2 = selective_weights(torch.sigmoid(logits), target2, likelihood_topk=0.5)
    assert w2.tolist() == [[1.0, 1.0], [0.0, 1.0]]


def test_unknown_entries_get_no_gradient_under_ignore() -> None:
    logits = torch.tensor([[0.3, -0.2, 1.5], [0.1, 0.9, -0.4]], requires_grad=True)
    target = torch.tensor([[1, -1, 0], [-1, 0, -1]])
    partial_label_loss(logits, target, mode="ignore").backward()
    g = logits.grad
    assert torch.all(g[target < 0] == 0)
    assert torch.all(g[target >= 0] != 0)
    # and under "negative" they do get one (pushing the logit down)
    logits.grad = None
    partial_label_loss(logits, target, mode="negative").backward()
    assert torch.all(logits.grad[target < 0] > 0)


def test_unknown_is_not_negative_when_ignored() -> None:
    # a confident positive prediction on an unknown entry costs nothing under ignore
    a = partial_label_loss(torch.tensor([[5.0]]), torch.tensor([[-1]]), mode="ignore")
    b = partial_label_loss(torch.tensor([[5.0]]), torch.tensor([[0]]), mode="ignore")
    assert float(a) == 0.0 and float(b) > 4.0


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="mode"):
        partial_label_loss(torch.zeros(1, 2), torch.zeros(1, 2), mode="bogus")
    with pytest.raises(ValueError, match="differ"):
        partial_label_loss(torch.zeros(1, 2), torch.zeros(1, 3), mode="ignore")


def test_masked_cross_entropy_skips_unknown() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    got = masked_cross_entropy(logits, torch.tensor([0, -1]))
    assert float(got) == pytest.approx(-math.log(sig(2.0)), rel=1e-5)
    assert float(masked_cross_entropy(logits, torch.tensor([-1, -1]))) == 0.0
