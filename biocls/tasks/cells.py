"""The single-cell task (``task: cells``): load, fit, predict, save and score cells.

Everything patient-grouped (fold planning, writing, gathering) is the runner's
(:mod:`biocls.tasks._runner`); this module only knows cells: QC per patient, preprocessing fitted
on the fit patients, the factored model with its joint and logistic-regression baselines.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd

from biocls import columns as C
from biocls._errors import BioclsError
from biocls._io import atomic_path, write_json
from biocls._provenance import (
    cell_fingerprints,
    model_provenance,
    prediction_provenance,
    read_fingerprints,
    write_fingerprints,
)
from biocls.config import CellExperiment, to_dict
from biocls.data import check_values, read_cells, validate_cells
from biocls.estimators import CellClassifier
from biocls.evaluate import (
    classification_metrics,
    confusion_tables,
    known_mask,
    multilabel_metrics,
    patient_details,
)
from biocls.splits import FoldPlan
from biocls.tasks._protocol import FoldResult

__all__ = ["RATT_FILE", "CellModelBundle", "CellsTask", "fit_cells", "load_cell_model",
           "ratt_cells", "ratt_mask", "unseen_mask", "unseen_report"]

log = logging.getLogger(__name__)

#: canonical obs columns of the multi-label states named by keys.state_labels: 1.0 / 0.0 / NaN
STATE_PREFIX = "biocls_annotated:"
#: a certified model's record of its randomly labelled training cells
RATT_FILE = "ratt.json"


@dataclass
class CellFit:
    """What one fold fitted: the preprocessing, the factored model and the baselines."""

    preprocessor: Any
    factored: CellClassifier
    joint: CellClassifier | None
    X_fit: np.ndarray
    obs_fit: pd.DataFrame
    info: dict[str, Any]
    #: final fits: fingerprints of the cells trained on (see :mod:`biocls._provenance`)
    seen: np.ndarray | None = None
    #: RATT training: which fit cells had random labels, and the labels (``ratt.json``)
    ratt: dict[str, Any] | None = None


@dataclass
class CellModelBundle:
    """A final model as ``biocls predict`` uses it: classifier, preprocessing, where from."""

    classifier: CellClassifier
    preprocessor: Any
    path: str
    exp: CellExperiment | None = None
    info: dict[str, Any] | None = None
    #: fingerprints of the training cells; ``None`` for a model saved before biocls kept them
    seen: np.ndarray | None = None

    def save(self, directory: str | Path) -> None:
        """Write the model folder (as ``results/<exp>/model``), atomically."""
        if self.exp is None:
            raise BioclsError("this model was loaded from a folder; it is saved already",
                              where=self.path, fix="copy the folder instead")
        with atomic_path(directory) as tmp:
            tmp.mkdir(parents=True)
            _write_model(self.exp, self.classifier, self.preprocessor, self.info or {}, tmp,
                         seen=self.seen)
        self.path = str(directory)


class CellsTask:
    """:class:`~biocls.tasks.Task` for single cells."""

    name: ClassVar[str] = "cells"
    items: ClassVar[str] = "cells"
    tables: ClassVar[tuple[str, ...]] = ("predictions",)
    encoded: ClassVar[bool] = False
    patient_labels: ClassVar[bool] = False

    # -- data ------------------------------------------------------------------------------
    def load(self, exp: CellExperiment, *, store: Path | None = None) -> ad.AnnData:
        """Read and validate ``exp.input``, then QC per patient (see :meth:`prepare`)."""
        if not exp.input:
            raise BioclsError("`input` is not set", where=f"experiments.{exp.name}",
                              fix="set input: (or a simulate:/example: block)")
        adata = read_cells(exp.input, keys=self._keys(exp), pseudo_patients=exp.pseudo_patients,
                           seed=exp.seed)
        return self._finish(exp, adata, source=str(exp.input))

    def prepare(self, exp: CellExperiment, adata: ad.AnnData) -> ad.AnnData:
        """The same checks and QC as :meth:`load`, for an AnnData in memory (modified)."""
        validate_cells(adata, keys=self._keys(exp), pseudo_patients=exp.pseudo_patients,
                       seed=exp.seed, source="adata")
        return self._finish(exp, adata, source="adata")

    @staticmethod
    def _keys(exp: CellExperiment) -> dict[str, str | None]:
        return {"cell_type": exp.keys.cell_type, "cell_state": exp.keys.cell_state,
                "patient": exp.keys.patient}

    def _finish(self, exp: CellExperiment, adata: ad.AnnData, *, source: str) -> ad.AnnData:
        from biocls.preprocess import filter_outliers

        _read_state_labels(adata, exp, source)
        return filter_outliers(adata, nmads=exp.preprocess.nmads, groupby="biocls_patient",
                               source=source)

    def patients(self, data: ad.AnnData) -> np.ndarray:
        return data.obs["biocls_patient"].to_numpy()

    def strata(self, data: ad.AnnData) -> np.ndarray:
        return data.obs["biocls_cell_type"].to_numpy()

    # -- fit / predict ---------------------------------------------------------------------
    def fit(self, exp: CellExperiment, data: ad.AnnData, plan: FoldPlan, *,
            checkpoint_dir: Path | None = None) -> CellFit:
        """Preprocessing and models on the fit patients; early stopping on the validation ones.

        A certified experiment's final model is trained the RATT way (see :func:`ratt_cells`).
        """
        randomise = ratt_mask(exp, data, plan) if plan.final and exp.certify else None
        return fit_cells(exp, data, plan, randomise=randomise, checkpoint_dir=checkpoint_dir)

    def predict(self, exp: CellExperiment, fitted: CellFit, data: ad.AnnData,
                plan: FoldPlan) -> FoldResult:
        """The held-out cells' predictions by the factored model, the joint head and the
        logistic regression, side by side (columns: :mod:`biocls.columns`)."""
        test_m = plan.masks(self.patients(data))[2]
        X_test, o_test = fitted.preprocessor.transform(data[test_m]), data.obs[test_m]
        factored, names, seed = fitted.factored, list(exp.keys.state_labels), exp.seed
        has_state = _has_state(data.obs)
        proba = factored.predict_proba(X_test)
        pred = pd.DataFrame({C.CELL_ID: o_test.index.astype(str),
                             C.PATIENT: o_test["biocls_patient"], C.FOLD: int(plan.fold),
                             C.true_col(C.CELL_TYPE): o_test["biocls_cell_type"]})
        if has_state:
            pred[C.true_col(C.CELL_STATE)] = o_test["biocls_cell_state"].to_numpy(dtype=object)
        vocab = {C.CELL_TYPE: factored.types_, C.CELL_STATE: factored.states_}
        if names:
            logreg = _logreg_multilabel(fitted.X_fit, _state_table(fitted.obs_fit, names),
                                        X_test, seed)
            _multilabel_columns(pred, o_test, names, proba.pop(C.CELL_STATE), logreg)
        for head, p in proba.items():
            pred[C.pred_col(head)] = np.asarray(vocab[head])[p.argmax(1)]
            pred[C.confidence_col(head)] = p.max(1)
        if fitted.joint is not None:
            joint = fitted.joint.predict(X_test)
            for head in C.HEADS:
                pred[C.pred_col(head, "joint")] = joint[head]
        for head in C.HEADS if has_state else C.HEADS[:1]:
            pred[C.pred_col(head, "logreg")] = _logreg(
                fitted.X_fit, _labels(fitted.obs_fit, head, names), X_test, seed)
        for head, p in proba.items():
            for j, cls in enumerate(vocab[head]):
                pred[C.prob_col(head, cls)] = p[:, j]
        return FoldResult({"predictions": pred}, dict(fitted.info))

    def save(self, exp: CellExperiment, fitted: CellFit, data: ad.AnnData, plan: FoldPlan,
             directory: Path) -> None:
        """The final model folder: weights + vocabularies, the fitted preprocessing, its info."""
        _write_model(exp, fitted.factored, fitted.preprocessor, {**plan.as_dict(), **fitted.info},
                     directory, seen=fitted.seen)
        if fitted.ratt is not None:
            write_json(directory / RATT_FILE, fitted.ratt)

    # -- metrics ---------------------------------------------------------------------------
    def metrics(self, exp: CellExperiment, tables: dict[str, pd.DataFrame],
                infos: list[dict[str, Any]]) -> dict[str, Any]:
        """``metrics.json`` (DESIGN §4b) plus every number the report shows: ``confusion``
        (:func:`~biocls.evaluate.confusion_tables`) and ``patient_details``."""
        pred = tables["predictions"]
        heads = [h for h in C.HEADS if C.true_col(h) in pred]
        metrics: dict[str, Any] = {"task": "cells", "experiment": exp.name,
                                   "n_patients": int(pred[C.PATIENT].nunique()),
                                   "n_cells": int(len(pred)), "folds": len(infos),
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
        names = C.state_labels(pred.columns)
        if names:
            metrics["state_labels"] = names
            metrics["cell_state"] = _multilabel_metrics(pred, names, "factored")
            metrics["baselines"]["logreg"]["cell_state"] = _multilabel_metrics(pred, names,
                                                                               "logreg")
        per_patient: dict[str, Any] = {}
        for p, g in pred.groupby(C.PATIENT):
            entry: dict[str, Any] = {"fold": int(g[C.FOLD].iloc[0]), "n_cells": int(len(g))}
            for h in heads:
                entry[h] = classification_metrics(g[C.true_col(h)], g[C.pred_col(h)])
            if names:
                entry["cell_state"] = _multilabel_metrics(g, names, "factored")
            per_patient[str(p)] = entry
        metrics["per_patient"] = per_patient
        metrics["unseen_combinations"] = unseen_report(pred, exp)
        metrics["model_path"] = {"setting": exp.model.path,
                                 "linear_penalty": exp.model.linear_penalty,
                                 "by_fold": [i["path"] for i in infos if i.get("path")]}
        metrics["confusion"] = confusion_tables(pred)
        metrics["patient_details"] = patient_details(pred)
        if infos and infos[0].get("preprocess"):  # every fold preprocesses alike
            metrics["preprocess"] = infos[0]["preprocess"]
        if exp.pseudo_patients:
            metrics["pseudo_groups"] = (
                f"single donor split into {exp.pseudo_patients} random pseudo-patients: "
                "folds measure within-donor generalisation, optimistic for new patients")
        return metrics

    def attach(self, exp: CellExperiment, metrics: dict[str, Any], out_dir: Path) -> None:
        """Nothing beyond the gathered predictions (the certificate is merged by the runner)."""

    # -- new data --------------------------------------------------------------------------
    def annotate(self, bundle: CellModelBundle, adata: ad.AnnData, *,
                 source: str = "adata") -> None:
        """Write the model's calls into ``adata.obs`` and where they come from into
        ``adata.uns["biocls_predict"]`` (see :func:`biocls.tl.annotate`); ``source`` names the
        input in errors and warnings."""
        model = bundle.classifier
        check_values(adata.X, where=f"{source}: X")
        proba = model.predict_proba(bundle.preprocessor.transform(adata, source=source))
        vocab = {C.CELL_TYPE: model.types_, C.CELL_STATE: model.states_}
        if model.state_mode == "multilabel" and C.CELL_STATE in proba:
            # one probability per state label; a cell may carry several states or none
            for j, name in enumerate(model.states_):
                adata.obs[f"biocls_state:{name}"] = proba[C.CELL_STATE][:, j].astype(np.float32)
            del proba[C.CELL_STATE]
        for head, p in proba.items():
            adata.obs[f"biocls_{head}"] = pd.Categorical(np.asarray(vocab[head])[p.argmax(1)])
            adata.obs[f"biocls_{head}_confidence"] = p.max(1).astype(np.float32)
        n_seen = _mark_seen(bundle, adata, source)
        if bundle.exp is not None:  # trained in memory: its own config, this biocls
            meta = {"experiment": bundle.exp.name, **model_provenance(bundle.exp)}
        else:
            meta = getattr(model, "meta_", {})
        prov = prediction_provenance(bundle.path, meta, n_seen=n_seen)
        params = {"model": prov["model"], "experiment": prov.get("experiment")}
        adata.uns["biocls_predict"] = {
            "params": {k: v for k, v in params.items() if v is not None}, **prov}

    def predict_file(self, model_dir: Path, input: Path, output: Path) -> None:  # noqa: A002
        """``biocls predict`` on an ``.h5ad``: annotate it and write it atomically."""
        bundle = load_cell_model(model_dir)
        input, output = Path(input), Path(output)
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
        self.annotate(bundle, adata, source=str(input))  # checks X's values first
        with atomic_path(output) as tmp:
            adata.write_h5ad(tmp)


def fit_cells(exp: CellExperiment, data: ad.AnnData, plan: FoldPlan, *,
              randomise: np.ndarray | None = None,
              checkpoint_dir: Path | None = None) -> CellFit:
    """Fit one fold's preprocessing and models; ``randomise`` marks fit cells whose labels are
    replaced by uniformly random ones (RATT training; their expression still shapes the
    preprocessing, as the theorem needs S and S~ treated alike).

    Cells of ``unseen_combinations`` never train. A final fit trains the factored model only; a
    fold also trains the joint head (when there are states).
    """
    from biocls.preprocess import CellPreprocessor

    obs = data.obs
    fit_m, val_m, test_m = plan.masks(obs["biocls_patient"].to_numpy())
    unseen = unseen_mask(obs, exp)
    fit_m, val_m = fit_m & ~unseen, val_m & ~unseen
    log.info("fold %s: %d fit cells, %d validation cells, %d test cells, %d cells of unseen "
             "combinations withheld from training", plan.fold, fit_m.sum(), val_m.sum(),
             test_m.sum(), int((unseen & ~test_m).sum()))
    # QC already ran per patient in load(), so the preprocessor does not filter again
    pp = exp.preprocess
    pre = CellPreprocessor(nmads=None, n_top_genes=pp.n_top_genes, target_sum=pp.target_sum,
                           max_value=pp.max_value, n_pcs=pp.n_pcs, seed=exp.seed)
    pre.fit(data[fit_m])
    X_fit, X_val = pre.transform(data[fit_m]), pre.transform(data[val_m])
    o_fit, o_val = obs[fit_m], obs[val_m]
    names = list(exp.keys.state_labels)
    y_type, y_state = _labels(o_fit, "cell_type", names), _labels(o_fit, "cell_state", names)
    ratt = None
    if randomise is not None:
        if (randomise & ~fit_m).any():
            raise ValueError("randomise marks cells outside the fit patients")
        y_type, y_state, ratt = _random_labels(o_fit, randomise[fit_m], y_type, y_state, exp)

    def fit_model(head: str) -> CellClassifier:
        model = classifier(exp, head=head)
        return model.fit(X_fit, y_type, y_state,
                         X_val=X_val, cell_type_val=_labels(o_val, "cell_type", names),
                         cell_state_val=_labels(o_val, "cell_state", names),
                         checkpoint_dir=checkpoint_dir / head if checkpoint_dir else None)

    factored = fit_model("factored")
    joint = fit_model("joint") if not plan.final and _has_state(obs) else None
    info = {"preprocess": _preprocess_summary(pre, data),
            "history": factored.history_.as_dict(), "path": _path_choice(factored, plan)}
    if ratt is not None:
        info["ratt"] = {k: ratt[k] for k in ("random_fraction", "m", "n")}
    seen = None
    if plan.final:  # every cell whose labels shaped the model: fitting and early stopping
        used = data[fit_m | val_m]
        seen = cell_fingerprints(used.X, used.var_names, pre.hvg_)
    return CellFit(pre, factored, joint, X_fit, o_fit, info, seen, ratt)


def ratt_cells(fit_mask: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The cells RATT trains with random labels: a uniform ``fraction`` of the fit cells, so
    that the clean set S and the random-label set S~ are exchangeable draws of the same
    patients' cells."""
    idx = np.flatnonzero(fit_mask)
    m = int(round(fraction * len(idx)))
    if m < 1 or m >= len(idx):
        raise BioclsError(f"certify.random_fraction {fraction} leaves {m} of {len(idx)} fit "
                          "cells with random labels", where="certify.random_fraction",
                          fix="use a fraction that gives at least one cell on each side")
    out = np.zeros(len(fit_mask), dtype=bool)
    out[np.random.default_rng([seed, 7_771]).choice(idx, size=m, replace=False)] = True
    return out


