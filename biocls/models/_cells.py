"""The estimator for cells: shared encoder + factored (or joint) heads, scikit-learn style."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from biocls.losses import masked_cross_entropy
from biocls.models._encoders import ENCODERS, MixerEncoder, MLPEncoder, gene_modules
from biocls.models._heads import HEADS, FactoredHeads, JointHead
from biocls.models._io import load_model_files, save_model_files
from biocls.train import Trainer, TrainHistory, resolve_device, seed_everything

__all__ = ["CellClassifier", "CellNet"]


class CellNet(nn.Module):
    """Encoder then head: ``[B, G] → dict of [B, C] logits``."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(self.encoder(x))


class CellClassifier:
    """Predict cell type and cell state from preprocessed expression.

    Parameters are stored untouched; :meth:`fit` validates them. ``head="factored"`` (default)
    gives independent type and state heads; ``head="joint"`` one softmax over the type×state pairs
    present in training. ``encoder`` is ``"mlp"`` or ``"mixer"`` (tokens are ``n_modules`` gene
    modules found by k-means on the training cells).

    Learned attributes: ``types_``, ``states_`` (label vocabularies), ``pairs_`` (joint head),
    ``modules_`` (mixer), ``net_``, ``history_``.
    """

    def __init__(self, *, encoder: str = "mlp", head: str = "factored",
                 hidden: Sequence[int] = (256, 128), dropout: float = 0.2, n_modules: int = 32,
                 mixer_dim: int = 64, mixer_depth: int = 2, lr: float = 1e-3,
                 weight_decay: float = 1e-4, batch_size: int = 256, max_epochs: int = 40,
                 patience: int = 5, state_weight: float = 1.0, device: str = "auto",
                 seed: int = 0, progress: bool = True,
                 checkpoint_dir: str | Path | None = None) -> None:
        self.encoder = encoder
        self.head = head
        self.hidden = hidden
        self.dropout = dropout
        self.n_modules = n_modules
        self.mixer_dim = mixer_dim
        self.mixer_depth = mixer_depth
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.state_weight = state_weight
        self.device = device
        self.seed = seed
        self.progress = progress
        self.checkpoint_dir = checkpoint_dir

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, X: np.ndarray, cell_type: Sequence[str], cell_state: Sequence[Any] | None = None,
            *, X_val: np.ndarray | None = None, cell_type_val: Sequence[str] | None = None,
            cell_state_val: Sequence[Any] | None = None) -> CellClassifier:
        """Fit on training cells; early-stop on the validation cells (whole held-back patients)."""
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        X = np.ascontiguousarray(X, dtype=np.float32)
        self.types_ = sorted(set(map(str, cell_type)))
        known = [] if cell_state is None else [s for s in cell_state if _known(s)]
        self.states_ = sorted(set(map(str, known)))
        yt = self._codes(cell_type, self.types_)
        ys = self._codes(cell_state, self.states_, n=len(yt))
        if self.head == "joint":
            if len(self.states_) < 1:
                raise ValueError("the joint head needs cell_state labels")
            ok = ys >= 0
            self.pairs_ = sorted({(int(t), int(s)) for t, s in zip(yt[ok], ys[ok])})
        seed_everything(self.seed)
        self.modules_ = (gene_modules(X, self.n_modules, seed=self.seed)
                         if self.encoder == "mixer" else None)
        self.n_features_in_ = X.shape[1]
        self.net_ = self._build()
        device = resolve_device(self.device)
        Xt, Yt, Ys = torch.from_numpy(X), torch.from_numpy(yt), torch.from_numpy(ys)
        pair_of = self._pair_lookup() if self.head == "joint" else None
        validate = None
        if X_val is not None and len(X_val):
            Xv = torch.from_numpy(np.ascontiguousarray(X_val, dtype=np.float32))
            Yv = torch.from_numpy(self._codes(cell_type_val, self.types_, unknown_ok=True))
            Sv = torch.from_numpy(self._codes(cell_state_val, self.states_, n=len(Yv),
                                              unknown_ok=True))

            def validate(net: nn.Module) -> float:
                total = 0.0
                for i in range(0, len(Xv), 4096):
                    out = net(Xv[i:i + 4096].to(device))
                    total += float(self._loss(out, Yv[i:i + 4096].to(device),
                                              Sv[i:i + 4096].to(device), None)) * len(out["cell_type"])
                return total / len(Xv)

        bs = self.batch_size

        def batches(rng: np.random.Generator):
            order = torch.from_numpy(rng.permutation(len(Xt)))
            for i in range(0, len(order), bs):
                idx = order[i:i + bs]
                if len(idx) < 2:
                    continue
                yield Xt[idx].to(device), Yt[idx].to(device), Ys[idx].to(device)

        def loss(net: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            x, t, s = batch
            return self._loss(net(x), t, s, pair_of)

        trainer = Trainer(max_epochs=self.max_epochs, patience=self.patience, lr=self.lr,
                          weight_decay=self.weight_decay, device=device, seed=self.seed,
                          checkpoint_dir=self.checkpoint_dir, progress=self.progress,
                          desc=f"{self.encoder}/{self.head}")
        self.history_: TrainHistory = trainer.fit(self.net_, batches=batches, loss=loss,
                                                  validate=validate)
        self.net_.to("cpu")
        return self

    def _loss(self, out: dict[str, torch.Tensor], t: torch.Tensor, s: torch.Tensor,
              pair_of: torch.Tensor | None) -> torch.Tensor:
        if self.head == "joint" and pair_of is not None:
            pair = torch.where(s >= 0, pair_of.to(t.device)[t, s.clamp_min(0)], -1)
            # cells without a state still teach the type marginal
            type_only = masked_cross_entropy(out["cell_type"], torch.where(s < 0, t, -1))
            return masked_cross_entropy(out["pair"], pair) + type_only
        value = masked_cross_entropy(out["cell_type"], t)
        if "cell_state" in out:
            value = value + self.state_weight * masked_cross_entropy(out["cell_state"], s)
        return value

    def _pair_lookup(self) -> torch.Tensor:
        table = torch.full((len(self.types_), len(self.states_)), -1, dtype=torch.long)
        for k, (t, s) in enumerate(self.pairs_):
            table[t, s] = k
        return table

    def _build(self) -> CellNet:
        if self.encoder == "mixer":
            enc: nn.Module = MixerEncoder(self.modules_, dim=self.mixer_dim,
                                          depth=self.mixer_depth, dropout=self.dropout)
        else:
            enc = MLPEncoder(self.n_features_in_, self.hidden, self.dropout)
        if self.head == "joint":
            head: nn.Module = JointHead(enc.out_features, torch.tensor(self.pairs_),
                                        len(self.types_), len(self.states_))
        else:
            head = FactoredHeads(enc.out_features, len(self.types_), len(self.states_))
        return CellNet(enc, head)

    # -- prediction ----------------------------------------------------------------------------
    def predict_proba(self, X: np.ndarray, *, batch_size: int = 8192) -> dict[str, np.ndarray]:
        """Per-head class probabilities, columns ordered as ``types_`` / ``states_``."""
        if not hasattr(self, "net_"):
            raise RuntimeError("CellClassifier is not fitted; call fit() or load() first")
        X = np.asarray(X, dtype=np.float32)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features; the model was fitted on "
                             f"{self.n_features_in_}")
        device = resolve_device(self.device)
        net = self.net_.to(device).eval()
        parts: dict[str, list[np.ndarray]] = {}
        with torch.no_grad():
            for i in range(0, len(X), batch_size):
                out = net(torch.from_numpy(X[i:i + batch_size]).to(device))
                for k in ("cell_type", "cell_state"):
                    if k in out:
                        parts.setdefault(k, []).append(out[k].softmax(-1).cpu().numpy())
        self.net_.to("cpu")
        return {k: np.concatenate(v) for k, v in parts.items()}

    def predict(self, X: np.ndarray) -> dict[str, np.ndarray]:
        proba = self.predict_proba(X)
        vocab = {"cell_type": self.types_, "cell_state": self.states_}
        return {k: np.asarray(vocab[k])[p.argmax(1)] for k, p in proba.items()}

    # -- persistence ---------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()
                if not k.endswith("_") and k != "checkpoint_dir"}

    def save(self, directory: str | Path, *, extra: dict[str, Any] | None = None) -> None:
        meta = {"kind": "CellClassifier", "params": self.get_params(), "types": self.types_,
                "states": self.states_, "n_features_in": self.n_features_in_,
                "pairs": getattr(self, "pairs_", None), "modules": self.modules_,
                "history": self.history_.as_dict(), **(extra or {})}
        save_model_files(directory, self.net_, meta)

    @classmethod
    def load(cls, directory: str | Path) -> CellClassifier:
        state, meta = load_model_files(directory)
        self = cls(**{k: v for k, v in meta["params"].items() if k != "progress"}, progress=False)
        self.types_, self.states_ = meta["types"], meta["states"]
        self.n_features_in_ = meta["n_features_in"]
        self.modules_ = meta["modules"]
        if meta.get("pairs") is not None:
            self.pairs_ = [tuple(p) for p in meta["pairs"]]
        self.history_ = TrainHistory(**meta["history"])
        self.net_ = self._build()
        self.net_.load_state_dict(state)
        self.net_.eval()
        return self

    @staticmethod
    def _codes(labels: Sequence[Any] | None, vocab: list[str], *, n: int | None = None,
               unknown_ok: bool = False) -> np.ndarray:
        """Integer codes; unknown/missing labels (and, with ``unknown_ok``, unseen ones) → -1."""
        if labels is None:
            return np.full(n or 0, -1, dtype=np.int64)
        index = {v: i for i, v in enumerate(vocab)}
        out = np.empty(len(labels), dtype=np.int64)
        for i, v in enumerate(labels):
            if not _known(v):
                out[i] = -1
            elif str(v) in index:
                out[i] = index[str(v)]
            elif unknown_ok:
                out[i] = -1
            else:  # pragma: no cover - vocab is built from these labels
                raise ValueError(f"label {v!r} not in vocabulary")
        return out


def _known(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and np.isnan(v)) and str(v) != ""
