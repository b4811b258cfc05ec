"""Save and load a model folder: weights (loaded with ``weights_only=True``) plus JSON metadata.

No pickle anywhere: a model folder from someone else cannot run code when it is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from biocls._errors import BioclsError
from biocls._io import atomic_path, write_json

__all__ = ["load_model_files", "save_model_files"]

WEIGHTS = "weights.pt"
META = "model.json"


def save_model_files(directory: str | Path, module: nn.Module, meta: dict[str, Any]) -> None:
    """Write ``weights.pt`` (CPU state dict) and ``model.json`` into ``directory`` atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    with atomic_path(d / WEIGHTS) as tmp:
        torch.save(state, tmp)
    write_json(d / META, meta)


def load_model_files(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return ``(state_dict, meta)``; a missing or foreign folder is a one-line error."""
    d = Path(directory)
    if not (d / WEIGHTS).exists() or not (d / META).exists():
        raise BioclsError(f"not a biocls model folder (needs {WEIGHTS} and {META})", where=str(d),
                          fix="point --model at results/<experiment>/model")
    state = torch.load(d / WEIGHTS, map_location="cpu", weights_only=True)
    return state, json.loads((d / META).read_text())