def ratt_mask(exp: CellExperiment, data: ad.AnnData, plan: FoldPlan) -> np.ndarray:
    """:func:`ratt_cells` for a plan: ``certify.random_fraction`` of the fit patients' cells that
    may train (cells of ``unseen_combinations`` never do)."""
    assert exp.certify is not None
    fit_m = plan.masks(data.obs["biocls_patient"].to_numpy())[0] & ~unseen_mask(data.obs, exp)
    return ratt_cells(fit_m, exp.certify.random_fraction, exp.seed)


def _random_labels(o_fit: pd.DataFrame, rand: np.ndarray, y_type: Any, y_state: Any,
                   exp: CellExperiment) -> tuple[Any, Any, dict[str, Any]]:
    """Replace the labels of the ``rand`` cells by uniform draws over each head's classes (the
    classes of the clean cells). Multi-label states are not certified: those cells' state labels
    become unknown."""
    if not o_fit.index.is_unique:
        raise BioclsError("obs_names are not unique, so the randomly labelled cells cannot be "
                          "recorded", where=f"experiments.{exp.name}.input",
                          fix="run adata.obs_names_make_unique() and write the file again")
    rng = np.random.default_rng([exp.seed, 7_772])
    record: dict[str, Any] = {"random_fraction": exp.certify.random_fraction if exp.certify
                              else None, "m": int(rand.sum()), "n": int((~rand).sum()),
                              "cells": o_fit.index[rand].astype(str).tolist(),
                              "classes": {}, "labels": {}}
    heads = {C.CELL_TYPE: y_type}
    if y_state is not None and not isinstance(y_state, pd.DataFrame):
        heads[C.CELL_STATE] = y_state
    elif isinstance(y_state, pd.DataFrame):
        y_state = y_state.copy()
        y_state.iloc[np.flatnonzero(rand)] = np.nan
    out = {}
    for head, y in heads.items():
        y = np.asarray(y, dtype=object).copy()
        classes = sorted({str(v) for v in y[~rand][known_mask(y[~rand])]})
        if len(classes) < 2:
            out[head] = y
            continue
        draw = np.asarray(classes, dtype=object)[rng.integers(0, len(classes), int(rand.sum()))]
        y[rand] = draw
        out[head] = y
        record["classes"][head] = classes
        record["labels"][head] = draw.astype(str).tolist()
    return out[C.CELL_TYPE], out.get(C.CELL_STATE, y_state), record


