"""The CDR3 sequence encoder: a 1-D CNN over one-hot residues plus position features.

DeepRC (Widrich et al. 2020, "Modern Hopfield networks and attention for immune repertoire
classification"). A convolution over one-hot input is a sum of per-offset lookups, so it is
computed with one ``embedding_bag`` instead of a materialised one-hot tensor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from biocls.models._checks import check_choice, check_positive

__all__ = ["ACTIVATIONS", "N_RESIDUES", "CDR3Encoder", "position_features"]

N_RESIDUES = 20
ACTIVATIONS = ("relu", "selu", "gelu")
#: positions summed per ``embedding_bag`` call when no gradient is needed
_BLOCK_POSITIONS = 1 << 15


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


class _RoutedMax(torch.autograd.Function):
    """The per-filter maxima, computed without autograd, with the gradient of a max: each
    filter's gradient goes to the flat ``table`` entries ``flat[n, f, :]`` summed at its arg-max
    position."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, top: torch.Tensor,  # type: ignore[override]
                flat: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(flat)
        ctx.table_shape = table.shape
        return top.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor  # type: ignore[override]
                 ) -> tuple[torch.Tensor, None, None]:
        (flat,) = ctx.saved_tensors
        out = grad.new_zeros(ctx.table_shape.numel())
        out.index_add_(0, flat.reshape(-1), grad.unsqueeze(-1).expand(flat.shape).reshape(-1))
        return out.view(ctx.table_shape), None, None


