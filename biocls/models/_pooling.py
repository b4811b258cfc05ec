"""Bag poolings for multiple-instance learning: many instance embeddings → one bag vector.

* :class:`AttentionPooling` — a 2-layer SELU attention network and a softmax over the whole bag
  (DeepRC, Widrich et al. 2020).
* :class:`PatternPooling` — learned-pattern attention: ``S`` learned key and value memories, scores
  ``F·M_kᵀ``, a softmax over the bag's instances then an ℓ1-normalisation over the slots, output
  ``A·M_v`` pooled over the bag ("external attention", Guo et al. 2021). Cost O(N·S·d).

Both are exact on bags of different sizes: a padded instance is masked out of every softmax, sum
and mean. Each also scores one whole bag chunk by chunk (``pool_chunked``), with the same numbers
as ``forward`` on that bag alone, so that inference on a million-sequence repertoire needs memory
for one chunk, not for the bag.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from biocls.models._checks import check_choice, check_positive

__all__ = ["BAG_POOLS", "AttentionPooling", "PatternPooling", "PoolOutput"]

BAG_POOLS = ("mean", "max")


class PoolOutput(NamedTuple):
    """What a bag pooling returns.

    ``pooled`` ``[B, D]``; ``weights`` ``[B, N]`` (per-instance attention, summing to 1 over a
    bag's valid instances, 0 on padding); ``scores`` ``[B, N]`` (per-instance evidence, comparable
    across bags; ``-inf`` on padding); ``stats`` ``[B, Q]`` (bag statistics: the log-mean-exp of
    the scores, a soft count of strongly scored instances).

    ``pool_chunked`` returns the same fields for one bag, without the ``B`` dimension.
    """

    pooled: torch.Tensor
    weights: torch.Tensor
    scores: torch.Tensor
    stats: torch.Tensor


def _bag_args(x: torch.Tensor, mask: torch.Tensor | None, log_weights: torch.Tensor | None,
              bag_sizes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if x.dim() != 3:
        raise ValueError(f"x must be [B, N, F], got {tuple(x.shape)}")
    b, n, _ = x.shape
    if mask is None:
        mask = torch.ones(b, n, dtype=torch.bool, device=x.device)
    if mask.shape != (b, n):
        raise ValueError(f"mask must be [B, N] = {(b, n)}, got {tuple(mask.shape)}")
    lw = torch.zeros(b, n, device=x.device) if log_weights is None else log_weights
    lw = lw.masked_fill(~mask, 0.0)
    if bag_sizes is None:
        log_total = torch.logsumexp(lw.masked_fill(~mask, -math.inf), dim=1)
    else:
        log_total = torch.log(bag_sizes.to(x.dtype))
    return mask, lw, log_total


def _log_weights_1d(x: torch.Tensor, log_weights: torch.Tensor | None, chunk: int
                    ) -> torch.Tensor:
    """One bag's log weights ``[N]`` (zeros when unweighted), for ``pool_chunked``."""
    if x.dim() != 2:
        raise ValueError(f"x must be one bag [N, F], got {tuple(x.shape)}")
    check_positive("chunk", chunk)
    return torch.zeros(len(x), device=x.device) if log_weights is None else log_weights