def classifier(exp: CellExperiment, *, head: str = "factored") -> CellClassifier:
    """The estimator an experiment's ``model:`` block describes (one place for all callers)."""
    params = dict(to_dict(exp.model))
    params["hidden"] = tuple(params["hidden"])
    if exp.keys.state_labels:
        params["state_mode"] = "multilabel"
    return CellClassifier(head=head, seed=exp.seed, progress=exp.progress, **params)


def _write_model(exp: CellExperiment, model: CellClassifier, pre: Any, info: dict[str, Any],
                 directory: Path, *, seen: np.ndarray | None = None) -> None:
    """The final model folder: weights + vocabularies (with the biocls version and the
    experiment's ``config_hash`` in the metadata), the fitted preprocessing, its info and the
    fingerprints of the training cells."""
    model.save(directory, meta={"spec_name": exp.name, "keys": to_dict(exp.keys),
                                **model_provenance(exp)})
    pre.save(directory / "preprocess")
    write_json(directory / "train_info.json", info)
    if seen is not None:
        write_fingerprints(directory, seen)


def load_cell_model(model_dir: str | Path) -> CellModelBundle:
    """A final model folder (``results/<exp>/model``) with its fitted preprocessing."""
    from biocls.preprocess import CellPreprocessor

    model_dir = Path(model_dir)
    return CellModelBundle(CellClassifier.load(model_dir),
                           CellPreprocessor.load(model_dir / "preprocess"), str(model_dir),
                           seen=read_fingerprints(model_dir))


