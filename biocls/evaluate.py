"""Metrics computed on out-of-fold predictions only, overall and per patient."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

__all__ = ["classification_metrics", "known_mask", "roc_auc"]


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
