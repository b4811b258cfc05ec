"""The single-cell task's verbs: split, train one fold, evaluate, predict.

Each verb reads artefacts from disk and writes its own atomically; none reaches into another's
internals. ``spec`` is one experiment block of the config (DESIGN §4) with its data paths resolved.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from biocls import columns as C
from biocls._errors import BioclsError
from biocls._io import atomic_path, write_json, write_tsv
from biocls.data import check_values, read_cells
from biocls.estimators import CellClassifier
from biocls.evaluate import (
    classification_metrics,
    confusion_tables,
    known_mask,
    multilabel_metrics,
    patient_details,
)
from biocls.splits import check_no_leak, patient_folds, read_splits, validation_patients

__all__ = ["evaluate", "load_cells", "predict", "split", "train_fold"]

log = logging.getLogger(__name__)

HEADS = ("cell_type", "cell_state")
MODEL_KEYS = {"encoder", "hidden", "dropout", "n_modules", "mixer_dim", "mixer_depth", "lr",
              "weight_decay", "batch_size", "max_epochs", "patience", "state_weight", "device",
              "input_dropout", "state_input", "early_stopping", "lr_decay",
              "partial_loss", "gamma_pos", "gamma_neg", "gamma_unann", "priors",
              "prior_threshold", "likelihood_topk"}
# canonical obs columns of the multi-label states named by keys.state_labels: 1.0 / 0.0 / NaN
STATE_PREFIX = "biocls_annotated:"


def load_cells(spec: dict[str, Any]) -> ad.AnnData:
    """Read, validate and QC-filter the experiment's cells (per-patient MAD outliers).

    With ``keys.state_labels`` each named column is checked (1/0/NaN) and copied to
    ``obs["biocls_annotated:<label>"]``; NaN stays unknown.
    """
    from biocls.preprocess import filter_outliers

    keys = {k: v for k, v in spec["keys"].items() if k != "state_labels"}
    adata = read_cells(spec["input"], keys=keys, pseudo_patients=spec.get("pseudo_patients"),
                       seed=int(spec.get("seed", 0)))
    _read_state_labels(adata, spec)
    pp = spec.get("preprocess", {})
    return filter_outliers(adata, nmads=float(pp.get("nmads", 5.0)), groupby="biocls_patient",
                           source=str(spec["input"]))


def state_label_names(spec: dict[str, Any]) -> list[str]:
    """The multi-label state columns named by ``keys.state_labels`` (empty: single-label mode)."""
    return [str(c) for c in (spec.get("keys", {}).get("state_labels") or [])]


def _read_state_labels(adata: ad.AnnData, spec: dict[str, Any]) -> None:
    """Validate ``keys.state_labels`` columns (1/0/NaN) into ``obs["biocls_annotated:<name>"]``.

    Missing values stay unknown (NaN); they are never turned into negatives. Booleans count as
    1/0. Anything else is a one-line error naming the column and the offending value.
    """
    names = state_label_names(spec)
    if not names:
        return
    where = str(spec.get("input", "input"))
    if spec["keys"].get("cell_state"):
        raise BioclsError("keys.cell_state and keys.state_labels are both set", where=where,
                          fix="use cell_state for one state per cell, or state_labels for "
                              "several yes/no/unknown state columns, not both")
    if len(set(names)) != len(names):
        raise BioclsError(f"keys.state_labels lists a column twice: {names}", where=where,
                          fix="name each state column once")
    for name in names:
        if name not in adata.obs.columns:
            have = ", ".join(map(str, list(adata.obs.columns)[:12]))
            raise BioclsError(f"obs has no column '{name}' (keys.state_labels); it has: {have}",
                              where=where, fix="list existing obs columns under state_labels")
        col = adata.obs[name]
        values = pd.to_numeric(col.astype(object).map(
            lambda v: float(v) if isinstance(v, (bool, np.bool_)) else v), errors="coerce")
        bad = (col.notna() & values.isna()) | (values.notna() & ~values.isin([0.0, 1.0]))
        if bad.any():
            raise BioclsError(f"obs column '{name}' (keys.state_labels) holds {col[bad].iloc[0]!r} "
                              f"for {int(bad.sum())} cells", where=where,
                              fix="use 1 (present), 0 (absent) or NaN (not annotated)")
        adata.obs[STATE_PREFIX + name] = values.astype(float).to_numpy()
    known = np.mean([adata.obs[STATE_PREFIX + n].notna().mean() for n in names])
    log.info("%d state labels, %.0f%% of entries annotated", len(names), 100 * known)


def _state_table(o: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    return pd.DataFrame({n: o[STATE_PREFIX + n].to_numpy(dtype=float) for n in names},
                        index=o.index)


def split(spec: dict[str, Any], out: Path) -> None:
    """Write ``splits.tsv``: one row per patient with its fold, stratified by cell type."""
    adata = load_cells(spec)
    folds = patient_folds(adata.obs["biocls_patient"].to_numpy(),
                          adata.obs["biocls_cell_type"].to_numpy(), n_folds=int(spec["folds"]),
                          seed=int(spec.get("seed", 0)), source=spec.get("name", "config"))
    write_tsv(out, folds.rename(columns={"n_items": "n_cells"}))


def _unseen_mask(obs: pd.DataFrame, spec: dict[str, Any]) -> np.ndarray:
    """Cells of the type×state pairs the config holds out of every training set."""
    mask = np.zeros(obs.shape[0], dtype=bool)
    if "biocls_cell_state" not in obs:
        return mask
    for t, s in spec.get("unseen_combinations", []) or []:
        mask |= ((obs["biocls_cell_type"] == str(t))
                 & (obs["biocls_cell_state"] == str(s))).to_numpy()
    return mask


def train_fold(spec: dict[str, Any], *, splits: Path, fold: str, out_dir: Path,
               checkpoints: Path | None = None) -> None:
    """Fit preprocessing and models on one fold's training patients; predict its held-out ones.

    ``fold="final"`` trains on every patient and writes the model folder to ``out_dir``.
    Otherwise ``out_dir/predictions.tsv`` gets the held-out cells' predictions from the factored
    model, the joint-head model and the logistic-regression baseline, all on the same cells.
    """
    from biocls.preprocess import CellPreprocessor

    adata = load_cells(spec)
    obs = adata.obs
    table = read_splits(str(splits))
    fold_of = dict(zip(table["patient"].astype(str), table["fold"].astype(int), strict=True))
    unknown = sorted(set(obs["biocls_patient"]) - set(fold_of))
    if unknown:
        raise BioclsError(f"patients {unknown[:3]} are not in splits.tsv", where=str(splits),
                          fix="re-run `biocls split` (delete the file) after changing the input")
    seed = int(spec.get("seed", 0))
    patient = obs["biocls_patient"].to_numpy()
    final = fold == "final"
    test_p = set() if final else {p for p, k in fold_of.items() if k == int(fold)}
    train_p = sorted(set(patient) - test_p)
    val_p = validation_patients(train_p, fraction=float(spec.get("validation_fraction", 0.2)),
                                seed=seed)
    fit_p = sorted(set(train_p) - set(val_p))
    check_no_leak(train_p, test_p, what=f"fold {fold} (train vs test)")
    check_no_leak(fit_p, val_p, what=f"fold {fold} (fit vs validation)")
    unseen = _unseen_mask(obs, spec)
    fit_m = np.isin(patient, fit_p) & ~unseen
    val_m = np.isin(patient, val_p) & ~unseen
    test_m = np.isin(patient, list(test_p))
    log.info("fold %s: %d fit cells (%d patients), %d validation cells (%d patients), "
             "%d test cells (%d patients), %d cells of unseen combinations withheld from training",
             fold, fit_m.sum(), len(fit_p), val_m.sum(), len(val_p), test_m.sum(), len(test_p),
             int((unseen & ~test_m).sum()))

    # QC already ran per patient in load_cells, so the preprocessor does not filter again
    pre = CellPreprocessor(nmads=None, **{k: v for k, v in spec.get("preprocess", {}).items()
                                          if k in {"n_top_genes", "target_sum", "max_value"}})
    pre.fit(adata[fit_m])
    X_fit, X_val = pre.transform(adata[fit_m]), pre.transform(adata[val_m])
    o_fit, o_val = obs[fit_m], obs[val_m]
    has_state = "biocls_cell_state" in obs and known_mask(obs["biocls_cell_state"]).any()

    state_names = state_label_names(spec)

    def labels(o: pd.DataFrame, key: str) -> Any:
        if key == "cell_state" and state_names:
            return _state_table(o, state_names)
        col = f"biocls_{key}"
        return o[col].to_numpy(dtype=object) if col in o else None

    params = {k: v for k, v in spec.get("model", {}).items() if k in MODEL_KEYS}
    if state_names:
        params["state_mode"] = "multilabel"
    ckpt = Path(checkpoints) if checkpoints else None

    def fit_model(head: str) -> CellClassifier:
        model = CellClassifier(head=head, seed=seed, progress=bool(spec.get("progress", True)),
                               **params)
        return model.fit(X_fit, labels(o_fit, "cell_type"), labels(o_fit, "cell_state"),
                         X_val=X_val, cell_type_val=labels(o_val, "cell_type"),
                         cell_state_val=labels(o_val, "cell_state"),
                         checkpoint_dir=ckpt / head if ckpt else None)

    factored = fit_model("factored")
    info = {"fold": fold, "fit_patients": fit_p, "validation_patients": val_p,
            "test_patients": sorted(test_p), "preprocess": _preprocess_summary(pre, adata),
            "history": factored.history_.as_dict()}
    if final:
        with atomic_path(out_dir) as tmp:
            factored.save(tmp, meta={"spec_name": spec.get("name"), "keys": spec["keys"]})
            pre.save(tmp / "preprocess")
            write_json(tmp / "train_info.json", info)
        return

    X_test, o_test = pre.transform(adata[test_m]), obs[test_m]
    proba = factored.predict_proba(X_test)
    pred = pd.DataFrame({"cell_id": o_test.index.astype(str), "patient": o_test["biocls_patient"],
                         "fold": int(fold), "true_cell_type": o_test["biocls_cell_type"]})
    if has_state:
        pred["true_cell_state"] = o_test["biocls_cell_state"].to_numpy(dtype=object)
    vocab = {"cell_type": factored.types_, "cell_state": factored.states_}
    if state_names:
        _multilabel_columns(pred, o_test, state_names, proba.pop("cell_state"),
                            _logreg_multilabel(X_fit, labels(o_fit, "cell_state"), X_test, seed))
    for key, p in proba.items():
        pred[f"pred_{key}"] = np.asarray(vocab[key])[p.argmax(1)]
        pred[f"{key}_confidence"] = p.max(1)
    if has_state:
        joint = fit_model("joint").predict(X_test)
        for key in HEADS:
            pred[f"joint_pred_{key}"] = joint[key]
    for key in HEADS if has_state else HEADS[:1]:
        pred[f"logreg_pred_{key}"] = _logreg(X_fit, labels(o_fit, key), X_test, seed)
    for key, p in proba.items():
        for j, name in enumerate(vocab[key]):
            pred[f"prob_{key}:{name}"] = p[:, j]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "fold_info.json", info)
    write_tsv(out_dir / "predictions.tsv", pred)


def _preprocess_summary(pre: Any, adata: ad.AnnData) -> dict[str, Any]:
    note = ("raw counts: normalize_total + log1p, then highly variable genes and scaling fitted "
            "on training patients" if pre.raw_counts_ else
            "input is already normalised (X is not integer counts): normalize_total/log1p skipped;"
            " highly variable genes and scaling fitted on training patients")
    qc = adata.uns.get("biocls_qc", {})
    return {"raw_counts": bool(pre.raw_counts_), "n_genes_in": len(pre.genes_),
            "n_hvg": len(pre.hvg_), "note": note,
            "qc_removed": int(sum(qc.get("n_removed", {}).values())) if qc else 0}


def _multilabel_columns(pred: pd.DataFrame, o_test: pd.DataFrame, names: list[str],
                        proba: np.ndarray, logreg: np.ndarray) -> None:
    """Per state label: ``true_state:`` (1/0/empty), ``pred_state:`` (0/1), ``prob_state:``."""
    for j, name in enumerate(names):
        pred[f"true_state:{name}"] = o_test[STATE_PREFIX + name].to_numpy(dtype=float)
        pred[f"pred_state:{name}"] = (proba[:, j] >= 0.5).astype(int)
        pred[f"prob_state:{name}"] = proba[:, j]
        pred[f"logreg_prob_state:{name}"] = logreg[:, j]


def _logreg_multilabel(X: np.ndarray, y: pd.DataFrame, X_test: np.ndarray,
                       seed: int) -> np.ndarray:
    """One logistic regression per state label, fitted on the cells where it is annotated."""
    from sklearn.linear_model import LogisticRegression

    out = np.full((len(X_test), y.shape[1]), np.nan)
    for j, name in enumerate(y.columns):
        ok = y[name].notna().to_numpy()
        yj = y[name].to_numpy()[ok].astype(int)
        if len(np.unique(yj)) < 2:
            out[:, j] = float(yj[0]) if len(yj) else np.nan
            continue
        clf = LogisticRegression(C=1.0, max_iter=300, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(X[ok], yj)
        out[:, j] = clf.predict_proba(X_test)[:, 1]
    return out


def _logreg(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, seed: int) -> np.ndarray:
    """CellTypist's method: multinomial logistic regression on the same features."""
    from sklearn.linear_model import LogisticRegression

    ok = known_mask(y)
    clf = LogisticRegression(C=1.0, max_iter=300, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on tiny folds
        clf.fit(X[ok], np.asarray(y[ok]).astype(str))
    return clf.predict(X_test)


def evaluate(spec: dict[str, Any], *, splits: Path, folds_dir: Path, out_dir: Path,
             certificate: Path | None = None) -> None:
    """Gather out-of-fold predictions into ``predictions.tsv`` and ``metrics.json``.

    With ``certificate`` (the JSON written by ``biocls certify``) its per-head bounds go into
    ``metrics.json["certificate"]``. Besides the metrics of DESIGN §4b, ``metrics.json`` holds
    every number the report shows, so that the renderer only renders: ``confusion``
    (:func:`~biocls.evaluate.confusion_tables`) and ``patient_details``
    (:func:`~biocls.evaluate.patient_details`).
    """
    table = read_splits(str(splits))
    n_folds = int(table["fold"].max()) + 1
    parts = []
    for k in range(n_folds):
        f = folds_dir / str(k) / "predictions.tsv"
        if not f.exists():
            raise BioclsError("missing fold predictions", where=str(f), fix="run `biocls train`")
        parts.append(C.read_predictions(f, required=(C.PATIENT, C.FOLD)))
    pred = pd.concat(parts, ignore_index=True)
    if pred.groupby(C.PATIENT)[C.FOLD].nunique().max() > 1:
        raise RuntimeError("a patient has out-of-fold predictions from two folds")
    heads = [h for h in C.HEADS if C.true_col(h) in pred]
    metrics: dict[str, Any] = {"task": "cells", "experiment": spec.get("name"),
                               "n_patients": int(pred[C.PATIENT].nunique()),
                               "n_cells": int(len(pred)), "folds": n_folds,
                               "baselines": {"joint": {}, "logreg": {}}}
    for h in heads:
        true = pred[C.true_col(h)]
        metrics[h] = classification_metrics(true, pred[C.pred_col(h)])
        for base in ("joint", "logreg"):
            col = C.pred_col(h, base)
            if col in pred:
                metrics["baselines"][base][h] = classification_metrics(true, pred[col])
        metrics[h]["by_fold"] = [
            classification_metrics(g[C.true_col(h)], g[C.pred_col(h)])["macro_f1"]
            for _, g in pred.groupby(C.FOLD)]
    state_names = C.state_labels(pred.columns)
    if state_names:
        metrics["state_labels"] = state_names
        metrics["cell_state"] = _multilabel_metrics(pred, state_names, "factored")
        metrics["baselines"]["logreg"]["cell_state"] = _multilabel_metrics(
            pred, state_names, "logreg")
    per_patient: dict[str, Any] = {}
    for p, g in pred.groupby(C.PATIENT):
        entry: dict[str, Any] = {"fold": int(g[C.FOLD].iloc[0]), "n_cells": int(len(g))}
        for h in heads:
            entry[h] = classification_metrics(g[C.true_col(h)], g[C.pred_col(h)])
        if state_names:
            entry["cell_state"] = _multilabel_metrics(g, state_names, "factored")
        per_patient[str(p)] = entry
    metrics["per_patient"] = per_patient
    metrics["unseen_combinations"] = _unseen_report(pred, spec)
    metrics["confusion"] = confusion_tables(pred)
    metrics["patient_details"] = patient_details(pred)
    info = _read_json(folds_dir / "0" / "fold_info.json")  # every fold preprocesses alike
    if info:
        metrics["preprocess"] = info.get("preprocess", {})
    if spec.get("pseudo_patients"):
        metrics["pseudo_groups"] = (
            f"single donor split into {spec['pseudo_patients']} random pseudo-patients: "
            "folds measure within-donor generalisation, optimistic for new patients")
    if certificate is not None:
        metrics["certificate"] = _read_certificate(Path(certificate))
    write_tsv(out_dir / "predictions.tsv", pred)
    write_json(out_dir / "metrics.json", metrics)


def _multilabel_metrics(pred: pd.DataFrame, names: list[str], model: str) -> dict[str, Any]:
    true = pred[[C.true_state_col(n) for n in names]].to_numpy(dtype=float)
    score = pred[[C.prob_state_col(n, model) for n in names]].to_numpy(dtype=float)
    return multilabel_metrics(true, score, names=names)


def _read_certificate(path: Path) -> dict[str, Any]:
    """The per-head ``{bound, test_error, delta, m}`` entries of ``biocls certify``'s output."""
    import json

    if not path.exists():
        raise BioclsError("certificate file not found", where=str(path),
                          fix="run `biocls certify` first, or drop --certificate")
    data = json.loads(path.read_text())
    heads = data.get("heads") if isinstance(data, dict) else None
    if not isinstance(heads, dict) or not heads:
        raise BioclsError("not a certificate written by `biocls certify` (no 'heads')",
                          where=str(path), fix="regenerate it with `biocls certify`")
    return heads


def _unseen_report(pred: pd.DataFrame, spec: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    if C.true_col(C.CELL_STATE) not in pred:
        return rows
    for t, s in spec.get("unseen_combinations", []) or []:
        m = (pred[C.true_col(C.CELL_TYPE)].astype(str) == str(t)) & \
            (pred[C.true_col(C.CELL_STATE)].astype(str) == str(s))
        g = pred[m]
        row: dict[str, Any] = {"cell_type": str(t), "cell_state": str(s), "n_cells": int(m.sum())}
        for name in C.MODELS:
            if len(g) and C.pred_col(C.CELL_STATE, name) in g:
                both = (g[C.pred_col(C.CELL_TYPE, name)].astype(str) == str(t)) & \
                       (g[C.pred_col(C.CELL_STATE, name)].astype(str) == str(s))
                row[f"{name}_both_correct"] = float(both.mean())
            else:
                row[f"{name}_both_correct"] = float("nan")
        rows.append(row)
    return rows


def _read_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text()) if path.exists() else {}


def predict(model_dir: Path, input: Path, output: Path) -> None:
    """Annotate a new ``.h5ad`` with the final model; writes ``biocls_*`` columns into ``obs``.

    ``biocls_cell_type`` (+ ``_confidence``) always; ``biocls_cell_state`` (+ ``_confidence``) for
    a single-label state model; for a multi-label state model one ``biocls_state:<label>`` column
    per state label holding the predicted probability that the cell carries it.
    """
    from biocls.preprocess import CellPreprocessor

    model_dir, input, output = Path(model_dir), Path(input), Path(output)
    model = CellClassifier.load(model_dir)
    pre = CellPreprocessor.load(model_dir / "preprocess")
    if input.suffix != ".h5ad":
        raise BioclsError(f"expected an .h5ad file, got '{input.suffix or 'no suffix'}'",
                          where=str(input), fix="pass an AnnData .h5ad to --input")
    try:
        adata = ad.read_h5ad(input)
    except Exception as e:
        raise BioclsError(f"not a readable .h5ad ({type(e).__name__})", where=str(input),
                          fix="write it with anndata's write_h5ad") from None
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise BioclsError(f"X has {adata.n_obs} cells and {adata.n_vars} genes",
                          where=f"{input}: X", fix="supply at least one cell and one gene")
    check_values(adata.X, where=f"{input}: X")
    proba = model.predict_proba(pre.transform(adata))
    vocab = {"cell_type": model.types_, "cell_state": model.states_}
    if model.state_mode == "multilabel" and "cell_state" in proba:
        # one probability per state label; a cell may carry several states or none
        for j, name in enumerate(model.states_):
            adata.obs[f"biocls_state:{name}"] = proba["cell_state"][:, j].astype(np.float32)
        del proba["cell_state"]
    for key, p in proba.items():
        adata.obs[f"biocls_{key}"] = pd.Categorical(np.asarray(vocab[key])[p.argmax(1)])
        adata.obs[f"biocls_{key}_confidence"] = p.max(1).astype(np.float32)
    adata.uns["biocls_predict"] = {"params": {"model": str(model_dir)}}
    with atomic_path(output) as tmp:
        adata.write_h5ad(tmp)
