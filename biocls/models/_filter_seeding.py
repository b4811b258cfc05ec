"""Seeding encoder filters with the residue patterns most enriched in positive bags.

A randomly initialised filter sees rare witness sequences only as a tiny shift of a bag mean, so
gradient descent from a random start can stay near chance. These helpers give it a better start:
:func:`enriched_patterns` finds candidate motifs on the training bags, :func:`seed_encoder` turns
the first filters into detectors of them, and :func:`seed_pooling` points the pooling and the head
at those filters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from biocls.models._cdr3 import N_RESIDUES, CDR3Encoder
from biocls.models._pooling import AttentionPooling
from biocls.models._repertoire_net import PackedBag, RepertoireNet

__all__ = ["SEED_SHAPES", "enriched_patterns", "seed_encoder", "seed_pooling"]

#: Residue offsets of the 4-residue patterns used to seed filters: one contiguous, three with a
#: one-residue gap (a wildcard), so that gapped motifs are found too.
SEED_SHAPES = ((0, 1, 2, 3), (0, 1, 2, 4), (0, 1, 3, 4), (0, 2, 3, 4))


def enriched_patterns(bags: Sequence[PackedBag], y: Sequence[int] | np.ndarray, n: int, *,
                      shapes: Sequence[Sequence[int]] = SEED_SHAPES) -> list[tuple[tuple[int, ...],
                                                                              tuple[int, ...],
                                                                              float]]:
    """The ``n`` residue patterns (``shape`` offsets, residue codes) whose per-sequence frequency
    differs most between positive and negative bags (Welch t statistic, positive direction).

    Used to seed :class:`CDR3Encoder` filters (:func:`seed_encoder`): a good start for gradient
    descent, which then refines the filters (neighbouring residues, position features) jointly
    with the pooling. Cost: one pass of integer counting over the bags.
    """
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos < 2 or n_neg < 2 or n < 1:
        return []
    size = N_RESIDUES ** 4
    stats = {sh: np.zeros((4, size)) for sh in map(tuple, shapes)}  # sum/sumsq per class
    for b, lab in zip(bags, y, strict=False):
        codes = b.codes.numpy().astype(np.int64)
        lens = b.lengths.numpy()
        width = codes.shape[1]
        for sh in stats:
            span = sh[-1] + 1
            if width < span:
                continue
            idx = np.zeros((codes.shape[0], width - span + 1), dtype=np.int64)
            for o in sh:
                idx = idx * N_RESIDUES + (codes[:, o:o + width - span + 1] - 1)
            valid = np.arange(width - span + 1)[None, :] <= (lens[:, None] - span)
            f = np.bincount(idx[valid], minlength=size) / max(len(lens), 1)
            r = 0 if lab else 2
            stats[sh][r] += f
            stats[sh][r + 1] += f * f
    cands = []
    for sh, st in stats.items():
        mp, mn = st[0] / n_pos, st[2] / n_neg
        vp = np.maximum(st[1] / n_pos - mp ** 2, 0) * n_pos / (n_pos - 1)
        vn = np.maximum(st[3] / n_neg - mn ** 2, 0) * n_neg / (n_neg - 1)
        # variance floor: one sequence per bag, so that patterns seen in a single bag stay low
        floor = (len(bags) / sum(len(b) for b in bags)) ** 2 / min(n_pos, n_neg)
        t = (mp - mn) / np.sqrt(vp / n_pos + vn / n_neg + floor)
        top = np.argpartition(-t, min(n, size - 1))[:n]
        for i in top:
            res = tuple(int(i) // N_RESIDUES ** (3 - j) % N_RESIDUES + 1 for j in range(4))
            cands.append((sh, res, float(t[i])))
    cands.sort(key=lambda c: -c[2])
    out, seen = [], set()
    for sh, res, t in cands:
        key = (sh, res)
        if t <= 0 or key in seen:
            continue
        seen.add(key)
        out.append((sh, res, t))
        if len(out) == n:
            break
    return out


@torch.no_grad()
def seed_encoder(encoder: CDR3Encoder, patterns: Sequence[tuple[Sequence[int], Sequence[int],
                                                                float]], *,
                 strength: float = 2.0) -> int:
    """Make the first filters of ``encoder`` detectors of ``patterns`` (from
    :func:`enriched_patterns`): weight ``strength`` on each pattern residue at its offset, centred
    in the kernel, and a bias such that a full match gives ``1.5 * strength`` and a match with one
    residue wrong ``0.5 * strength`` before the activation. Returns the number seeded."""
    k = encoder.kernel_size
    n = 0
    for f, (shape, res, _) in enumerate(patterns[:encoder.n_filters]):
        span = shape[-1] + 1
        if span > k:
            continue
        start = (k - span) // 2
        encoder.residue_weight[:, :, f] *= 0.1
        encoder.position_weight[f] *= 0.1
        for o, r in zip(shape, res, strict=False):
            encoder.residue_weight[start + o, r - 1, f] = strength
        encoder.bias[f] = -strength * (len(res) - 1.5)
        n += 1
    return n


@torch.no_grad()
def seed_pooling(net: RepertoireNet, strengths: Sequence[float], *, gain: float = 3.0) -> None:
    """Point the pooling and the head at the first ``len(strengths)`` encoder filters (seeded by
    :func:`seed_encoder`; ``strengths`` are their enrichment statistics): attention scores start
    as the strength-weighted sum of those filters times ``gain``, the first patterns' keys as those
    filters, and the head weighs their soft counts positively. Gradient descent then starts from
    a model that already counts candidate witnesses; ``gain`` sets how sharply the softmax over
    the bag picks them out."""
    n_seeded = len(strengths)
    if n_seeded <= 0:
        return
    rel = torch.tensor(list(strengths), dtype=torch.float32)
    rel = rel / rel.max()
    f_out = net.pooling.out_features
    if isinstance(net.pooling, AttentionPooling):
        lin = [m for m in net.pooling.net if isinstance(m, nn.Linear)]
        first, last = lin[0], lin[-1]
        if len(lin) > 1:
            m = min(n_seeded, first.out_features)
            first.weight[:m] *= 0.1
            first.weight[:m, :m] += torch.eye(m)
            first.bias[:m] = 0
            last.weight[0] *= 0.1
            last.weight[0, :m] = gain * rel[:m]
        else:
            last.weight[0, :n_seeded] = gain * rel
        net.head.weight[0, f_out:] = 1.0
    else:
        m = min(n_seeded, net.pooling.n_patterns)
        keys = net.pooling.keys
        keys[:m] *= 0.1
        keys[:m, :m] += torch.diag(rel[:m]) * gain * math.sqrt(net.pooling.in_features)
        net.head.weight[0, f_out:f_out + m] = rel[:m] / rel[:m].sum()
