"""The one report renderer: an experiment folder in; ``reports/``, index and patient pages, out.

The pipeline is shared by every task: read and validate the inputs, name the patient pages, build
the pages, write the whole folder atomically. What differs per task is a *section*: how its extra
files are read, and what its index and patient pages show. A new task adds a :class:`_Section`
and two templates, not a second pipeline.

The renderer only renders (STYLE.md habit 6): every number on a page, from a confusion matrix to
an enriched k-mer, is computed by :mod:`biocls.evaluate` and read here from ``metrics.json``.
``predictions.tsv``, ``attention.tsv`` and ``patterns.tsv`` are read (through
:func:`biocls.columns.read_predictions`) only to list rows: a patient's cells, a repertoire's
attended sequences, a pattern's nearest sequences. The final model's ``model.json`` is read for
its metadata only (the positive class of a repertoire model).

Two views of the same pages are written. ``index.html`` and ``patients/<patient>.html`` link to
each other by relative paths, for a browser opening the folder. ``all_pages.html`` holds the index
and every patient page in one file, linked by ``#`` anchors (CSS ``:target`` shows one page at a
time, no script): Snakemake's ``report.html`` embeds each result as a ``data:`` URL in a frame,
where relative links lead nowhere, so the workflow registers this one file with ``report()``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import numpy as np
import pandas as pd

from biocls import __version__
from biocls import columns as C
from biocls._errors import BioclsError
from biocls._io import atomic_path
from biocls.report import _plots

log = logging.getLogger(__name__)

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
_HIGHLIGHTED_MOTIFS = 3  # significant motifs marked in a patient's attended sequences
#: the single-file view of all pages (see the module docstring)
BUNDLE = "all_pages.html"
#: Chromium shows no data: URL longer than 2 MiB in a frame; base64 of this many bytes stays under
#: it, so a bundle larger than this leaves out the patient pages' figures (see _write_bundle)
BUNDLE_LIMIT = 1_500_000


def render_reports(results_dir: str | Path, out_dir: str | Path | None = None, *,
                   config_hash: str | None = None) -> list[Path]:
    """Write ``index.html``, one ``patients/<patient>.html`` per patient and ``all_pages.html``.

    ``results_dir`` is ``results/<experiment>/`` (see DESIGN.md §4b); the pages go to
    ``out_dir``, by default ``results_dir/reports``. Every input is read and checked before
    anything is written, and the folder is built aside and swapped in whole, so that a failure
    leaves the previous reports (or none) rather than a half-written set. Pages are
    self-contained: inline CSS, PNG figures as ``data:`` URIs, no scripts, no external links.
    ``all_pages.html`` is every page in one file, linked by anchors, for Snakemake's report.

    Every page states its provenance: the biocls version, ``config_hash`` (the experiment's
    :func:`biocls.config.config_hash`, as the workflow passes it; "not recorded" without it),
    the date it was rendered and the model folder.

    Returns the paths written: the index first, then the patient pages, then ``all_pages.html``.
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
    model_meta = _read_model_meta(results_dir / "model")
    data = section.load(results_dir, metrics)
    data["model_meta"] = model_meta
    pages = page_names(splits["patient"])

    command = f"biocls report --results {shlex.quote(str(results_dir))}"
    if config_hash:
        command += f" --config-hash {shlex.quote(str(config_hash))}"
    ctx = _Context(
        results_dir=results_dir,
        metrics=metrics,
        splits=splits,
        pages=pages,
        data=data,
        experiment=str(metrics.get("experiment") or results_dir.resolve().name),
        command=command,
        provenance=_provenance(results_dir, config_hash, model_meta),
    )
    env = _environment()
    patients = list(splits["patient"])
    written = (
        [out_dir / "index.html"]
        + [out_dir / "patients" / f"{pages[p]}.html" for p in patients]
        + [out_dir / BUNDLE]
    )
    common = {"task": task, "experiment": ctx.experiment, "command": ctx.command,
              "prov": ctx.provenance}
    standalone_index = _Links(index="index.html", patient_page="patients/{}.html", pages=pages)
    standalone_patient = _Links(index="../index.html", patient_page="{}.html", pages=pages)
    with atomic_path(out_dir) as tmp:
        (tmp / "patients").mkdir(parents=True)
        index_vars = {**common, **section.index(ctx)}
        index = env.get_template("index.html").render(links=standalone_index, **index_vars)
        (tmp / "index.html").write_text(index, encoding="utf-8")
        patient_vars = []
        for i, patient in enumerate(patients):
            page_vars = {
                **common,
                "patient": patient,
                "page": pages[patient],
                "fold": splits["fold"].iloc[i],
                "nav": {
                    "prev": patients[i - 1] if i > 0 else None,
                    "next": patients[i + 1] if i + 1 < len(patients) else None,
                },
                **section.patient(ctx, patient),
            }
            page = env.get_template("patient.html").render(links=standalone_patient, **page_vars)
            (tmp / "patients" / f"{pages[patient]}.html").write_text(page, encoding="utf-8")
            patient_vars.append(page_vars)
        _write_bundle(tmp / BUNDLE, env, common, index_vars, patient_vars, pages)
    return written


