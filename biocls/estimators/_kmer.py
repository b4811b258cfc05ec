"""The repertoire baseline: logistic regression on k-mer frequencies, tuned by inner grouped CV."""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from biocls.evaluate import roc_auc

__all__ = ["KmerLogisticRegression", "kmer_frequencies"]

log = logging.getLogger(__name__)


def kmer_frequencies(codes: np.ndarray, offsets: np.ndarray, k: int) -> np.ndarray:
    """k-mer frequencies ``[20**k]`` (float32) of one bag of encoded sequences.

    ``codes`` are residues 1..20 concatenated, ``offsets`` the sequence boundaries (as stored by
    :func:`biocls.preprocess.build_cdr3_store`); k-mers never span two sequences.
    """
    out = np.zeros(20 ** k, dtype=np.float32)
    c = codes.astype(np.int64) - 1
    n = len(c) - k + 1
    if n <= 0:
        return out
    lengths = np.diff(offsets)
    idx = np.zeros(n, dtype=np.int64)
    for j in range(k):
        idx = idx * 20 + c[j:j + n]
    pos = np.arange(n) - np.repeat(offsets[:-1], lengths)[:n]
    ln = np.repeat(lengths, lengths)[:n]
    ok = pos <= ln - k
    cnt = np.bincount(idx[ok], minlength=20 ** k)
    out[:] = cnt / max(cnt.sum(), 1)
    return out


class KmerLogisticRegression(BaseEstimator):
    """k-mer frequency logistic regression; ``k``, penalty and ``C`` chosen on the training
    repertoires alone by inner subject-grouped CV (ROC AUC), then refitted on all of them.

    :meth:`fit` takes one feature matrix per candidate ``k`` (rows = training repertoires);
    :meth:`predict_proba` the matrix of the chosen ``k_`` only.
    """

    def __init__(self, *, kmers: Sequence[int] = (3, 4), penalties: Sequence[str] = ("l1", "l2"),
                 Cs: Sequence[float] = (0.001, 0.01, 0.1, 1.0, 10.0), inner_folds: int = 3,
                 seed: int = 0) -> None:
        self.kmers = kmers
        self.penalties = penalties
        self.Cs = Cs
        self.inner_folds = inner_folds
        self.seed = seed

    def _model(self, penalty: str, c: float) -> Any:
        from sklearn.linear_model import LogisticRegression

        # scikit-learn >= 1.8 spells the penalty as l1_ratio; older versions need `penalty`
        new_api = inspect.signature(LogisticRegression).parameters["penalty"].default != "l2"
        kw = {"l1_ratio": 1.0 if penalty == "l1" else 0.0} if new_api else {"penalty": penalty}
        return LogisticRegression(C=c, solver="liblinear", max_iter=200, random_state=self.seed,
                                  **kw)

    def fit(self, X_by_k: Mapping[int, np.ndarray], y: np.ndarray,
            groups: np.ndarray) -> KmerLogisticRegression:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.model_selection import StratifiedGroupKFold
        from sklearn.preprocessing import StandardScaler

        y, groups = np.asarray(y), np.asarray(groups)
        n_inner = min(int(self.inner_folds), len(np.unique(groups)))
        inner = list(StratifiedGroupKFold(n_splits=n_inner, shuffle=True, random_state=self.seed)
                     .split(np.zeros(len(y)), y, groups))
        best: dict[str, Any] = {"auc": -1.0}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for k in self.kmers:
                X = X_by_k[int(k)]
                folds = []
                for a, b in inner:
                    sc = StandardScaler().fit(X[a])
                    folds.append((sc.transform(X[a]), sc.transform(X[b]), a, b))
                for pen in self.penalties:
                    for c in self.Cs:
                        aucs = []
                        for xa, xb, a, b in folds:
                            if len(set(y[a])) < 2 or len(set(y[b])) < 2:
                                continue
                            m = self._model(pen, float(c)).fit(xa, y[a])
                            aucs.append(roc_auc(y[b], m.decision_function(xb)))
                        auc = float(np.mean(aucs)) if aucs else 0.5
                        if auc > best["auc"]:
                            best = {"k": int(k), "penalty": pen, "C": float(c), "auc": auc}
            X = X_by_k[best["k"]]
            self.scaler_ = StandardScaler().fit(X)
            self.model_ = self._model(best["penalty"], best["C"]).fit(self.scaler_.transform(X),
                                                                      y)
        self.k_, self.penalty_, self.C_ = best["k"], best["penalty"], best["C"]
        self.inner_roc_auc_ = best["auc"]
        log.info("k-mer baseline: %s", best)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probability of the positive class per row of ``X`` (features of ``k_``)."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "model_")
        if len(X) == 0:
            return np.zeros(0)
        return self.model_.predict_proba(self.scaler_.transform(X))[:, 1]

    def chosen(self) -> dict[str, Any]:
        """The setting inner CV chose, with its inner AUC (logged in fold_info.json)."""
        return {"k": self.k_, "penalty": self.penalty_, "C": self.C_,
                "inner_roc_auc": self.inner_roc_auc_}
