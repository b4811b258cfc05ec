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
    "call_counts",
    "classification_metrics",
    "composition",
    "confidence_histogram",
    "confusion_table",
    "confusion_tables",
    "enriched_kmers",
    "enriched_kmers_by_repertoire",
    "enriched_motifs",
    "has_annotated_state",
    "kmer_counts",
    "known_mask",
    "least_confident",
    "multilabel_metrics",
    "patient_details",
    "per_type_accuracy",
    "predicted_composition",
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
#: a repertoire is called positive when its probability is at least this (``biocls train`` writes
#: the ``predicted`` column of predictions.tsv with the same threshold)
THRESHOLD = 0.5
MOTIF_KS = (3, 4)
TOP_MOTIFS = 10
MOTIF_ALPHA = 0.05
MOTIF_PSEUDOCOUNT = 0.5
LEAST_CONFIDENT = 10
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
    state_summary, "predicted_composition": predicted_composition, "least_confident":
    least_confident}}``. The state head takes part only where states are annotated somewhere
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
            "predicted_composition": predicted_composition(cells),
            "least_confident": least_confident(cells),
        }
    return out


def _share(n: int, total: int) -> float | None:
    return n / total if total else None


def predicted_composition(cells: pd.DataFrame) -> dict[str, Any]:
    """Each label's share of one patient's cells, as predicted (factored model) and annotated.

    ``{head: {"n_cells", "n_annotated", "rows": [{"label", "predicted", "predicted_fraction",
    "annotated", "annotated_fraction"}]}}`` for ``cell_type`` and single-label ``cell_state``:
    predicted fractions are of all the patient's cells, annotated ones of its annotated cells
    (``None`` when none is annotated). Multi-label states add ``"state_labels"``, one row per
    label: cells predicted present, and cells annotated present among those annotated for it.
    """
    out: dict[str, Any] = {}
    n = len(cells)
    for head in C.HEADS:
        if C.pred_col(head) not in cells:
            continue
        pred = _text(cells[C.pred_col(head)])
        true = (_text(cells[C.true_col(head)]) if C.true_col(head) in cells
                else pd.Series("", index=cells.index))
        n_ann = int((true != "").sum())
        rows = []
        for label in sorted((set(pred) | set(true)) - {""}):
            p, a = int((pred == label).sum()), int((true == label).sum())
            rows.append({"label": label, "predicted": p, "predicted_fraction": _share(p, n),
                         "annotated": a, "annotated_fraction": _share(a, n_ann)})
        out[head] = {"n_cells": n, "n_annotated": n_ann, "rows": rows}
    names = C.state_labels(cells.columns)
    if names:
        rows = []
        for name in names:
            ann = pd.to_numeric(cells[C.true_state_col(name)], errors="coerce")
            if C.pred_state_col(name) in cells:
                called = pd.to_numeric(cells[C.pred_state_col(name)], errors="coerce") == 1
            else:
                called = pd.to_numeric(cells[C.prob_state_col(name)], errors="coerce") >= 0.5
            p, known = int(called.sum()), int(ann.notna().sum())
            a = int((ann == 1).sum())
            rows.append({"label": name, "predicted": p, "predicted_fraction": _share(p, n),
                         "annotated": a, "annotated_fraction": _share(a, known),
                         "n_annotated": known})
        out["state_labels"] = {"n_cells": n, "rows": rows}
    return out


def least_confident(cells: pd.DataFrame, *, top: int = LEAST_CONFIDENT) -> list[dict[str, Any]]:
    """The ``top`` cells whose least confident head is least confident, lowest first.

    A cell's ``confidence`` is the minimum over the heads with a ``<head>_confidence`` column;
    ties keep the order of ``predictions.tsv``. Each row: ``{"cell_id", "confidence", head:
    {"annotated", "predicted", "confidence"}}`` (``annotated`` is ``""`` when unannotated).
    """
    heads = [h for h in C.HEADS if {C.confidence_col(h), C.pred_col(h)} <= set(cells.columns)]
    if not heads or not len(cells):
        return []
    conf = {h: pd.to_numeric(cells[C.confidence_col(h)], errors="coerce").to_numpy(dtype=float)
            for h in heads}
    lowest = np.vstack([conf[h] for h in heads]).min(axis=0)
    order = [i for i in np.argsort(lowest, kind="stable") if not np.isnan(lowest[i])][:top]
    ids = (cells[C.CELL_ID].astype(str).to_numpy() if C.CELL_ID in cells
           else np.asarray([str(i) for i in cells.index]))
    shown = cells.iloc[order]
    text = {col: _text(shown[col]).to_numpy() for h in heads
            for col in (C.true_col(h), C.pred_col(h)) if col in shown}
    rows = []
    for j, i in enumerate(order):
        row: dict[str, Any] = {"cell_id": str(ids[i]), "confidence": float(lowest[i])}
        for h in heads:
            true = text[C.true_col(h)][j] if C.true_col(h) in text else ""
            row[h] = {"annotated": str(true), "predicted": str(text[C.pred_col(h)][j]),
                      "confidence": float(conf[h][i])}
        rows.append(row)
    return rows


# -- repertoires: the call at the threshold, and the motifs of the attended sequences ------------