def _write_bundle(path: Path, env: jinja2.Environment, common: dict[str, Any],
                  index_vars: dict[str, Any], patient_vars: list[dict[str, Any]],
                  pages: dict[str, str]) -> None:
    """``all_pages.html``: the index and every patient page as sections linked by anchors.

    Snakemake's ``report.html`` shows it as a ``data:`` URL, which Chromium refuses beyond
    2 MiB (blank frame); above :data:`BUNDLE_LIMIT` bytes the patient sections leave out their
    figures (each says so and names its own page, which has them). If even that is too large,
    the page says to use ``snakemake --report report.zip``, where no such limit applies.
    """
    anchors = _Links(index="#index", patient_page="#p-{}", pages=pages)

    def render(with_figures: bool) -> tuple[str, int]:
        sections = []
        for page_vars in patient_vars:
            if not with_figures and page_vars.get("figures"):
                page_vars = {**page_vars, "figures": [],
                             "figures_omitted": len(page_vars["figures"])}
            body = env.get_template("patient_body.html").render(links=anchors, **page_vars)
            sections.append({"id": f"p-{page_vars['page']}", "body": markupsafe.Markup(body)})
        index_body = env.get_template("index_body.html").render(links=anchors, **index_vars)
        # the index last: `section:target ~ #index` hides it while a patient page is shown
        sections.append({"id": "index", "body": markupsafe.Markup(index_body)})
        size = sum(len(s["body"].encode("utf-8")) for s in sections)
        return env.get_template("bundle.html").render(
            sections=sections, too_large=not with_figures and size > BUNDLE_LIMIT,
            **common), size

    text, size = render(with_figures=True)
    if size > BUNDLE_LIMIT:
        text, size = render(with_figures=False)
        log.warning("%s: %.1f MB with figures; the patient sections leave their figures out "
                    "so that Snakemake's report.html can show it", path.name, size / 1e6)
        if size > BUNDLE_LIMIT:
            log.warning("%s is %.1f MB even without the patients' figures: too large for "
                        "Snakemake's report.html in Chromium (2 MiB); build `snakemake --report "
                        "report.zip` instead", path.name, size / 1e6)
    path.write_text(text, encoding="utf-8")


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
    provenance: dict[str, Any] = field(default_factory=dict)

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
class _Links:
    """Where a page's links lead: to other files (standalone pages) or to anchors (bundle)."""

    index: str
    patient_page: str  # a format string taking the page name
    pages: dict[str, str]

    def patient(self, patient: str) -> str:
        return self.patient_page.format(self.pages[patient])


