"""Metrics computed on out-of-fold predictions only, overall and per patient.

Every number a report shows is computed here (STYLE.md habit 6), written into ``metrics.json`` by
the tasks' ``metrics`` (:mod:`biocls.tasks`), and only formatted by :mod:`biocls.report`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from biocls import columns as C

__all__ = [
    "classification_metrics",
    "composition",
    "confidence_histogram",
    "confusion_table",
    "confusion_tables",
    "enriched_kmers",
    "enriched_kmers_by_repertoire",
    "has_annotated_state",
    "kmer_counts",
    "known_mask",
    "multilabel_metrics",
    "patient_details",
    "per_type_accuracy",
    "roc_auc",
    "roc_curve",
    "roc_points",
    "state_summary",
    "top_errors",
]


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


# -- the numbers of the reports (STYLE.md habit 6: evaluate computes, the renderer renders) -------
#
# Each function below is pure: a predictions frame (as read by biocls.columns.read_predictions)
# in, JSON-ready lists and dicts out. The tasks' ``metrics`` put them into
# metrics.json; biocls.report only formats and plots them.

TOP_ERRORS = 10
CONFIDENCE_BINS = 20
KMER = 3
TOP_KMERS = 10
_UNANNOTATED, _NONE = "(unannotated)", "(none)"


def _text(labels: pd.Series) -> pd.Series:
    """Labels as text, with every unannotated entry (see :func:`known_mask`) as ``""``."""
    return labels.astype(str).where(known_mask(labels), "")


def confusion_table(y_true: Sequence[Any] | pd.Series,
                    y_pred: Sequence[Any] | pd.Series) -> dict[str, Any]:
    """Counts of (annotated, predicted) pairs over the entries where both are known.

    Returns ``{"labels": [...], "counts": [[...]]}``: rows are annotated labels and columns
    predicted ones, both in the sorted union of the labels seen, so that the table is square and
    its diagonal is the correct predictions. ``counts`` sums to the number of annotated entries
    with a prediction.
    """
    t, p = pd.Series(y_true, dtype="object"), pd.Series(y_pred, dtype="object")
    keep = known_mask(t) & known_mask(p)
    t, p = t[keep].astype(str), p[keep].astype(str)
    labels = sorted(set(t) | set(p))
    index = {lab: i for i, lab in enumerate(labels)}
    counts = np.zeros((len(labels), len(labels)), dtype=int)
    np.add.at(counts, (t.map(index).to_numpy(dtype=int), p.map(index).to_numpy(dtype=int)), 1)
    return {"labels": labels, "counts": counts.tolist()}


def confusion_tables(pred: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """:func:`confusion_table` per single-label head and model (factored, joint, logreg).

    ``{head: {model: {"labels", "counts"}}}``, for every head and model that has its columns;
    a head without a single annotated cell is left out.
    """
    out: dict[str, dict[str, Any]] = {}
    for head in C.HEADS:
        if C.true_col(head) not in pred:
            continue
        tables = {model: confusion_table(pred[C.true_col(head)], pred[C.pred_col(head, model)])
                  for model in C.MODELS if C.pred_col(head, model) in pred}
        tables = {m: t for m, t in tables.items() if t["labels"]}
        if tables:
            out[head] = tables
    return out


def roc_curve(label: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """False/true positive rates at every distinct threshold, and the area under them.

    Ties are handled as one threshold (a diagonal step), which gives the same AUC as the
    Mann-Whitney statistic. Needs both classes present.
    """
    label, score = np.asarray(label, dtype=float), np.asarray(score, dtype=float)
    order = np.argsort(-score, kind="mergesort")
    score, label = score[order], label[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]
    tp = np.cumsum(label)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    tpr = np.r_[0.0, tp / label.sum()]
    fpr = np.r_[0.0, fp / (len(label) - label.sum())]
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    return fpr, tpr, auc


def roc_points(label: Sequence[float] | pd.Series,
               score: Sequence[float] | pd.Series) -> dict[str, Any] | None:
    """The pooled ROC curve as ``{"fpr": [...], "tpr": [...], "auc": float}``.

    Only entries with a 0/1 label and a score count; ``None`` when either class is missing (no
    curve exists).
    """
    y = pd.to_numeric(pd.Series(label), errors="coerce").to_numpy(dtype=float)
    s = pd.to_numeric(pd.Series(score), errors="coerce").to_numpy(dtype=float)
    ok = np.isin(y, [0.0, 1.0]) & ~np.isnan(s)
    y, s = y[ok], s[ok]
    if not 0 < y.sum() < len(y):
        return None
    fpr, tpr, auc = roc_curve(y, s)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": auc}


def _kmers(seq: str, k: int) -> Iterable[str]:
    return (seq[i: i + k] for i in range(len(seq) - k + 1))


def kmer_counts(sequences: Iterable[str], k: int = KMER) -> Counter[str]:
    """Every overlapping k-mer of every sequence, counted."""
    counts: Counter[str] = Counter()
    for seq in sequences:
        counts.update(_kmers(seq, k))
    return counts


def enriched_kmers(sequences: Iterable[str], background: Counter[str], *, top: int = TOP_KMERS,
                   k: int = KMER) -> list[dict[str, Any]]:
    """k-mers over-represented in ``sequences`` relative to ``background`` counts.

    Score: log2 of the k-mer's frequency in the sequences over its frequency in the background,
    each with a pseudocount of 1 per distinct k-mer, so that a k-mer seen once is not ranked
    above one seen many times by chance alone.
    """
    fg = kmer_counts(sequences, k)
    if not fg:
        return []
    vocab = len(set(background) | set(fg))
    n_fg, n_bg = sum(fg.values()), sum(background.values())
    rows = [
        {
            "kmer": km,
            "n": c,
            "n_background": background.get(km, 0),
            "log2_ratio": math.log2((c + 1) / (n_fg + vocab))
            - math.log2((background.get(km, 0) + 1) / (n_bg + vocab)),
        }
        for km, c in fg.items()
    ]
    rows.sort(key=lambda r: (-r["log2_ratio"], -r["n"], r["kmer"]))
    return rows[:top]


def enriched_kmers_by_repertoire(attention: pd.DataFrame, *, top: int = TOP_KMERS,
                                 k: int = KMER) -> dict[str, Any]:
    """:func:`enriched_kmers` of each repertoire's attended sequences against all of them.

    ``attention`` is ``attention.tsv`` (``repertoire_id``, ``junction_aa``). Returns
    ``{"k": k, "top": top, "by_repertoire": {repertoire_id: [{"kmer", "n", "n_background",
    "log2_ratio"}]}}``.
    """
    seqs = attention[C.JUNCTION_AA].fillna("").astype(str).str.strip().str.upper()
    background = kmer_counts(seqs, k)
    by_rep = {str(rep): enriched_kmers(s, background, top=top, k=k)
              for rep, s in seqs.groupby(attention[C.REPERTOIRE_ID].astype(str), sort=False)}
    return {"k": k, "top": top, "by_repertoire": by_rep}


def top_errors(y_true: pd.Series, y_pred: pd.Series, *,
               top: int = TOP_ERRORS) -> list[dict[str, Any]]:
    """The most frequent (annotated, predicted) mistakes: ``[{"true", "pred", "n"}]``."""
    t, p = _text(y_true), _text(y_pred)
    wrong = (t != "") & (p != "") & (t != p)
    counts = Counter(zip(t[wrong], p[wrong], strict=True))
    return [{"true": a, "pred": b, "n": n}
            for (a, b), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]


def confidence_histogram(cells: pd.DataFrame, head: str, *,
                         bins: int = CONFIDENCE_BINS) -> dict[str, Any] | None:
    """Histogram of ``<head>_confidence`` on [0, 1], correct and wrong annotated cells apart.

    ``{"bins": edges, "correct": counts, "wrong": counts}``; ``None`` without the columns.
    """
    conf_c, true_c, pred_c = C.confidence_col(head), C.true_col(head), C.pred_col(head)
    if not {conf_c, true_c, pred_c} <= set(cells.columns):
        return None
    conf = pd.to_numeric(cells[conf_c], errors="coerce")
    t, p = _text(cells[true_c]), _text(cells[pred_c])
    known = (t != "") & conf.notna()
    edges = np.linspace(0.0, 1.0, bins + 1)
    right = np.histogram(conf[known & (t == p)], bins=edges)[0]
    wrong = np.histogram(conf[known & (t != p)], bins=edges)[0]
    return {"bins": edges.tolist(), "correct": right.tolist(), "wrong": wrong.tolist()}


def composition(cells: pd.DataFrame) -> dict[str, Any]:
    """Cell counts per type (and state), as annotated and as predicted by the factored model.

    With a single-label state prediction: ``{"types", "annotated_states", "predicted_states",
    "annotated": [[...]], "predicted": [[...]]}``, type rows × state columns, with
    ``"(unannotated)"`` and ``"(none)"`` for missing labels. Otherwise ``{"types",
    "annotated": [...], "predicted": [...]}``, one count per type.
    """
    true_t, pred_t = _text(cells[C.true_col(C.CELL_TYPE)]), _text(cells[C.pred_col(C.CELL_TYPE)])
    if C.pred_col(C.CELL_STATE) not in cells:
        types = sorted((set(true_t) | set(pred_t)) - {""})
        return {"types": types, "annotated": [int((true_t == t).sum()) for t in types],
                "predicted": [int((pred_t == t).sum()) for t in types]}
    true_s = (_text(cells[C.true_col(C.CELL_STATE)]) if C.true_col(C.CELL_STATE) in cells
              else pd.Series("", index=cells.index)).replace("", _UNANNOTATED)
    pred_s = _text(cells[C.pred_col(C.CELL_STATE)]).replace("", _NONE)
    true_t, pred_t = true_t.replace("", _UNANNOTATED), pred_t.replace("", _NONE)
    types = sorted(set(true_t) | set(pred_t))
    # the same state columns in the same order on both sides; "(unannotated)" only where it occurs
    states = sorted((set(true_s) | set(pred_s)) - {_UNANNOTATED})
    ann_states = states + ([_UNANNOTATED] if (true_s == _UNANNOTATED).any() else [])
    ann = pd.crosstab(true_t, true_s).reindex(index=types, columns=ann_states, fill_value=0)
    prd = pd.crosstab(pred_t, pred_s).reindex(index=types, columns=states, fill_value=0)
    return {"types": types, "annotated_states": ann_states, "predicted_states": states,
            "annotated": ann.to_numpy(dtype=int).tolist(),
            "predicted": prd.to_numpy(dtype=int).tolist()}


def per_type_accuracy(cells: pd.DataFrame, *, with_state: bool) -> list[dict[str, Any]]:
    """Per annotated cell type: cells, fraction with the type right, and (``with_state``) the
    fraction of its state-annotated cells with the state right."""
    true_t, pred_t = _text(cells[C.true_col(C.CELL_TYPE)]), _text(cells[C.pred_col(C.CELL_TYPE)])
    if with_state:
        true_s = _text(cells[C.true_col(C.CELL_STATE)])
        pred_s = _text(cells[C.pred_col(C.CELL_STATE)])
    rows = []
    for t in sorted(set(true_t) - {""}):
        sel = true_t == t
        row: dict[str, Any] = {"type": t, "n": int(sel.sum()),
                               "type_acc": float((pred_t[sel] == t).mean()), "state_acc": None}
        if with_state:
            known = sel & (true_s != "")
            if known.any():
                row["state_acc"] = float((pred_s[known] == true_s[known]).mean())
        rows.append(row)
    return rows


def state_summary(cells: pd.DataFrame) -> dict[str, Any] | None:
    """Annotated state labels next to predicted ones, and what the model fills in where unknown.

    Multi-label states (``true_state:<label>`` columns): ``{"mode": "multilabel", "labels",
    "rows": [{"label", "present", "absent", "unknown", "agree", "filled_present",
    "filled_absent", "filled_mean_prob"}], "n_unknown"}``; agreement is on annotated entries
    only, unknown entries are never counted as absent. Single-label states: ``{"mode":
    "single", "rows": [{"label", "annotated", "agree", "predicted", "filled"}], "n_unknown"}``,
    with the unannotated cells' predicted states as the fill-in. ``None`` without states.
    """
    names = C.state_labels(cells.columns)
    if names:
        rows = []
        for name in names:
            ann = pd.to_numeric(cells[C.true_state_col(name)], errors="coerce")
            prob = pd.to_numeric(cells[C.prob_state_col(name)], errors="coerce")
            pred = (cells[C.pred_state_col(name)].astype(int) if C.pred_state_col(name) in cells
                    else (prob >= 0.5).astype(int))
            known, unk = ann.notna(), ann.isna()
            rows.append({
                "label": name, "present": int((ann == 1).sum()), "absent": int((ann == 0).sum()),
                "unknown": int(unk.sum()),
                "agree": float((pred[known] == ann[known]).mean()) if known.any() else None,
                "filled_present": int(pred[unk].sum()),
                "filled_absent": int((1 - pred[unk]).sum()),
                "filled_mean_prob": float(prob[unk].mean()) if unk.any() else None})
        return {"mode": "multilabel", "labels": names, "rows": rows,
                "n_unknown": int(sum(r["unknown"] for r in rows))}
    true_c, pred_c = C.true_col(C.CELL_STATE), C.pred_col(C.CELL_STATE)
    if pred_c not in cells or true_c not in cells:
        return None
    true_s, pred_s = _text(cells[true_c]), _text(cells[pred_c])
    unk = true_s == ""
    rows = []
    for state in sorted((set(true_s) | set(pred_s)) - {""}):
        ann = true_s == state
        rows.append({"label": state, "annotated": int(ann.sum()),
                     "agree": float((pred_s[ann] == state).mean()) if ann.any() else None,
                     "predicted": int((pred_s[~unk] == state).sum()),
                     "filled": int((pred_s[unk] == state).sum())})
    return {"mode": "single", "rows": rows, "n_unknown": int(unk.sum())}


def has_annotated_state(pred: pd.DataFrame) -> bool:
    """True when single-label states are both predicted and annotated for at least one cell."""
    true_c, pred_c = C.true_col(C.CELL_STATE), C.pred_col(C.CELL_STATE)
    return pred_c in pred and true_c in pred and bool(known_mask(pred[true_c]).any())


def patient_details(pred: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """What each patient page of ``task: cells`` shows, per patient with predictions.

    ``{patient: {"composition": composition(...), "confidence": {head: confidence_histogram},
    "top_errors": {head: top_errors}, "per_type": per_type_accuracy, "state_view":
    state_summary}}``. The state head takes part only where states are annotated somewhere
    (:func:`has_annotated_state`), as in the index page.
    """
    with_state = has_annotated_state(pred)
    heads = [C.CELL_TYPE] + ([C.CELL_STATE] if with_state else [])
    out: dict[str, dict[str, Any]] = {}
    for patient, cells in pred.groupby(C.PATIENT, sort=False):
        confidence = {h: confidence_histogram(cells, h) for h in heads}
        out[str(patient)] = {
            "composition": composition(cells),
            "confidence": {h: v for h, v in confidence.items() if v is not None},
            "top_errors": {h: top_errors(cells[C.true_col(h)], cells[C.pred_col(h)])
                           for h in heads},
            "per_type": per_type_accuracy(cells, with_state=with_state),
            "state_view": state_summary(cells),
        }
    return out
