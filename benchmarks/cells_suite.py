"""Development suite for the cells task: one table over many cohorts, models side by side.

    nice .venv/bin/python benchmarks/cells_suite.py                       # evaluation cohorts
    nice .venv/bin/python benchmarks/cells_suite.py --group tuning        # choose defaults here
    nice .venv/bin/python benchmarks/cells_suite.py --group tuning --model '{"input_dropout": 0.2}'
    nice .venv/bin/python benchmarks/cells_suite.py --cohorts eval_sim_rare,wu2020 --no-peers
    nice .venv/bin/python benchmarks/cells_suite.py --quick --group all   # smoke check, ~minutes

For each cohort it prints, per model (the factored heads, the joint type×state head, logistic
regression, and CellTypist when the optional ``peers`` extra is installed), the macro-F1 of the
type and the state head in patient-grouped cross-validation (mean ± sd over folds) and on new
donors, and the fraction of cells of the withheld type×state pairs with both labels right
(mean over pairs; out of fold, and on new donors). Then, per group, the mean of each column over
its cohorts and, for the factored model, its difference to logistic regression in every cohort.

Cohorts come in two groups. Defaults are chosen on the *tuning* cohorts only; the *evaluation*
cohorts are reported and no choice looks at them. Their data seeds all differ.

- Simulated cohorts (``biocls.simulate.simulate_cells`` and the Splatter-style
  ``simulate_cells_splatter``): 16 donors; the last 4 (P13-P16) are new donors, never in
  cross-validation or training; cross-validation runs on the other 12. Two (type, state) pairs
  are withheld from every training set (``unseen_combinations``), one of them on a look-alike
  type. Difficulties: look-alike types, weak and strong donor effects, donors missing some types
  (``simulate_cells`` cannot drop a type from a donor, so those cells are removed after
  simulating), a rare state (its cells subsampled to ~3% of the cohort).
- ``pbmc68k``: scanpy's pbmc68k_reduced exactly as ``configs/pbmc68k.yaml`` runs it (one donor
  split into pseudo-patients: within-donor numbers, optimistic); no new donors.
- ``wu2020``: 200 tumour-infiltrating T cells of 14 patients (Wu et al., Nature 2020; the scirpy
  test subsample, ``--wu2020 PATH``, not part of biocls); type = CD4 / CD8 / Treg from
  ``cluster_orig``, state = tissue (``source``: Tumor / NAT / Blood); no new donors.

Everything biocls trains comes from the workflow's own code: the experiment is parsed by the
config loader, the data checked and QC-filtered by ``CellsTask.prepare``, cross-validation is
``biocls.tasks.cross_validate`` (what ``biocls.tl.cross_validate`` runs) and the new-donor fit is
one ``biocls.tasks.fit_fold`` on the plan ``plan_fold`` makes (new donors tested, the others
trained on, validation donors drawn from them by the workflow's rule). CellTypist
(``celltypist.train(use_SGD=True, feature_selection=True)``; its default solver fails with
current scikit-learn) trains one model per head on the same cells as the logistic regression
(each fold's fit donors, withheld pairs removed), on log1p of counts normalised to 10,000 per
cell over all genes, and predicts without majority voting. Not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import yaml

from biocls import columns as C
from biocls.config import CellExperiment, parse_experiment
from biocls.evaluate import classification_metrics, known_mask
from biocls.preprocess import is_raw_counts
from biocls.simulate import simulate_cells
from biocls.splits import FoldPlan, plan_fold
from biocls.tasks import cross_validate, fit_fold
from biocls.tasks.cells import CellsTask, unseen_mask

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("tuning", "evaluation")
MODELS = ("factored", "joint", "logreg", "celltypist")
#: the table's columns after the model name: key, header, width
COLUMNS = (("type_cv", "type F1 CV", 13), ("state_cv", "state F1 CV", 13),
           ("type_new", "type new", 8), ("state_new", "state new", 9),
           ("unseen_cv", "unseen CV", 9), ("unseen_new", "unseen new", 10))
#: simulated cohorts: donors, cells per donor and genes; the last N_NEW donors are new donors
FULL = {"n_patients": 16, "cells_per_patient": 350, "n_genes": 2000}
QUICK = {"n_patients": 8, "cells_per_patient": 120, "n_genes": 500}
N_NEW = {16: 4, 8: 2}
QUICK_FOLDS, QUICK_EPOCHS, QUICK_HVG = 2, 5, 300
#: CellTypist's settings (its default solver fails with current scikit-learn; SGD does not)
CELLTYPIST = {"use_SGD": True, "feature_selection": True, "top_genes": 300,
              "check_expression": False, "n_jobs": 1}
NOT_OPTIONS = ("task", "simulate", "example", "input", "certify")
#: Wu et al. 2020 T-cell subtypes → coarse types. 3.1-MT (a high-mitochondrial cluster of no
#: clear lineage, 9 cells) is left out; every 8.x cluster is CD8, 4.6a/b are the Tregs.
WU_TYPES = {
    "4.1-Trm": "CD4", "4.2-RPL32": "CD4", "4.3-TCF7": "CD4", "4.4-FOS": "CD4",
    "4.5-IL6ST": "CD4", "4.6a-Treg": "Treg", "4.6b-Treg": "Treg",
    "8.1-Teff": "CD8", "8.2-Tem": "CD8", "8.3a-Trm": "CD8", "8.3b-Trm": "CD8",
    "8.3c-Trm": "CD8", "8.4-Chrom": "CD8", "8.5-Mitosis": "CD8", "8.6-KLRB1": "CD8",
}  # fmt: skip


class Skip(Exception):  # noqa: N818 (a reason, not an error)
    """A cohort that cannot run here (missing generator or file); the message says why."""


@dataclass
class Data:
    """What a cohort function returns: cells and the experiment options to run them with."""

    adata: ad.AnnData
    keys: dict[str, str | None]
    unseen: list[list[str]]
    preprocess: dict[str, Any]
    model: dict[str, Any]
    folds: int
    describe: str
    #: donors kept out of cross-validation and training (empty: no new-donor split)
    new_donors: list[str] = field(default_factory=list)
    #: other experiment keys (pseudo_patients, seed)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Cohort:
    group: str
    load: Callable[[argparse.Namespace], Data]


# -- cohorts ---------------------------------------------------------------------------------
def _size(args: argparse.Namespace) -> dict[str, int]:
    size = dict(QUICK if args.quick else FULL)
    if getattr(args, "cells_per_patient", None):
        size["cells_per_patient"] = args.cells_per_patient
    return size


def _new_donors(adata: ad.AnnData) -> list[str]:
    donors = sorted(adata.obs["patient"].astype(str).unique())
    return donors[-N_NEW[len(donors)]:]


def _lognorm(X: Any) -> np.ndarray:
    """log1p of counts normalised to 10,000 per cell, dense (for small look-ups only)."""
    X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)
    return np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1.0) * 1e4)


def sim_cohort(seed: int, unseen: list[list[str]], *, n_hard_pairs: int, type_effect: float,
               batch_sd: float, drop_types: dict[str, list[int]] | None = None,
               rare_state: str | None = None) -> Callable[[argparse.Namespace], Data]:
    """A ``simulate_cells`` cohort (6 types, 4 states). ``drop_types`` removes a type's cells
    from the donors at those positions (sorted donors; -1 is the last, a new donor), as the
    simulator always draws every type; ``rare_state`` keeps ~3% of the cohort in that state."""
    def load(args: argparse.Namespace) -> Data:
        size = _size(args)
        sim = {**size, "n_types": 6, "n_hard_pairs": n_hard_pairs, "type_effect": type_effect,
               "batch_sd": batch_sd, "seed": seed}
        adata = simulate_cells(**sim)
        text = [f"simulate_cells({', '.join(f'{k}={v}' for k, v in sim.items())})"]
        donors = sorted(adata.obs["patient"].astype(str).unique())
        if drop_types:
            obs = adata.obs
            drop = np.zeros(adata.n_obs, dtype=bool)
            for t, where in drop_types.items():
                gone = [donors[i] for i in where]
                drop |= ((obs["cell_type"].astype(str) == t)
                         & obs["patient"].astype(str).isin(gone)).to_numpy()
                text.append(f"no {t} in {','.join(gone)}")
            adata = adata[~drop].copy()
        if rare_state:
            is_s = (adata.obs["cell_state"].astype(str) == rare_state).to_numpy()
            n_s, n = int(is_s.sum()), adata.n_obs
            keep_n = int(round(0.03 * (n - n_s) / 0.97))
            rng = np.random.default_rng(seed)
            keep = np.ones(n, dtype=bool)
            keep[rng.choice(np.flatnonzero(is_s), size=n_s - min(keep_n, n_s), replace=False)] = 0
            adata = adata[keep].copy()
            text.append(f"{rare_state} subsampled to {keep_n / adata.n_obs:.0%} of cells")
        return Data(adata, {"cell_type": "cell_type", "cell_state": "cell_state",
                            "patient": "patient"}, unseen,
                    {"n_top_genes": QUICK_HVG if args.quick else 1000}, {},
                    QUICK_FOLDS if args.quick else 4, "; ".join(text), _new_donors(adata))
    return load


def pick_unseen(adata: ad.AnnData) -> list[list[str]]:
    """Two (type, state) pairs to withhold, by one fixed rule, for a generator whose look-alike
    types the suite does not know: the first on the type of the two most correlated type
    centroids (log-normalised), with the second most frequent state; the second on the most
    frequent type outside that pair, with the third most frequent state."""
    obs = adata.obs
    types = sorted(obs["cell_type"].astype(str).unique())
    labels = obs["cell_type"].astype(str).to_numpy()
    X = _lognorm(adata.X)
    corr = np.corrcoef(np.stack([X[labels == t].mean(0) for t in types]))
    np.fill_diagonal(corr, -np.inf)
    i, j = np.unravel_index(np.argmax(corr), corr.shape)
    counts = obs["cell_type"].astype(str).value_counts()
    look = types[i] if counts[types[i]] >= counts[types[j]] else types[j]
    other = next(t for t in counts.index if t not in (types[i], types[j]))
    states = list(obs["cell_state"].astype(str).value_counts().index)
    return [[look, states[1]], [other, states[min(2, len(states) - 1)]]]


def splatter_cohort(seed: int, n_types: int) -> Callable[[argparse.Namespace], Data]:
    """A ``simulate_cells_splatter`` cohort with the generator's own defaults otherwise."""
    def load(args: argparse.Namespace) -> Data:
        try:
            from biocls.simulate import simulate_cells_splatter
        except ImportError:
            raise Skip("biocls.simulate.simulate_cells_splatter is not available") from None
        sim = {**_size(args), "n_types": n_types, "seed": seed}
        adata = simulate_cells_splatter(**sim)
        unseen = pick_unseen(adata)
        return Data(adata, {"cell_type": "cell_type", "cell_state": "cell_state",
                            "patient": "patient"}, unseen,
                    {"n_top_genes": QUICK_HVG if args.quick else 1000}, {},
                    QUICK_FOLDS if args.quick else 4,
                    f"simulate_cells_splatter({', '.join(f'{k}={v}' for k, v in sim.items())})"
                    "; withheld pairs picked from the data (see pick_unseen)",
                    _new_donors(adata))
    return load


