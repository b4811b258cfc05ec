"""Shared encoders for expression profiles: an MLP, and an MLP-Mixer over gene-module tokens."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ENCODERS", "ByteDropout", "MLPEncoder", "MixerBlock", "MixerEncoder"]

ENCODERS = ("mlp", "mixer")


class ByteDropout(nn.Module):
    """:class:`torch.nn.Dropout` whose CPU mask costs an eighth of torch's.

    torch's CPU dropout draws one 32-bit random number per element; at batch 256 that was a
    sixth of an MLP epoch (0.65 of 5.1 s in a profile). Here each element gets one random byte
    (64-bit draws split in eight) and is kept when the byte is at least ``round(256·p)``: ``p``
    is rounded to a multiple of 1/256 (0.2 → 0.199), and kept values are scaled by the exact
    inverse of the keep rate, so the expectation is unchanged. On other devices it is
    :func:`torch.nn.functional.dropout`. Both draw from torch's generator: seeded runs repeat.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = float(p)
        self.threshold = round(256 * self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        if x.device.type != "cpu":
            return nn.functional.dropout(x, self.p, True)
        n = x.numel()
        draws = torch.randint(-(2**63), 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64)
        keep = draws.view(torch.uint8)[:n].view(x.shape) >= self.threshold
        return x * keep.to(x.dtype).mul_(256.0 / (256 - self.threshold))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MLPEncoder(nn.Module):
    """Linear → LayerNorm → GELU → Dropout, repeated; ``[B, F] → [B, hidden[-1]]``.

    ``input_dropout`` drops whole genes at random during training, which keeps the encoder from
    leaning on a few genes whose level differs between patients (batch effects). One gene mask is
    drawn per batch and applied to the stem's weight columns: the same regulariser for every cell
    of the batch, at the cost of G random numbers instead of B × G.
    The first linear layer (``stem``) is split from the rest (``trunk``) because it is linear in
    its input: the encoding of a shifted profile ``x − s`` reuses ``stem(x)`` and only subtracts
    ``s`` mapped through the stem's weights (:meth:`stem_shift`), which is far cheaper than a
    second pass over all genes.
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (256, 128),
                 dropout: float = 0.2, input_dropout: float = 0.0) -> None:
        super().__init__()
        if in_features < 1 or not hidden or min(hidden) < 1:
            raise ValueError(f"bad MLPEncoder sizes: in_features={in_features}, hidden={hidden}")
        if not (0.0 <= dropout < 1.0 and 0.0 <= input_dropout < 1.0):
            raise ValueError(f"dropouts must be in [0, 1), got {dropout}, {input_dropout}")
        self.input_dropout = float(input_dropout)
        self.stem = nn.Linear(in_features, hidden[0])
        layers: list[nn.Module] = [nn.LayerNorm(hidden[0]), nn.GELU(), ByteDropout(dropout)]
        for prev, h in zip(hidden[:-1], hidden[1:], strict=False):
            layers += [nn.Linear(prev, h), nn.LayerNorm(h), nn.GELU(), ByteDropout(dropout)]
        self.trunk = nn.Sequential(*layers)
        self.out_features = hidden[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.stem_forward(x))

    def stem_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, F] → [B, hidden[0]]``, dropping whole genes (columns) while training."""
        if not (self.training and self.input_dropout):
            return self.stem(x)
        keep = 1.0 - self.input_dropout
        mask = torch.bernoulli(torch.full((1, x.shape[1]), keep, device=x.device)) / keep
        return nn.functional.linear(x, self.stem.weight * mask, self.stem.bias)

    def stem_shift(self, shift: torch.Tensor) -> torch.Tensor:
        """``[N, F] → [N, hidden[0]]``: what subtracting ``shift`` from the input does to it."""
        return shift @ self.stem.weight.T


class MixerBlock(nn.Module):
    """One MLP-Mixer block (Tolstikhin et al. 2021) over ``[B, T, D]`` tokens.

    ``U = X + MLP_tok(LN(X)ᵀ)ᵀ`` mixes across tokens; ``Y = U + MLP_ch(LN(U))`` within them.
    """

    def __init__(self, n_tokens: int, dim: int, token_hidden: int, channel_hidden: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(n_tokens, token_hidden), nn.GELU(),
                                       nn.Dropout(dropout), nn.Linear(token_hidden, n_tokens))
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(nn.Linear(dim, channel_hidden), nn.GELU(),
                                         nn.Dropout(dropout), nn.Linear(channel_hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class MixerEncoder(nn.Module):
    """MLP-Mixer whose tokens are gene modules; ``[B, G] → [B, dim]``.

    ``modules`` gives each of the G input genes a module index in ``[0, n_modules)`` (e.g. from
    clustering genes on training cells, see :func:`gene_modules`). Each module's genes are embedded
    by their own linear map into a ``dim``-vector token, so a token means "this programme's
    activity", which the token-mixing MLP can then relate across programmes.
    """

    def __init__(self, modules: torch.Tensor | Sequence[int], dim: int = 64, depth: int = 2,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        mods = torch.as_tensor(modules, dtype=torch.long)
        if mods.ndim != 1 or mods.numel() == 0 or int(mods.min()) < 0:
            raise ValueError("modules must be a non-empty 1-D tensor of non-negative module ids")
        n_mod = int(mods.max()) + 1
        sizes = torch.bincount(mods, minlength=n_mod)
        if (sizes == 0).any():
            raise ValueError("every module id in [0, max] must have at least one gene")
        width = int(sizes.max())
        # index[t, j] = gene feeding slot j of token t; padding slots read a constant-zero column
        index = torch.full((n_mod, width), mods.numel(), dtype=torch.long)
        for t in range(n_mod):
            genes = torch.nonzero(mods == t).flatten()
            index[t, : genes.numel()] = genes
        self.register_buffer("gene_module", mods, persistent=True)
        self.register_buffer("index", index, persistent=True)
        self.token_weight = nn.Parameter(torch.randn(n_mod, width, dim) / width**0.5)
        self.token_bias = nn.Parameter(torch.zeros(n_mod, dim))
        self.blocks = nn.Sequential(*[MixerBlock(n_mod, dim, max(16, 2 * n_mod), 2 * dim, dropout)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.out_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([x, x.new_zeros(x.shape[0], 1)], dim=1)
        tokens = padded[:, self.index]                                   # [B, T, W]
        h = torch.einsum("btw,twd->btd", tokens, self.token_weight) + self.token_bias
        return self.norm(self.blocks(h)).mean(dim=1)


def gene_modules(X: torch.Tensor | object, n_modules: int, *, seed: int = 0) -> list[int]:
    """Group genes into ``n_modules`` co-expression modules by k-means on their profiles.

    ``X`` is a ``[cells, genes]`` matrix of training cells only (no leakage into modules).
    """
    import numpy as np
    from sklearn.cluster import KMeans

    A = np.asarray(X, dtype=np.float32).T                      # genes × cells
    if A.shape[1] > 2000:
        rng = np.random.default_rng(seed)
        A = A[:, rng.choice(A.shape[1], 2000, replace=False)]
    A = A - A.mean(axis=1, keepdims=True)
    A /= np.linalg.norm(A, axis=1, keepdims=True) + 1e-8       # correlation-like geometry
    n_modules = max(1, min(n_modules, A.shape[0]))
    labels = KMeans(n_clusters=n_modules, n_init=3, random_state=seed).fit_predict(A)
    # relabel so ids are contiguous (k-means may leave a cluster empty in rare cases)
    _, labels = np.unique(labels, return_inverse=True)
    return labels.tolist()
