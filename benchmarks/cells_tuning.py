"""Tuning evidence for the cells model's defaults: the deep/linear mixture, per-patient centring.

    nice .venv/bin/python benchmarks/cells_tuning.py mixture                  # tuning cohorts
    nice .venv/bin/python benchmarks/cells_tuning.py mixture --model '{"linear_c": 1.0}'
    nice .venv/bin/python benchmarks/cells_tuning.py mixture --cohorts tune_splatter
    nice .venv/bin/python benchmarks/cells_tuning.py centring

Both subcommands run on the *tuning* cohorts of ``benchmarks/cells_suite.py`` by default (its
``COHORTS`` with group ``tuning``), on their cross-validation donors only (the new donors are
dropped). Defaults are chosen there; the *evaluation* cohorts are for reporting, and no choice
looks at them (``--cohorts`` can name them, but what they show must not choose a default).

``mixture`` measures how the factored model's deep and linear paths (``path: ensemble``) should
be mixed, and which validation rule should choose the mix. Each cohort is cross-validated
through the task's own code (``CellsTask.prepare``, ``make_splits``, ``plan_fold``,
``CellsTask.fit`` / ``predict``) with ``model: {path: ensemble, **--model}``; each fold's two
members (``net_.deep`` and ``net_.linear``, softmax) give probabilities on the fold's test
cells and on its validation cells (all validation patients' cells with a label the model
knows, including those of the withheld type×state pairs, which the model's own choice leaves
out). Per head it prints the pooled out-of-fold macro-F1 of: logistic regression (the task's
``logreg_pred_<head>``); the model as it ships (``pred_<head>``: its own rule, margin 0.01 on
validation cells without the withheld pairs); the mixture ``(1 − w)·p_deep + w·p_linear`` at
fixed linear weights w; and the weight each validation rule picks per fold:

- ``error``: the lowest validation error over w = 0.5, 1, 0 (ties to the earlier);
- ``margin m``: the first of w = 1, 0.5, 0 whose validation error is within m of the lowest
  (``biocls.estimators._cells.choose_weight``, the model's rule, with ``margin=m``);
- ``log-loss``: the lowest validation log-loss over w = 0.5, 1, 0, 0.25, 0.75.

Then the weight each rule chose in each fold, and the mean of every column over the cohorts.

``centring`` measures a batch-removal idea that was tried and dropped: subtracting each
patient's own mean profile before classifying. Per cohort, scikit-learn's
``LogisticRegression(max_iter=300)`` per head in patient-grouped 4-fold cross-validation (the
patients shuffled by ``numpy.random.default_rng(0)`` and cut in 4 with ``array_split``, not the
workflow's splitter), on log1p of counts normalised to 10,000 per cell, the 1,000 genes of
highest variance on the training donors, standardised on the training donors; plain, and with
each patient's mean subtracted first (each patient's own, test patients too). Macro-F1 pooled
out of fold. Not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cells_suite as suite  # noqa: E402 (the benchmarks folder is not a package)

from biocls import columns as C  # noqa: E402
from biocls.estimators._cells import MIX_WEIGHTS, choose_weight  # noqa: E402
from biocls.evaluate import classification_metrics  # noqa: E402
from biocls.splits import plan_fold  # noqa: E402
from biocls.tasks import make_splits  # noqa: E402
from biocls.tasks.cells import CellsTask  # noqa: E402

HEADS = (C.CELL_TYPE, C.CELL_STATE)
SHORT = {C.CELL_TYPE: "type", C.CELL_STATE: "state"}
#: fixed linear weights of the mixture
FIXED = (0.0, 0.25, 0.5, 0.75, 1.0)
#: the weights the ``error`` rule compares, ties to the earlier
ERROR_ORDER = (0.5, 1.0, 0.0)
#: the weights the ``log-loss`` rule compares, ties to the earlier
LOGLOSS_ORDER = (0.5, 1.0, 0.0, 0.25, 0.75)
MARGINS = (0.005, 0.01, 0.02)
CENTRING_FOLDS, CENTRING_GENES = 4, 1000


# -- mixture ---------------------------------------------------------------------------------
@dataclass
class HeadFold:
    """One head in one fold: the members' probabilities ``[N, K]`` over ``vocab``."""

    vocab: np.ndarray
    y_test: np.ndarray  #: true labels of the test cells
    logreg: np.ndarray  #: the task's logistic regression's calls on them
    model: np.ndarray  #: the model's own calls on them (its own mixture)
    test: tuple[np.ndarray, np.ndarray]  #: (deep, linear) on the test cells
    val: tuple[np.ndarray, np.ndarray]  #: (deep, linear) on validation cells of known label
    val_codes: np.ndarray  #: those cells' labels as indices into ``vocab``
    model_weight: float  #: the linear weight the model chose

    def mixed(self, w: float) -> np.ndarray:
        """The test cells' calls of the mixture at linear weight ``w``."""
        return self.vocab[mix(self.test, w).argmax(1)]