# -- helpers ---------------------------------------------------------------------------------

def _mark_seen(bundle: CellModelBundle, adata: ad.AnnData, source: str) -> int | None:
    """``obs["biocls_seen_in_training"]`` and one warning for the input cells the model was
    trained on (same values on its genes); ``None`` when the model keeps no record."""
    if bundle.seen is None:
        return None
    genes = bundle.preprocessor.hvg_
    seen = np.isin(cell_fingerprints(adata.X, adata.var_names, genes), bundle.seen)
    adata.obs["biocls_seen_in_training"] = seen
    n = int(seen.sum())
    if n:
        warnings.warn(
            f"{source}: {n} of {adata.n_obs} input cells were in this model's training set (same "
            f"values on its {len(genes)} genes), so their calls say nothing about accuracy on new "
            "cells; obs['biocls_seen_in_training'] marks them, and the out-of-fold "
            "predictions.tsv holds held-out calls", UserWarning, stacklevel=3)
    return n


def _path_choice(model: CellClassifier, plan: FoldPlan) -> dict[str, Any]:
    """What fed the heads in this fold; for ``path: ensemble`` the linear path's weight and each
    candidate weight's error on the fold's validation patients. Per head, the linear net's
    penalty and C as fitted (and each candidate penalty's validation error where the patients
    chose); ``None`` where no linear net was fitted (a deep-only fit, e.g. multi-label states)."""
    return {"fold": plan.fold, "chosen": model.chosen_,
            "linear_weight": getattr(model, "linear_weight_", None),
            "validation_error": getattr(model, "mix_errors_", None),
            "linear_penalty": getattr(model, "linear_penalty_", None),
            "linear_c": getattr(model, "linear_c_", None),
            "linear_penalty_error": getattr(model, "linear_errors_", None),
            "linear_refitted": bool(getattr(model, "linear_refitted_", False)),
            "genes_used": linear_genes_used(model)}