def pbmc68k(args: argparse.Namespace) -> Data:
    """configs/pbmc68k.yaml's experiment, in memory."""
    from biocls.data import example_dataset

    spec = yaml.safe_load((ROOT / "configs" / "pbmc68k.yaml").read_text())
    spec = dict(spec["experiments"]["pbmc68k"])
    block = {k: v for k, v in spec.items() if k not in NOT_OPTIONS}
    return Data(example_dataset(spec["example"]), dict(block.pop("keys")),
                [list(p) for p in block.pop("unseen_combinations", [])],
                dict(block.pop("preprocess", {})), dict(block.pop("model", {})),
                QUICK_FOLDS if args.quick else int(block.pop("folds")),
                "pbmc68k_reduced as configs/pbmc68k.yaml (one donor, "
                f"{spec['pseudo_patients']} pseudo-patients: within-donor, optimistic)",
                extra={k: v for k, v in block.items() if k != "folds"})


def wu2020(args: argparse.Namespace) -> Data:
    """Wu et al. 2020 T cells: coarse type from cluster_orig, state = tissue of origin."""
    path = Path(args.wu2020) if args.wu2020 else None
    if path is None or not path.exists():
        raise Skip(f"{path or '../shared/data/wu2020_200.h5ad'} not found (give --wu2020 PATH)")
    adata = ad.read_h5ad(path)
    coarse = adata.obs["cluster_orig"].astype(str).map(WU_TYPES)
    adata = adata[coarse.notna().to_numpy()].copy()
    adata.obs["coarse_type"] = coarse[coarse.notna()].astype(str).to_numpy()
    return Data(adata, {"cell_type": "coarse_type", "cell_state": "source", "patient": "patient"},
                [], {"n_top_genes": 1000}, {}, QUICK_FOLDS if args.quick else 4,
                f"{path.name}: {adata.n_obs} T cells, {adata.obs['patient'].nunique()} patients; "
                "type CD4/CD8/Treg from cluster_orig (3.1-MT left out), state = source")


