"""The estimator for cells: fits a :class:`~biocls.models.CellNet` (shared encoder + factored or
joint heads) with scikit-learn's contract, and saves and loads it as a model folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import clone
from torch import nn

from biocls.estimators._base import NetEstimator
from biocls.estimators._linear import PENALTIES, fit_state_head, fit_type_head
from biocls.evaluate import known_mask
from biocls.losses import PARTIAL_MODES, masked_cross_entropy, partial_label_loss
from biocls.models import (
    PATHS,
    CellEnsemble,
    CellNet,
    FactoredHeads,
    JointHead,
    MixerEncoder,
    MLPEncoder,
    gene_modules,
)
from biocls.models._encoders import ENCODERS
from biocls.models._heads import HEADS
from biocls.train import Trainer, TrainHistory, resolve_device, run_signature, seed_everything

__all__ = ["CellClassifier"]

#: What the factored state head reads: the type-centred profile (see CellNet), or the profile.
STATE_INPUTS = ("centred", "raw")
#: Weights of the linear path that ``path="ensemble"`` chooses from, simplest first: a weight
#: is kept unless a later one errs less on validation by more than :data:`MIX_MARGIN`.
MIX_WEIGHTS = (1.0, 0.5, 0.0)
#: How much lower (absolute validation error) the deep path must bring a head's error to count:
#: chosen on the tuning cohorts of benchmarks/cells_suite.py, where a smaller margin let the
#: validation noise of two or three patients pick mixtures that were worse on test patients.
MIX_MARGIN = 0.01


#: ``linear_c=None`` uses C = LINEAR_C_CELLS / (training cells): scikit-learn's C is a penalty
#: per cell, so one fixed C penalises a cohort of 300 cells 8x harder than one of 2,500 (on the
#: cell-averaged loss); this keeps it at 1 / LINEAR_C_CELLS. Chosen on the suite's tuning cohorts
#: at 40, 100 and 350 cells per donor (benchmarks/cells_suite.py --cells-per-patient).
LINEAR_C_CELLS = 100.0
#: ``linear_penalty="auto"``'s second candidate: scikit-learn's default logistic regression (L2,
#: C = 1), which spreads weight over every gene that helps; the first is L1 (a few marker genes
#: per class). Where many genes carry a little of the signal (scanpy's scaled PBMCs) the sparse
#: fit loses; the validation patients tell which kind of cohort this is.
LINEAR_L2_C = 1.0
#: what ``linear_penalty`` takes
LINEAR_PENALTIES = ("auto", *PENALTIES)
#: ``batch_size=None``: 256 cells per update, doubled up to the last size while an epoch keeps at
#: least MIN_STEPS_PER_EPOCH updates. At 10⁵ cells a batch of 512 trains 1.6× faster on two CPU
#: cores; on the suite's tuning cohorts (4,200 cells: 8 updates per epoch at 512) the deep path
#: lost 0.003 type / 0.005 state macro-F1 at 512 and 0.016 / 0.011 at 1,024, so small cohorts
#: keep 256.
BATCH_SIZES = (256, 512, 1024)
MIN_STEPS_PER_EPOCH = 128


class CellClassifier(NetEstimator):
    """Predict cell type and cell state from preprocessed expression.

    Parameters are stored untouched; :meth:`fit` validates them. ``head="factored"`` (default)
    gives independent type and state heads; ``head="joint"`` one softmax over the type×state
    pairs present in training. ``encoder`` is ``"mlp"`` or ``"mixer"`` (tokens are ``n_modules``
    gene modules found by k-means on the training cells). ``path`` says what feeds the factored
    heads: ``"deep"`` the encoder; ``"linear"`` the genes directly, a factored logistic
    regression fitted to convergence (``LogisticRegression(penalty=linear_penalty,
    C=linear_c)``, C from :data:`LINEAR_C_CELLS` when ``None``; L1 leaves most genes at 0; the
    state part on the type-centred profile; ``linear_penalty="auto"`` fits L1 and scikit-learn's
    default L2 (:data:`LINEAR_L2_C`) per head and keeps L1 unless L2 has at least
    :data:`MIX_MARGIN` fewer errors on the validation cells: ``linear_penalty_``, ``linear_c_``,
    ``linear_errors_``; with ``linear_refit`` the chosen fits are then redone on training and
    validation cells, as ``LogisticRegressionCV(refit=True)`` does); ``"ensemble"`` fits both
    and mixes their probabilities, per head, with a linear weight of 1, 0.5 or 0 chosen on the
    validation cells: the simplest one unless another has at least :data:`MIX_MARGIN` fewer
    errors there
    (``linear_weight_``, e.g. ``{"cell_type": 1.0, "cell_state": 0.5}``; ``chosen_`` names each
    head's choice, ``"linear"``, ``"deep"`` or ``"ensemble"``; each weight's validation error is
    in ``mix_errors_``). A few marker genes that separate two look-alike types then count
    whatever the encoder does with them, and the deep path adds what is not linear. Multi-label
    states and the joint head are always deep.

    The defaults are those of the workflow's config schema (``$defs.model_cells``), so that the
    same experiment trains the same model from Python and from Snakemake.

    Learned attributes: ``types_``, ``states_`` (label vocabularies), ``pairs_`` (joint head),
    ``modules_`` (mixer), ``n_features_in_``, ``type_means_``, ``priors_``, ``net_``,
    ``history_`` (of the deep path), ``chosen_`` (see ``path``), ``batch_size_`` (the batch
    used: :func:`batch_size_for` the training cells when ``batch_size`` is None); after
    :meth:`load` also ``meta_``.
    """

    KIND = "CellClassifier"
    TASK = "cells"
    FILE_KEYS = frozenset({"kind", "params", "types", "states", "n_features_in", "pairs",
                           "modules", "history", "priors", "meta", "chosen",
                           "linear_weight", "mix_errors"})

    def __init__(self, *, encoder: str = "mlp", head: str = "factored", path: str = "ensemble",
                 linear_c: float | None = None, linear_penalty: str = "auto",
                 linear_refit: bool = True,
                 hidden: Sequence[int] = (256, 128), dropout: float = 0.2,
                 input_dropout: float = 0.5, n_modules: int = 32,
                 mixer_dim: int = 64, mixer_depth: int = 2, lr: float = 1e-3,
                 weight_decay: float = 1e-4, batch_size: int | None = None,
                 max_epochs: int = 60,
                 patience: int = 10, state_weight: float = 1.0, state_input: str = "centred",
                 early_stopping: str = "error", lr_decay: bool = True,
                 device: str = "auto",
                 seed: int = 0, progress: bool = True, state_mode: str = "single",
                 partial_loss: str = "selective", gamma_pos: float = 0.0,
                 gamma_neg: float = 1.0, gamma_unann: float = 2.0,
                 priors: Sequence[float] | dict[str, float] | None = None,
                 prior_threshold: float = 0.5, likelihood_topk: float = 0.5) -> None:
        self.encoder = encoder
        self.head = head
        self.path = path
        self.linear_c = linear_c
        self.linear_penalty = linear_penalty
        self.linear_refit = linear_refit
        self.hidden = hidden
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.n_modules = n_modules
        self.mixer_dim = mixer_dim
        self.mixer_depth = mixer_depth
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.state_weight = state_weight
        self.state_input = state_input
        self.early_stopping = early_stopping
        self.lr_decay = lr_decay
        self.device = device
        self.seed = seed
        self.progress = progress
        self.state_mode = state_mode
        self.partial_loss = partial_loss
        self.gamma_pos = gamma_pos
        self.gamma_neg = gamma_neg
        self.gamma_unann = gamma_unann
        self.priors = priors
        self.prior_threshold = prior_threshold
        self.likelihood_topk = likelihood_topk

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, X: np.ndarray, cell_type: Sequence[str], cell_state: Sequence[Any] | None = None,
            *, X_val: np.ndarray | None = None, cell_type_val: Sequence[str] | None = None,
            cell_state_val: Sequence[Any] | None = None,
            checkpoint_dir: str | Path | None = None) -> CellClassifier:
        """Fit on training cells; early-stop on the validation cells (whole held-back patients).

        ``checkpoint_dir`` makes a killed fit resumable: a checkpoint there is resumed only by a
        fit with the same parameters and data. It is an argument of the run, not of the model.
        """
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.state_input not in STATE_INPUTS:
            raise ValueError(f"state_input must be one of {STATE_INPUTS}, got {self.state_input!r}")
        if self.path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {self.path!r}")
        if self.linear_c is not None and not self.linear_c > 0:
            raise ValueError(f"linear_c must be > 0 or None, got {self.linear_c!r}")
        if self.linear_penalty not in LINEAR_PENALTIES:
            raise ValueError(f"linear_penalty must be one of {LINEAR_PENALTIES}, "
                             f"got {self.linear_penalty!r}")
        if (self.path == "ensemble" and self.head == "factored"
                and self.state_mode != "multilabel"):
            return self._fit_ensemble(X, cell_type, cell_state, X_val=X_val,
                                      cell_type_val=cell_type_val, cell_state_val=cell_state_val,
                                      checkpoint_dir=checkpoint_dir)
        X = np.ascontiguousarray(X, dtype=np.float32)
        self.types_ = sorted(set(map(str, cell_type)))
        multilabel = self._check_state_mode()
        if multilabel:
            self.states_, ys = _multilabel_codes(cell_state, len(X))
            yt = self._codes(cell_type, self.types_)
        else:
            known = ([] if cell_state is None else
                     np.asarray(cell_state, dtype=object)[known_mask(cell_state)])
            self.states_ = sorted(set(map(str, known)))
            yt = self._codes(cell_type, self.types_)
            ys = self._codes(cell_state, self.states_, n=len(yt))
        self.priors_ = (self._fit_priors(X, cell_type, cell_state, X_val=X_val,
                                         cell_type_val=cell_type_val,
                                         cell_state_val=cell_state_val)
                        if multilabel else None)
        if self.head == "joint":
            if len(self.states_) < 1:
                raise ValueError("the joint head needs cell_state labels")
            ok = ys >= 0
            self.pairs_ = sorted({(int(t), int(s)) for t, s in zip(yt[ok], ys[ok], strict=True)})
        seed_everything(self.seed)
        self.modules_ = (gene_modules(X, self.n_modules, seed=self.seed)
                         if self.encoder == "mixer" else None)
        self.n_features_in_ = X.shape[1]
        self.type_means_ = None
        if self.head == "factored" and self.state_input == "centred" and self.states_:
            self.type_means_ = _class_means(X, yt, len(self.types_))
        self.chosen_ = self._net_path()
        if multilabel and self.chosen_ == "linear":
            raise ValueError("path='linear' is fitted as logistic regressions, which cannot take "
                             "the partial-label loss of multi-label states; use 'deep'")
        self.net_ = self._build()
        device = resolve_device(self.device)
        Xt, Yt, Ys = torch.from_numpy(X), torch.from_numpy(yt), torch.from_numpy(ys)
        if device.type == "cuda" and X.nbytes < 4 * 2**30 and self.chosen_ != "linear":
            # one copy up front instead of one per batch: the GPU otherwise waits on the host
            Xt, Yt, Ys = Xt.to(device), Yt.to(device), Ys.to(device)
        pair_of = self._pair_lookup() if self.head == "joint" else None
        validate = None
        if X_val is not None and len(X_val):
            Xv = torch.from_numpy(np.ascontiguousarray(X_val, dtype=np.float32))
            Yv = torch.from_numpy(self._codes(cell_type_val, self.types_, unknown_ok=True))
            Sv = torch.from_numpy(
                _multilabel_codes(cell_state_val, len(Yv), names=self.states_)[1] if multilabel
                else self._codes(cell_state_val, self.states_, n=len(Yv), unknown_ok=True))

            def validate(net: nn.Module) -> float:
                total, wrong, n_s = 0.0, 0.0, 0
                for i in range(0, len(Xv), 4096):
                    out = net(Xv[i:i + 4096].to(device))
                    yt, ys = Yv[i:i + 4096].to(device), Sv[i:i + 4096].to(device)
                    total += float(self._loss(out, yt, ys, None, validation=True)) * len(yt)
                    wrong += float(((out["cell_type"].argmax(1) != yt) & (yt >= 0)).sum())
                    if "cell_state" in out and not multilabel:
                        ok = ys >= 0
                        wrong += float((out["cell_state"].argmax(1)[ok] != ys[ok]).sum())
                        n_s += int(ok.sum())
                loss = total / len(Xv)
                if self.early_stopping == "loss":
                    return loss
                # error rate, with the loss only breaking ties: the loss keeps rising once the
                # model grows confident, long before its errors stop falling
                return wrong / (int((Yv >= 0).sum()) + n_s) + 1e-3 * loss

        self.batch_size_ = bs = (self.batch_size if self.batch_size is not None
                                 else batch_size_for(len(X)))

        def batches(rng: np.random.Generator):
            order = torch.from_numpy(rng.permutation(len(Xt))).to(Xt.device)
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
                          checkpoint_dir=checkpoint_dir, progress=self.progress,
                          desc=f"{self.encoder}/{self.head}",
                          plateau=max(1, self.patience // 3) if self.lr_decay else None)
        if self.chosen_ == "linear":  # fitted to convergence: nothing to train by epochs
            val = None if validate is None else (Xv.numpy(), Yv.numpy(), Sv.numpy())
            self._fit_linear(X, yt, ys, val=val, validate=validate)
        else:
            self.history_ = trainer.fit(self.net_, batches=batches, loss=loss,
                                        validate=validate, signature=self._signature(X, yt, ys))
        self.net_.to("cpu")
        return self

    def _net_path(self) -> str:
        """The single net this fit trains: the joint head and multi-label states are deep."""
        if self.head == "joint" or (self.path == "ensemble" and self.state_mode == "multilabel"):
            return "deep"
        return self.path

    def _linear_candidates(self) -> list[tuple[str, float | None]]:
        """(penalty, C) pairs to fit, simplest first; C ``None`` is LINEAR_C_CELLS per cell."""
        if self.linear_penalty == "auto":
            return [("l1", self.linear_c), ("l2", LINEAR_L2_C)]
        return [(self.linear_penalty, self.linear_c)]

    def _fit_linear(self, X: np.ndarray, yt: np.ndarray, ys: np.ndarray, *,
                    val: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
                    validate: Any = None) -> None:
        """The linear net, head by head (type first: the state head reads its centring): each
        candidate penalty fitted on the training cells, the first within :data:`MIX_MARGIN` of
        the fewest validation errors kept; then, with ``linear_refit``, the kept ones refitted on
        training + validation cells. ``history_`` scores the validation cells before that."""
        device = resolve_device(self.device)
        net = self.net_.to(device)
        heads = net.head
        names = ["cell_type"] + (["cell_state"] if self.states_ and heads.state_head is not None
                                 else [])
        Xt = torch.from_numpy(X).to(device)
        targets = {"cell_type": torch.from_numpy(yt).to(device),
                   "cell_state": torch.from_numpy(ys).to(device)}
        n = max(int((yt >= 0).sum()), 1)
        # without validation cells nothing can choose: the first (simplest) candidate alone
        candidates = self._linear_candidates()[:None if val is not None else 1]
        self.linear_penalty_: dict[str, str] = {}
        self.linear_c_: dict[str, float] = {}
        self.linear_errors_: dict[str, dict[str, float]] | None = (
            {} if val is not None and len(candidates) > 1 else None)
        for name in names:
            layer = heads.type_head if name == "cell_type" else heads.state_head
            fits: dict[str, tuple[float, float, dict[str, torch.Tensor]]] = {}
            for penalty, c in candidates:
                c = c if c is not None else LINEAR_C_CELLS / n
                self._fit_linear_head(name, Xt, targets[name], c, penalty)
                error = (_head_error(net, name, val, device)
                         if self.linear_errors_ is not None else 0.0)
                fits[penalty] = (c, error, {k: v.clone() for k, v in layer.state_dict().items()})
            keep = first_within_margin({p: e for p, (_, e, _) in fits.items()})
            layer.load_state_dict(fits[keep][2])
            self.linear_penalty_[name], self.linear_c_[name] = keep, fits[keep][0]
            if self.linear_errors_ is not None:
                self.linear_errors_[name] = {p: round(e, 5) for p, (_, e, _) in fits.items()}
        self.history_ = TrainHistory()
        if validate is not None:
            net.eval()
            with torch.no_grad():
                score = float(validate(net))
            self.history_ = TrainHistory(val_score=[score], best_epoch=0, best_score=score)
        if self.linear_refit and val is not None and len(val[0]):
            self._refit_linear(np.concatenate([X, val[0]]), np.concatenate([yt, val[1]]),
                               np.concatenate([ys, val[2]]))

    def _fit_linear_head(self, name: str, X: torch.Tensor, y: torch.Tensor, c: float,
                         penalty: str) -> None:
        net = self.net_
        if name == "cell_type":
            fit_type_head(net.head, X, y, c=c, penalty=penalty)
        else:
            fit_state_head(net.head, X, y, type_means=net.type_means, c=c, penalty=penalty)

    def _refit_linear(self, X: np.ndarray, yt: np.ndarray, ys: np.ndarray) -> None:
        """Refit each head of the linear net with its chosen penalty on ``X`` (training plus
        validation cells: the choice is made, so they only add data); an n-scaled C follows the
        larger n. Type means stay those of the training cells, as the deep path's."""
        device = resolve_device(self.device)
        self.net_.to(device)
        Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)
        targets = {"cell_type": torch.from_numpy(yt).to(device),
                   "cell_state": torch.from_numpy(ys).to(device)}
        n = max(int((yt >= 0).sum()), 1)
        spec = dict(self._linear_candidates())
        for name, penalty in self.linear_penalty_.items():
            c = spec[penalty] if spec[penalty] is not None else LINEAR_C_CELLS / n
            self._fit_linear_head(name, Xt, targets[name], c, penalty)
            self.linear_c_[name] = c
        self.linear_refitted_ = True

    def _fit_ensemble(self, X: np.ndarray, cell_type: Sequence[str], cell_state: Any, *,
                      X_val: np.ndarray | None, cell_type_val: Sequence[str] | None,
                      cell_state_val: Any, checkpoint_dir: str | Path | None) -> CellClassifier:
        """Fit the deep and the linear path apart, then choose their mixture on validation.

        Only the validation cells (held-back training patients) choose the weight, never test
        patients. Without validation cells both count equally.
        """
        members = {}
        for path in ("deep", "linear"):
            # the linear member is refitted on the validation cells only after they chose the mix
            members[path] = clone(self).set_params(path=path, linear_refit=False).fit(
                X, cell_type, cell_state, X_val=X_val, cell_type_val=cell_type_val,
                cell_state_val=cell_state_val,
                checkpoint_dir=Path(checkpoint_dir) / path if checkpoint_dir else None)
        deep, linear = members["deep"], members["linear"]
        for key, value in vars(deep).items():  # vocabularies, type means, history: the deep fit's
            if key.endswith("_") and not key.startswith("_"):
                setattr(self, key, value)
        heads = ["cell_type"] + (["cell_state"] if self.states_ else [])
        weights = {h: 0.5 for h in heads}
        self.mix_errors_: dict[str, dict[str, float]] | None = None
        if X_val is not None and len(X_val):
            pa, pb = deep.predict_proba(X_val), linear.predict_proba(X_val)
            labels = {"cell_type": (cell_type_val, self.types_),
                      "cell_state": (cell_state_val, self.states_)}
            self.mix_errors_ = {}
            for h in heads:
                errors = {w: _mix_error(pa[h], pb[h], w, *labels[h]) for w in MIX_WEIGHTS}
                weights[h] = choose_weight(errors)
                self.mix_errors_[h] = {str(w): round(e, 5) for w, e in errors.items()}
        if self.linear_refit and X_val is not None and len(X_val):
            linear._refit_linear(
                np.concatenate([np.asarray(X, dtype=np.float32),
                                np.asarray(X_val, dtype=np.float32)]),
                np.concatenate([self._codes(cell_type, self.types_),
                                self._codes(cell_type_val, self.types_, unknown_ok=True)]),
                np.concatenate([self._codes(cell_state, self.states_, n=len(X)),
                                self._codes(cell_state_val, self.states_, n=len(X_val),
                                            unknown_ok=True)]))
        for key in ("linear_penalty_", "linear_c_", "linear_errors_", "linear_refitted_"):
            if hasattr(linear, key):
                setattr(self, key, getattr(linear, key))
        self.linear_weight_ = {h: float(w) for h, w in weights.items()}
        self.chosen_ = {h: {0.0: "deep", 1.0: "linear"}.get(w, "ensemble")
                        for h, w in self.linear_weight_.items()}
        self.net_ = CellEnsemble(deep.net_, linear.net_, self.linear_weight_)
        return self

    def _signature(self, X: np.ndarray, yt: np.ndarray, ys: np.ndarray) -> str:
        """A checkpoint resumes only a run with the same settings and training data."""
        return run_signature(self._training_params(), X, yt, ys)

    def _loss(self, out: dict[str, torch.Tensor], t: torch.Tensor, s: torch.Tensor,
              pair_of: torch.Tensor | None, *, validation: bool = False) -> torch.Tensor:
        if self.head == "joint" and pair_of is not None:
            pair = torch.where(s >= 0, pair_of.to(t.device)[t, s.clamp_min(0)], -1)
            # cells without a state still teach the type marginal
            type_only = masked_cross_entropy(out["cell_type"], torch.where(s < 0, t, -1))
            return masked_cross_entropy(out["pair"], pair) + type_only
        value = masked_cross_entropy(out["cell_type"], t)
        if "cell_state" in out:
            value = value + self.state_weight * self._state_loss(out["cell_state"], s,
                                                                 validation=validation)
        return value

    def _state_loss(self, logits: torch.Tensor, s: torch.Tensor, *,
                    validation: bool = False) -> torch.Tensor:
        """Softmax cross-entropy (single-label) or the partial-label loss (multi-label).

        Validation always scores annotated entries only (``ignore``), so early stopping compares
        epochs on labels that are known, whatever the training mode.
        """
        if self.state_mode != "multilabel":
            return masked_cross_entropy(logits, s)
        priors = getattr(self, "priors_", None)
        return partial_label_loss(
            logits, s, mode="ignore" if validation else self.partial_loss,
            gamma_pos=self.gamma_pos, gamma_neg=self.gamma_neg, gamma_unann=self.gamma_unann,
            priors=None if priors is None else torch.tensor(priors, device=logits.device),
            prior_threshold=self.prior_threshold, likelihood_topk=self.likelihood_topk)

    def _check_state_mode(self) -> bool:
        if self.state_mode not in ("single", "multilabel"):
            raise ValueError("state_mode must be 'single' or 'multilabel', "
                             f"got {self.state_mode!r}")
        if self.partial_loss not in PARTIAL_MODES:
            raise ValueError(f"partial_loss must be one of {PARTIAL_MODES}, "
                             f"got {self.partial_loss!r}")
        if self.state_mode == "multilabel" and self.head != "factored":
            raise ValueError("multi-label states need head='factored'")
        return self.state_mode == "multilabel"

    def _fit_priors(self, X: np.ndarray, cell_type: Sequence[str], cell_state: Any, *,
                    X_val: np.ndarray | None = None, cell_type_val: Sequence[str] | None = None,
                    cell_state_val: Any = None) -> list[float] | None:
        """Class priors for the selective loss: supplied, or the mean prediction of a first model.

        CSL estimates each label's prior as the average predicted probability of a model trained
        with unknowns ignored; that first model is fitted here on the same cells, early-stopped
        on the same validation cells as the model itself (without them it would run every epoch
        and its priors would follow an over-fitted model). Its history is ``prior_history_``.
        """
        if self.partial_loss != "selective":
            return None
        if self.priors is not None:
            if isinstance(self.priors, dict):
                missing = sorted(set(self.states_) - set(self.priors))
                if missing:
                    raise ValueError(f"priors lacks state label(s) {missing}")
                return [float(self.priors[n]) for n in self.states_]
            if len(self.priors) != len(self.states_):
                raise ValueError(f"priors has {len(self.priors)} values for "
                                 f"{len(self.states_)} state labels")
            return [float(v) for v in self.priors]
        first = clone(self).set_params(partial_loss="ignore", progress=False)
        first.fit(X, cell_type, cell_state, X_val=X_val, cell_type_val=cell_type_val,
                  cell_state_val=cell_state_val)
        self.prior_history_ = first.history_
        return first.predict_proba(X)["cell_state"].mean(0).astype(float).tolist()

    def _pair_lookup(self) -> torch.Tensor:
        table = torch.full((len(self.types_), len(self.states_)), -1, dtype=torch.long)
        for k, (t, s) in enumerate(self.pairs_):
            table[t, s] = k
        return table

    def _build(self) -> nn.Module:
        if self._net_path() == "ensemble":
            return CellEnsemble(self._build_one("deep"), self._build_one("linear"),
                                self.linear_weight_)
        return self._build_one(self._net_path())

    def _build_one(self, path: str) -> CellNet:
        means = None if self.type_means_ is None else torch.as_tensor(self.type_means_)
        if path == "linear":
            return CellNet(None, FactoredHeads(self.n_features_in_, len(self.types_),
                                               len(self.states_)), means)
        if self.encoder == "mixer":
            enc: nn.Module = MixerEncoder(self.modules_, dim=self.mixer_dim,
                                          depth=self.mixer_depth, dropout=self.dropout)
        else:
            enc = MLPEncoder(self.n_features_in_, self.hidden, self.dropout, self.input_dropout)
        if self.head == "joint":
            head: nn.Module = JointHead(enc.out_features, torch.tensor(self.pairs_),
                                        len(self.types_), len(self.states_))
        else:
            head = FactoredHeads(enc.out_features, len(self.types_), len(self.states_))
        return CellNet(enc, head, means)

    # -- prediction ----------------------------------------------------------------------------
    def predict_proba(self, X: np.ndarray, *, batch_size: int = 8192) -> dict[str, np.ndarray]:
        """Per-head class probabilities, columns ordered as ``types_`` / ``states_``.

        The joint head also returns ``"pair"``: probabilities over ``pairs_``.
        """
        self._check_fitted()
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
                for k in ("cell_type", "cell_state", "pair"):
                    if k in out:
                        sigmoid = k == "cell_state" and self.state_mode == "multilabel"
                        prob = out[k].sigmoid() if sigmoid else out[k].softmax(-1)
                        parts.setdefault(k, []).append(prob.cpu().numpy())
        self.net_.to("cpu")
        return {k: np.concatenate(v) for k, v in parts.items()}

    def predict(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Labels per head; multi-label states give a ``[N, L]`` 0/1 array (threshold 0.5)."""
        proba = self.predict_proba(X)
        vocab = {"cell_type": self.types_, "cell_state": self.states_}
        out = {k: np.asarray(vocab[k])[p.argmax(1)] for k, p in proba.items() if k in vocab}
        if self.state_mode == "multilabel" and "cell_state" in proba:
            out["cell_state"] = (proba["cell_state"] >= 0.5).astype(np.int8)
        if "pair" in proba:
            # the joint head names a trained pair, never a mix of two marginals' argmaxes
            best = np.asarray(self.pairs_)[proba.pop("pair").argmax(1)]
            out["cell_type"] = np.asarray(self.types_)[best[:, 0]]
            out["cell_state"] = np.asarray(self.states_)[best[:, 1]]
        return out

    # -- persistence ---------------------------------------------------------------------------
    def save(self, directory: str | Path, *, meta: dict[str, Any] | None = None) -> None:
        """Write the model folder (``weights.pt``, ``model.json``); ``meta`` is the caller's
        metadata, kept as it is and given back by :meth:`load` as ``meta_`` (``None`` keeps the
        ``meta_`` of a loaded model)."""
        self._check_fitted()
        learned = {"types": self.types_, "states": self.states_,
                   "n_features_in": self.n_features_in_, "pairs": getattr(self, "pairs_", None),
                   "modules": self.modules_, "history": self.history_.as_dict(),
                   "priors": getattr(self, "priors_", None), "chosen": self.chosen_,
                   "linear_weight": getattr(self, "linear_weight_", None),
                   "mix_errors": getattr(self, "mix_errors_", None)}
        self._write(directory, learned, meta)

    @classmethod
    def load(cls, directory: str | Path) -> CellClassifier:
        """A fitted estimator from a folder written by :meth:`save`; its metadata is ``meta_``."""
        state, info, meta = cls._read(directory)
        params = {k: v for k, v in info["params"].items() if k != "progress"}
        params.setdefault("path", "deep")  # a model saved before paths existed is deep
        self = cls(**params, progress=False)
        self.types_, self.states_ = info["types"], info["states"]
        self.n_features_in_ = info["n_features_in"]
        self.modules_ = info["modules"]
        n_means = (len(self.types_), self.n_features_in_)
        centred = any(k.endswith("type_means") for k in state)
        self.type_means_ = np.zeros(n_means, np.float32) if centred else None
        if info.get("pairs") is not None:
            self.pairs_ = [tuple(p) for p in info["pairs"]]
        self.history_ = TrainHistory(**info["history"])
        self.priors_ = info.get("priors")
        self.chosen_ = info.get("chosen") or self.path
        if info.get("linear_weight") is not None:
            self.linear_weight_ = {h: float(w) for h, w in info["linear_weight"].items()}
            self.mix_errors_ = info.get("mix_errors")
        self.meta_ = meta
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
        known = known_mask(labels)
        for i, v in enumerate(labels):
            if not known[i]:
                out[i] = -1
            elif str(v) in index:
                out[i] = index[str(v)]
            elif unknown_ok:
                out[i] = -1
            else:  # pragma: no cover - vocab is built from these labels
                raise ValueError(f"label {v!r} not in vocabulary")
        return out


def batch_size_for(n_cells: int) -> int:
    """The batch of ``batch_size=None``: the largest of :data:`BATCH_SIZES` that leaves at least
    :data:`MIN_STEPS_PER_EPOCH` updates per epoch (the smallest where none does)."""
    fits = [b for b in BATCH_SIZES if n_cells // b >= MIN_STEPS_PER_EPOCH]
    return max(fits) if fits else BATCH_SIZES[0]


def first_within_margin(errors: dict[Any, float], margin: float = MIX_MARGIN) -> Any:
    """The first key (simplest first, in the dict's order) whose error is within ``margin`` of
    the lowest: the rule behind the mix weight and the linear penalty."""
    best = min(errors.values())
    return next(k for k, e in errors.items() if e <= best + margin + 1e-12)


def choose_weight(errors: dict[float, float], margin: float = MIX_MARGIN) -> float:
    """The first weight of :data:`MIX_WEIGHTS` within ``margin`` of the lowest error."""
    return first_within_margin({w: errors[w] for w in MIX_WEIGHTS}, margin)


def _mix_error(p_deep: np.ndarray, p_linear: np.ndarray, weight: float,
               labels: Sequence[Any] | None, vocab: list[str]) -> float:
    """Error rate of the mixture ``(1 − weight)·p_deep + weight·p_linear`` on the annotated
    labels."""
    codes = CellClassifier._codes(labels, vocab, n=len(p_deep), unknown_ok=True)
    ok = codes >= 0
    if not ok.any():
        return 0.0
    mix = (1 - weight) * p_deep + weight * p_linear
    return float((mix.argmax(1)[ok] != codes[ok]).mean())


def _head_error(net: nn.Module, name: str, val: tuple[np.ndarray, np.ndarray, np.ndarray],
                device: torch.device) -> float:
    """Error rate of one head of ``net`` on the annotated validation cells ``(X, types,
    states)`` (integer codes, -1 unknown)."""
    X, yt, ys = val
    codes = yt if name == "cell_type" else ys
    if not (codes >= 0).any():
        return 0.0
    net.eval()
    wrong = 0
    with torch.no_grad():
        for i in range(0, len(X), 8192):
            call = net(torch.from_numpy(X[i:i + 8192]).to(device))[name].argmax(1).cpu().numpy()
            c = codes[i:i + 8192]
            wrong += int((call[c >= 0] != c[c >= 0]).sum())
    return wrong / int((codes >= 0).sum())


def _class_means(X: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Mean row of ``X`` per class ``0..k-1`` (rows with ``y < 0`` left out), as one product
    with a one-hot matrix: boolean indexing would copy each class's rows (0.6 s at 10⁵ cells)."""
    ok = np.flatnonzero((y >= 0) & (y < k))
    onehot = np.zeros((k, len(ok)), dtype=X.dtype)
    onehot[y[ok], np.arange(len(ok))] = 1.0
    counts = onehot.sum(1, keepdims=True)
    return (onehot @ X[ok] if len(ok) < len(y) else onehot @ X) / np.maximum(counts, 1.0)


def _multilabel_codes(labels: Any, n: int, *,
                      names: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """``[N, L]`` int64 targets (1 present, 0 absent, -1 unknown) from a 1/0/NaN table.

    ``labels`` is a DataFrame (its columns name the labels) or a 2-D array; ``None`` means all
    unknown (then ``names`` is required). With ``names`` the columns are taken in that order.
    """
    import pandas as pd

    if labels is None:
        if names is None:
            raise ValueError("multi-label states need a table of state labels")
        return list(names), np.full((n, len(names)), -1, dtype=np.int64)
    frame = labels if isinstance(labels, pd.DataFrame) else pd.DataFrame(
        np.asarray(labels, dtype=float), columns=list(names) if names is not None else None)
    if names is None:
        names = [str(c) for c in frame.columns]
    frame = frame.rename(columns=str)[list(names)]
    try:
        values = frame.astype(float).to_numpy()
    except (TypeError, ValueError) as e:
        raise ValueError(f"state labels must be 1, 0 or NaN ({e})") from None
    bad = ~np.isnan(values) & ~np.isin(values, (0.0, 1.0))
    if bad.any():
        raise ValueError(f"state labels must be 1, 0 or NaN; found {values[bad][:3].tolist()}")
    if values.shape[0] != n:
        raise ValueError(f"state label table has {values.shape[0]} rows for {n} cells")
    return list(names), np.where(np.isnan(values), -1, values).astype(np.int64)
