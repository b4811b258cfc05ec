"""The one report renderer: an experiment folder in; ``reports/``, index and patient pages, out.

The pipeline is shared by every task: read and validate the inputs, name the patient pages, build
the pages, write the whole folder atomically. What differs per task is a *section*: how its extra
files are read, and what its index and patient pages show. A new task adds a :class:`_Section`
and two templates, not a second pipeline.

The renderer only renders (STYLE.md habit 6): every number on a page, from a confusion matrix to
an enriched k-mer, is computed by :mod:`biocls.evaluate` and read here from ``metrics.json``.
``predictions.tsv``, ``attention.tsv`` and ``patterns.tsv`` are read (through
:func:`biocls.columns.read_predictions`) only to list rows: a patient's cells, a repertoire's
attended sequences, a pattern's nearest sequences.
"""

from __future__ import annotations

import functools
import json
import math
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from biocls import columns as C
from biocls._errors import BioclsError
from biocls._io import atomic_path
from biocls.report import _plots

_MISSING_LABELS = {"", "nan", "NaN", "None", "<NA>"}
_MODELS = ("factored", "joint", "logreg")
_HEADS = {"cell_type": "cell type", "cell_state": "cell state"}
_METRICS = {
    "macro_f1": "macro-F1",
    "balanced_accuracy": "balanced accuracy",
    "accuracy": "accuracy",
    "mAP": "mAP, annotated entries (multi-label states)",
}
_MAX_PAGE_NAME = 100
_STATE_CELLS = 25  # cells listed in the patient page's state-label table
_TOP_SEQUENCES = 25
_MAX_PATTERNS = 8
_SEQUENCES_PER_PATTERN = 10


