"""One splitter, one fold runner and one evaluator for every task, on disk and in memory.

The CLI verbs (``split``, ``train``, ``evaluate``) are these functions over files; the Python API
(:func:`biocls.tl.cross_validate`) is :func:`cross_validate` over data in memory. Both run the
same :func:`fit_fold` and :func:`gather`, so the notebook's out-of-fold metrics are the
workflow's.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from biocls._errors import BioclsError
from biocls._io import atomic_path, write_json, write_tsv
from biocls.columns import FOLD, PATIENT, read_predictions
from biocls.config import Experiment
from biocls.splits import FoldPlan, patient_folds, plan_fold, read_splits
from biocls.tasks._protocol import FoldResult, Task

__all__ = ["CVResult", "cross_validate", "evaluate", "fit_fold", "gather", "make_splits",
           "final_hold_out", "run_fold", "split", "train"]

log = logging.getLogger(__name__)

FOLD_INFO = "fold_info.json"


@dataclass
class CVResult:
    """Out-of-fold results of a patient-grouped cross-validation."""

    predictions: pd.DataFrame
    metrics: dict[str, Any]
    splits: pd.DataFrame
    tables: dict[str, pd.DataFrame]


def make_splits(task: Task, exp: Experiment, data: Any) -> pd.DataFrame:
    """``splits.tsv``'s rows: every patient's fold, stratified by the task's labels."""
    patients = np.asarray(task.patients(data)).astype(str)
    strata = np.asarray(task.strata(data))
    folds = patient_folds(patients, strata, n_folds=exp.folds, seed=exp.seed,
                          source=f"experiments.{exp.name}")
    folds = folds.rename(columns={"n_items": f"n_{task.items}"})
    if task.patient_labels:
        per = pd.Series(strata).groupby(patients).agg(
            lambda s: s.iat[0] if s.nunique() == 1 else "mixed")
        folds["label"] = folds["patient"].map(per)
    return folds


def split(task: Task, exp: Experiment, out: Path) -> None:
    """Write ``splits.tsv``: one row per patient with its fold."""
    write_tsv(out, make_splits(task, exp, task.load(exp)))


def fit_fold(task: Task, exp: Experiment, data: Any, plan: FoldPlan, *,
             checkpoint_dir: Path | None = None) -> tuple[Any, FoldResult | None]:
    """Fit one fold and, unless it is the final fit, predict its held-out patients."""
    from biocls.train import set_threads

    log.info("fold %s: %d fit, %d validation, %d test patients", plan.fold, len(plan.fit),
             len(plan.validation), len(plan.test))
    set_threads(getattr(exp.model, "threads", None))  # an explicit model.threads wins
    fitted = task.fit(exp, data, plan, checkpoint_dir=checkpoint_dir)
    if plan.final:
        return fitted, None
    result = task.predict(exp, fitted, data, plan)
    result.info = {**plan.as_dict(), **result.info}
    return fitted, result


def train(task: Task, exp: Experiment, *, splits: Path, fold: str, out_dir: Path,
          store: Path | None = None, checkpoint_dir: Path | None = None) -> None:
    """``biocls train``: one fold's tables into ``out_dir``, or (``fold="final"``) the model."""
    data = task.load(exp, store=store)
    try:
        plan = plan_fold(read_splits(str(splits)), fold, task.patients(data),
                         validation_fraction=exp.validation_fraction, seed=exp.seed,
                         source=str(splits), hold_out=final_hold_out(exp, fold))
        run_fold(task, exp, data, plan, out_dir=Path(out_dir), checkpoint_dir=checkpoint_dir)
    finally:
        close = getattr(data, "close", None)
        if close is not None:
            close()


def final_hold_out(exp: Experiment, fold: str | int) -> int | None:
    """The fold a certified final model never sees (``certify.fold``); ``None`` otherwise."""
    cert = getattr(exp, "certify", None)
    return cert.fold if cert is not None and str(fold) == "final" else None


