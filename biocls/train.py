"""The one training loop, shared by every model: devices, seeds, early stopping, checkpoints.

A task supplies three callables — batches for an epoch, a loss on a batch, a validation score —
and :class:`Trainer` does the rest. Randomness is re-derived from ``(seed, epoch)`` at every epoch
boundary, so a run resumed from a checkpoint continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from biocls._io import atomic_path
from biocls._progress import progress_bar

__all__ = ["TrainHistory", "Trainer", "resolve_device", "run_signature", "seed_everything",
           "set_threads"]

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` means CUDA when present, else CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def set_threads(n: int | None) -> None:
    """Keep torch within the cores the scheduler gave this job (no oversubscription)."""
    if n:
        torch.set_num_threads(max(1, int(n)))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch; ask torch for deterministic kernels where it has them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def run_signature(params: dict[str, Any], *arrays: Any) -> str:
    """A digest of a model's settings and its training data, for :meth:`Trainer.fit`.

    Large arrays are sampled (every k-th row, plus their shapes), which is enough to tell one
    data set or split from another without hashing gigabytes.
    """
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for a in arrays:
        a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        h.update(str((a.shape, a.dtype)).encode())
        h.update(np.ascontiguousarray(a[:: max(1, len(a) // 512)] if a.ndim else a).tobytes())
    return h.hexdigest()


@dataclass
class TrainHistory:
    """What happened: per-epoch losses and validation scores, and the epoch kept."""

    train_loss: list[float] = field(default_factory=list)
    val_score: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = math.inf
    resumed_from: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"train_loss": self.train_loss, "val_score": self.val_score,
                "best_epoch": self.best_epoch, "best_score": self.best_score,
                "resumed_from": self.resumed_from}


class Trainer:
    """Fit a torch module with AdamW and early stopping on a validation score (lower is better).

    Parameters
    ----------
    max_epochs, patience
        Stop after ``max_epochs`` or when the validation score has not improved for ``patience``
        epochs; the best epoch's weights are restored.
    lr, weight_decay
        AdamW settings.
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    seed
        Seeds the initial weights (when the caller builds the module after :func:`seed_everything`)
        and every epoch's shuffling and dropout.
    checkpoint_dir
        Where to write ``checkpoint.pt`` at each epoch boundary; an existing checkpoint is resumed.
    progress
        Show a progress bar.
    plateau
        Halve the learning rate after this many epochs without improvement (default: never),
        restarting from the best weights so far: lets a model settle into the optimum it found.
    schedule
        The learning rate of each update as a factor of ``lr``, given the number of updates made
        so far (e.g. a cosine decay); it is counted in the checkpoint, so a resumed run continues
        it. Use it instead of ``plateau``.
    """

    def __init__(self, *, max_epochs: int = 100, patience: int = 10, lr: float = 1e-3,
                 weight_decay: float = 0.0, device: str | torch.device = "auto", seed: int = 0,
                 checkpoint_dir: str | Path | None = None, progress: bool = True,
                 desc: str = "train", grad_clip: float | None = 5.0,
                 plateau: int | None = None,
                 schedule: Callable[[int], float] | None = None) -> None:
        self.max_epochs = max_epochs
        self.patience = patience
        self.lr = lr
        self.weight_decay = weight_decay
        self.device = device
        self.seed = seed
        self.checkpoint_dir = checkpoint_dir
        self.progress = progress
        self.desc = desc
        self.grad_clip = grad_clip
        self.plateau = plateau
        self.schedule = schedule

    def fit(
        self,
        module: nn.Module,
        *,
        batches: Callable[[np.random.Generator], Iterable[Any]],
        loss: Callable[[nn.Module, Any], torch.Tensor],
        validate: Callable[[nn.Module], float] | None = None,
        signature: str = "",
    ) -> TrainHistory:
        """Train ``module`` in place and return its history.

        ``batches(rng)`` yields one epoch of batches, drawing any randomness from ``rng``;
        ``loss(module, batch)`` returns a scalar tensor; ``validate(module)`` is called in eval
        mode without gradients. Without ``validate`` the training loss is used for stopping.
        ``signature`` identifies the run (model settings, data); a checkpoint written under
        another signature is ignored, so a changed config never resumes a stale run.
        """
        if self.max_epochs < 1 or self.patience < 1:
            raise ValueError("max_epochs and patience must be >= 1")
        device = resolve_device(self.device)
        module.to(device)
        # foreach: one kernel per step for all parameters (torch's CPU default loops over them,
        # a sixth of a small net's epoch); the same numbers either way
        opt = torch.optim.AdamW(module.parameters(), lr=self.lr, weight_decay=self.weight_decay,
                                foreach=True)
        hist = TrainHistory()
        best_state = copy.deepcopy(module.state_dict())
        bad = 0
        start = 0
        updates = 0
        ckpt = Path(self.checkpoint_dir) / CHECKPOINT if self.checkpoint_dir else None
        state = None
        if ckpt is not None and ckpt.exists():
            state = torch.load(ckpt, map_location=device, weights_only=True)
            if state.get("signature", "") != signature:
                log.warning("%s: ignoring checkpoint %s written for another configuration",
                            self.desc, ckpt)
                state = None
        if state is not None:
            module.load_state_dict(state["module"])
            opt.load_state_dict(state["optimizer"])
            best_state = state["best_state"]
            bad = int(state["bad_epochs"])
            updates = int(state.get("updates", 0))
            hist = TrainHistory(**{**state["history"], "resumed_from": int(state["epoch"])})
            start = int(state["epoch"])
            log.info("%s: resuming from %s after epoch %d", self.desc, ckpt, start)
        bar = progress_bar(total=self.max_epochs, initial=start, desc=self.desc, unit="epoch",
                           disable=not self.progress, leave=False)
        epoch = start
        try:
            for epoch in range(start, self.max_epochs):
                if bad >= self.patience:
                    break
                torch.manual_seed(self.seed * 100_003 + epoch)
                rng = np.random.default_rng([self.seed, epoch])
                module.train()
                total, n = 0.0, 0
                for batch in batches(rng):
                    opt.zero_grad(set_to_none=True)
                    value = loss(module, batch)
                    value.backward()
                    if self.grad_clip:
                        nn.utils.clip_grad_norm_(module.parameters(), self.grad_clip)
                    if self.schedule is not None:
                        for group in opt.param_groups:
                            group["lr"] = self.lr * self.schedule(updates)
                    opt.step()
                    updates += 1
                    total += float(value.detach())
                    n += 1
                train_loss = total / max(n, 1)
                if validate is not None:
                    module.eval()
                    with torch.no_grad():
                        score = float(validate(module))
                else:
                    score = train_loss
                hist.train_loss.append(train_loss)
                hist.val_score.append(score)
                if score < hist.best_score - 1e-6:
                    hist.best_score, hist.best_epoch, bad = score, epoch, 0
                    best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
                else:
                    bad += 1
                    if self.plateau and bad % self.plateau == 0:
                        module.load_state_dict(best_state)
                        for group in opt.param_groups:
                            group["lr"] *= 0.5
                bar.set_postfix(loss=f"{train_loss:.4f}", val=f"{score:.4f}", refresh=False)
                bar.update(1)
                if ckpt is not None:
                    self._save(ckpt, module, opt, best_state, bad, hist, updates, epoch + 1,
                               signature)
        finally:
            bar.close()
        module.load_state_dict(best_state)
        module.eval()
        log.info("%s: stopped after %d epochs, best epoch %d (val %.4f)", self.desc,
                 len(hist.train_loss), hist.best_epoch + 1, hist.best_score)
        return hist

    @staticmethod
    def _save(path: Path, module: nn.Module, opt: torch.optim.Optimizer,
              best_state: dict[str, torch.Tensor], bad: int, hist: TrainHistory,
              updates: int, epoch: int, signature: str) -> None:
        state = {"signature": signature, "module": module.state_dict(), "updates": updates,
                 "optimizer": opt.state_dict(),
                 "best_state": best_state, "bad_epochs": bad, "epoch": epoch,
                 "history": {k: v for k, v in hist.as_dict().items() if k != "resumed_from"}}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