def linear_genes_used(model: CellClassifier) -> dict[str, int] | None:
    """How many genes each head of the linear path reads (a non-zero weight for some class):
    with an L1 penalty most are exactly 0, and the few left are the ones a user can check."""
    net = getattr(model, "net_", None)
    linear = getattr(net, "linear", None) if getattr(model, "path", None) == "ensemble" else net
    if linear is None or model.path == "deep" or model.head != "factored":
        return None
    heads = {"cell_type": linear.head.type_head, "cell_state": linear.head.state_head}
    return {h: int((layer.weight.detach() != 0).any(0).sum())
            for h, layer in heads.items() if layer is not None}


def _has_state(obs: pd.DataFrame) -> bool:
    return "biocls_cell_state" in obs and bool(known_mask(obs["biocls_cell_state"]).any())


def _labels(o: pd.DataFrame, head: str, state_names: list[str]) -> Any:
    if head == C.CELL_STATE and state_names:
        return _state_table(o, state_names)
    col = f"biocls_{head}"
    return o[col].to_numpy(dtype=object) if col in o else None


def _read_state_labels(adata: ad.AnnData, exp: CellExperiment, where: str) -> None:
    """Validate ``keys.state_labels`` columns (1/0/NaN) into ``obs["biocls_annotated:<name>"]``.

    Missing values stay unknown (NaN); they are never turned into negatives. Booleans count as
    1/0. Anything else is a one-line error naming the column and the offending value.
    """
    names = list(exp.keys.state_labels)
    if not names:
        return
    if exp.keys.cell_state:
        raise BioclsError("keys.cell_state and keys.state_labels are both set", where=where,
                          fix="use cell_state for one state per cell, or state_labels for "
                              "several yes/no/unknown state columns, not both")
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