def _read_model_meta(model_dir: Path) -> dict[str, Any]:
    """The caller's metadata in the final model's ``model.json`` (``{}`` when absent)."""
    try:
        meta = json.loads((model_dir / "model.json").read_text(encoding="utf-8")).get("meta")
    except (OSError, ValueError, AttributeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _provenance(results_dir: Path, config_hash: str | None,
                model_meta: dict[str, Any]) -> dict[str, Any]:
    """The provenance line of every page. The date is the render date (it is not in
    metrics.json, which stays byte-identical across runs)."""
    model = results_dir / "model"
    return {
        "version": __version__,
        "config_hash": config_hash,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": str(model) if model.is_dir() else None,
        "model_version": model_meta.get("biocls_version"),
    }


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
    env.filters["pvalue"] = _fmt_p
    env.filters["marked"] = _marked
    env.filters["class_name"] = _class_name
    return env


def _class_name(value: Any, classes: dict[Any, Any]) -> str:
    """A 0/1 label or call as its class name (``classes[0]``, ``classes[1]``); "—" if unknown."""
    if _missing(value) or isinstance(value, bool):
        return "—"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(classes[int(v)]) if v in (0.0, 1.0) else str(value)


def _fmt_p(v: Any) -> str:
    """A p-value: two significant digits, scientific below 0.001."""
    if _missing(v):
        return "—"
    v = float(v)
    return f"{v:.2g}" if v >= 1e-3 else f"{v:.1e}"


def _marked(sequence: Any, motifs: Iterable[str]) -> markupsafe.Markup:
    """``sequence`` escaped, with every occurrence of any of ``motifs`` wrapped in ``<mark>``.

    Presentation only: which motifs to mark comes from metrics.json (``enriched_motifs``).
    """
    seq = "" if sequence is None else str(sequence)
    hit = [False] * len(seq)
    for motif in motifs:
        if not motif:
            continue
        start = seq.find(motif)
        while start >= 0:
            hit[start:start + len(motif)] = [True] * len(motif)
            start = seq.find(motif, start + 1)
    out, i = [], 0
    while i < len(seq):
        j = i
        while j < len(seq) and hit[j] == hit[i]:
            j += 1
        part = markupsafe.escape(seq[i:j])
        out.append(markupsafe.Markup("<mark>{}</mark>").format(part) if hit[i] else part)
        i = j
    return markupsafe.Markup("").join(out)


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


#: per head, what the report's certificate table shows (see biocls.certify)
_CERTIFICATE_KEYS = ("bound", "patient_bound", "test_error", "patient_mean_error", "clean_error",
                     "random_error", "random_correct_error", "delta", "k", "m", "n",
                     "n_test_patients", "n_test")


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


_MODEL_NAMES = {
    "factored": "factored model (biocls)",
    "logreg": "logistic regression",
    "joint": "joint type×state head",
}


def _cells_index(ctx: _Context) -> dict[str, Any]:
    m, data = ctx.metrics, ctx.data
    confusion = m.get("confusion") or {}
    heads = [C.CELL_TYPE] + ([C.CELL_STATE] if data["has_state"] else [])
    # one row per head, the model next to its logistic-regression baseline; the joint head last
    layout = [[(head, "factored"), (head, "logreg")] for head in heads]
    layout.append([(head, "joint") for head in heads])
    confusion_rows = []
    for row in layout:
        figures = []
        for head, model in row:
            table = _get(confusion, head, model)
            if not isinstance(table, dict) or not table.get("labels"):
                continue
            figures.append(
                _figure(
                    _plots.confusion_matrix(
                        np.asarray(table["counts"]),
                        table["labels"],
                        title=f"{_HEADS[head]}: {_MODEL_NAMES[model]}",
                    ),
                    f"{_HEADS[head]}, {_MODEL_NAMES[model]}",
                    "Rows annotated, columns predicted; each row sums to 1.",
                )
            )
        if figures:
            confusion_rows.append(figures)
    figures = [f for row in confusion_rows for f in row]

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
        c = _get(m, "certificate", "heads", head)
        if isinstance(c, dict):
            certificate.append({"head": head_name, **{k: c.get(k) for k in _CERTIFICATE_KEYS}})
    cert_info = {k: v for k, v in (m.get("certificate") or {}).items() if k != "heads"}
    certificate_figure = None
    if certificate:
        heads = [h for h in _HEADS if isinstance(_get(m, "certificate", "heads", h), dict)]
        entries = [m["certificate"]["heads"][h] for h in heads]
        certificate_figure = _figure(
            _plots.certificate_bars(
                [_HEADS[h] for h in heads],
                {"per-cell bound": [e.get("bound") for e in entries],
                 "per-patient bound": [e.get("patient_bound") for e in entries]},
                [e.get("test_error") for e in entries],
                [list((e.get("patient_errors") or {}).values()) for e in entries]),
            "Certified bounds and measured error",
            "Per head: the per-cell RATT bound (new cells of the fitting patients), the "
            "per-patient bound (a new patient drawn like the held-out ones), and the error the "
            "shipped model makes on the held-out patients, one dot per patient. A bound above 1 "
            "is drawn at 1 and labelled; it certifies nothing.")
    preprocess = m.get("preprocess") or {}
    return {
        "summary": {
            "n_patients": m.get("n_patients", len(ctx.splits)),
            "n_cells": m.get("n_cells"),
            "folds": m.get("folds"),
            "raw_counts": preprocess.get("raw_counts"),
            "preprocess_note": preprocess.get("note"),
            "pseudo_groups": m.get("pseudo_groups"),
            "qc_removed": preprocess.get("qc_removed"),
            "model_path": m.get("model_path"),
        },
        "has_state": data["has_state"],
        "metrics_table": _metrics_table(m),
        "figures": figures,
        "confusion_rows": confusion_rows,
        "unseen": unseen,
        "unseen_present": "unseen_combinations" in m,
        "unseen_figure": unseen_figure,
        "certificate": certificate,
        "certificate_info": cert_info,
        "certificate_figure": certificate_figure,
        "patients": ctx.patient_rows(),
    }


def _cells_patient(ctx: _Context, patient: str) -> dict[str, Any]:
    data = ctx.data
    pm = (ctx.metrics.get("per_patient") or {}).get(patient) or {}
    details = (ctx.metrics.get("patient_details") or {}).get(patient) or {}
    preprocess = ctx.metrics.get("preprocess") or {}
    by_patient = preprocess.get("qc_removed_by_patient")
    out: dict[str, Any] = {
        "pm": pm,
        "has_state": data["has_state"],
        "figures": [],
        "n_cells": pm.get("n_cells") or 0,
        "errors": [],
        "per_type": [],
        "state_view": None,
        "predicted_composition": [],
        "least_confident": [],
        "least_heads": [],
        # None: not recorded (older metrics.json); {} with raw counts: no cell removed
        "qc": {
            "known": isinstance(by_patient, dict),
            "removed": (by_patient or {}).get(patient, 0) if isinstance(by_patient, dict) else None,
            "raw_counts": preprocess.get("raw_counts"),
        },
    }
    if not details:
        return out
    composition_tables = details.get("predicted_composition") or {}
    out["predicted_composition"] = [
        {"head": name, **composition_tables[key]}
        for key, name in (*_HEADS.items(), ("state_labels", "state labels (each yes/no)"))
        if key in composition_tables
    ]
    out["least_confident"] = details.get("least_confident") or []
    out["least_heads"] = [
        (head, name) for head, name in _HEADS.items()
        if any(head in row for row in out["least_confident"])
    ]
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


def _classes(ctx: _Context) -> dict[str, Any]:
    """Names of the two classes: the model's positive metadata label, and the rest."""
    pos = ctx.data.get("model_meta", {}).get("positive_label")
    return {
        "positive_label": None if pos is None else str(pos),
        1: "positive",
        0: "negative",
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
                "Out-of-fold probabilities of all folds pooled into one curve per model: the"
                " attention MIL model (solid, circles) and the k-mer logistic-regression baseline"
                " (dashed, squares), drawn over each other, so where they coincide the dashed"
                " line runs on the solid one. Pooling mixes folds whose scores need not be"
                " calibrated alike, so the pooled AUC can differ from the mean of the per-fold"
                " AUCs in the table.",
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
            "restart": _get(m, "restarts", str(i)),
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
                "One marker per fold and model (side by side within a fold); the dotted line is"
                " chance (0.5).",
            )
        )

    patterns = []
    pt = data["patterns"]
    if pt is not None:
        if C.RANK in pt.columns:
            pt = pt.sort_values(C.RANK, kind="mergesort")
        if C.PATTERN_RANK in pt.columns:
            pt = pt.sort_values(C.PATTERN_RANK, kind="mergesort")
        for pattern in list(dict.fromkeys(pt[C.PATTERN]))[:_MAX_PATTERNS]:
            rows = pt[pt[C.PATTERN] == pattern].head(_SEQUENCES_PER_PATTERN)
            first = rows.iloc[0]
            patterns.append(
                {
                    "pattern": pattern,
                    "pattern_rank": first.get(C.PATTERN_RANK),
                    "head_weight": first.get(C.HEAD_WEIGHT),
                    "rows": [
                        {
                            "rank": r.get(C.RANK, ""),
                            "junction_aa": r[C.JUNCTION_AA],
                            "similarity": r.get(C.SIMILARITY),
                            "repertoire_id": r.get(C.REPERTOIRE_ID, ""),
                        }
                        for r in rows.to_dict("records")
                    ],
                }
            )
    return {
        "summary": {
            "n_patients": m.get("n_patients", len(ctx.splits)),
            "n_repertoires": m.get("n_repertoires"),
            "n_sequences": m.get("n_sequences"),
            "n_dropped": m.get("n_dropped"),
            "n_dropped_repertoires": len(m.get("dropped_sequences") or {}),
            "folds": m.get("folds"),
            "pooling": m.get("pooling"),
            "auc": _get(m, "roc_auc"),
            "kmer_auc": _get(m, "baselines", "kmer_logreg", "roc_auc"),
            "threshold": m.get("threshold"),
            "calls": m.get("calls") or {},
        },
        "classes": _classes(ctx),
        "figures": figures,
        "fold_rows": fold_rows,
        "patterns": patterns,
        "n_patterns": m.get("n_patterns") or len(patterns),
        "patterns_present": pt is not None,
        "patients": ctx.patient_rows(),
    }


