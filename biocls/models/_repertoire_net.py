"""The repertoire net (encoder → pooling → head) and the packed bags it reads.

:class:`RepertoireNet` composes a :class:`~biocls.models.CDR3Encoder`, a pooling
(:class:`~biocls.models.AttentionPooling` or :class:`~biocls.models.PatternPooling`) and a linear
head: attention multiple-instance learning over immune repertoires, i.e. bags of CDR3 sequences
(DeepRC, Widrich et al. 2020). :class:`PackedBag` is one repertoire laid out for the encoder.

Bags of different sizes are exact: a padded instance is masked out of every softmax, sum and mean,
so a bag's prediction does not depend on what it is batched or padded with.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from biocls.models._cdr3 import CDR3Encoder
from biocls.models._checks import check_choice
from biocls.models._pooling import AttentionPooling, PatternPooling, PoolOutput

__all__ = ["POOLINGS", "PackedBag", "RepertoireNet", "pack_bag", "pad_split"]

POOLINGS = ("attention", "patterns")


class RepertoireNet(nn.Module):
    """Encoder → pooling → linear head on ``[pooled, stats]``: one logit per bag.

    :meth:`forward` takes padded bags: ``codes`` ``[B, N, L]``, ``lengths`` ``[B, N]`` (0 marks a
    padded instance), optional ``counts`` ``[B, N]`` (used as weights when ``use_counts``); returns
    logits ``[B]``. Training calls :meth:`embed` and :meth:`pool` separately so that it can score
    a whole bag without gradients and back-propagate through a selected subset; inference calls
    :meth:`bag_logit`, which scores one whole bag chunk by chunk with the same numbers.
    """

    def __init__(self, *, pooling: str = "attention", n_filters: int = 32, kernel_size: int = 9,
                 n_patterns: int = 64, attention_hidden: int = 32, activation: str = "relu",
                 bag_pool: str = "mean", use_counts: bool = False, max_length: int = 64) -> None:
        super().__init__()
        self.pooling_name = check_choice("pooling", pooling, POOLINGS)
        self.use_counts = bool(use_counts)
        self.encoder = CDR3Encoder(n_filters, kernel_size, activation=activation,
                                   max_length=max_length)
        if pooling == "attention":
            self.pooling: AttentionPooling | PatternPooling = AttentionPooling(
                n_filters, attention_hidden)
        else:
            self.pooling = PatternPooling(n_filters, n_patterns, bag_pool=bag_pool)
        self.head = nn.Linear(self.pooling.out_features + self.pooling.n_stats, 1)

    def embed(self, codes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``[N, L]`` codes, ``[N]`` lengths → ``[N, F]``."""
        return self.encoder(codes, lengths)

    def log_weights(self, counts: torch.Tensor | None) -> torch.Tensor | None:
        if counts is None or not self.use_counts:
            return None
        return torch.log(counts.clamp(min=1.0).float())

    def instance_scores(self, h: torch.Tensor) -> torch.Tensor:
        """Per-instance evidence used to rank and select instances (``[..., F]`` → ``[...]``).

        Attention: the attention score. Patterns: ``logsumexp_s(E_is + log w_s)`` over the
        patterns whose head weight ``w_s`` is positive, i.e. the log of the instance's
        contribution to the evidence for the positive class."""
        if isinstance(self.pooling, AttentionPooling):
            return self.pooling.instance_scores(h)
        w = self.head.weight[0, self.pooling.out_features:]
        e = self.pooling.similarities(h)
        pos = w > 0
        if not bool(pos.any()):
            return e.amax(-1)
        return torch.logsumexp(e[..., pos] + torch.log(w[pos]), dim=-1)

    def pool(self, h: torch.Tensor, mask: torch.Tensor | None = None,
             counts: torch.Tensor | None = None, bag_sizes: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, PoolOutput]:
        """``h`` ``[B, N, F]`` → (logits ``[B]``, :class:`PoolOutput`)."""
        out = self.pooling(h, mask, self.log_weights(counts), bag_sizes)
        logits = self.head(torch.cat([out.pooled, out.stats], dim=1)).squeeze(1)
        if isinstance(self.pooling, PatternPooling):
            sc = self.instance_scores(h)
            if mask is not None:
                sc = sc.masked_fill(~mask, -math.inf)
            wts = torch.softmax(sc, dim=1)
            if mask is not None:
                wts = wts.masked_fill(~mask, 0.0)
            out = PoolOutput(out.pooled, wts, sc, out.stats)
        return logits, out

    @torch.no_grad()
    def bag_logit(self, h: torch.Tensor, counts: torch.Tensor | None = None,
                  chunk: int = 65_536) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One whole bag's embeddings ``h`` ``[N, F]`` (from :meth:`embed`) and ``counts`` ``[N]``
        → ``(logit [], weights [N], scores [N])``, as :meth:`pool` gives on ``h[None]``, with
        O(chunk) extra memory: the exact full-bag inference path (every sequence is used)."""
        pool = self.pooling
        out = pool.pool_chunked(h, self.log_weights(counts), chunk)
        weights, scores = out.weights, out.scores
        if isinstance(pool, PatternPooling):  # as in pool(): sharpened with the head's weights
            scores = torch.cat([self.instance_scores(h[i:i + chunk])
                                for i in range(0, len(h), chunk)])
            weights = torch.softmax(scores, 0)
        logit = self.head(torch.cat([out.pooled, out.stats]).unsqueeze(0)).squeeze()
        return logit, weights, scores

    def forward(self, codes: torch.Tensor, lengths: torch.Tensor,
                counts: torch.Tensor | None = None) -> torch.Tensor:
        if codes.dim() != 3 or lengths.shape != codes.shape[:2]:
            raise ValueError(f"codes must be [B, N, L] and lengths [B, N]; got "
                             f"{tuple(codes.shape)} and {tuple(lengths.shape)}")
        b, n, length = codes.shape
        mask = lengths > 0
        h = codes.new_zeros((b, n, self.encoder.out_features), dtype=torch.float32)
        h[mask] = self.embed(codes[mask], lengths[mask])
        logits, _ = self.pool(h, mask, counts)
        return logits


class PackedBag(NamedTuple):
    """One repertoire ready for the model, its sequences sorted by length: ``codes`` ``[n, W]``
    uint8 (0-padded), ``lengths`` ``[n]`` int64, ``counts`` ``[n]`` float32, ``order`` ``[n]``
    int64 (each row's index in the original repertoire). CPU tensors."""

    codes: torch.Tensor
    lengths: torch.Tensor
    counts: torch.Tensor
    order: torch.Tensor

    def __len__(self) -> int:
        return int(self.lengths.shape[0])


def pack_bag(codes: np.ndarray, offsets: np.ndarray, counts: np.ndarray | None = None,
             *, max_length: int = 64) -> PackedBag:
    """Concatenated residue codes + offsets (as in the store) → :class:`PackedBag`.

    Rows are sorted by length (stable), so that the encoder needs no permutation. Sequences
    longer than ``max_length`` are cut to their central ``max_length`` residues."""
    offsets = np.asarray(offsets, dtype=np.int64)
    codes = np.asarray(codes)
    lens = np.diff(offsets)
    n = len(lens)
    kept = np.minimum(lens, max_length)
    # a stable sort of small unsigned ints is a radix sort: ~5× faster than on int64
    order = np.argsort(kept.astype(np.uint8 if max_length < 256 else np.uint16), kind="stable")
    width = int(kept.max(initial=1))
    mat = np.zeros((n, width), dtype=np.uint8)
    start = offsets[:-1][order] - offsets[0] + (lens[order] - kept[order]) // 2
    bounds = np.searchsorted(kept[order], np.arange(width + 2))
    for m in range(1, width + 1):  # one gather per length: rows of a group are contiguous
        lo, hi = bounds[m], bounds[m + 1]
        if hi > lo:
            mat[lo:hi, :m] = codes[start[lo:hi, None] + np.arange(m)]
    c = np.ones(n, np.float32) if counts is None else np.asarray(counts, np.float32)
    return PackedBag(torch.from_numpy(mat), torch.from_numpy(kept[order]),
                     torch.from_numpy(np.ascontiguousarray(c[order])), torch.from_numpy(order))


def pad_split(x: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[sum(sizes), ...]`` → padded ``[B, max(sizes), ...]`` and mask ``[B, max(sizes)]``."""
    b, n = len(sizes), max(sizes)
    out = x.new_zeros((b, n) + tuple(x.shape[1:]))
    mask = torch.zeros(b, n, dtype=torch.bool, device=x.device)
    start = 0
    for i, s in enumerate(sizes):
        out[i, :s] = x[start:start + s]
        mask[i, :s] = True
        start += s
    return out, mask
