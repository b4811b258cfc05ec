"""The one report renderer: an experiment folder in; ``reports/``, index and patient pages, out.

The pipeline is shared by every task: read and validate the inputs, name the patient pages, build
the pages, write the whole folder atomically. What differs per task is a *section*: how its extra
files are read, and what its index and patient pages show. A new task adds a :class:`_Section`
and two templates, not a second pipeline.
"""

from __future__ import annotations

import functools
import json
import math
import re
import shlex
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

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
_STATE_COLS = ("true_state:", "pred_state:", "prob_state:")
_STATE_CELLS = 25  # cells listed in the patient page's state-label table
_TOP_ERRORS = 10
_TOP_SEQUENCES = 25
_TOP_KMERS = 10
_KMER = 3
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


def _read_tsv(
    path: Path,
    required: Iterable[str],
    *,
    optional: bool = False,
    usecols: Callable[[str], bool] | None = None,
) -> pd.DataFrame | None:
    """Read a TSV as text (IDs like ``007`` stay as written); check its required columns."""
    if not path.is_file():
        if optional:
            return None
        raise BioclsError(
            "file not found",
            where=str(path),
            fix="run the experiment's evaluation before rendering its report",
        )
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, usecols=usecols)
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
    splits = _read_tsv(path, ["patient", "fold"])
    assert splits is not None
    folds = splits.groupby("patient", sort=False)["fold"].nunique()
    leaked = list(folds[folds > 1].index)
    if leaked:
        raise BioclsError(
            f"patient {leaked[0]!r} sits in more than one fold",
            where=str(path),
            fix="re-run the split: each patient must sit in exactly one fold",
        )
    splits = splits.drop_duplicates("patient").reset_index(drop=True)
    if splits.empty:
        raise BioclsError("no patients", where=str(path), fix="re-run the split")
    return splits


def _labels(series: pd.Series) -> pd.Series:
    """Labels as stripped text, with every spelling of 'unknown' turned into ''."""
    s = series.astype(str).str.strip()
    return s.where(~s.isin(_MISSING_LABELS), "")