def _dropped_count(entry: Any) -> int | None:
    """``dropped_sequences[rep]`` as metrics.json holds it: a count (older files: by reason)."""
    if isinstance(entry, dict):
        return int(sum(v for v in entry.values() if isinstance(v, (int, float))))
    if isinstance(entry, (int, float)) and not isinstance(entry, bool):
        return int(entry)
    return None


def _repertoires_patient(ctx: _Context, patient: str) -> dict[str, Any]:
    data = ctx.data
    preds = data["preds"]
    mine = preds[preds[C.PATIENT] == patient].sort_values(C.REPERTOIRE_ID)
    dropped = ctx.metrics.get("dropped_sequences") or {}
    motifs = _get(ctx.metrics, "enriched_motifs", "by_patient", patient) or {}
    highlight = [r["kmer"] for r in motifs.get("rows") or [] if r.get("significant")]
    highlight = highlight[:_HIGHLIGHTED_MOTIFS]
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
                "predicted": r.get(C.PREDICTED),
                "probability": r[C.PROBABILITY],
                "kmer_probability": r.get(C.KMER_PROBABILITY),
                "n_sequences": r.get(C.N_SEQUENCES),
                "sequences": [] if top is None else top.to_dict("records"),
                "n_attended": 0 if att is None else len(att),
                "dropped": _dropped_count(dropped.get(rep)),
                "dropped_detail": dropped.get(rep) if isinstance(dropped.get(rep), dict) else None,
            }
        )
    figures = []
    ok = preds[C.LABEL].isin([0, 1]) & preds[C.PROBABILITY].notna()
    classes = _classes(ctx)
    if len(mine) and ok.any():
        figures.append(
            _figure(
                _plots.probability_strip(
                    preds.loc[ok, C.PROBABILITY].to_numpy(dtype=float),
                    preds.loc[ok, C.LABEL].to_numpy(dtype=int),
                    (preds.loc[ok, C.PATIENT] == patient).to_numpy(),
                    names=(classes[0], classes[1]),
                    threshold=ctx.metrics.get("threshold"),
                ),
                "Predicted probability in context",
                "Out-of-fold model probabilities of every repertoire, one row per annotated"
                " class; this patient's repertoires are the open diamonds, and the dashed line is"
                " the threshold above which a repertoire is called positive.",
            )
        )
    return {
        "pm": (ctx.metrics.get("per_patient") or {}).get(patient) or {},
        "threshold": ctx.metrics.get("threshold"),
        "classes": classes,
        "repertoires": repertoires,
        "figures": figures,
        "attention_present": data["attention_present"],
        "motifs": motifs,
        "motif_settings": {k: v for k, v in (ctx.metrics.get("enriched_motifs") or {}).items()
                           if k != "by_patient"},
        "highlight": highlight,
    }