class CDR3Encoder(nn.Module):
    """Embed CDR3 sequences: a 1-D convolution over one-hot residues and position features, then
    the maximum over positions (DeepRC, Widrich et al. 2020).

    Input: ``codes`` ``[N, L]`` (int, residue codes 1..20, 0 = padding after the sequence end) and
    ``lengths`` ``[N]``. Output: ``[N, n_filters]``.

    The window is centred on each residue (``kernel_size // 2`` residues either side, zero beyond
    the ends), so positions ``t < length`` are exactly the valid ones and padding changes nothing.
    Sequences are processed in groups of equal length, so no compute is spent on padding (input
    sorted by length skips a permutation), and residues are looked up in pairs: one
    ``embedding_bag`` per position sums ``⌈K/2⌉`` pair rows and one position-feature row.

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
        check_positive("n_filters", n_filters)
        check_positive("kernel_size", kernel_size)
        check_positive("max_length", max_length)
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        self.n_filters, self.kernel_size, self.max_length = n_filters, kernel_size, max_length
        self.residue_weight = nn.Parameter(
            torch.randn(kernel_size, N_RESIDUES, n_filters) / math.sqrt(kernel_size))
        self.position_weight = nn.Parameter(
            torch.randn(n_filters, 3, kernel_size) * (0.1 / math.sqrt(kernel_size)))
        self.bias = nn.Parameter(torch.zeros(n_filters))
        pf = torch.stack([position_features(n, max_length) for n in range(max_length + 1)])
        k = kernel_size
        win = F.pad(pf, (k // 2, k - 1 - k // 2)).unfold(2, k, 1)  # [M + 1, 3, M, K]
        self.register_buffer("_pos_windows", win.permute(0, 2, 1, 3).reshape(
            max_length + 1, max_length, 3 * k).contiguous(), persistent=False)
        self.register_buffer("_offsets", (torch.arange((kernel_size + 1) // 2)
                                          * (N_RESIDUES + 1) ** 2).int(), persistent=False)

    @property
    def out_features(self) -> int:
        return self.n_filters

    def _position_table(self) -> torch.Tensor:
        """Contribution of the position features at position ``t`` of a sequence of length
        ``L``, as rows ``L * max_length + t`` of a ``[(max_length + 1) * max_length, F]`` table."""
        w = self.position_weight.reshape(self.n_filters, -1)  # [F, 3K]
        return self._pos_windows.reshape(-1, w.shape[1]) @ w.t()

    def _pair_table(self) -> torch.Tensor:
        """Residue-pair lookup table ``[G * 21 * 21, F]``: entry ``(g, a, b)`` is the summed
        contribution of residue ``a`` at kernel offset ``2g`` and ``b`` at ``2g + 1`` (code 0 =
        outside the sequence, contributing nothing). Looking up pairs halves the gathers."""
        k, f = self.kernel_size, self.n_filters
        k2 = 2 * ((k + 1) // 2)
        w = F.pad(self.residue_weight, (0, 0, 1, 0, 0, k2 - k))  # [K2, 21, F], zero rows/offsets
        w = w.view(k2 // 2, 2, N_RESIDUES + 1, f)
        return (w[:, 0, :, None, :] + w[:, 1, None, :, :]).reshape(-1, f)

    def _equal_length(self, x: torch.Tensor, table: torch.Tensor, pos_base: int
                      ) -> torch.Tensor:
        n, length = x.shape
        k = self.kernel_size
        k2 = 2 * ((k + 1) // 2)
        xp = F.pad(x, (k // 2, k2 - 1 - k // 2))  # [n, L + K2 - 1]
        pairs = xp[:, :-1] * (N_RESIDUES + 1) + xp[:, 1:]
        idx = pairs.unfold(1, k2 - 1, 1)[:, :, ::2] + self._offsets  # [n, L, K2 / 2]
        pos = torch.arange(pos_base + length * self.max_length,
                           pos_base + length * self.max_length + length, device=x.device,
                           dtype=x.dtype)
        idx = torch.cat([idx, pos.view(1, length, 1).expand(n, length, 1)], dim=2)
        g = idx.shape[2]
        if not (torch.is_grad_enabled() and table.requires_grad):
            # in blocks of _BLOCK_POSITIONS positions: a block's per-position sums stay in cache
            # until their max is taken (one pass over 10^6 sequences at once is ~2× slower)
            step = max(1, _BLOCK_POSITIONS // length)
            flat_idx = idx.reshape(n, -1)
            return torch.cat([
                F.embedding_bag(flat_idx[i:i + step].reshape(-1, g), table, mode="sum")
                .view(-1, length, table.shape[1]).amax(dim=1) for i in range(0, n, step)])
        # Only the arg-max position of each filter receives gradient: the maxima and where they
        # are come without autograd (max(dim=1) is several times faster than argmax here), and
        # the backward pass routes each filter's gradient to the table rows summed there
        # (~L times less backward work than a dense max).
        f = self.n_filters
        with torch.no_grad():
            out = F.embedding_bag(idx.reshape(-1, g), table, mode="sum")
            top, best = out.view(n, length, f).max(dim=1)  # [n, F]
            sel = idx.gather(1, best.unsqueeze(-1).expand(n, f, g))  # [n, F, g]
            flat = sel * f + torch.arange(f, device=x.device).view(1, f, 1)
        return _RoutedMax.apply(table, top, flat)

    def forward(self, codes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if codes.dim() != 2 or lengths.shape != codes.shape[:1]:
            raise ValueError(f"codes must be [N, L] and lengths [N]; got {tuple(codes.shape)} "
                             f"and {tuple(lengths.shape)}")
        n = codes.shape[0]
        if n == 0:
            return codes.new_zeros((0, self.n_filters), dtype=torch.float32)
        codes = codes.int()  # int32 indices: half the memory traffic of int64 in the lookups
        lengths = lengths.long()
        if int(lengths.max()) > self.max_length or int(lengths.min()) < 1:
            raise ValueError(f"sequence lengths must be within 1..{self.max_length}")
        pair = self._pair_table()
        table = torch.cat([pair, self._position_table()])
        base = pair.shape[0]
        presorted = bool((lengths[1:] >= lengths[:-1]).all())
        order = None if presorted else torch.argsort(lengths, stable=True)
        counts = torch.bincount(lengths if presorted else lengths[order]).tolist()
        parts, start = [], 0
        for m, c in enumerate(counts):
            if c == 0:
                continue
            rows = slice(start, start + c) if order is None else order[start:start + c]
            parts.append(self._equal_length(codes[rows, :m], table, base))
            start += c
        pre = torch.cat(parts) if len(parts) > 1 else parts[0]
        if order is not None:
            pre = torch.empty_like(pre).index_copy_(0, order, pre)
        return _act(self.activation)(pre + self.bias)