def render_reports(results_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write ``index.html`` and one ``patients/<patient>.html`` per patient of an experiment.

    ``results_dir`` is ``results/<experiment>/`` (see DESIGN.md §4b); the pages go to
    ``out_dir``, by default ``results_dir/reports``. Every input is read and checked before
    anything is written, and the folder is built aside and swapped in whole, so that a failure
    leaves the previous reports (or none) rather than a half-written set. Pages are
    self-contained: inline CSS, PNG figures as ``data:`` URIs, no scripts, no external links.

    Returns the paths written, the index first.
    """
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir / "reports"
    if not results_dir.is_dir():
        raise BioclsError(
            "results folder not found",
            where=str(results_dir),
            fix="pass results/<experiment> of an experiment that has finished",
        )
    metrics = _read_metrics(results_dir / "metrics.json")
    task = metrics.get("task")
    if task not in _SECTIONS:
        raise BioclsError(
            f"unknown task {task!r}",
            where=f"{results_dir / 'metrics.json'}: task",
            fix=f"task must be one of {', '.join(sorted(_SECTIONS))}",
        )
    section = _SECTIONS[task]
    splits = _read_splits(results_dir / "splits.tsv")
    data = section.load(results_dir, metrics)
    pages = page_names(splits["patient"])

    ctx = _Context(
        results_dir=results_dir,
        metrics=metrics,
        splits=splits,
        pages=pages,
        data=data,
        experiment=str(metrics.get("experiment") or results_dir.resolve().name),
        command=f"biocls report --results {shlex.quote(str(results_dir))}",
    )
    env = _environment()
    patients = list(splits["patient"])
    written = [out_dir / "index.html"] + [
        out_dir / "patients" / f"{pages[p]}.html" for p in patients
    ]
    with atomic_path(out_dir) as tmp:
        (tmp / "patients").mkdir(parents=True)
        index = env.get_template("index.html").render(
            task=task, experiment=ctx.experiment, command=ctx.command, **section.index(ctx)
        )
        (tmp / "index.html").write_text(index, encoding="utf-8")
        for i, patient in enumerate(patients):
            nav = {
                "prev": f"{pages[patients[i - 1]]}.html" if i > 0 else None,
                "next": f"{pages[patients[i + 1]]}.html" if i + 1 < len(patients) else None,
            }
            page = env.get_template("patient.html").render(
                task=task,
                experiment=ctx.experiment,
                command=ctx.command,
                patient=patient,
                fold=splits["fold"].iloc[i],
                nav=nav,
                **section.patient(ctx, patient),
            )
            (tmp / "patients" / f"{pages[patient]}.html").write_text(page, encoding="utf-8")
    return written


def page_names(patients: Iterable[str]) -> dict[str, str]:
    """Map each patient ID to a unique, filesystem-safe page name (without ``.html``).

    Characters outside ``[A-Za-z0-9._-]`` become ``_``; a leading dot is guarded (no hidden
    files, no ``..``); clashes, compared case-insensitively for macOS and Windows disks, get
    ``-2``, ``-3``… The page itself shows the real ID.
    """
    used: set[str] = set()
    out: dict[str, str] = {}
    for patient in patients:
        if patient in out:
            continue
        base = re.sub(r"[^A-Za-z0-9._-]", "_", str(patient))[:_MAX_PAGE_NAME] or "patient"
        if base.startswith("."):
            base = "_" + base
        name, k = base, 1
        while name.casefold() in used:
            k += 1
            name = f"{base}-{k}"
        used.add(name.casefold())
        out[patient] = name
    return out


# ----------------------------------------------------------------------------- shared plumbing


@dataclass(frozen=True)
class _Context:
    """Everything a section needs to build a page, read once."""

    results_dir: Path
    metrics: dict[str, Any]
    splits: pd.DataFrame
    pages: dict[str, str]
    data: dict[str, Any]
    experiment: str
    command: str

    def patient_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "patient": p,
                "fold": f,
                "href": f"patients/{self.pages[p]}.html",
                "metrics": (self.metrics.get("per_patient") or {}).get(p) or {},
            }
            for p, f in zip(self.splits["patient"], self.splits["fold"], strict=True)
        ]


@dataclass(frozen=True)
class _Section:
    """What one task adds: how its files are read, and the variables of its two pages."""

    load: Callable[[Path, dict[str, Any]], dict[str, Any]]
    index: Callable[[_Context], dict[str, Any]]
    patient: Callable[[_Context, str], dict[str, Any]]


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    # autoescape on for every template: patient IDs, labels and sequences are user data.
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("biocls.report", "templates"),
        autoescape=True,
        # Optional metrics keys are common (a patient without state metrics): a missing key renders
        # as "—" through the `num` filter instead of failing the whole report.
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _fmt_num
    env.filters["pct"] = lambda v: "—" if _missing(v) else f"{100 * float(v):.1f}%"
    return env


def _missing(v: Any) -> bool:
    if v is None or isinstance(v, jinja2.Undefined):
        return True
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return False


def _fmt_num(v: Any, digits: int = 3) -> str:
    if _missing(v):
        return "—"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    try:
        return f"{float(v):.{digits}f}"
    except (TypeError, ValueError):
        return str(v)


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _read_metrics(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BioclsError(
            "metrics.json not found",
            where=str(path),
            fix="run the experiment's evaluation before rendering its report",
        )
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BioclsError(
            f"not valid JSON ({err.msg}, line {err.lineno})",
            where=str(path),
            fix="re-run the evaluation to rewrite metrics.json",
        ) from None
    if not isinstance(metrics, dict):
        raise BioclsError(
            "expected a JSON object",
            where=str(path),
            fix="re-run the evaluation to rewrite metrics.json",
        )
    return metrics


def _read_tsv(path: Path, required: Iterable[str]) -> pd.DataFrame:
    """Read a TSV as text (IDs like ``007`` stay as written); check its required columns."""
    if not path.is_file():
        raise BioclsError(
            "file not found",
            where=str(path),
            fix="run the experiment's evaluation before rendering its report",
        )
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise BioclsError(
            "file is empty", where=str(path), fix="re-run the evaluation that writes this file"
        ) from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise BioclsError(
            f"missing column(s) {', '.join(missing)}",
            where=str(path),
            fix="re-run the evaluation that writes this file (DESIGN.md §4b)",
        )
    return frame


def _read_splits(path: Path) -> pd.DataFrame:
    splits = _read_tsv(path, [C.PATIENT, C.FOLD])
    folds = splits.groupby(C.PATIENT, sort=False)[C.FOLD].nunique()
    leaked = list(folds[folds > 1].index)
    if leaked:
        raise BioclsError(
            f"patient {leaked[0]!r} sits in more than one fold",
            where=str(path),
            fix="re-run the split: each patient must sit in exactly one fold",
        )
    splits = splits.drop_duplicates(C.PATIENT).reset_index(drop=True)
    if splits.empty:
        raise BioclsError("no patients", where=str(path), fix="re-run the split")
    return splits


def _labels(series: pd.Series) -> pd.Series:
    """Labels as stripped text, with every spelling of 'unknown' shown as ''."""
    s = series.astype(str).str.strip()
    return s.where(~s.isin(_MISSING_LABELS), "")


def _read_optional(path: Path, required: Iterable[str]) -> pd.DataFrame | None:
    """An optional table (``attention.tsv``, ``patterns.tsv``): ``None`` when absent."""
    return C.read_predictions(path, required=required) if path.is_file() else None


def _figure(uri: str, title: str, caption: str) -> dict[str, str]:
    return {"uri": uri, "title": title, "caption": caption}


# ----------------------------------------------------------------------------- task: cells

# The columns a patient page lists: its cells, never an aggregate of them.
_CELL_TABLE_COLUMNS = {
    C.CELL_ID,
    C.PATIENT,
    C.FOLD,
    C.true_col(C.CELL_TYPE),
    C.pred_col(C.CELL_TYPE),
    C.true_col(C.CELL_STATE),
    C.pred_col(C.CELL_STATE),
    C.confidence_col(C.CELL_STATE),
}


def _cells_load(results_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    preds = C.read_predictions(
        results_dir / "predictions.tsv",
        required=[C.PATIENT, C.FOLD, C.true_col(C.CELL_TYPE), C.pred_col(C.CELL_TYPE)],
        usecols=lambda c: c in _CELL_TABLE_COLUMNS
        or c.startswith((C.TRUE_STATE, C.PRED_STATE, C.PROB_STATE)),
    )
    for col in preds.columns:
        if C.is_label_col(col):
            preds[col] = _labels(preds[col])
    return {
        "by_patient": dict(tuple(preds.groupby(C.PATIENT, sort=False))),
        # the state head is shown where evaluate found annotated states to score it on
        "has_state": bool(_get(metrics, "confusion", C.CELL_STATE)),
    }


def _metrics_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of head × metric, columns factored/joint/logreg, with the best value(s) marked."""
    sources = {
        "factored": metrics,
        "joint": _get(metrics, "baselines", "joint"),
        "logreg": _get(metrics, "baselines", "logreg"),
    }
    rows = []
    for head, head_name in _HEADS.items():
        for key, key_name in _METRICS.items():
            values = [_get(sources[m], head, key) for m in _MODELS]
            if all(_missing(v) for v in values):
                continue
            present = [float(v) for v in values if not _missing(v)]
            best = max(present)
            rows.append(
                {
                    "name": f"{head_name}: {key_name}",
                    "cells": [
                        {"value": v, "best": not _missing(v) and float(v) == best} for v in values
                    ],
                }
            )
    return rows


def _cells_index(ctx: _Context) -> dict[str, Any]:
    m, data = ctx.metrics, ctx.data
    confusion = m.get("confusion") or {}
    figures = []
    panels = [(C.CELL_TYPE, "factored")]
    if data["has_state"]:
        panels.append((C.CELL_STATE, "factored"))
    panels.append((C.CELL_TYPE, "joint"))
    for head, model in panels:
        table = _get(confusion, head, model)
        if not isinstance(table, dict) or not table.get("labels"):
            continue
        figures.append(
            _figure(
                _plots.confusion_matrix(
                    np.asarray(table["counts"]),
                    table["labels"],
                    title=f"{_HEADS[head]}, {model} model",
                ),
                f"Confusion matrix: {_HEADS[head]}, {model} model",
                "Each row is one annotated label, normalised to sum to 1 (its cell count in"
                " brackets); the diagonal is the fraction classified correctly. Out-of-fold"
                " predictions, all patients; cells without an annotation are left out.",
            )
        )

    unseen = m.get("unseen_combinations")
    unseen_figure = None
    if unseen:
        groups = [f"{u.get('cell_type')} / {u.get('cell_state')}" for u in unseen]
        series = {model: [u.get(f"{model}_both_correct") for u in unseen] for model in _MODELS}
        unseen_figure = _figure(
            _plots.grouped_bars(
                groups,
                series,
                title="type×state combinations unseen in training",
                ylabel="fraction with both labels right",
            ),
            "Unseen type×state combinations",
            "Fraction of each combination's cells with both cell type and cell state right, per"
            " model; the number is printed on each bar, so a bar at zero still shows.",
        )

    certificate = []
    for head, head_name in _HEADS.items():
        c = _get(m, "certificate", head)
        if isinstance(c, dict):
            certificate.append(
                {"head": head_name, **{k: c.get(k) for k in ("bound", "test_error", "delta", "m")}}
            )
    preprocess = m.get("preprocess") or {}
    return {
        "summary": {
            "n_patients": m.get("n_patients", len(ctx.splits)),
            "n_cells": m.get("n_cells"),
            "folds": m.get("folds"),
            "raw_counts": preprocess.get("raw_counts"),
            "preprocess_note": preprocess.get("note"),
            "pseudo_groups": m.get("pseudo_groups"),
        },
        "has_state": data["has_state"],
        "metrics_table": _metrics_table(m),
        "figures": figures,
        "unseen": unseen,
        "unseen_present": "unseen_combinations" in m,
        "unseen_figure": unseen_figure,
        "certificate": certificate,
        "patients": ctx.patient_rows(),
    }


def _cells_patient(ctx: _Context, patient: str) -> dict[str, Any]:
    data = ctx.data
    pm = (ctx.metrics.get("per_patient") or {}).get(patient) or {}
    details = (ctx.metrics.get("patient_details") or {}).get(patient) or {}
    out: dict[str, Any] = {
        "pm": pm,
        "has_state": data["has_state"],
        "figures": [],
        "n_cells": pm.get("n_cells") or 0,
        "errors": [],
        "per_type": [],
        "state_view": None,
    }
    if not details:
        return out
    cells = data["by_patient"].get(patient)
    if details.get("state_view") and cells is not None:
        out["state_view"] = {**details["state_view"], "cells": _state_cells(cells, details)}
    figures = out["figures"]

    comp = details.get("composition")
    if comp and "annotated_states" in comp:
        figures.append(
            _figure(
                _plots.composition(
                    np.asarray(comp["annotated"]),
                    np.asarray(comp["predicted"]),
                    comp["types"],
                    comp["annotated_states"],
                    comp["predicted_states"],
                ),
                "Composition: annotated vs predicted",
                "Cell counts per cell type (rows) and cell state (columns), as annotated (left)"
                " and as predicted (right), on one colour scale. Where the two differ, the model"
                " shifts the patient's composition.",
            )
        )
    elif comp:
        figures.append(
            _figure(
                _plots.count_bars(comp["types"], comp["annotated"], comp["predicted"]),
                "Composition: annotated vs predicted",
                "Cell counts per cell type.",
            )
        )

    confidence = details.get("confidence") or {}
    panels = [
        (name, h["bins"], h["correct"], h["wrong"])
        for head, name in _HEADS.items()
        if (h := confidence.get(head))
    ]
    if panels:
        figures.append(
            _figure(
                _plots.confidence_histograms(panels),
                "Confidence: correct vs wrong",
                "Confidence of the predicted label, for cells predicted correctly and wrongly."
                " Wrong predictions concentrated at low confidence mean the confidence can flag"
                " them.",
            )
        )

    top = details.get("top_errors") or {}
    out["errors"] = [{"head": name, "rows": top[head]} for head, name in _HEADS.items()
                     if head in top]
    out["per_type"] = details.get("per_type") or []
    return out


def _state_cells(cells: pd.DataFrame, details: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of the state-label cell table: the first cells with an unknown entry.

    Multi-label states: each entry as annotated (+, −) or unknown (?), next to the model's call
    (``pred_state:``) and probability. Single-label states: the unannotated cells with the state
    the model fills in.
    """
    view = details["state_view"]
    if view.get("mode") == "multilabel":
        names = view.get("labels") or []
        unknown = cells[[C.true_state_col(n) for n in names]].isna().any(axis=1).to_numpy()
        shown = []
        for i in np.argsort(~unknown, kind="stable")[:_STATE_CELLS]:
            row = cells.iloc[i]
            entries = []
            for name in names:
                a, p = row[C.true_state_col(name)], float(row[C.prob_state_col(name)])
                called = row.get(C.pred_state_col(name), float(p >= 0.5))
                call = "+" if called == 1 else "−"
                if pd.isna(a):
                    entries.append(
                        {"ann": "?", "pred": call, "prob": p, "filled": True, "agree": None}
                    )
                else:
                    ann = "+" if a == 1 else "−"
                    entries.append(
                        {"ann": ann, "pred": call, "prob": p, "filled": False, "agree": ann == call}
                    )
            shown.append(
                {
                    "cell_id": row.get(C.CELL_ID, ""),
                    "type": row.get(C.pred_col(C.CELL_TYPE), ""),
                    "entries": entries,
                }
            )
        return shown
    unannotated = cells[cells[C.true_col(C.CELL_STATE)] == ""].head(_STATE_CELLS)
    conf = C.confidence_col(C.CELL_STATE)
    return [
        {
            "cell_id": r.get(C.CELL_ID, ""),
            "type": r.get(C.pred_col(C.CELL_TYPE), ""),
            "pred": r[C.pred_col(C.CELL_STATE)],
            "prob": r.get(conf),
        }
        for r in unannotated.to_dict("records")
    ]


# ----------------------------------------------------------------------------- task: repertoires


def _repertoires_load(results_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    preds = C.read_predictions(
        results_dir / "predictions.tsv",
        required=[C.REPERTOIRE_ID, C.PATIENT, C.FOLD, C.LABEL, C.PROBABILITY],
    )
    attention = _read_optional(results_dir / "attention.tsv", [C.REPERTOIRE_ID, C.JUNCTION_AA])
    by_rep: dict[str, pd.DataFrame] = {}
    if attention is not None:
        attention[C.JUNCTION_AA] = attention[C.JUNCTION_AA].fillna("").str.strip().str.upper()
        if C.RANK in attention.columns:
            attention = attention.sort_values(C.RANK, kind="mergesort")
        by_rep = dict(tuple(attention.groupby(C.REPERTOIRE_ID, sort=False)))
    patterns = _read_optional(results_dir / "patterns.tsv", [C.PATTERN, C.JUNCTION_AA])
    return {
        "preds": preds,
        "attention_present": attention is not None,
        "attention": by_rep,
        "patterns": patterns,
    }


def _repertoires_index(ctx: _Context) -> dict[str, Any]:
    m, data = ctx.metrics, ctx.data
    figures = []
    curves = [
        (name, np.asarray(c["fpr"]), np.asarray(c["tpr"]), c["auc"])
        for name, key in (("model", "model"), ("k-mer", "kmer_logreg"))
        if isinstance(c := _get(m, "roc_curve", key), dict)
    ]
    if curves:
        figures.append(
            _figure(
                _plots.roc_curves(curves),
                "ROC curves",
                "Out-of-fold probabilities of all folds pooled into one curve per model (the"
                " attention MIL model and the k-mer logistic-regression baseline). Pooling mixes"
                " folds"
                " whose scores need not be calibrated alike, so the pooled AUC can differ from the"
                " mean of the per-fold AUCs in the table.",
            )
        )

    model_folds = _get(m, "roc_auc", "folds") or []
    kmer_folds = _get(m, "baselines", "kmer_logreg", "roc_auc", "folds") or []
    n = max(len(model_folds), len(kmer_folds))
    fold_rows = [
        {
            "fold": i,
            "model": model_folds[i] if i < len(model_folds) else None,
            "kmer": kmer_folds[i] if i < len(kmer_folds) else None,
        }
        for i in range(n)
    ]
    if fold_rows:
        figures.append(
            _figure(
                _plots.fold_auc_dots(
                    [str(i) for i in range(n)],
                    {
                        "model": [r["model"] for r in fold_rows],
                        "k-mer": [r["kmer"] for r in fold_rows],
                    },
                ),
                "ROC AUC per fold",
                "One dot per fold and model; the dotted line is chance (0.5).",
            )
        )

    patterns = []
    pt = data["patterns"]
    if pt is not None:
        if C.RANK in pt.columns:
            pt = pt.sort_values(C.RANK, kind="mergesort")
        for pattern in list(dict.fromkeys(data["patterns"][C.PATTERN]))[:_MAX_PATTERNS]:
            rows = pt[pt[C.PATTERN] == pattern].head(_SEQUENCES_PER_PATTERN)
            patterns.append(
                {
                    "pattern": pattern,
                    "rows": [
                        {
                            "rank": r.get(C.RANK, ""),
                            "junction_aa": r[C.JUNCTION_AA],
                            "similarity": r.get(C.SIMILARITY),
                        }
                        for r in rows.to_dict("records")
                    ],
                }
            )
    return {
        "summary": {
            "n_patients": m.get("n_patients", len(ctx.splits)),
            "n_repertoires": m.get("n_repertoires"),
            "folds": m.get("folds"),
            "pooling": m.get("pooling"),
            "auc": _get(m, "roc_auc"),
            "kmer_auc": _get(m, "baselines", "kmer_logreg", "roc_auc"),
        },
        "figures": figures,
        "fold_rows": fold_rows,
        "patterns": patterns,
        "n_patterns": m.get("n_patterns") or len(patterns),
        "patterns_present": pt is not None,
        "patients": ctx.patient_rows(),
    }


def _repertoires_patient(ctx: _Context, patient: str) -> dict[str, Any]:
    data = ctx.data
    preds = data["preds"]
    mine = preds[preds[C.PATIENT] == patient].sort_values(C.REPERTOIRE_ID)
    dropped = ctx.metrics.get("dropped_sequences") or {}
    kmers = ctx.metrics.get("enriched_kmers") or {}
    by_rep = kmers.get("by_repertoire") or {}
    repertoires = []
    for r in mine.to_dict("records"):
        rep = r[C.REPERTOIRE_ID]
        att = data["attention"].get(rep)
        top = att.head(_TOP_SEQUENCES) if att is not None else None
        repertoires.append(
            {
                "id": rep,
                "fold": r[C.FOLD],
                "label": r[C.LABEL],
                "probability": r[C.PROBABILITY],
                "kmer_probability": r.get(C.KMER_PROBABILITY),
                "sequences": [] if top is None else top.to_dict("records"),
                "n_attended": 0 if att is None else len(att),
                "kmers": by_rep.get(rep) or [],
                "dropped": dropped.get(rep),
            }
        )
    figures = []
    ok = preds[C.LABEL].isin([0, 1]) & preds[C.PROBABILITY].notna()
    if len(mine) and ok.any():
        figures.append(
            _figure(
                _plots.probability_strip(
                    preds.loc[ok, C.PROBABILITY].to_numpy(dtype=float),
                    preds.loc[ok, C.LABEL].to_numpy(dtype=int),
                    (preds.loc[ok, C.PATIENT] == patient).to_numpy(),
                ),
                "Predicted probability in context",
                "Out-of-fold probabilities of every repertoire, by true label; this patient's"
                " repertoires are the open diamonds.",
            )
        )
    return {
        "pm": (ctx.metrics.get("per_patient") or {}).get(patient) or {},
        "repertoires": repertoires,
        "figures": figures,
        "attention_present": data["attention_present"],
        "kmer": kmers.get("k", 3),
    }


_SECTIONS: dict[str, _Section] = {
    "cells": _Section(_cells_load, _cells_index, _cells_patient),
    "repertoires": _Section(_repertoires_load, _repertoires_index, _repertoires_patient),
}
