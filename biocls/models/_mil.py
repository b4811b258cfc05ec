"""Attention multiple-instance learning over immune repertoires (bags of CDR3 sequences).

Blocks (headless, reusable, argument-checked):

* :class:`CDR3Encoder` — a 1-D CNN over one-hot residues plus three position features, max over
  positions (DeepRC, Widrich et al. 2020, "Modern Hopfield networks and attention for immune
  repertoire classification"). A convolution over one-hot input is a sum of per-offset lookups, so
  it is computed with one ``embedding_bag`` instead of a materialised one-hot tensor.
* :class:`AttentionPooling` — a 2-layer SELU attention network and a softmax over the whole bag
  (DeepRC).
* :class:`PatternPooling` — learned-pattern attention: ``S`` learned key and value memories, scores
  ``F·M_kᵀ``, a softmax over the bag's instances then an ℓ1-normalisation over the slots, output
  ``A·M_v`` pooled over the bag ("external attention", Guo et al. 2021). Cost O(N·S·d).

Net: :class:`RepertoireNet` composes an encoder, a pooling and a linear head. Estimator:
:class:`RepertoireClassifier` (``fit``/``predict_proba``/``attend``/``save``/``load``).

Bags of different sizes are exact: a padded instance is masked out of every softmax, sum and mean,
so a bag's prediction does not depend on what it is batched or padded with.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionPooling", "CDR3Encoder", "PatternPooling", "PoolOutput", "RepertoireNet",
           "position_features"]

log = logging.getLogger(__name__)

N_RESIDUES = 20
ACTIVATIONS = ("relu", "selu", "gelu")
POOLINGS = ("attention", "patterns")
BAG_POOLS = ("mean", "max")


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; use one of {list(allowed)}")
    return value


def _check_pos(name: str, value: int | float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _act(name: str):
    return {"relu": F.relu, "selu": F.selu, "gelu": F.gelu}[name]


def position_features(length: int, max_length: int | None = None) -> torch.Tensor:
    """Three position features per residue of a sequence of ``length`` (DeepRC): a ramp falling
    from the start to the middle, one rising from the middle to the end, and their complement
    peaking in the middle. Returns ``[3, max_length]`` (zero beyond ``length``)."""
    width = max_length or length
    out = torch.zeros(3, width)
    if length == 0:
        return out
    u = torch.arange(length, dtype=torch.float32) / max(length - 1, 1)
    if length == 1:
        u = torch.full((1,), 0.5)
    first = (1 - 2 * u).clamp(min=0)
    last = (2 * u - 1).clamp(min=0)
    out[0, :length] = first
    out[2, :length] = last
    out[1, :length] = 1 - first - last
    return out


class CDR3Encoder(nn.Module):
    """Embed CDR3 sequences: a 1-D convolution over one-hot residues and position features, then
    the maximum over positions (DeepRC, Widrich et al. 2020).

    Input: ``codes`` ``[N, L]`` (int, residue codes 1..20, 0 = padding after the sequence end) and
    ``lengths`` ``[N]``. Output: ``[N, n_filters]``.

    The window is centred on each residue (``kernel_size // 2`` residues either side, zero beyond
    the ends), so positions ``t < length`` are exactly the valid ones and padding changes nothing.
    Sequences are processed in groups of equal length, so no compute is spent on padding.

    Parameters
    ----------
    n_filters
        Output features per sequence (DeepRC: 32).
    kernel_size
        Convolution width in residues (DeepRC: 9); keep it at least the span of the motifs sought,
        gaps included.
    activation
        One of ``"relu"``, ``"selu"``, ``"gelu"``; applied after the max (they are monotone, so
        this equals max after activation).
    max_length
        Longest sequence supported; longer ones are an error.
    """

    def __init__(self, n_filters: int = 32, kernel_size: int = 9, *, activation: str = "relu",
                 max_length: int = 64) -> None:
        super().__init__()
        _check_pos("n_filters", n_filters)
        _check_pos("kernel_size", kernel_size)
        _check_pos("max_length", max_length)
        self.activation = _check_choice("activation", activation, ACTIVATIONS)
        self.n_filters, self.kernel_size, self.max_length = n_filters, kernel_size, max_length
        self.residue_weight = nn.Parameter(
            torch.randn(kernel_size, N_RESIDUES, n_filters) / math.sqrt(kernel_size))
        self.position_weight = nn.Parameter(
            torch.randn(n_filters, 3, kernel_size) * (0.1 / math.sqrt(kernel_size)))
        self.bias = nn.Parameter(torch.zeros(n_filters))
        pf = torch.stack([position_features(n, max_length) for n in range(max_length + 1)])
        self.register_buffer("_pos", pf, persistent=False)  # [max_length + 1, 3, max_length]
        self.register_buffer("_offsets", torch.arange(kernel_size) * N_RESIDUES, persistent=False)

    @property
    def out_features(self) -> int:
        return self.n_filters

    def _position_table(self) -> torch.Tensor:
        k = self.kernel_size
        x = F.pad(self._pos, (k // 2, k - 1 - k // 2))
        return F.conv1d(x, self.position_weight).transpose(1, 2)  # [max_len + 1, max_len, F]

    def _equal_length(self, x: torch.Tensor, table: torch.Tensor, pos: torch.Tensor
                      ) -> torch.Tensor:
        n, length = x.shape
        k = self.kernel_size
        pad = N_RESIDUES * k
        xp = F.pad(x, (k // 2, k - 1 - k // 2))
        win = xp.unfold(1, k, 1)  # [n, L, K]
        idx = torch.where(win == 0, pad, win - 1 + self._offsets)
        out = F.embedding_bag(idx.reshape(-1, k), table, mode="sum", padding_idx=pad)
        return out.view(n, length, -1).add(pos[:length]).amax(dim=1)

    def forward(self, codes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if codes.dim() != 2 or lengths.shape != codes.shape[:1]:
            raise ValueError(f"codes must be [N, L] and lengths [N]; got {tuple(codes.shape)} "
                             f"and {tuple(lengths.shape)}")
        n = codes.shape[0]
        if n == 0:
            return codes.new_zeros((0, self.n_filters), dtype=torch.float32)
        codes = codes.long()
        lengths = lengths.long()
        if int(lengths.max()) > self.max_length or int(lengths.min()) < 1:
            raise ValueError(f"sequence lengths must be within 1..{self.max_length}")
        pad_row = self.residue_weight.new_zeros(1, self.n_filters)
        table = torch.cat([self.residue_weight.reshape(-1, self.n_filters), pad_row])
        ptab = self._position_table()
        uniq = torch.unique(lengths)
        if len(uniq) == 1:
            m = int(uniq[0])
            pre = self._equal_length(codes[:, :m], table, ptab[m])
        else:
            order = torch.argsort(lengths, stable=True)
            sorted_len = lengths[order]
            counts = torch.bincount(sorted_len).tolist()
            parts, start = [], 0
            for m, c in enumerate(counts):
                if c == 0:
                    continue
                rows = order[start:start + c]
                parts.append(self._equal_length(codes[rows, :m], table, ptab[m]))
                start += c
            pre = torch.empty(n, self.n_filters, dtype=parts[0].dtype, device=codes.device)
            pre[order] = torch.cat(parts)
        return _act(self.activation)(pre + self.bias)


class PoolOutput(NamedTuple):
    """What a bag pooling returns.

    ``pooled`` ``[B, D]``; ``weights`` ``[B, N]`` (per-instance attention, summing to 1 over a
    bag's valid instances, 0 on padding); ``scores`` ``[B, N]`` (per-instance evidence, comparable
    across bags; ``-inf`` on padding); ``stats`` ``[B, Q]`` (bag statistics: the log-mean-exp of
    the scores, a soft count of strongly scored instances).
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
        _check_pos("in_features", in_features)
        _check_pos("hidden", hidden)
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
        _check_pos("in_features", in_features)
        _check_pos("n_patterns", n_patterns)
        self.bag_pool = _check_choice("bag_pool", bag_pool, BAG_POOLS)
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


class RepertoireNet(nn.Module):
    """Encoder → pooling → linear head on ``[pooled, stats]``: one logit per bag.

    :meth:`forward` takes padded bags: ``codes`` ``[B, N, L]``, ``lengths`` ``[B, N]`` (0 marks a
    padded instance), optional ``counts`` ``[B, N]`` (used as weights when ``use_counts``); returns
    logits ``[B]``. The pipeline calls :meth:`embed` and :meth:`pool` separately so that it can
    score a whole bag without gradients and back-propagate through a selected subset.
    """

    def __init__(self, *, pooling: str = "attention", n_filters: int = 32, kernel_size: int = 9,
                 n_patterns: int = 64, attention_hidden: int = 32, activation: str = "relu",
                 bag_pool: str = "mean", use_counts: bool = False, max_length: int = 64) -> None:
        super().__init__()
        self.pooling_name = _check_choice("pooling", pooling, POOLINGS)
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