def run_fold(task: Task, exp: Experiment, data: Any, plan: FoldPlan, *, out_dir: Path,
             checkpoint_dir: Path | None = None) -> None:
    """Fit, then write the fold's tables and ``fold_info.json`` (or the model) atomically."""
    fitted, result = fit_fold(task, exp, data, plan, checkpoint_dir=checkpoint_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        if result is None:
            task.save(exp, fitted, data, plan, tmp)
        else:
            for name in task.tables:
                write_tsv(tmp / f"{name}.tsv", result.tables[name])
            write_json(tmp / FOLD_INFO, result.info)
    if checkpoint_dir is not None:
        _remove_checkpoints(Path(checkpoint_dir))


def _remove_checkpoints(directory: Path) -> None:
    """Once the outputs are written the epoch checkpoints are spent; remove only those files
    (and the folders they leave empty), never anything else a user keeps there."""
    from biocls.train import CHECKPOINT

    if not directory.is_dir():
        return
    for f in directory.rglob(CHECKPOINT):
        f.unlink(missing_ok=True)
    for d in sorted((p for p in directory.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()
    with contextlib.suppress(OSError):
        directory.rmdir()


def gather(task: Task, exp: Experiment, results: Sequence[FoldResult]) -> tuple[
        dict[str, pd.DataFrame], dict[str, Any]]:
    """Concatenate the folds' tables and compute ``metrics.json`` (no patient in two folds)."""
    tables = {name: pd.concat([r.tables[name] for r in results], ignore_index=True)
              for name in task.tables}
    pred = tables["predictions"]
    if len(pred) and pred.groupby(PATIENT)[FOLD].nunique().max() > 1:
        raise RuntimeError("a patient has out-of-fold predictions from two folds")
    return tables, task.metrics(exp, tables, [r.info for r in results])


def evaluate(task: Task, exp: Experiment, *, splits: Path, folds_dir: Path, out_dir: Path,
             certificate: Path | None = None) -> None:
    """``biocls evaluate``: gather the fold folders into ``predictions.tsv`` (and the task's
    other tables) and ``metrics.json``; a certificate from ``biocls certify`` is merged in."""
    folds = sorted(int(k) for k in read_splits(str(splits))["fold"].unique())
    results = []
    for k in folds:
        d = Path(folds_dir) / str(k)
        tables = {}
        for name in task.tables:
            if not (d / f"{name}.tsv").exists():
                raise BioclsError(f"fold {k} has no {name}.tsv", where=str(d),
                                  fix=f"run `biocls train --fold {k}` first")
            # every table names its patient; only predictions carry the fold
            tables[name] = read_predictions(
                d / f"{name}.tsv",
                required=(PATIENT, FOLD) if name == "predictions" else (PATIENT,))
        info = json.loads((d / FOLD_INFO).read_text()) if (d / FOLD_INFO).exists() else {}
        results.append(FoldResult(tables, info))
    tables, metrics = gather(task, exp, results)
    if certificate is not None:
        metrics["certificate"] = read_certificate(Path(certificate))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task.attach(exp, metrics, out_dir)
    for name, table in tables.items():
        write_tsv(out_dir / f"{name}.tsv", table)
    write_json(out_dir / "metrics.json", metrics)


def read_certificate(path: Path) -> dict[str, Any]:
    """``biocls certify``'s output as written: per-head figures under ``heads``, the model's
    signature, δ and its split, the held-out patients and the assumptions."""
    if not path.exists():
        raise BioclsError("certificate file not found", where=str(path),
                          fix="run `biocls certify` first, or drop --certificate")
    data = json.loads(path.read_text())
    heads = data.get("heads") if isinstance(data, dict) else None
    if not isinstance(heads, dict) or not heads:
        raise BioclsError("not a certificate written by `biocls certify` (no 'heads')",
                          where=str(path), fix="regenerate it with `biocls certify`")
    return data


def cross_validate(task: Task, exp: Experiment, data: Any, *,
                   splits: pd.DataFrame | None = None) -> CVResult:
    """Patient-grouped cross-validation in memory: the workflow's folds, fits and metrics."""
    table = make_splits(task, exp, data) if splits is None else splits
    results = []
    for k in sorted(table["fold"].unique()):
        plan = plan_fold(table, int(k), task.patients(data),
                         validation_fraction=exp.validation_fraction, seed=exp.seed,
                         source="splits")
        _, result = fit_fold(task, exp, data, plan)
        assert result is not None
        # the same round trip as the files the workflow writes, so the numbers agree exactly
        results.append(FoldResult({n: _roundtrip(t) for n, t in result.tables.items()},
                                  json.loads(json.dumps(result.info, default=_plain))))
    tables, metrics = gather(task, exp, results)
    return CVResult(tables["predictions"], metrics, table, tables)


def _roundtrip(frame: pd.DataFrame) -> pd.DataFrame:
    import io

    buf = io.StringIO()
    frame.to_csv(buf, sep="\t", index=False)
    buf.seek(0)
    return read_predictions(buf, required=(PATIENT,))


def _plain(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(type(obj).__name__)