# ----------------------------------------------------------------------------- task: images

_IMAGE_MODEL_NAMES = {
    "factored": "shipped model (biocls)",
    "image": "image only",
    "fused": "image + clinical (fused)",
    "clinical": "clinical only",
    "logreg": "logistic regression on pixels",
    "scratch": "image only, from scratch",
}


def _images_index(ctx: _Context) -> dict[str, Any]:
    """The cells page's figures where they apply, with the image comparisons instead of the
    joint head: image only / clinical only / fused, and the patient-identity probe."""
    m = ctx.metrics
    heads = [h for h in _HEADS if isinstance(m.get(h), dict)]
    models = [n for n in C.IMAGE_MODELS if n == "factored" or n in (m.get("baselines") or {})]
    rows = []
    for head in heads:
        for key in ("macro_f1", "balanced_accuracy", "accuracy"):
            values = [_get(m if n == "factored" else m["baselines"][n], head, key)
                      for n in models]
            present = [float(v) for v in values if not _missing(v)]
            if not present:
                continue
            best = max(present)
            rows.append({"name": f"{_HEADS[head]}: {_METRICS[key]}",
                         "cells": [{"value": v, "best": not _missing(v) and float(v) == best}
                                   for v in values]})
    confusion = m.get("confusion") or {}
    figures = []
    for head in heads:
        for model in ("factored", "logreg"):
            table = _get(confusion, head, model)
            if isinstance(table, dict) and table.get("labels"):
                figures.append(_figure(
                    _plots.confusion_matrix(np.asarray(table["counts"]), table["labels"],
                                            title=f"{_HEADS[head]}: {_IMAGE_MODEL_NAMES[model]}"),
                    f"{_HEADS[head]}, {_IMAGE_MODEL_NAMES[model]}",
                    "Rows annotated, columns predicted; each row sums to 1."))
    fusion, probe = m.get("fusion"), m.get("patient_probe") or {}
    fusion_figure = probe_figure = None
    if fusion:
        table = {h: fusion["macro_f1"][h] for h in _HEADS if h in fusion["macro_f1"]}
        fusion_figure = _figure(
            _plots.grouped_bars([_HEADS[h] for h in table],
                                {_IMAGE_MODEL_NAMES[n]: [table[h].get(n) for h in table]
                                 for n in ("image", "clinical", "fused")},
                                title="new patients: what the clinical data adds",
                                ylabel="macro-F1 (out of fold)"),
            "Image only, clinical only, fused",
            "Macro-F1 on each fold's held-out patients, for models trained on the same folds.")
    if probe:
        names = [n for n in ("image", "fused") if n in probe]
        probe_figure = _figure(
            _plots.grouped_bars([_IMAGE_MODEL_NAMES[n] for n in names],
                                {"probe accuracy": [probe[n]["accuracy"] for n in names],
                                 "chance": [probe[n]["chance"] for n in names]},
                                title="patient-identity probe", ylabel="accuracy"),
            "Patient-identity probe",
            "How often a linear probe on the model's embedding names the training patient of an "
            "image held back from training; chance is the commonest patient's share.")
    transfer, transfer_figure = m.get("transfer"), None
    if transfer:
        table = {h: transfer["macro_f1"][h] for h in _HEADS if h in transfer["macro_f1"]}
        transfer_figure = _figure(
            _plots.grouped_bars([_HEADS[h] for h in table],
                                {"from scratch": [table[h].get("scratch") for h in table],
                                 "pretrained": [table[h].get("transfer") for h in table]},
                                title="new patients: what pretraining adds",
                                ylabel="macro-F1 (out of fold)"),
            "From scratch and pretrained",
            "Image-only macro-F1 on each fold's held-out patients, from scratch and starting from "
            "the encoder pretrained on the other image set; same folds.")
    return {
        "transfer": transfer,
        "transfer_figure": transfer_figure,
        "summary": {"n_patients": m.get("n_patients", len(ctx.splits)),
                    "n_images": m.get("n_images"), "folds": m.get("folds"),
                    "pseudo_groups": m.get("pseudo_groups")},
        "model_names": [_IMAGE_MODEL_NAMES[n] for n in models],
        "metrics_table": rows,
        "figures": figures,
        "fusion": fusion,
        "fusion_figure": fusion_figure,
        "probe": probe,
        "probe_figure": probe_figure,
        "official_test": m.get("official_test"),
        "patients": ctx.patient_rows(),
    }