def call_counts(label: Sequence[float] | pd.Series, score: Sequence[float] | pd.Series, *,
                threshold: float = THRESHOLD) -> dict[str, Any]:
    """Repertoires called positive (``score >= threshold``) against their 0/1 label.

    ``{"threshold", "n_positive", "n_negative", "tp", "fp", "tn", "fn", "sensitivity",
    "specificity", "accuracy"}``; a rate whose class is absent is ``None``. Entries without a 0/1
    label or a score are left out.
    """
    y = pd.to_numeric(pd.Series(label), errors="coerce").to_numpy(dtype=float)
    s = pd.to_numeric(pd.Series(score), errors="coerce").to_numpy(dtype=float)
    ok = np.isin(y, [0.0, 1.0]) & ~np.isnan(s)
    y, called = y[ok] == 1, s[ok] >= threshold
    tp, fp = int((y & called).sum()), int((~y & called).sum())
    tn, fn = int((~y & ~called).sum()), int((y & ~called).sum())
    return {"threshold": float(threshold), "n_positive": tp + fn, "n_negative": tn + fp,
            "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "sensitivity": _share(tp, tp + fn), "specificity": _share(tn, tn + fp),
            "accuracy": _share(tp + tn, len(y))}


def _presence(sequences: Iterable[str], ks: Sequence[int]) -> Counter[str]:
    """For each k-mer (every k in ``ks``), the number of ``sequences`` that contain it."""
    counts: Counter[str] = Counter()
    for seq in sequences:
        counts.update({km for k in ks for km in _kmers(seq, k)})
    return counts


def enriched_motifs(attention: pd.DataFrame, *, ks: Sequence[int] = MOTIF_KS,
                    top: int = TOP_MOTIFS, alpha: float = MOTIF_ALPHA,
                    pseudocount: float = MOTIF_PSEUDOCOUNT) -> dict[str, Any]:
    """k-mers over-represented in each patient's attended sequences, against every other
    patient's.

    ``attention`` is ``attention.tsv`` (``patient``, ``junction_aa``). Foreground: the distinct
    attended sequences of all the patient's repertoires (``n``); background: those of every
    other patient (``n_background``, each patient's distinct sequences once). A k-mer (of each
    length in ``ks``) counts the sequences that contain it, so one sequence counts once. Rows
    are ranked by the one-sided Fisher exact test (hypergeometric ``P(X >= count)``: how
    surprising this many foreground sequences with the k-mer are, given how common it is
    overall), ties broken by the larger count, then the longer k-mer, then the k-mer itself.
    ``p_adjusted`` is Bonferroni over the k-mers tested for the patient; ``significant`` is
    ``p_adjusted <= alpha``. ``log2_enrichment`` is log2 of the fraction of foreground over the
    fraction of background sequences with the k-mer, each with ``pseudocount`` added to the
    count (and twice that to the total), so that an absent k-mer stays finite.

    Returns ``{"ks", "top", "alpha", "pseudocount", "by_patient": {patient: {"n_sequences",
    "n_background", "tested", "rows": [{"kmer", "k", "n", "n_background", "log2_enrichment",
    "p_value", "p_adjusted", "significant"}]}}}``.
    """
    from scipy.stats import hypergeom

    ks = [int(k) for k in ks]
    seqs = attention[C.JUNCTION_AA].fillna("").astype(str).str.strip().str.upper()
    patients = attention[C.PATIENT].astype(str)
    distinct = {str(p): sorted(set(s) - {""}) for p, s in seqs.groupby(patients, sort=True)}
    counts = {p: _presence(s, ks) for p, s in distinct.items()}
    total: Counter[str] = Counter()
    for c in counts.values():
        total.update(c)
    n_all = sum(len(s) for s in distinct.values())
    by_patient: dict[str, Any] = {}
    for p, fg in counts.items():
        n = len(distinct[p])
        m = n_all - n
        kmers = sorted(fg)
        a = np.array([fg[km] for km in kmers], dtype=np.int64)
        b = np.array([total[km] - fg[km] for km in kmers], dtype=np.int64)
        pval = hypergeom.sf(a - 1, n + m, a + b, n) if len(kmers) else np.zeros(0)
        pval = np.clip(np.nan_to_num(pval, nan=1.0), 0.0, 1.0)
        adjusted = np.minimum(1.0, pval * len(kmers))
        log2e = (np.log2((a + pseudocount) / (n + 2 * pseudocount))
                 - np.log2((b + pseudocount) / (m + 2 * pseudocount)))
        order = sorted(range(len(kmers)), key=lambda i: (pval[i], -a[i], -len(kmers[i]),
                                                         kmers[i]))[:top]
        by_patient[p] = {
            "n_sequences": n, "n_background": m, "tested": len(kmers),
            "rows": [{"kmer": kmers[i], "k": len(kmers[i]), "n": int(a[i]),
                      "n_background": int(b[i]), "log2_enrichment": float(log2e[i]),
                      "p_value": float(pval[i]), "p_adjusted": float(adjusted[i]),
                      "significant": bool(adjusted[i] <= alpha)} for i in order]}
    return {"ks": ks, "top": top, "alpha": alpha, "pseudocount": pseudocount,
            "by_patient": by_patient}