def _numbers(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce")


def _figure(uri: str, title: str, caption: str) -> dict[str, str]:
    return {"uri": uri, "title": title, "caption": caption}


# ----------------------------------------------------------------------------- task: cells


def _cells_load(results_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    path = results_dir / "predictions.tsv"
    preds = _read_tsv(
        path,
        ["patient", "fold", "true_cell_type", "pred_cell_type"],
        usecols=lambda c: not c.startswith("prob_") or c.startswith(_STATE_COLS),
    )
    assert preds is not None
    for col in preds.columns:
        if col.startswith(_STATE_COLS):  # multi-label states: 1/0/empty and probabilities
            preds[col] = _numbers(preds[col])
        elif col.startswith(("true_", "pred_", "joint_pred_", "logreg_pred_")):
            preds[col] = _labels(preds[col])
        elif col.endswith("_confidence"):
            preds[col] = _numbers(preds[col])
    has_state_pred = "pred_cell_state" in preds.columns
    has_state = (
        has_state_pred
        and "true_cell_state" in preds.columns
        and bool((preds["true_cell_state"] != "").any())
    )
    return {
        "preds": preds,
        "by_patient": dict(tuple(preds.groupby("patient", sort=False))),
        "has_state": has_state,
        "has_state_pred": has_state_pred,
        "state_labels": [c.split(":", 1)[1] for c in preds.columns if c.startswith("true_state:")],
    }


def _confusion(true: pd.Series, pred: pd.Series) -> tuple[list[str], np.ndarray]:
    keep = (true != "") & (pred != "")
    labels = sorted(set(true[keep]) | set(pred[keep]))
    table = pd.crosstab(true[keep], pred[keep]).reindex(index=labels, columns=labels, fill_value=0)
    return labels, table.to_numpy()


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
    preds = data["preds"]
    figures = []
    panels = [("factored", "pred_cell_type", "cell type", "true_cell_type")]
    if data["has_state"]:
        panels.append(("factored", "pred_cell_state", "cell state", "true_cell_state"))
    if "joint_pred_cell_type" in preds.columns:
        panels.append(("joint", "joint_pred_cell_type", "cell type", "true_cell_type"))
    for model, col, head, true_col in panels:
        labels, counts = _confusion(preds[true_col], preds[col])
        if not labels:
            continue
        figures.append(
            _figure(
                _plots.confusion_matrix(counts, labels, title=f"{head}, {model} model"),
                f"Confusion matrix: {head}, {model} model",
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
            "n_cells": m.get("n_cells", len(preds)),
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


def _top_errors(true: pd.Series, pred: pd.Series) -> list[dict[str, Any]]:
    wrong = (true != "") & (pred != "") & (true != pred)
    counts = Counter(zip(true[wrong], pred[wrong], strict=True))
    return [
        {"true": t, "pred": p, "n": n}
        for (t, p), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:_TOP_ERRORS]
    ]


def _cells_patient(ctx: _Context, patient: str) -> dict[str, Any]:
    data = ctx.data
    cells = data["by_patient"].get(patient)
    pm = (ctx.metrics.get("per_patient") or {}).get(patient) or {}
    out: dict[str, Any] = {
        "pm": pm,
        "has_state": data["has_state"],
        "figures": [],
        "n_cells": 0 if cells is None else len(cells),
        "errors": [],
        "per_type": [],
        "state_view": None,
    }
    if cells is None or cells.empty:
        return out
    out["state_view"] = _state_view(cells, data)
    true_t, pred_t = cells["true_cell_type"], cells["pred_cell_type"]
    figures = out["figures"]

    if data["has_state_pred"]:
        true_s = (
            cells["true_cell_state"]
            if "true_cell_state" in cells.columns
            else pd.Series("", index=cells.index)
        ).replace("", "(unannotated)")
        pred_s = cells["pred_cell_state"].replace("", "(none)")
        types = sorted(set(true_t.replace("", "(unannotated)")) | set(pred_t.replace("", "(none)")))
        # Same state columns in the same order on both sides; "(unannotated)" only where it occurs.
        states = sorted((set(true_s) | set(pred_s)) - {"(unannotated)"})
        ann_states = states + (["(unannotated)"] if (true_s == "(unannotated)").any() else [])
        ann = pd.crosstab(true_t.replace("", "(unannotated)"), true_s)
        ann = ann.reindex(index=types, columns=ann_states, fill_value=0)
        prd = pd.crosstab(pred_t.replace("", "(none)"), pred_s)
        prd = prd.reindex(index=types, columns=states, fill_value=0)
        figures.append(
            _figure(
                _plots.composition(
                    ann.to_numpy(), prd.to_numpy(), types, list(ann.columns), list(prd.columns)
                ),
                "Composition: annotated vs predicted",
                "Cell counts per cell type (rows) and cell state (columns), as annotated (left)"
                " and as predicted (right), on one colour scale. Where the two differ, the model"
                " shifts the patient's composition.",
            )
        )
    else:
        types = sorted((set(true_t) | set(pred_t)) - {""})
        figures.append(
            _figure(
                _plots.count_bars(
                    types,
                    [int((true_t == t).sum()) for t in types],
                    [int((pred_t == t).sum()) for t in types],
                ),
                "Composition: annotated vs predicted",
                "Cell counts per cell type.",
            )
        )

    panels = []
    for head, true_col, pred_col, conf_col in (
        ("cell type", "true_cell_type", "pred_cell_type", "cell_type_confidence"),
        ("cell state", "true_cell_state", "pred_cell_state", "cell_state_confidence"),
    ):
        if head == "cell state" and not data["has_state"]:
            continue
        if conf_col not in cells.columns:
            continue
        known = (cells[true_col] != "") & cells[conf_col].notna()
        right = known & (cells[true_col] == cells[pred_col])
        wrong = known & (cells[true_col] != cells[pred_col])
        panels.append(
            (head, cells.loc[right, conf_col].to_numpy(), cells.loc[wrong, conf_col].to_numpy())
        )
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

    errors = [{"head": "cell type", "rows": _top_errors(true_t, pred_t)}]
    if data["has_state"]:
        errors.append(
            {
                "head": "cell state",
                "rows": _top_errors(cells["true_cell_state"], cells["pred_cell_state"]),
            }
        )
    out["errors"] = errors

    per_type = []
    for t in sorted(set(true_t) - {""}):
        sel = cells[true_t == t]
        row = {
            "type": t,
            "n": len(sel),
            "type_acc": float((sel["pred_cell_type"] == t).mean()),
            "state_acc": None,
        }
        if data["has_state"]:
            known = sel[sel["true_cell_state"] != ""]
            if len(known):
                row["state_acc"] = float(
                    (known["pred_cell_state"] == known["true_cell_state"]).mean()
                )
        per_type.append(row)
    out["per_type"] = per_type
    return out


def _state_view(cells: pd.DataFrame, data: dict[str, Any]) -> dict[str, Any] | None:
    """Annotated state labels next to predicted ones; unknown entries as filled in by the model.

    Multi-label states: one row per state label (annotated present / absent / unknown, agreement
    on annotated entries, what the model fills in for the unknown ones), and a cell list showing
    each entry as annotated (+, −) or unknown (?) with the model's call beside it. Single-label
    states: one row per state, with the unannotated cells' predicted states as the fill-in.
    """
    names = data.get("state_labels") or []
    if names:
        rows, shown = [], []
        unknown_any = np.zeros(len(cells), dtype=bool)
        for name in names:
            ann = cells[f"true_state:{name}"]
            prob = cells[f"prob_state:{name}"]
            pred = (prob >= 0.5).astype(int)
            known, unk = ann.notna(), ann.isna()
            unknown_any |= unk.to_numpy()
            rows.append({
                "label": name, "present": int((ann == 1).sum()), "absent": int((ann == 0).sum()),
                "unknown": int(unk.sum()),
                "agree": float((pred[known] == ann[known]).mean()) if known.any() else None,
                "filled_present": int(pred[unk].sum()), "filled_absent": int((1 - pred[unk]).sum()),
                "filled_mean_prob": float(prob[unk].mean()) if unk.any() else None})
        order = np.argsort(~unknown_any, kind="stable")[:_STATE_CELLS]
        for i in order:
            row = cells.iloc[i]
            entries = []
            for name in names:
                a, p = row[f"true_state:{name}"], float(row[f"prob_state:{name}"])
                call = "+" if p >= 0.5 else "−"
                if pd.isna(a):
                    entries.append({"ann": "?", "pred": call, "prob": p, "filled": True,
                                    "agree": None})
                else:
                    ann_s = "+" if a == 1 else "−"
                    entries.append({"ann": ann_s, "pred": call, "prob": p, "filled": False,
                                    "agree": ann_s == call})
            shown.append({"cell_id": row.get("cell_id", ""),
                          "type": row.get("pred_cell_type", ""), "entries": entries})
        return {"mode": "multilabel", "labels": names, "rows": rows, "cells": shown,
                "n_unknown": int(sum(r["unknown"] for r in rows))}
    if not data["has_state_pred"] or "true_cell_state" not in cells.columns:
        return None
    true_s, pred_s = cells["true_cell_state"], cells["pred_cell_state"]
    unk = true_s == ""
    rows = []
    for state in sorted((set(true_s) | set(pred_s)) - {""}):
        ann = true_s == state
        rows.append({"label": state, "annotated": int(ann.sum()),
                     "agree": float((pred_s[ann] == state).mean()) if ann.any() else None,
                     "predicted": int((pred_s[~unk] == state).sum()),
                     "filled": int((pred_s[unk] == state).sum())})
    conf = cells.get("cell_state_confidence")
    shown = [{"cell_id": r.get("cell_id", ""), "type": r.get("pred_cell_type", ""),
              "pred": r["pred_cell_state"],
              "prob": None if conf is None else r["cell_state_confidence"]}
             for _, r in cells[unk].head(_STATE_CELLS).iterrows()]
    return {"mode": "single", "rows": rows, "cells": shown, "n_unknown": int(unk.sum())}


# ----------------------------------------------------------------------------- task: repertoires


def _kmers(seq: str, k: int = _KMER) -> Iterable[str]:
    return (seq[i : i + k] for i in range(len(seq) - k + 1))


def _repertoires_load(results_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    preds = _read_tsv(
        results_dir / "predictions.tsv",
        ["repertoire_id", "patient", "fold", "label", "probability"],
    )
    assert preds is not None
    for col in ("label", "probability", "kmer_probability"):
        if col in preds.columns:
            preds[col] = _numbers(preds[col])
    attention = _read_tsv(
        results_dir / "attention.tsv", ["repertoire_id", "junction_aa"], optional=True
    )
    background: Counter[str] = Counter()
    by_rep: dict[str, pd.DataFrame] = {}
    if attention is not None:
        attention["junction_aa"] = attention["junction_aa"].str.strip().str.upper()
        for col in ("rank", "duplicate_count", "weight"):
            if col in attention.columns:
                attention[col] = _numbers(attention[col])
        for seq in attention["junction_aa"]:
            background.update(_kmers(seq))
        sort_col = "rank" if "rank" in attention.columns else None
        for rep, rows in attention.groupby("repertoire_id", sort=False):
            by_rep[rep] = rows.sort_values(sort_col) if sort_col else rows
    patterns = _read_tsv(results_dir / "patterns.tsv", ["pattern", "junction_aa"], optional=True)
    return {
        "preds": preds,
        "attention_present": attention is not None,
        "attention": by_rep,
        "background": background,
        "patterns": patterns,
    }


def roc_curve(label: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """False/true positive rates at every distinct threshold, and the area under them.

    Ties are handled as one threshold (a diagonal step), which gives the same AUC as the
    Mann-Whitney statistic. Needs both classes present.
    """
    order = np.argsort(-score, kind="mergesort")
    score, label = score[order], label[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]
    tp = np.cumsum(label)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    tpr = np.r_[0.0, tp / label.sum()]
    fpr = np.r_[0.0, fp / (len(label) - label.sum())]
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    return fpr, tpr, auc


def _repertoires_index(ctx: _Context) -> dict[str, Any]:
    m, data = ctx.metrics, ctx.data
    preds = data["preds"]
    figures = []
    curves = []
    for name, col in (("model", "probability"), ("k-mer", "kmer_probability")):
        if col not in preds.columns:
            continue
        ok = preds["label"].isin([0, 1]) & preds[col].notna()
        y = preds.loc[ok, "label"].to_numpy(dtype=float)
        if ok.sum() and 0 < y.sum() < len(y):
            fpr, tpr, auc = roc_curve(y, preds.loc[ok, col].to_numpy(dtype=float))
            curves.append((name, fpr, tpr, auc))
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
    if data["patterns"] is not None:
        pt = data["patterns"]
        if "rank" in pt.columns:
            pt = pt.assign(_rank=_numbers(pt["rank"])).sort_values("_rank", kind="mergesort")
        for pattern in list(dict.fromkeys(data["patterns"]["pattern"]))[:_MAX_PATTERNS]:
            rows = pt[pt["pattern"] == pattern].head(_SEQUENCES_PER_PATTERN)
            patterns.append(
                {
                    "pattern": pattern,
                    "rows": [
                        {
                            "rank": r.get("rank", ""),
                            "junction_aa": r["junction_aa"],
                            "similarity": _numbers(pd.Series([r.get("similarity")])).iloc[0],
                        }
                        for r in rows.to_dict("records")
                    ],
                }
            )
    n_patterns = 0 if data["patterns"] is None else data["patterns"]["pattern"].nunique()
    return {
        "summary": {
            "n_patients": m.get("n_patients", len(ctx.splits)),
            "n_repertoires": m.get("n_repertoires", len(preds)),
            "folds": m.get("folds"),
            "pooling": m.get("pooling"),
            "auc": _get(m, "roc_auc"),
            "kmer_auc": _get(m, "baselines", "kmer_logreg", "roc_auc"),
        },
        "figures": figures,
        "fold_rows": fold_rows,
        "patterns": patterns,
        "n_patterns": n_patterns,
        "patterns_present": data["patterns"] is not None,
        "patients": ctx.patient_rows(),
    }


def enriched_kmers(
    sequences: Iterable[str], background: Counter[str], *, top: int = _TOP_KMERS, k: int = _KMER
) -> list[dict[str, Any]]:
    """k-mers over-represented in ``sequences`` relative to ``background`` counts.

    Score: log2 of the k-mer's frequency in the sequences over its frequency in the background,
    each with a pseudocount of 1 per distinct k-mer, so that a k-mer seen once is not ranked
    above one seen many times by chance alone.
    """
    fg: Counter[str] = Counter()
    for seq in sequences:
        fg.update(_kmers(seq, k))
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


def _repertoires_patient(ctx: _Context, patient: str) -> dict[str, Any]:
    data = ctx.data
    preds = data["preds"]
    mine = preds[preds["patient"] == patient].sort_values("repertoire_id")
    dropped = ctx.metrics.get("dropped_sequences") or {}
    repertoires = []
    for r in mine.to_dict("records"):
        rep = r["repertoire_id"]
        att = data["attention"].get(rep)
        top = att.head(_TOP_SEQUENCES) if att is not None else None
        repertoires.append(
            {
                "id": rep,
                "fold": r["fold"],
                "label": r["label"],
                "probability": r["probability"],
                "kmer_probability": r.get("kmer_probability"),
                "sequences": [] if top is None else top.to_dict("records"),
                "n_attended": 0 if att is None else len(att),
                "kmers": []
                if att is None
                else enriched_kmers(att["junction_aa"], data["background"]),
                "dropped": dropped.get(rep),
            }
        )
    figures = []
    ok = preds["label"].isin([0, 1]) & preds["probability"].notna()
    if len(mine) and ok.any():
        figures.append(
            _figure(
                _plots.probability_strip(
                    preds.loc[ok, "probability"].to_numpy(dtype=float),
                    preds.loc[ok, "label"].to_numpy(dtype=int),
                    (preds.loc[ok, "patient"] == patient).to_numpy(),
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
        "kmer": _KMER,
    }


_SECTIONS: dict[str, _Section] = {
    "cells": _Section(_cells_load, _cells_index, _cells_patient),
    "repertoires": _Section(_repertoires_load, _repertoires_index, _repertoires_patient),
}
