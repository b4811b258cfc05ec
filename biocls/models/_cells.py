"""The net for cells: a shared encoder and factored (or joint) heads, with type-centred states."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CellNet"]


class CellNet(nn.Module):
    """Encoder then head: ``[B, G] → dict of [B, C] logits``.

    With ``type_means`` (``[n_types, G]``, mean training profile per type) the state head reads
    the encoding of a *type-centred* profile ``x − p(type|x) · type_means``: the cell's deviation
    from what its type usually looks like. A state programme shared across types then shows up
    the same way in every type, including a type never seen in that state during training.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module,
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