#: every cohort; defaults are chosen on `tuning` only, `evaluation` is reported
COHORTS: dict[str, Cohort] = {
    "tune_sim_lookalike": Cohort("tuning", sim_cohort(
        101, [["T_CD8", "activated"], ["NK", "damaged"]],
        n_hard_pairs=3, type_effect=0.8, batch_sd=0.3)),
    "tune_sim_donor": Cohort("tuning", sim_cohort(
        102, [["monocyte_nonclassical", "damaged"], ["B", "activated"]],
        n_hard_pairs=2, type_effect=1.0, batch_sd=0.6, drop_types={"NK": [2, 6]})),
    "tune_splatter": Cohort("tuning", splatter_cohort(103, n_types=6)),
    "eval_sim_weak_donor": Cohort("evaluation", sim_cohort(
        201, [["T_CD4", "malignant"], ["B", "activated"]],
        n_hard_pairs=2, type_effect=0.7, batch_sd=0.1)),
    "eval_sim_missing_types": Cohort("evaluation", sim_cohort(
        202, [["T_CD8", "damaged"], ["NK", "activated"]],
        n_hard_pairs=2, type_effect=1.0, batch_sd=0.6,
        drop_types={"B": [1, 4, -1], "monocyte_classical": [3, 5]})),
    "eval_sim_rare": Cohort("evaluation", sim_cohort(
        203, [["monocyte_classical", "activated"], ["NK", "damaged"]],
        n_hard_pairs=3, type_effect=0.9, batch_sd=0.3, rare_state="malignant")),
    "eval_splatter_a": Cohort("evaluation", splatter_cohort(204, n_types=6)),
    "eval_splatter_b": Cohort("evaluation", splatter_cohort(205, n_types=8)),
    # added with the L1 linear path, before that default had run on any evaluation cohort
    "eval_sim_strong_donor": Cohort("evaluation", sim_cohort(
        206, [["T_CD4", "activated"], ["monocyte_nonclassical", "malignant"]],
        n_hard_pairs=3, type_effect=0.8, batch_sd=0.8)),
    "eval_sim_rare_missing": Cohort("evaluation", sim_cohort(
        207, [["T_CD8", "malignant"], ["B", "damaged"]],
        n_hard_pairs=2, type_effect=0.9, batch_sd=0.4, drop_types={"NK": [0, 7]},
        rare_state="activated")),
    "eval_splatter_c": Cohort("evaluation", splatter_cohort(208, n_types=10)),
    "pbmc68k": Cohort("evaluation", pbmc68k),
    "wu2020": Cohort("evaluation", wu2020),
}