def mix(pair: tuple[np.ndarray, np.ndarray], w: float) -> np.ndarray:
    """``(1 − w)·p_deep + w·p_linear``."""
    return (1 - w) * pair[0] + w * pair[1]


def val_error(f: HeadFold, w: float) -> float:
    """Validation error rate of the mixture at linear weight ``w``."""
    return float((mix(f.val, w).argmax(1) != f.val_codes).mean())


def val_logloss(f: HeadFold, w: float) -> float:
    p = mix(f.val, w)[np.arange(len(f.val_codes)), f.val_codes]
    return float(-np.log(np.clip(p, 1e-9, 1)).mean())


def margin_rule(margin: float) -> Callable[[HeadFold], float]:
    return lambda f: choose_weight({w: val_error(f, w) for w in MIX_WEIGHTS}, margin=margin)


#: validation rules: name → the linear weight it picks in a fold
RULES: dict[str, Callable[[HeadFold], float]] = {
    "error": lambda f: min(ERROR_ORDER, key=lambda w: val_error(f, w)),
    **{f"margin {m:g}": margin_rule(m) for m in MARGINS},
    "log-loss": lambda f: min(LOGLOSS_ORDER, key=lambda w: val_logloss(f, w)),
}
#: the table's columns after the head: header, width
MIX_COLUMNS = (("LR", 6), ("model", 6), *((f"w{w:g}", 6) for w in FIXED),
               *((r, max(6, len(r))) for r in RULES))