def unseen_mask(obs: pd.DataFrame, exp: Any) -> np.ndarray:
    """Cells (or images) of the type×state pairs the config holds out of every training set."""
    mask = np.zeros(obs.shape[0], dtype=bool)
    if "biocls_cell_state" not in obs:
        return mask
    for t, s in exp.unseen_combinations:
        mask |= ((obs["biocls_cell_type"] == str(t))
                 & (obs["biocls_cell_state"] == str(s))).to_numpy()
    return mask


def _preprocess_summary(pre: Any, adata: ad.AnnData) -> dict[str, Any]:
    note = ("raw counts: normalize_total + log1p, then highly variable genes and scaling fitted "
            "on training patients" if pre.raw_counts_ else
            "input is already normalised (X is not integer counts): normalize_total/log1p skipped;"
            " highly variable genes and scaling fitted on training patients")
    qc = adata.uns.get("biocls_qc", {})
    removed = {str(k): int(v) for k, v in sorted((qc.get("n_removed") or {}).items())}
    if pre.components_ is not None:
        note += f"; then {len(pre.components_)} principal components of the scaled genes, " \
                "fitted on the same cells"
    return {"raw_counts": bool(pre.raw_counts_), "n_genes_in": len(pre.genes_),
            "n_hvg": len(pre.hvg_), "note": note,
            "n_pcs": None if pre.components_ is None else len(pre.components_),
            "qc_removed": int(sum(qc.get("n_removed", {}).values())) if qc else 0,
            # per patient, where QC ran (raw counts); the report's patient pages show it
            "qc_removed_by_patient": removed}


