"""Metrics computed on out-of-fold predictions only, overall and per patient."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

__all__ = ["classification_metrics", "known_mask", "multilabel_metrics", "roc_auc"]


def known_mask(labels: Sequence[Any] | pd.Series) -> np.ndarray:
    """True where a label is annotated (not NaN, None or empty)."""
    s = pd.Series(labels, dtype="object")
    return (s.notna() & (s.astype(str) != "") & (s.astype(str) != "nan")).to_numpy()


def classification_metrics(y_true: Sequence[Any], y_pred: Sequence[Any]) -> dict[str, float]:
    """Macro-F1, balanced accuracy and accuracy on the annotated entries of ``y_true``.

    Macro-F1 averages over the union of true and predicted labels (scikit-learn's default), so a
    label that is predicted but never true costs its zero F1 rather than being hidden.
    """
    t = pd.Series(y_true, dtype="object")
    p = pd.Series(y_pred, dtype="object")
    ok = known_mask(t)
    t, p = t[ok].astype(str).to_numpy(), p[ok].astype(str).to_numpy()
    if len(t) == 0:
        return {"macro_f1": float("nan"), "balanced_accuracy": float("nan"),
                "accuracy": float("nan"), "n": 0}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true" is expected
        return {"macro_f1": float(f1_score(t, p, average="macro", zero_division=0)),
                "balanced_accuracy": float(balanced_accuracy_score(t, p)),
                "accuracy": float(accuracy_score(t, p)), "n": int(len(t))}


def roc_auc(y_true: Sequence[int], score: Sequence[float]) -> float:
    """ROC AUC, or NaN when only one class is present (a fold can be all-negative)."""
    y = np.asarray(y_true)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, np.asarray(score)))


def multilabel_metrics(y_true: np.ndarray | pd.DataFrame, score: np.ndarray | pd.DataFrame, *,
                       names: Sequence[str] | None = None,
                       threshold: float = 0.5) -> dict[str, Any]:
    """mAP, per-label average precision and macro-F1 over *annotated* entries only.

    ``y_true`` is ``[N, L]`` with 1, 0 or NaN/-1 (unknown); ``score`` the ``[N, L]`` predicted
    probabilities. Each label is scored on the cells where it is annotated; a label whose
    annotated cells are all positive or all negative has an undefined AP (NaN, left out of the
    mean). F1 thresholds the probability at ``threshold``. ``n_annotated`` counts the entries used.
    """
    from sklearn.metrics import average_precision_score

    t = np.asarray(y_true, dtype=float)
    s = np.asarray(score, dtype=float)
    if names is None:
        names = list(y_true.columns) if isinstance(y_true, pd.DataFrame) else \
            [f"label_{j}" for j in range(t.shape[1])]
    t = np.where(t < 0, np.nan, t)
    ap: dict[str, float] = {}
    f1: dict[str, float] = {}
    n_ann = 0
    for j, name in enumerate(names):
        known = ~np.isnan(t[:, j]) & ~np.isnan(s[:, j])
        n_ann += int(known.sum())
        y, p = t[known, j].astype(int), s[known, j]
        ap[str(name)] = (float(average_precision_score(y, p))
                         if len(np.unique(y)) == 2 else float("nan"))
        f1[str(name)] = (float(f1_score(y, (p >= threshold).astype(int), zero_division=0))
                         if known.any() else float("nan"))
    aps = [v for v in ap.values() if not np.isnan(v)]
    f1s = [v for v in f1.values() if not np.isnan(v)]
    return {"mAP": float(np.mean(aps)) if aps else float("nan"), "per_class_ap": ap,
            "macro_f1": float(np.mean(f1s)) if f1s else float("nan"), "per_class_f1": f1,
            "n_annotated": n_ann}