# -- running ---------------------------------------------------------------------------------
class _KeepInfo(CellsTask):
    """The cells task, keeping what each fold's fit reports (``CVResult`` drops it)."""

    def __init__(self) -> None:
        self.infos: list[dict[str, Any]] = []

    def predict(self, exp: CellExperiment, fitted: Any, data: ad.AnnData,
                plan: FoldPlan) -> Any:
        result = super().predict(exp, fitted, data, plan)
        self.infos.append(dict(result.info))
        return result


def chosen_of(info: dict[str, Any]) -> Any:
    """What the model picked in a fold, where its info says (``chosen``, or ``path.chosen``);
    ``None`` where it says nothing."""
    if "chosen" in info:
        return info["chosen"]
    path = info.get("path")
    return path.get("chosen") if isinstance(path, dict) else None


def celltypist_predict(data: ad.AnnData, plans: list[FoldPlan],
                       exp: CellExperiment) -> pd.DataFrame:
    """CellTypist's calls on each plan's test cells: one model per head, trained on the plan's
    fit donors (withheld pairs removed), as biocls's logistic regression is."""
    import celltypist

    X = ad.AnnData(X=data.X.copy(), obs=data.obs[[]].copy(), var=data.var[[]].copy())
    if is_raw_counts(X.X):
        import scanpy as sc

        sc.pp.normalize_total(X, target_sum=1e4)
        sc.pp.log1p(X)
    obs = data.obs
    patients = obs["biocls_patient"].astype(str).to_numpy()
    unseen = unseen_mask(obs, exp)  # the cells biocls's own fits withhold
    seed = exp.seed
    frames = []
    for plan in plans:
        fit_m, _, test_m = plan.masks(patients)
        fit_m &= ~unseen
        pred = pd.DataFrame({C.CELL_ID: obs.index[test_m].astype(str), C.FOLD: int(plan.fold)})
        for head in C.HEADS:
            y = obs[f"biocls_{head}"].to_numpy(dtype=object)
            ok = fit_m & known_mask(y)
            train = X[ok]
            expressed = int((np.asarray(train.X.sum(0)).ravel() > 0).sum())
            opts = {**CELLTYPIST,
                    "feature_selection": expressed > CELLTYPIST["top_genes"]}
            np.random.seed(seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = celltypist.train(train, labels=np.asarray(y[ok]).astype(str),
                                         random_state=seed, **opts)
                out = celltypist.annotate(X[test_m].copy(), model=model,
                                          majority_voting=False)
            pred[ct_col(head)] = out.predicted_labels["predicted_labels"].astype(str).to_numpy()
        frames.append(pred)
    return pd.concat(frames, ignore_index=True)


def ct_col(head: str) -> str:
    """CellTypist's predicted label of ``head`` (this benchmark's own column)."""
    return f"celltypist_pred_{head}"


def _pred_col(head: str, model: str) -> str:
    return ct_col(head) if model == "celltypist" else C.pred_col(head, model)


def f1_scores(pred: pd.DataFrame, model: str) -> dict[str, Any]:
    """Macro-F1 of each head, pooled and per fold (biocls's metric)."""
    out: dict[str, Any] = {}
    for head in C.HEADS:
        col = _pred_col(head, model)
        if col not in pred:
            continue
        out[head] = {
            "macro_f1": classification_metrics(pred[C.true_col(head)], pred[col])["macro_f1"],
            "by_fold": [classification_metrics(g[C.true_col(head)], g[col])["macro_f1"]
                        for _, g in pred.groupby(C.FOLD)]}
    return out


def both_right(pred: pd.DataFrame, pairs: list[list[str]], model: str,
               metrics: dict[str, Any] | None) -> list[float]:
    """Per withheld pair, the fraction of its held-out cells with both labels right: from
    ``metrics.json``'s rows for biocls's models, by the same rule for CellTypist."""
    if metrics is not None and model != "celltypist":
        return [r[f"{model}_both_correct"] for r in metrics["unseen_combinations"]]
    out = []
    tt, ts = pred[C.true_col(C.CELL_TYPE)].astype(str), pred[C.true_col(C.CELL_STATE)].astype(str)
    for t, s in pairs:
        g = pred[(tt == t) & (ts == s)]
        out.append(float(((g[_pred_col(C.CELL_TYPE, model)].astype(str) == t)
                          & (g[_pred_col(C.CELL_STATE, model)].astype(str) == s)).mean())
                   if len(g) else float("nan"))
    return out


def experiment(name: str, d: Data, *, model: dict[str, Any],
               preprocess: dict[str, Any] | None = None, folds: int | None = None,
               source: str = "benchmarks/cells_suite.py") -> CellExperiment:
    """The cohort's experiment through the workflow's config loader; ``model`` and
    ``preprocess`` are merged over the cohort's own options."""
    block = {"task": "cells", "keys": d.keys, "folds": folds or d.folds, "seed": 0,
             "progress": False, "preprocess": {**d.preprocess, **(preprocess or {})},
             "model": {**d.model, **model}, "unseen_combinations": d.unseen, **d.extra}
    exp = parse_experiment(block, name=name, source=source, partial=True)
    assert isinstance(exp, CellExperiment)
    return exp


def run_cohort(name: str, cohort: Cohort, args: argparse.Namespace) -> dict[str, Any]:
    """Cross-validation on the training donors, a fit for the new donors, CellTypist on both."""
    start = time.perf_counter()
    d = cohort.load(args)
    model = {**({"max_epochs": QUICK_EPOCHS} if args.quick else {}), **args.model}
    exp = experiment(name, d, model=model, preprocess=args.preprocess, folds=args.folds)
    task = _KeepInfo()
    data = task.prepare(exp, d.adata.copy())  # checks and per-patient QC, as the workflow
    patients = task.patients(data).astype(str)
    is_new = np.isin(patients, d.new_donors)
    train = data[~is_new].copy()
    cv = cross_validate(task, exp, train)
    cv_infos, task.infos = task.infos, []
    cv_plans = [plan_fold(cv.splits, int(k), task.patients(train),
                          validation_fraction=exp.validation_fraction, seed=exp.seed,
                          source="splits") for k in sorted(cv.splits["fold"].unique())]
    new_pred, new_metrics, new_plan = None, None, None
    if d.new_donors:
        fold_of = {p: int(p not in d.new_donors) for p in set(patients)}
        new_plan = plan_fold(fold_of, 0, patients, validation_fraction=exp.validation_fraction,
                             seed=exp.seed, source=f"{name}: new donors")
        _, res = fit_fold(task, exp, data, new_plan)
        new_pred, new_metrics = res.tables["predictions"], task.metrics(exp, res.tables,
                                                                       [res.info])
    t_peer = None
    cv_pred = cv.predictions
    models = [m for m in MODELS if m != "celltypist" or args.peers_ok]
    if args.peers_ok:
        t0 = time.perf_counter()
        ct = celltypist_predict(train, cv_plans, exp)
        cv_pred = cv_pred.merge(ct.drop(columns=C.FOLD), on=C.CELL_ID, how="left")
        if new_plan is not None:
            ct = celltypist_predict(data, [new_plan], exp)
            new_pred = new_pred.merge(ct.drop(columns=C.FOLD), on=C.CELL_ID, how="left")
        t_peer = time.perf_counter() - t0
    out: dict[str, Any] = {
        "group": cohort.group, "describe": d.describe, "model_options": {**d.model, **model},
        "preprocess_options": {**d.preprocess, **args.preprocess}, "folds": exp.folds,
        "unseen_combinations": d.unseen, "n_cells": int(data.n_obs),
        "n_cv_donors": int(cv.splits.shape[0]), "new_donors": list(d.new_donors),
        "chosen": {"cv": [chosen_of(i) for i in cv_infos],
                   "new": [chosen_of(i) for i in task.infos]},
        "linear_penalty": {"cv": [penalty_of(i) for i in cv_infos],
                           "new": [penalty_of(i) for i in task.infos]},
        "models": {}}
    for m in models:
        cvs = f1_scores(cv_pred, m)
        entry: dict[str, Any] = {
            "type_cv_by_fold": cvs[C.CELL_TYPE]["by_fold"],
            "state_cv_by_fold": cvs[C.CELL_STATE]["by_fold"],
            "type_cv_pooled": cvs[C.CELL_TYPE]["macro_f1"],
            "state_cv_pooled": cvs[C.CELL_STATE]["macro_f1"],
            "unseen_cv_by_pair": both_right(cv_pred, d.unseen, m, cv.metrics)}
        if new_pred is not None:
            news = f1_scores(new_pred, m)
            entry.update(type_new=news[C.CELL_TYPE]["macro_f1"],
                         state_new=news[C.CELL_STATE]["macro_f1"],
                         unseen_new_by_pair=both_right(new_pred, d.unseen, m, new_metrics))
        out["models"][m] = entry
    out["seconds"] = time.perf_counter() - start
    out["seconds_celltypist"] = t_peer
    return out


# -- printing --------------------------------------------------------------------------------
def _nanmean(values: list[float] | None) -> float:
    v = np.asarray([x for x in (values or []) if x is not None], dtype=float)
    return float(np.nanmean(v)) if len(v) and not np.isnan(v).all() else float("nan")


def cells(entry: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """The table's numbers for one model of one cohort: (value, sd over folds or NaN)."""
    def spread(xs: list[float]) -> tuple[float, float]:
        x = np.asarray(xs, dtype=float)
        return float(np.nanmean(x)), float(np.nanstd(x, ddof=1)) if len(x) > 1 else float("nan")

    nan = float("nan")
    return {"type_cv": spread(entry["type_cv_by_fold"]),
            "state_cv": spread(entry["state_cv_by_fold"]),
            "type_new": (entry.get("type_new", nan), nan),
            "state_new": (entry.get("state_new", nan), nan),
            "unseen_cv": (_nanmean(entry["unseen_cv_by_pair"]), nan),
            "unseen_new": (_nanmean(entry.get("unseen_new_by_pair")), nan)}


def fmt(value: float, sd: float, width: int) -> str:
    if np.isnan(value):
        return f"{'—':>{width}s}"
    return f"{f'{value:.3f}±{sd:.3f}' if not np.isnan(sd) else f'{value:.3f}':>{width}s}"


def header() -> str:
    return f"  {'model':10s} " + " ".join(f"{h:>{w}s}" for _, h, w in COLUMNS)


def row(model: str, values: dict[str, tuple[float, float]]) -> str:
    return f"  {model:10s} " + " ".join(fmt(*values[k], w) for k, _, w in COLUMNS)


def penalty_of(info: dict[str, Any]) -> str | None:
    """The linear net's penalty per head in a fold, as ``type/state`` (e.g. ``l1/l2``)."""
    path = info.get("path")
    pen = path.get("linear_penalty") if isinstance(path, dict) else None
    if not isinstance(pen, dict):
        return pen
    return "/".join(pen.get(h, "-") for h in (C.CELL_TYPE, C.CELL_STATE))


def _chosen(values: list[Any]) -> str:
    return ",".join(v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
                    for v in values)


def print_cohort(name: str, r: dict[str, Any], peers_note: str | None) -> None:
    new = (f"{len(r['new_donors'])} new donors ({','.join(r['new_donors'])})"
           if r["new_donors"] else "no new donors")
    peer_s = (f", celltypist {r['seconds_celltypist']:.0f} s"
              if r["seconds_celltypist"] is not None else "")
    print(f"\n[{r['group']}] {name}: {r['describe']}")
    print(f"  {r['n_cells']} cells after QC; CV on {r['n_cv_donors']} donors, {r['folds']} folds;"
          f" {new}; {r['seconds']:.0f} s{peer_s}")
    pairs = ", ".join(f"{t}×{s}" for t, s in r["unseen_combinations"]) or "none"
    print(f"  model: {json.dumps(r['model_options'])} (the rest: biocls defaults); "
          f"preprocess: {json.dumps(r['preprocess_options'])}; withheld pairs: {pairs}")
    chosen = r["chosen"]
    if any(v is not None for v in chosen["cv"] + chosen["new"]):
        print(f"  chosen: CV {_chosen(chosen['cv'])}"
              + (f"; new {_chosen(chosen['new'])}" if chosen["new"] else ""))
    pens = r.get("linear_penalty", {})
    if any(v is not None for v in pens.get("cv", []) + pens.get("new", [])):
        print(f"  linear penalty (type/state): CV {', '.join(map(str, pens['cv']))}"
              + (f"; new {', '.join(map(str, pens['new']))}" if pens["new"] else ""))
    print(header())
    for m, entry in r["models"].items():
        print(row(m, cells(entry)))
    if peers_note:
        print(f"  {'celltypist':10s} {peers_note}")


def print_summary(group: str, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per model, the mean over the group's cohorts; the factored model's margins over
    logistic regression per cohort."""
    names = [n for n, r in results.items() if r["group"] == group]
    if not names:
        return {}
    print(f"\n== [{group}] mean over {len(names)} cohorts ({', '.join(names)}); "
          "a column averages the cohorts that have it ==")
    print(header())
    summary: dict[str, Any] = {"cohorts": names, "mean": {}, "factored_minus_logreg": {}}
    for m in MODELS:
        have = [cells(results[n]["models"][m]) for n in names if m in results[n]["models"]]
        if not have:
            continue
        means = {k: (_nanmean([h[k][0] for h in have]), float("nan")) for k, _, _ in COLUMNS}
        summary["mean"][m] = {k: v[0] for k, v in means.items()}
        print(row(m, means))
    print("  factored − logreg, CV macro-F1 (mean over folds):")
    diffs = []
    for n in names:
        fac, lr = (cells(results[n]["models"][m]) for m in ("factored", "logreg"))
        dt, ds = fac["type_cv"][0] - lr["type_cv"][0], fac["state_cv"][0] - lr["state_cv"][0]
        diffs.append((dt, ds))
        summary["factored_minus_logreg"][n] = {"type_cv": dt, "state_cv": ds}
        print(f"    {n:24s} type {dt:+.3f}   state {ds:+.3f}")
    dt_min, ds_min = np.nanmin([d[0] for d in diffs]), np.nanmin([d[1] for d in diffs])
    summary["min_factored_minus_logreg"] = {"type_cv": float(dt_min), "state_cv": float(ds_min)}
    print(f"    {'minimum':24s} type {dt_min:+.3f}   state {ds_min:+.3f}")
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--group", choices=(*GROUPS, "all"), default="evaluation",
                   help="which cohorts (default: evaluation)")
    p.add_argument("--cohorts", help=f"comma-separated subset of: {', '.join(COHORTS)}")
    p.add_argument("--model", type=json.loads, default={},
                   help="JSON merged into every cohort's model: block, e.g. "
                        "'{\"input_dropout\": 0.2}'")
    p.add_argument("--preprocess", type=json.loads, default={},
                   help="JSON merged into every cohort's preprocess: block")
    p.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                   help="also run CellTypist (the `peers` extra) where installed")
    p.add_argument("--folds", type=int, help="folds of every cohort (default: the cohort's)")
    p.add_argument("--wu2020", default=(str(ROOT.parent / "shared" / "data" / "wu2020_200.h5ad")
                                        if (ROOT.parent / "shared" / "data" / "wu2020_200.h5ad")
                                        .exists() else None),
                   help="the wu2020_200.h5ad file (default: ../shared/data/ if it is there)")
    p.add_argument("--cells-per-patient", type=int,
                   help=f"cells per donor of the simulated cohorts (default "
                        f"{FULL['cells_per_patient']}): how a setting fares on small cohorts, "
                        "where a penalty per cell weighs more")
    p.add_argument("--json", help="write every number (per fold, per pair) to this file")
    p.add_argument("--quick", action="store_true",
                   help=f"tiny cohorts ({QUICK['n_patients']} donors × "
                        f"{QUICK['cells_per_patient']} cells × {QUICK['n_genes']} genes), "
                        f"{QUICK_FOLDS} folds, max_epochs {QUICK_EPOCHS}: a smoke check only")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)  # before celltypist, which configures logging
    if args.cohorts:
        wanted = [c.strip() for c in args.cohorts.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in COHORTS]
        if unknown:
            p.error(f"unknown cohort(s) {', '.join(unknown)}; use some of {', '.join(COHORTS)}")
        chosen = {c: COHORTS[c] for c in wanted}
    else:
        chosen = {n: c for n, c in COHORTS.items() if args.group in ("all", c.group)}
    args.peers_ok, peers_note = False, None
    if args.peers:
        try:
            with warnings.catch_warnings():  # its import trips scanpy's __version__ warning
                warnings.simplefilter("ignore", FutureWarning)
                import celltypist  # noqa: F401

            logging.getLogger("celltypist").setLevel(logging.ERROR)
            args.peers_ok = True
        except ImportError:
            peers_note = "not installed (pip install -e '.[peers]')"
    if args.quick:
        print(f"QUICK: tiny cohorts ({QUICK['n_patients']} donors × {QUICK['cells_per_patient']}"
              f" cells × {QUICK['n_genes']} genes), {QUICK_FOLDS} folds, max_epochs "
              f"{QUICK_EPOCHS}. A smoke check of the suite: these numbers mean nothing.")
    print(f"cohorts: {', '.join(f'{n} [{c.group}]' for n, c in chosen.items())}")
    print(f"model overrides: {json.dumps(args.model)}; preprocess overrides: "
          f"{json.dumps(args.preprocess)}; CellTypist: "
          + (f"celltypist.train({', '.join(f'{k}={v}' for k, v in CELLTYPIST.items())}), "
             "annotate(majority_voting=False)" if args.peers_ok
             else peers_note or "off (--no-peers)"))
    print("columns: macro-F1 of each head, CV = patient-grouped out-of-fold (mean±sd over folds),"
          " new = new donors; unseen = both labels right on cells of the withheld type×state "
          "pairs (mean over pairs); — = not applicable")
    results: dict[str, dict[str, Any]] = {}
    for name, cohort in chosen.items():
        try:
            results[name] = run_cohort(name, cohort, args)
        except Skip as e:
            print(f"\n[{cohort.group}] {name}: skipped: {e}")
            continue
        print_cohort(name, results[name], peers_note)
    summaries = {g: print_summary(g, results) for g in GROUPS}
    total = sum(r["seconds"] for r in results.values())
    print(f"\n{len(results)} cohorts in {total:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "quick": args.quick,
             "cohorts": results, "summary": {g: s for g, s in summaries.items() if s}},
            indent=1, default=str))
        print(f"numbers: {args.json}")


if __name__ == "__main__":
    main()