def _multilabel_columns(pred: pd.DataFrame, o_test: pd.DataFrame, names: list[str],
                        proba: np.ndarray, logreg: np.ndarray) -> None:
    """Per state label: true (1/0/empty), predicted (0/1) and probabilities."""
    for j, name in enumerate(names):
        pred[C.true_state_col(name)] = o_test[STATE_PREFIX + name].to_numpy(dtype=float)
        pred[C.pred_state_col(name)] = (proba[:, j] >= 0.5).astype(int)
        pred[C.prob_state_col(name)] = proba[:, j]
        pred[C.prob_state_col(name, "logreg")] = logreg[:, j]


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


def _multilabel_metrics(pred: pd.DataFrame, names: list[str], model: str) -> dict[str, Any]:
    true = pred[[C.true_state_col(n) for n in names]].to_numpy(dtype=float)
    score = pred[[C.prob_state_col(n, model) for n in names]].to_numpy(dtype=float)
    return multilabel_metrics(true, score, names=names)


def unseen_report(pred: pd.DataFrame, exp: Any) -> list[dict[str, Any]]:
    """Per held-out type×state pair: the fraction of its cells each model gets both right."""
    rows: list[dict[str, Any]] = []
    if C.true_col(C.CELL_STATE) not in pred:
        return rows
    for t, s in exp.unseen_combinations:
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