def _images_load(results_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    data = _cells_load(results_dir, metrics)
    gallery = _read_optional(results_dir / "gallery.tsv", [C.PATIENT, "kind", "image_png"])
    data["gallery"] = ({} if gallery is None
                       else dict(tuple(gallery.groupby(C.PATIENT, sort=False))))
    return data


def _images_patient(ctx: _Context, patient: str) -> dict[str, Any]:
    """The cells patient page, plus the gallery: confident mistakes and least confident images,
    each beside its saliency overlay."""
    out = _cells_patient(ctx, patient)
    g = ctx.data["gallery"].get(patient)
    groups: dict[str, list[dict[str, Any]]] = {}
    if g is not None:
        for r in g.itertuples(index=False):
            row = r._asdict()
            groups.setdefault(row["kind"], []).append({
                "image": row.get(C.IMAGE), "true": row.get(C.true_col(C.CELL_TYPE)),
                "pred": row.get(C.pred_col(C.CELL_TYPE)),
                "confidence": row.get(C.confidence_col(C.CELL_TYPE)),
                "image_png": row["image_png"], "saliency_png": row.get("saliency_png")})
    out["gallery"] = groups
    return out


_SECTIONS: dict[str, _Section] = {
    "cells": _Section(_cells_load, _cells_index, _cells_patient),
    "images": _Section(_images_load, _images_index, _images_patient),
    "repertoires": _Section(_repertoires_load, _repertoires_index, _repertoires_patient),
}
