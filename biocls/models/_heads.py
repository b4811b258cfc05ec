"""Classification heads on top of a shared encoder.

The factored head scores type and state separately, so any type×state pair can be named, seen in
training or not. The joint head scores only the pairs it was trained on; it is the comparison
that shows what factoring buys.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["HEADS", "FactoredHeads", "JointHead"]

HEADS = ("factored", "joint")


class FactoredHeads(nn.Module):
    """``[B, D] → {"cell_type": [B, n_types], "cell_state": [B, n_states]}`` logits."""

    def __init__(self, in_features: int, n_types: int, n_states: int = 0) -> None:
        super().__init__()
        if n_types < 2:
            raise ValueError(f"need at least 2 cell types, got {n_types}")
        self.type_head = nn.Linear(in_features, n_types)
        self.state_head = nn.Linear(in_features, n_states) if n_states else None

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"cell_type": self.type_head(h)}
        if self.state_head is not None:
            out["cell_state"] = self.state_head(h)
        return out

    def state_logits(self, h: torch.Tensor) -> torch.Tensor:
        """State logits alone, for an encoding computed from a different input."""
        return self.state_head(h)


class JointHead(nn.Module):
    """One softmax over the type×state pairs seen in training; marginals give type and state.

    ``pairs`` is ``[P, 2]`` (type index, state index) of the trained pairs. Output is the same
    dict as :class:`FactoredHeads` but holding log-marginal probabilities, plus ``"pair"`` logits.
    """

    def __init__(self, in_features: int, pairs: torch.Tensor, n_types: int,
                 n_states: int) -> None:
        super().__init__()
        pairs = torch.as_tensor(pairs, dtype=torch.long)
        if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.shape[0] < 2:
            raise ValueError("pairs must be [P, 2] with P >= 2")
        self.register_buffer("pairs", pairs)
        self.register_buffer("to_type", nn.functional.one_hot(pairs[:, 0], n_types).float())
        self.register_buffer("to_state", nn.functional.one_hot(pairs[:, 1], n_states).float())
        self.head = nn.Linear(in_features, pairs.shape[0])

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.head(h)
        p = logits.softmax(dim=-1)
        eps = 1e-12
        return {"pair": logits,
                "cell_type": (p @ self.to_type).clamp_min(eps).log(),
                "cell_state": (p @ self.to_state).clamp_min(eps).log()}
