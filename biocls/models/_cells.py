"""The nets for cells: a shared encoder and factored (or joint) heads with type-centred states;
the same factored heads straight on the genes (a factored logistic regression); and a mixture of
the two."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PATHS", "CellEnsemble", "CellNet"]

#: What feeds the factored heads: ``deep`` (the encoder), ``linear`` (the genes directly) or
#: ``ensemble`` (both, as a mixture of their probabilities).
PATHS = ("deep", "linear", "ensemble")


class CellNet(nn.Module):
    """Encoder then head (or, with ``encoder=None``, the head on the genes):
    ``[B, G] → dict of [B, C] logits``.

    With ``type_means`` (``[n_types, G]``, mean training profile per type) the state head reads
    the encoding of a *type-centred* profile ``x − p(type|x) · type_means``: the cell's deviation
    from what its type usually looks like. A state programme shared across types then shows up
    the same way in every type, including a type never seen in that state during training.
    Without an encoder the head is linear in the genes, so the centred state logits are
    ``W(x − p·μ) + b = Wx + b − p·(μWᵀ)``: one product per type, not per cell.
    """

    def __init__(self, encoder: nn.Module | None, head: nn.Module,
                 type_means: torch.Tensor | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        if type_means is not None:
            self.register_buffer("type_means", torch.as_tensor(type_means, dtype=torch.float32))
        else:
            self.type_means = None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        enc = self.encoder
        centred = self.type_means is not None and getattr(self.head, "state_head", None) is not None
        if enc is None:
            out = self.head(x)
            if centred:
                p = out["cell_type"].detach().softmax(-1)
                out["cell_state"] = out["cell_state"] - p @ (
                    self.type_means @ self.head.state_head.weight.T)
            return out
        if not centred:
            return self.head(enc(x))
        if hasattr(enc, "stem_shift"):
            # one pass over the genes serves both heads (see MLPEncoder)
            z = enc.stem_forward(x)
            out = self.head(enc.trunk(z))
            shift = out["cell_type"].detach().softmax(-1) @ enc.stem_shift(self.type_means)
            out["cell_state"] = self.head.state_logits(enc.trunk(z - shift))
            return out
        out = self.head(enc(x))
        p = out["cell_type"].detach().softmax(-1)
        out["cell_state"] = self.head.state_logits(enc(x - p @ self.type_means))
        return out


class CellEnsemble(nn.Module):
    """A mixture of a deep and a linear :class:`CellNet`, head by head:
    ``p = (1 − w_head)·p_deep + w_head·p_linear``, returned as log-probabilities (so ``softmax``
    of the output gives ``p``, as for any net here). The weights are chosen on validation
    patients by the estimator; each member keeps its own type-centred state head, so the mixture
    stays factored.
    """

    def __init__(self, deep: nn.Module, linear: nn.Module,
                 linear_weight: dict[str, float]) -> None:
        super().__init__()
        if not all(0.0 <= w <= 1.0 for w in linear_weight.values()):
            raise ValueError(f"linear weights must be in [0, 1], got {linear_weight}")
        self.deep = deep
        self.linear = linear
        self.weights = dict(linear_weight)  # plain floats: part of model.json, not the weights

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        a, b = self.deep(x), self.linear(x)
        out = {}
        for k, logits in a.items():
            w = self.weights.get(k, 0.5)
            out[k] = ((1 - w) * logits.softmax(-1) + w * b[k].softmax(-1)).clamp_min(1e-12).log()
        return out