def member_proba(model: Any, X: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per head, the softmax of the deep and of the linear member on ``X`` (one pass)."""
    x = torch.from_numpy(np.asarray(X, dtype=np.float32))
    net = model.net_.eval()
    with torch.no_grad():
        a, b = net.deep(x), net.linear(x)
    return {h: (a[h].softmax(-1).numpy(), b[h].softmax(-1).numpy()) for h in a}


def mixture_folds(name: str, d: suite.Data, model: dict[str, Any]) -> dict[str, list[HeadFold]]:
    """Cross-validate the cohort's CV donors through the task; each fold's numbers per head."""
    exp = suite.experiment(name, d, model={"path": "ensemble", **model},
                           source="benchmarks/cells_tuning.py")
    task = CellsTask()
    data = task.prepare(exp, d.adata.copy())
    data = data[~np.isin(task.patients(data).astype(str), d.new_donors)].copy()
    splits = make_splits(task, exp, data)
    folds: dict[str, list[HeadFold]] = {h: [] for h in HEADS}
    for k in sorted(splits["fold"].unique()):
        plan = plan_fold(splits, int(k), task.patients(data),
                         validation_fraction=exp.validation_fraction, seed=exp.seed,
                         source=f"{name}: splits")
        fitted = task.fit(exp, data, plan)
        pred = task.predict(exp, fitted, data, plan).tables["predictions"]
        _, val_m, test_m = plan.masks(task.patients(data))
        m = fitted.factored
        test = member_proba(m, fitted.preprocessor.transform(data[test_m]))
        val = member_proba(m, fitted.preprocessor.transform(data[val_m]))
        for h, vocab in ((C.CELL_TYPE, m.types_), (C.CELL_STATE, m.states_)):
            index = {v: i for i, v in enumerate(vocab)}
            y_val = data.obs.loc[val_m, f"biocls_{h}"].astype(str).to_numpy()
            known = np.isin(y_val, vocab)
            folds[h].append(HeadFold(
                vocab=np.asarray(vocab), y_test=pred[C.true_col(h)].astype(str).to_numpy(),
                logreg=pred[C.pred_col(h, "logreg")].astype(str).to_numpy(),
                model=pred[C.pred_col(h)].astype(str).to_numpy(),
                test=test[h], val=(val[h][0][known], val[h][1][known]),
                val_codes=np.array([index[v] for v in y_val[known]], dtype=np.int64),
                model_weight=float(m.linear_weight_[h])))
    return folds


def pooled_f1(folds: list[HeadFold], calls: list[np.ndarray]) -> float:
    """Macro-F1 of each fold's calls, pooled over the folds' test cells (biocls's metric)."""
    y = np.concatenate([f.y_test for f in folds])
    return classification_metrics(y, np.concatenate(calls))["macro_f1"]


def mixture_scores(folds: list[HeadFold]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """One head: macro-F1 per column, and the weight each rule (and the model) chose per fold."""
    chosen = {r: [rule(f) for f in folds] for r, rule in RULES.items()}
    scores = {"LR": pooled_f1(folds, [f.logreg for f in folds]),
              "model": pooled_f1(folds, [f.model for f in folds]),
              **{f"w{w:g}": pooled_f1(folds, [f.mixed(w) for f in folds]) for w in FIXED},
              **{r: pooled_f1(folds, [f.mixed(w) for f, w in zip(folds, ws, strict=True)])
                 for r, ws in chosen.items()}}
    chosen["model"] = [f.model_weight for f in folds]
    return scores, chosen


def mix_header() -> str:
    return f"  {'head':6s} " + " ".join(f"{h:>{w}s}" for h, w in MIX_COLUMNS)


def mix_row(head: str, scores: dict[str, float]) -> str:
    return f"  {head:6s} " + " ".join(f"{scores[h]:{w}.3f}" for h, w in MIX_COLUMNS)


def run_mixture(cohorts: dict[str, suite.Cohort], args: argparse.Namespace) -> None:
    print(f"model: {json.dumps({'path': 'ensemble', **args.model})} (the rest: biocls defaults)")
    print("columns: pooled out-of-fold macro-F1; LR = the task's logistic regression; model = "
          "the model's own calls; wX = linear weight X; the rest = the weight each validation "
          "rule chose per fold")
    means: dict[str, list[dict[str, float]]] = {h: [] for h in HEADS}
    for name, cohort in cohorts.items():
        start = time.perf_counter()
        try:
            d = cohort.load(args)
        except suite.Skip as e:
            print(f"\n[{cohort.group}] {name}: skipped: {e}")
            continue
        folds = mixture_folds(name, d, args.model)
        print(f"\n[{cohort.group}] {name}: {d.describe}; {len(folds[C.CELL_TYPE])} folds, "
              f"{time.perf_counter() - start:.0f} s")
        print(mix_header())
        per_head = {h: mixture_scores(folds[h]) for h in HEADS}
        for h in HEADS:
            means[h].append(per_head[h][0])
            print(mix_row(SHORT[h], per_head[h][0]))
        print("  linear weight chosen per fold:")
        for h in HEADS:
            print(f"    {SHORT[h]:6s} " + "; ".join(
                f"{r} {','.join(f'{w:g}' for w in ws)}" for r, ws in per_head[h][1].items()))
    if means[C.CELL_TYPE]:
        print(f"\n== mean over {len(means[C.CELL_TYPE])} cohorts ==")
        print(mix_header())
        for h in HEADS:
            print(mix_row(SHORT[h], {c: float(np.mean([s[c] for s in means[h]]))
                                     for c, _ in MIX_COLUMNS}))


# -- centring --------------------------------------------------------------------------------
def lognorm_cv_donors(d: suite.Data) -> tuple[np.ndarray, np.ndarray, ad.AnnData]:
    """log1p of counts normalised to 10,000 per cell on the CV donors: (X dense, patients, data)."""
    import scanpy as sc

    pkey = d.keys.get("patient")
    if not pkey:
        raise suite.Skip("no patient key: the cells are not grouped by donor")
    a = d.adata[~d.adata.obs[pkey].astype(str).isin(d.new_donors)].copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    X = a.X.toarray() if hasattr(a.X, "toarray") else np.asarray(a.X)
    return X, a.obs[pkey].astype(str).to_numpy(), a


def patient_folds(patients: np.ndarray) -> list[np.ndarray]:
    """The patients, shuffled by ``default_rng(0)``, cut into :data:`CENTRING_FOLDS`."""
    donors = np.unique(patients)
    np.random.default_rng(0).shuffle(donors)
    return np.array_split(donors, CENTRING_FOLDS)


def centre_per_patient(Z: np.ndarray, patients: np.ndarray) -> np.ndarray:
    """Each patient's cells minus that patient's mean profile."""
    Z = Z.copy()
    for p in np.unique(patients):
        m = patients == p
        Z[m] -= Z[m].mean(0)
    return Z


def centring_scores(d: suite.Data) -> dict[str, dict[str, float]]:
    """Macro-F1 per mode (``plain``, ``centred``) and head, pooled out of fold."""
    from sklearn.linear_model import LogisticRegression

    X, patients, a = lognorm_cv_donors(d)
    labels = {h: a.obs[d.keys[h]].astype(str).to_numpy() for h in HEADS}
    out = {}
    for mode in ("plain", "centred"):
        true: dict[str, list[np.ndarray]] = {h: [] for h in HEADS}
        calls: dict[str, list[np.ndarray]] = {h: [] for h in HEADS}
        for donors in patient_folds(patients):
            te = np.isin(patients, donors)
            tr = ~te
            Z = X[:, np.argsort(-X[tr].var(0))[:CENTRING_GENES]].copy()
            if mode == "centred":
                Z = centre_per_patient(Z, patients)
            Z = (Z - Z[tr].mean(0)) / (Z[tr].std(0) + 1e-6)
            for h, y in labels.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # lbfgs may stop at max_iter, as it did
                    clf = LogisticRegression(max_iter=300).fit(Z[tr], y[tr])
                true[h].append(y[te])
                calls[h].append(clf.predict(Z[te]))
        out[mode] = {h: classification_metrics(np.concatenate(true[h]),
                                               np.concatenate(calls[h]))["macro_f1"]
                     for h in HEADS}
    return out


def run_centring(cohorts: dict[str, suite.Cohort], args: argparse.Namespace) -> None:
    print(f"LogisticRegression(max_iter=300) per head; {CENTRING_FOLDS} patient folds; "
          f"top {CENTRING_GENES} variance genes; pooled out-of-fold macro-F1")
    head = (f"  {'cohort':24s} {'type plain':>10s} {'state plain':>11s} "
            f"{'type centred':>12s} {'state centred':>13s}")
    widths = {("plain", C.CELL_TYPE): 10, ("plain", C.CELL_STATE): 11,
              ("centred", C.CELL_TYPE): 12, ("centred", C.CELL_STATE): 13}
    print(head)
    rows = []
    for name, cohort in cohorts.items():
        try:
            s = centring_scores(cohort.load(args))
        except suite.Skip as e:
            print(f"  {name:24s} skipped: {e}")
            continue
        rows.append(s)
        print(f"  {name:24s} " + " ".join(f"{s[m][h]:{w}.3f}" for (m, h), w in widths.items()),
              flush=True)
    if rows:
        print(f"  {'mean':24s} " + " ".join(
            f"{np.mean([s[m][h] for s in rows]):{w}.3f}" for (m, h), w in widths.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cohorts", help="comma-separated cohorts of cells_suite.py (default: "
                        f"the tuning group); any of: {', '.join(suite.COHORTS)}")
    wu = suite.ROOT.parent / "shared" / "data" / "wu2020_200.h5ad"
    common.add_argument("--wu2020", default=str(wu) if wu.exists() else None,
                        help="the wu2020_200.h5ad file, for --cohorts wu2020")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mixture", parents=[common], help="deep/linear mixture weights and rules")
    m.add_argument("--model", type=json.loads, default={},
                   help="JSON merged into the model: block, e.g. '{\"linear_c\": 1.0}'")
    sub.add_parser("centring", parents=[common], help="per-patient centring, logistic regression")
    args = p.parse_args()
    args.quick = False  # the cohorts' full size: the numbers are the evidence
    logging.basicConfig(level=logging.WARNING)
    if args.cohorts:
        wanted = [c.strip() for c in args.cohorts.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in suite.COHORTS]
        if unknown:
            p.error(f"unknown cohort(s) {', '.join(unknown)}; use some of "
                    f"{', '.join(suite.COHORTS)}")
        cohorts = {c: suite.COHORTS[c] for c in wanted}
    else:
        cohorts = {n: c for n, c in suite.COHORTS.items() if c.group == "tuning"}
    print(f"$ {shlex.join(['python', 'benchmarks/cells_tuning.py', *sys.argv[1:]])}")
    print(f"cohorts: {', '.join(f'{n} [{c.group}]' for n, c in cohorts.items())}")
    start = time.perf_counter()
    (run_mixture if args.command == "mixture" else run_centring)(cohorts, args)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
