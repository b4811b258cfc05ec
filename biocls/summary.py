"""``biocls summary``: each experiment's headline figures, from its ``metrics.json``.

Cells: macro-F1 of the cell type and cell state heads, the factored model against the
logistic-regression and joint baselines. Repertoires: ROC AUC over the folds (mean ± sd), the MIL
model against the k-mer baseline. Images: macro-F1 of the shipped model against image only,
fused, clinical only and logistic regression on pixels, and the patient-identity probe. Every
number is read from ``metrics.json`` (computed by ``biocls evaluate``); nothing is recomputed
here.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biocls._errors import BioclsError

log = logging.getLogger("biocls")

__all__ = ["Headline", "find_metrics", "headlines", "summary_table"]

HEADS = {"cell_type": "cell type", "cell_state": "cell state"}


@dataclass(frozen=True)
class Headline:
    """One row of the table: a figure of one experiment, the model's value and the baselines'."""

    experiment: str
    figure: str
    model: str
    baselines: tuple[str, ...]


def _num(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) and math.isfinite(x) else "–"


def _mean_sd(block: Mapping[str, Any] | None) -> str:
    block = block or {}
    if block.get("sd") is None:
        return _num(block.get("mean"))
    return f"{_num(block.get('mean'))} ± {_num(block.get('sd'))}"


def headlines(metrics: Mapping[str, Any]) -> list[Headline]:
    """The headline rows of one experiment's ``metrics.json`` (as a dict)."""
    exp = str(metrics.get("experiment", "?"))
    base = metrics.get("baselines") or {}
    task = metrics.get("task")
    if task == "cells":
        rows = []
        for head, name in HEADS.items():
            if not isinstance(metrics.get(head), Mapping):
                continue  # cell_state is optional
            others = tuple(f"{b} {_num((base.get(b) or {}).get(head, {}).get('macro_f1'))}"
                           for b in ("logreg", "joint") if head in (base.get(b) or {}))
            rows.append(Headline(exp, f"{name} macro-F1",
                                 f"factored {_num(metrics[head].get('macro_f1'))}", others))
        cert = (metrics.get("certificate") or {}).get("heads") or {}
        for head, name in HEADS.items():
            c = cert.get(head)
            if isinstance(c, Mapping):  # the shipped model's certificate (biocls certify)
                rows.append(Headline(
                    exp, f"{name} error, certified", f"bound {_num(c.get('bound'))} per cell",
                    (f"{_num(c.get('patient_bound'))} per patient",
                     f"measured {_num(c.get('test_error'))} on held-out patients")))
        return rows
    if task == "repertoires":
        auc = metrics.get("roc_auc") or {}
        n = len(auc.get("folds") or []) or metrics.get("folds")
        kmer = (base.get("kmer_logreg") or {}).get("roc_auc")
        pooling = metrics.get("pooling")
        model = f"MIL{f' ({pooling})' if pooling else ''} {_mean_sd(auc)}"
        return [Headline(exp, f"ROC AUC, mean ± sd over {n} folds", model,
                         (f"k-mer {_mean_sd(kmer)}",) if kmer else ())]
    if task == "images":
        rows = []
        for head, name in HEADS.items():
            if not isinstance(metrics.get(head), Mapping):
                continue
            others = tuple(f"{b} {_num((base.get(b) or {}).get(head, {}).get('macro_f1'))}"
                           for b in ("image", "scratch", "fused", "clinical", "logreg")
                           if head in (base.get(b) or {}))
            rows.append(Headline(exp, f"{name} macro-F1",
                                 f"shipped {_num(metrics[head].get('macro_f1'))}", others))
        probe = metrics.get("patient_probe") or {}
        if probe:
            chance = (probe.get("image") or {}).get("chance")
            rows.append(Headline(
                exp, "patient probe accuracy", f"chance {_num(chance)}",
                tuple(f"{n} {_num(p.get('accuracy'))}" for n, p in sorted(probe.items(),
                                                                        reverse=True))))
        test = metrics.get("official_test")
        if isinstance(test, Mapping):
            rows.append(Headline(exp, "official test split accuracy",
                                 f"final model {_num(test.get('accuracy'))}",
                                 (f"AUC {_num(test.get('roc_auc_ovr'))}",)))
        return rows
    return [Headline(exp, f"(no headline figure for task {task!r})", "", ())]


def find_metrics(paths: Iterable[str | Path]) -> list[Path]:
    """``metrics.json`` files from PATHs that are such a file, an experiment folder
    (``results/<exp>``) or a folder of experiment folders (``results``), in order."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif (p / "metrics.json").is_file():
            found.append(p / "metrics.json")
        elif p.is_dir():
            inside = sorted(p.glob("*/metrics.json"))
            if not inside:
                log.warning("%s: no metrics.json in it or in its subfolders; skipped", p)
            found += inside
        else:
            raise BioclsError("not found", where=str(p),
                              fix="pass results/, results/<experiment> or a metrics.json")
    if not found:
        raise BioclsError("no metrics.json found", where=", ".join(map(str, paths)) or ".",
                          fix="run the workflow first (snakemake --cores all)")
    return list(dict.fromkeys(found))


def _read(path: Path) -> dict[str, Any]:
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BioclsError(f"cannot read as JSON ({e})", where=str(path),
                          fix="rerun `biocls evaluate` (snakemake rebuilds it)") from None
    if not isinstance(metrics, dict):
        raise BioclsError("not a metrics.json object", where=str(path),
                          fix="rerun `biocls evaluate` (snakemake rebuilds it)")
    metrics.setdefault("experiment", path.parent.name)
    return metrics


def summary_table(paths: Iterable[str | Path] = ("results",)) -> str:
    """The table that ``biocls summary`` prints (and ``make demo`` ends with)."""
    files = find_metrics(list(paths))
    rows: list[Headline] = []
    reports: list[str] = []
    notes: list[str] = []
    for f in files:
        m = _read(f)
        mark = ""
        if m.get("pseudo_groups"):  # one donor split into pseudo-patients
            notes.append(f"{m['experiment']}: {m['pseudo_groups']}")
            mark = "*" * len(notes)
        rows += [Headline(r.experiment + mark, r.figure, r.model, r.baselines)
                 for r in headlines(m)]
        index = f.parent / "reports" / "index.html"
        reports.append(f"{index}" + ("" if index.exists() else " (not built yet)"))
    header = Headline("experiment", "figure", "model", ("baselines",))
    table = [header, *rows]
    width = [max(len(getattr(r, k)) for r in table) for k in ("experiment", "figure", "model")]
    out = ["Headline figures (out-of-fold, patient-grouped folds):", ""]
    for r in table:
        cells = [r.experiment.ljust(width[0]), r.figure.ljust(width[1]), r.model.ljust(width[2]),
                 "   ".join(r.baselines)]
        out.append("  ".join(cells).rstrip())
    out += [""] + [f"{'*' * (i + 1)} {n}" for i, n in enumerate(notes)]
    out += [("Reports: " if i == 0 else "         ") + r for i, r in enumerate(reports)]
    return "\n".join(out) + "\n"
