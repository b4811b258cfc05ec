"""The estimator for repertoires: fits a :class:`~biocls.models.RepertoireNet` (attention
multiple-instance learning over bags of CDR3 sequences) with scikit-learn's contract, and saves and
loads it as a model folder."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from biocls.estimators._base import NetEstimator
from biocls.models import (
    PackedBag,
    PatternPooling,
    RepertoireNet,
    enriched_patterns,
    seed_encoder,
    seed_pooling,
)
from biocls.models._checks import check_positive
from biocls.models._repertoire_net import pad_split
from biocls.train import Trainer, resolve_device, run_signature, seed_everything

__all__ = ["RepertoireClassifier"]

log = logging.getLogger(__name__)


class RepertoireClassifier(NetEstimator):
    """Fit, apply, save and load a :class:`RepertoireNet` (scikit-learn style).

    Training follows DeepRC (Widrich et al. 2020) with a faster optimiser setting: each update takes
    ``batch_size`` repertoires (subsampled to ``max_train_sequences``), scores every sequence
    without gradients, and back-propagates through the ``top_fraction`` best-scored sequences of
    each repertoire only (at least ``min_selected``). Inference uses every sequence.

    Initialisation matters more than the architecture here: DeepRC's reference at lr 1e-4 stays
    near chance on a 0.5 % witness rate, because a randomly initialised filter sees the witnesses
    as a 0.5 % shift of a bag mean. With ``seed_filters > 0``, the first filters start as
    detectors of the 4-residue patterns (contiguous or with one gap) most enriched in positive
    training bags (:func:`enriched_patterns`, training fold only), and the pooling and head start
    by counting them (:func:`seed_pooling`); gradient descent at ``lr`` 3e-3 then refines filters,
    attention and head jointly. ``seed_filters=0`` gives the plain random start.

    At low witness rates one fit can settle on background patterns, and which fold that happens in
    is chance. ``restarts > 1`` fits that many networks (seeds ``seed``, ``seed + 1``, …; restart
    ``r > 0`` seeds its filters from a random ``seed_subsample`` of the training bags, so the
    starts differ where it matters) and keeps the one with the lowest loss on the validation bags,
    which belong to the training subjects: test subjects never choose. ``restart_scores_`` holds
    every restart's best validation loss and ``restart_`` the one kept.

    ``__init__`` only stores parameters; :meth:`fit` validates them and returns ``self``; the
    fitted network is ``net_`` (also ``history_``, ``seeded_``; after :meth:`load`, ``meta_``).
    """

    KIND = "RepertoireClassifier"
    OLD_KINDS = ("repertoire_mil",)
    TASK = "repertoires"

    def __init__(self, *, pooling: str = "attention", n_filters: int = 32, kernel_size: int = 9,
                 n_patterns: int = 64, attention_hidden: int = 32, activation: str = "relu",
                 bag_pool: str = "mean", use_counts: bool = False, max_length: int = 64,
                 top_fraction: float | None = 0.1, min_selected: int = 64,
                 max_train_sequences: int | None = 10_000, batch_size: int = 4, lr: float = 3e-3,
                 weight_decay: float = 1e-4, max_epochs: int = 30, patience: int = 5,
                 seed_filters: int = 16, restarts: int = 1, seed_subsample: float = 0.8,
                 device: str = "auto", seed: int = 0, chunk: int = 65_536) -> None:
        self.pooling, self.n_filters, self.kernel_size = pooling, n_filters, kernel_size
        self.n_patterns, self.attention_hidden = n_patterns, attention_hidden
        self.activation, self.bag_pool, self.use_counts = activation, bag_pool, use_counts
        self.max_length, self.top_fraction = max_length, top_fraction
        self.min_selected = min_selected
        self.max_train_sequences, self.batch_size, self.lr = max_train_sequences, batch_size, lr
        self.weight_decay, self.max_epochs, self.patience = weight_decay, max_epochs, patience
        self.seed_filters, self.restarts, self.seed_subsample = (seed_filters, restarts,
                                                                 seed_subsample)
        self.device, self.seed, self.chunk = device, seed, chunk

    NET_KEYS = ("pooling", "n_filters", "kernel_size", "n_patterns", "attention_hidden",
                "activation", "bag_pool", "use_counts", "max_length")

    def _build(self) -> RepertoireNet:
        return RepertoireNet(**{k: getattr(self, k) for k in self.NET_KEYS})

    def _check(self) -> None:
        if self.top_fraction is not None and not 0 < self.top_fraction <= 1:
            raise ValueError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        for k in ("min_selected", "batch_size", "max_epochs", "patience", "chunk", "restarts"):
            check_positive(k, getattr(self, k))
        check_positive("lr", self.lr)
        if not 0 < self.seed_subsample <= 1:
            raise ValueError(f"seed_subsample must be in (0, 1], got {self.seed_subsample}")

    # -- training -------------------------------------------------------------------------
    def _select(self, net: RepertoireNet, bags: Sequence[PackedBag],
                index: list[torch.Tensor | None], dev: torch.device) -> list[torch.Tensor | None]:
        if self.top_fraction is None or self.top_fraction >= 1:
            return index
        with torch.inference_mode():
            was = net.training
            net.eval()
            h = self._embed_each(net, bags, index, dev)
            s = net.instance_scores(h).cpu()
            net.train(was)
        out: list[torch.Tensor | None] = []
        start = 0
        for b, ix in zip(bags, index, strict=False):
            n = len(b) if ix is None else len(ix)
            k = min(n, max(self.min_selected, int(math.ceil(self.top_fraction * n))))
            top = torch.topk(s[start:start + n], k).indices.sort().values  # keeps length order
            out.append(top if ix is None else ix[top])
            start += n
        return out

    @staticmethod
    def _embed_each(net: RepertoireNet, bags: Sequence[PackedBag],
                    index: Sequence[torch.Tensor | None], dev: torch.device) -> torch.Tensor:
        """Embed each bag's (selected) rows separately: each is length-sorted already."""
        parts = []
        for b, ix in zip(bags, index, strict=False):
            c, ln = (b.codes, b.lengths) if ix is None else (b.codes[ix], b.lengths[ix])
            parts.append(net.embed(c.to(dev), ln.to(dev)))
        return torch.cat(parts)

    def _loss(self, net: RepertoireNet, bags: Sequence[PackedBag], y: torch.Tensor,
              index: list[torch.Tensor | None], pos_weight: torch.Tensor,
              dev: torch.device) -> torch.Tensor:
        full = [len(b) if ix is None else len(ix) for b, ix in zip(bags, index, strict=False)]
        # the subsample's size (or total count) stands for the full bag's
        if net.use_counts:
            totals = torch.tensor([float(b.counts[ix].sum()) if ix is not None
                                   else float(b.counts.sum())
                                   for b, ix in zip(bags, index, strict=True)])
        else:
            totals = torch.tensor(full, dtype=torch.float32)
        sel = self._select(net, bags, index, dev)
        h = self._embed_each(net, bags, sel, dev)
        sizes = [len(b) if ix is None else len(ix) for b, ix in zip(bags, sel, strict=False)]
        cnts = torch.cat([b.counts if ix is None else b.counts[ix]
                          for b, ix in zip(bags, sel, strict=True)])
        hp, mask = pad_split(h, sizes)
        cp, _ = pad_split(cnts.to(dev), sizes)
        logits, _ = net.pool(hp, mask, cp, totals.to(dev))
        return F.binary_cross_entropy_with_logits(logits, y.to(dev), pos_weight=pos_weight)

    def _start(self, bags: Sequence[PackedBag], y: np.ndarray, restart: int, desc: str
               ) -> tuple[RepertoireNet, int]:
        """A fresh network for ``restart``, its filters seeded from enriched patterns (restart 0
        from all bags, later ones from a random ``seed_subsample`` of them)."""
        seed_everything(self.seed + restart)
        net = self._build()
        if not self.seed_filters:
            return net, 0
        use = np.arange(len(bags))
        if restart and self.seed_subsample < 1:
            rng = np.random.default_rng([self.seed, restart])
            n = max(4, int(round(self.seed_subsample * len(bags))))
            use = np.sort(rng.choice(len(bags), min(n, len(bags)), replace=False))
        pats = enriched_patterns([bags[i] for i in use], y[use],
                                 min(self.seed_filters, self.n_filters))
        seeded = seed_encoder(net.encoder, pats)
        seed_pooling(net, [p[2] for p in pats[:seeded]])
        log.info("%s: seeded %d filters from enriched patterns (top t = %.1f)", desc, seeded,
                 pats[0][2] if pats else float("nan"))
        return net, seeded

    def fit(self, bags: Sequence[PackedBag], y: Sequence[int] | np.ndarray, *,
            val_bags: Sequence[PackedBag] | None = None, val_y: Sequence[int] | None = None,
            checkpoint_dir: str | Path | None = None, progress: bool = True,
            desc: str = "mil") -> RepertoireClassifier:
        """Train on ``bags`` with binary labels ``y``; stop early on the validation loss (and,
        with ``restarts > 1``, keep the restart whose validation loss is lowest).

        ``checkpoint_dir`` makes a killed fit resumable (only by a fit with the same parameters,
        labels and bags; each restart in its own ``restart_<r>`` subfolder); ``progress`` and
        ``desc`` set the progress bar. They are arguments of the run, not of the model."""
        self._check()
        y_arr = np.asarray(y, dtype=np.float32)
        if len(bags) != len(y_arr) or len(bags) == 0:
            raise ValueError("bags and y must have the same, non-zero length")
        if self.restarts > 1 and not val_bags:
            raise ValueError(f"restarts={self.restarts} chooses among fits by their validation "
                             "loss: pass val_bags and val_y")
        dev = resolve_device(self.device)
        n_pos = float(y_arr.sum())
        pos_weight = torch.tensor((len(y_arr) - n_pos) / max(n_pos, 1.0), device=dev)
        yt = torch.from_numpy(y_arr)
        m = self.max_train_sequences

        def batches(rng: np.random.Generator):
            order = rng.permutation(len(bags))
            for i in range(0, len(order), self.batch_size):
                ids = order[i:i + self.batch_size]
                index = [torch.from_numpy(np.sort(rng.choice(len(bags[j]), m, replace=False)))
                         if m and len(bags[j]) > m else None for j in ids]
                yield ids, index

        def loss(module: nn.Module, batch) -> torch.Tensor:
            ids, index = batch
            return self._loss(module, [bags[j] for j in ids], yt[ids], index, pos_weight, dev)

        validate = None
        if val_bags:
            vy = torch.as_tensor(np.asarray(val_y, dtype=np.float32))

            def validate(module: nn.Module) -> float:
                logits = torch.from_numpy(self._logits(module, val_bags, dev))
                return float(F.binary_cross_entropy_with_logits(logits, vy))

        # a checkpoint resumes only this run: same settings, labels and bags (a stale one from
        # another split would leak held-out subjects into training)
        sig = run_signature(self._training_params(), y_arr,
                            np.array([len(b) for b in bags]),
                            *[b.codes[:: max(1, len(b) // 64)] for b in bags])
        self.restart_scores_: list[float] = []
        best: tuple[float, int, RepertoireNet, Any, int] | None = None
        several = self.restarts > 1
        for r in range(self.restarts):
            name = f"{desc} restart {r + 1}/{self.restarts}" if several else desc
            net, seeded = self._start(bags, y_arr, r, name)
            ckpt = (Path(checkpoint_dir) / f"restart_{r}" if several and checkpoint_dir
                    else checkpoint_dir)
            trainer = Trainer(max_epochs=self.max_epochs, patience=self.patience, lr=self.lr,
                              weight_decay=self.weight_decay, device=dev, seed=self.seed + r,
                              checkpoint_dir=ckpt, progress=progress, desc=name)
            hist = trainer.fit(net, batches=batches, loss=loss, validate=validate,
                               signature=f"{sig}:{r}" if several else sig)
            self.restart_scores_.append(float(hist.best_score))
            if best is None or hist.best_score < best[0]:
                best = (float(hist.best_score), r, net.cpu().eval(), hist, seeded)
            if several:
                log.info("%s: validation loss %.4f", name, hist.best_score)
        assert best is not None
        _, self.restart_, self.net_, self.history_, self.seeded_ = best
        return self

    # -- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def embed_bag(self, bag: PackedBag, net: RepertoireNet | None = None,
                  device: torch.device | None = None) -> torch.Tensor:
        """All sequences of ``bag`` → ``[n, F]`` features, in chunks."""
        net = net or self._check_fitted()
        dev = device or next(net.parameters()).device
        parts = [net.embed(bag.codes[i:i + self.chunk].to(dev),
                           bag.lengths[i:i + self.chunk].to(dev))
                 for i in range(0, len(bag), self.chunk)]
        return torch.cat(parts)

    def _logits(self, net: RepertoireNet, bags: Sequence[PackedBag], dev: torch.device
                ) -> np.ndarray:
        out = []
        for b in bags:
            h = self.embed_bag(b, net, dev)
            out.append(float(net.bag_logit(h, b.counts.to(dev), self.chunk)[0]))
        return np.asarray(out, dtype=np.float64)

    def predict_proba(self, bags: Sequence[PackedBag]) -> np.ndarray:
        """Probability of the positive class, one per bag (every sequence used)."""
        net = self._check_fitted()
        logits = self._logits(net, bags, next(net.parameters()).device)
        return 1.0 / (1.0 + np.exp(-logits))

    def predict(self, bags: Sequence[PackedBag]) -> np.ndarray:
        """Class per bag, 1 (positive) or 0, at probability 0.5 (the pipeline's ``predicted``)."""
        return (self.predict_proba(bags) >= 0.5).astype(np.int64)

    def attend(self, bag: PackedBag, top_n: int = 20) -> tuple[float, np.ndarray, np.ndarray,
                                                               np.ndarray]:
        """``(probability, index, weight, score)`` of the ``top_n`` most-attended sequences;
        ``index`` refers to the repertoire's original order."""
        net = self._check_fitted()
        h = self.embed_bag(bag, net)
        logit_t, w, s = net.bag_logit(h, bag.counts.to(h.device), self.chunk)
        logit, w, s = float(logit_t), w.cpu(), s.cpu()
        k = min(top_n, len(bag))
        top = torch.topk(s, k).indices
        return (1.0 / (1.0 + math.exp(-logit)), bag.order[top].numpy(), w[top].numpy(),
                s[top].numpy())

    @torch.no_grad()
    def pattern_neighbours(self, bags: Sequence[PackedBag], top_n: int = 5
                           ) -> tuple[np.ndarray, list[tuple[int, int, int, float]]]:
        """For pattern pooling: each pattern's head weight, and its ``top_n`` most similar
        sequences among ``bags`` as ``(pattern, bag, index, similarity)``."""
        net = self._check_fitted()
        pool = net.pooling
        if not isinstance(pool, PatternPooling):
            raise ValueError("pattern_neighbours needs pooling='patterns'")
        best_v = torch.full((pool.n_patterns, top_n), -math.inf)
        best_id = torch.full((pool.n_patterns, top_n, 2), -1, dtype=torch.long)
        for bi, b in enumerate(bags):
            e = pool.similarities(self.embed_bag(b, net)).cpu()  # [n, S]
            k = min(top_n, e.shape[0])
            v, ix = torch.topk(e.t(), k, dim=1)
            ids = torch.stack([torch.full_like(ix, bi), b.order[ix]], -1)
            allv = torch.cat([best_v, v], 1)
            alli = torch.cat([best_id, ids], 1)
            o = torch.topk(allv, top_n, dim=1).indices
            best_v = torch.gather(allv, 1, o)
            best_id = torch.gather(alli, 1, o.unsqueeze(-1).expand(-1, -1, 2))
        w = net.head.weight[0, pool.out_features:].detach().cpu().numpy().copy()
        rows = [(s, int(best_id[s, r, 0]), int(best_id[s, r, 1]), float(best_v[s, r]))
                for s in range(pool.n_patterns) for r in range(top_n) if best_id[s, r, 0] >= 0]
        return w, rows

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path, *, meta: dict[str, Any] | None = None) -> None:
        """Write the model folder (``weights.pt``, ``model.json``); ``meta`` is the caller's
        metadata, kept as it is and given back by :meth:`load` as ``meta_`` (``None`` keeps the
        ``meta_`` of a loaded model)."""
        self._write(directory, {}, meta)

    @classmethod
    def load(cls, directory: str | Path) -> RepertoireClassifier:
        """A fitted estimator, on the CPU, from a folder written by :meth:`save` (or by an older
        biocls, kind ``repertoire_mil``); its metadata is ``meta_``."""
        state, info, meta = cls._read(directory)
        clf = cls(**{**info["params"], "device": "cpu"})
        net = clf._build()
        net.load_state_dict(state)
        clf.net_ = net.eval()
        clf.meta_ = meta
        return clf