class AttentionPooling(nn.Module):
    """Attention pooling with a softmax over the whole bag (DeepRC, Widrich et al. 2020).

    ``score_i = w₂·SELU(W₁ x_i)``; ``a = softmax(score + log_weights)`` over the valid instances;
    ``pooled = Σ a_i x_i``. ``stats`` is ``logsumexp(score + log_weights) − log(total weight)``.

    Input ``x`` ``[B, N, F]``, ``mask`` ``[B, N]`` (True = real instance), optional
    ``log_weights`` ``[B, N]`` (e.g. log counts) and ``bag_sizes`` ``[B]`` (the full bag's total
    weight when ``x`` holds a selected subset). Output :class:`PoolOutput` with ``D = F``,
    ``Q = 1``.
    """

    def __init__(self, in_features: int, hidden: int = 32, n_layers: int = 2) -> None:
        super().__init__()
        check_positive("in_features", in_features)
        check_positive("hidden", hidden)
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        layers: list[nn.Module] = []
        d = in_features
        for _ in range(n_layers - 1):
            layers += [nn.Linear(d, hidden), nn.SELU()]
            d = hidden
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)
        self.in_features = in_features

    @property
    def out_features(self) -> int:
        return self.in_features

    @property
    def n_stats(self) -> int:
        return 1

    def instance_scores(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., F]`` → ``[...]`` raw attention scores."""
        return self.net(x).squeeze(-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                log_weights: torch.Tensor | None = None,
                bag_sizes: torch.Tensor | None = None) -> PoolOutput:
        mask, lw, log_total = _bag_args(x, mask, log_weights, bag_sizes)
        s = self.instance_scores(x).masked_fill(~mask, -math.inf)
        logits = s + lw
        a = torch.softmax(logits, dim=1).masked_fill(~mask, 0.0)
        pooled = torch.einsum("bn,bnf->bf", a, x)
        stats = (torch.logsumexp(logits, dim=1) - log_total).unsqueeze(1)
        return PoolOutput(pooled, a, s, stats)

    @torch.no_grad()
    def pool_chunked(self, x: torch.Tensor, log_weights: torch.Tensor | None = None,
                     chunk: int = 65_536) -> PoolOutput:
        """One whole bag ``x`` ``[N, F]`` (optional ``log_weights`` ``[N]``) → :class:`PoolOutput`
        without the batch dimension: what :meth:`forward` gives on ``x[None]``, but the attention
        network sees ``chunk`` instances at a time, so its hidden layer never holds the bag."""
        lw = _log_weights_1d(x, log_weights, chunk)
        log_total = torch.logsumexp(lw, 0)
        s = torch.cat([self.instance_scores(x[i:i + chunk]) for i in range(0, len(x), chunk)])
        lse = torch.logsumexp(s + lw, 0)
        a = torch.exp(s + lw - lse)
        return PoolOutput(a @ x, a, s, (lse - log_total).reshape(1))


class PatternPooling(nn.Module):
    """Learned-pattern attention ("external attention", Guo et al. 2021), pooled over the bag.

    ``E = x M_kᵀ / √F`` ``[B, N, S]``; ``α = softmax over the N valid instances`` (per slot);
    ``A = α / Σ_s α`` (ℓ1 over slots); ``Y = A M_v`` ``[B, N, F]``; ``pooled`` = mean (or max) of
    ``Y`` over the valid instances. ``stats[s] = logsumexp_i(E_is + log_weights_i) − log(total
    weight)``, one soft count per pattern. Cost O(N·S·F).

    ``weights`` are the instances' share of the patterns' attention, ``Σ_s α_is / S``; ``scores``
    are ``max_s E_is``. :meth:`RepertoireNet.pool` sharpens both with the head's weights.

    Input and output as :class:`AttentionPooling`, with ``D = F`` and ``Q = n_patterns``.
    """

    def __init__(self, in_features: int, n_patterns: int = 64, *, bag_pool: str = "mean") -> None:
        super().__init__()
        check_positive("in_features", in_features)
        check_positive("n_patterns", n_patterns)
        self.bag_pool = check_choice("bag_pool", bag_pool, BAG_POOLS)
        self.in_features, self.n_patterns = in_features, n_patterns
        self.keys = nn.Parameter(torch.randn(n_patterns, in_features))
        self.values = nn.Parameter(torch.randn(n_patterns, in_features) / math.sqrt(in_features))

    @property
    def out_features(self) -> int:
        return self.in_features

    @property
    def n_stats(self) -> int:
        return self.n_patterns

    def similarities(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., F]`` → ``[..., S]``: each instance's score against each key."""
        return x @ self.keys.t() / math.sqrt(self.in_features)

    def instance_scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.similarities(x).amax(-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                log_weights: torch.Tensor | None = None,
                bag_sizes: torch.Tensor | None = None) -> PoolOutput:
        mask, lw, log_total = _bag_args(x, mask, log_weights, bag_sizes)
        m3 = mask.unsqueeze(-1)
        e = self.similarities(x).masked_fill(~m3, -math.inf)  # [B, N, S]
        logits = e + lw.unsqueeze(-1)
        alpha = torch.softmax(logits, dim=1).masked_fill(~m3, 0.0)
        a = alpha / alpha.sum(-1, keepdim=True).clamp(min=1e-12)
        y = a @ self.values  # [B, N, F]
        if self.bag_pool == "mean":
            w = torch.softmax(lw.masked_fill(~mask, -math.inf), dim=1).masked_fill(~mask, 0.0)
            pooled = torch.einsum("bn,bnf->bf", w, y)
        else:
            pooled = y.masked_fill(~m3, -math.inf).amax(1)
        stats = torch.logsumexp(logits, dim=1) - log_total.unsqueeze(1)  # [B, S]
        weights = alpha.sum(-1) / self.n_patterns
        return PoolOutput(pooled, weights, e.amax(-1), stats)

    @torch.no_grad()
    def pool_chunked(self, x: torch.Tensor, log_weights: torch.Tensor | None = None,
                     chunk: int = 65_536) -> PoolOutput:
        """One whole bag ``x`` ``[N, F]`` (optional ``log_weights`` ``[N]``) → :class:`PoolOutput`
        without the batch dimension: what :meth:`forward` gives on ``x[None]``, in O(chunk · S)
        memory. Two passes: the first accumulates each pattern's log-sum-exp over the bag (the
        softmax denominators), the second the pooled values."""
        lw = _log_weights_1d(x, log_weights, chunk)
        log_total = torch.logsumexp(lw, 0)
        lse = torch.full((self.n_patterns,), -math.inf, device=x.device)
        for i in range(0, len(x), chunk):
            e = self.similarities(x[i:i + chunk]) + lw[i:i + chunk, None]
            lse = torch.logaddexp(lse, torch.logsumexp(e, 0))
        pooled = x.new_zeros(self.in_features)
        w_inst = torch.exp(lw - log_total)
        weights, scores = x.new_empty(len(x)), x.new_empty(len(x))
        for i in range(0, len(x), chunk):
            e = self.similarities(x[i:i + chunk])
            alpha = torch.exp(e + lw[i:i + chunk, None] - lse)
            a = alpha / alpha.sum(-1, keepdim=True).clamp(min=1e-12)
            y = a @ self.values
            if self.bag_pool == "mean":
                pooled += w_inst[i:i + chunk] @ y
            else:
                pooled = torch.maximum(pooled, y.amax(0)) if i else y.amax(0)
            weights[i:i + chunk] = alpha.sum(-1) / self.n_patterns
            scores[i:i + chunk] = e.amax(-1)
        return PoolOutput(pooled, weights, scores, lse - log_total)
