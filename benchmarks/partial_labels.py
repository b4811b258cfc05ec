"""Partial state labels: ignore vs negative vs selective (CSL) on held-out, fully labelled patients.

Merged atlases annotate states per study: one study labels "activated", another "damaged", and a
label a study never looked at is unknown for all of its cells. This benchmark simulates exactly
that. The simulator's state becomes three yes/no labels (activated, damaged, malignant; a healthy
cell is 0 on all three), plus a fourth, ``cycling``, that cells carry independently of the others
(``simulate_cells(independent_states=...)``), so a cell can be e.g. activated and cycling. For
every label, a fraction of the training patients (whole patients,
chosen per label and seed) has that label unannotated (NaN). The state head is then trained with
each way of handling unknowns and scored on held-out patients whose labels are all known:

- ``ignore``: unknown entries carry no loss;
- ``negative``: unknown entries are taken as absent;
- ``selective``: CSL's class-aware rule (Ben-Baruch et al. 2022), with class priors estimated as
  the mean prediction of the ``ignore`` model (the "first model").

Everything else (encoder, preprocessing, patients, seeds, early stopping on annotated entries of
validation patients) is identical across modes. Prints mean ± sd over seeds of mAP and macro-F1
on the held-out patients, per hidden fraction.

    nice .venv/bin/python benchmarks/partial_labels.py            # ~3-5 min on 2 cores
    nice .venv/bin/python benchmarks/partial_labels.py --seeds 1  # quick look
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import pandas as pd
import torch

from biocls.estimators import CellClassifier
from biocls.evaluate import multilabel_metrics
from biocls.preprocess import CellPreprocessor
from biocls.simulate import simulate_cells
from biocls.splits import plan_fold

EXCLUSIVE = ("activated", "damaged", "malignant")
LABELS = EXCLUSIVE + ("cycling",)
MODES = ("ignore", "negative", "selective")


def hide(truth: pd.DataFrame, patients: np.ndarray, train_p: list[str], fraction: float,
         rng: np.random.Generator) -> pd.DataFrame:
    """NaN out each label for a random ``fraction`` of the training patients (whole patients)."""
    out = truth.copy()
    n_hide = int(round(fraction * len(train_p)))
    for label in LABELS:
        hidden = rng.choice(train_p, size=n_hide, replace=False)
        out.loc[np.isin(patients, hidden), label] = np.nan
    return out


def run(args: argparse.Namespace) -> pd.DataFrame:
    adata = simulate_cells(n_patients=args.patients, cells_per_patient=args.cells,
                           n_genes=args.genes, n_types=6, seed=args.data_seed,
                           low_quality_fraction=0.0,
                           independent_states={"cycling": args.cycling})
    obs = adata.obs
    patients = obs["patient"].astype(str).to_numpy()
    truth = pd.DataFrame({s: (obs["cell_state"].astype(str) == s).astype(float).to_numpy()
                          for s in EXCLUSIVE}, index=obs.index)
    truth["cycling"] = obs["cycling"].to_numpy(dtype=float)
    uniq = sorted(set(patients))
    # one fold: the last patients are tested; the workflow's rule picks the validation patients
    fold_of = {p: int(i >= len(uniq) - args.test_patients) for i, p in enumerate(uniq)}
    plan = plan_fold(fold_of, 1, patients, validation_fraction=0.2, seed=0,
                     source="partial_labels")
    fit_p, val_p, test_p = plan.fit, plan.validation, plan.test
    train_p = sorted(fit_p + val_p)
    fit_m, val_m, test_m = plan.masks(patients)
    pre = CellPreprocessor(nmads=None, n_top_genes=args.hvg).fit(adata[fit_m])
    X_fit, X_val, X_test = (pre.transform(adata[m]) for m in (fit_m, val_m, test_m))
    types = obs["cell_type"].astype(str).to_numpy()
    print(f"{len(fit_p)} fit + {len(val_p)} validation patients (partially annotated), "
          f"{len(test_p)} test patients (fully annotated); {X_fit.shape[1]} genes; "
          f"positive rate per label in test: "
          + ", ".join(f"{s} {truth[s][test_m].mean():.2f}" for s in LABELS), flush=True)
    rows = []
    for fraction in args.fractions:
        for seed in range(args.seeds):
            rng = np.random.default_rng([seed, int(fraction * 100)])
            partial = hide(truth, patients, train_p, fraction, rng)
            known = partial[fit_m | val_m].notna().mean().mean()
            priors = None
            for mode in MODES:
                t0 = time.time()
                model = CellClassifier(state_mode="multilabel", partial_loss=mode, seed=seed,
                                       progress=False, hidden=tuple(args.hidden),
                                       max_epochs=args.epochs, patience=5,
                                       priors=priors if mode == "selective" else None)
                model.fit(X_fit, types[fit_m], partial[fit_m], X_val=X_val,
                          cell_type_val=types[val_m], cell_state_val=partial[val_m])
                if mode == "ignore":  # the first model: its mean prediction is each prior
                    priors = model.predict_proba(X_fit)["cell_state"].mean(0).tolist()
                p = model.predict_proba(X_test)["cell_state"]
                m = multilabel_metrics(truth[test_m][list(model.states_)], p,
                                       names=model.states_)
                rows.append({"hidden": fraction, "seed": seed, "mode": mode, "mAP": m["mAP"],
                             "macro_f1": m["macro_f1"], "annotated": known,
                             **{f"AP {k}": v for k, v in m["per_class_ap"].items()},
                             "priors": None if mode != "selective" else
                             "/".join(f"{v:.2f}" for v in model.priors_),
                             "seconds": time.time() - t0})
                print(f"  hidden {fraction:.1f} seed {seed} {mode:9s} mAP {m['mAP']:.3f} "
                      f"macro-F1 {m['macro_f1']:.3f} ({time.time() - t0:.0f}s)", flush=True)
    return pd.DataFrame(rows)


def table(res: pd.DataFrame) -> str:
    g = res.groupby(["hidden", "mode"], sort=False)
    lines = ["| hidden | annotated | mode | mAP | macro-F1 | " +
             " | ".join(f"AP {s}" for s in LABELS) + " |",
             "|---|---|---|---|---|" + "---|" * len(LABELS)]
    def ms(d: pd.DataFrame, col: str) -> str:
        return f"{d[col].mean():.3f} ± {d[col].std(ddof=0):.3f}"

    for (h, mode), d in g:
        lines.append(f"| {h:.1f} | {d['annotated'].mean():.0%} | {mode} | {ms(d, 'mAP')} | "
                     f"{ms(d, 'macro_f1')} | " +
                     " | ".join(f"{d[f'AP {s}'].mean():.3f}" for s in LABELS) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.6, 0.9])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--patients", type=int, default=14)
    ap.add_argument("--test-patients", type=int, default=4)
    ap.add_argument("--cells", type=int, default=300)
    ap.add_argument("--genes", type=int, default=1000)
    ap.add_argument("--hvg", type=int, default=500)
    ap.add_argument("--hidden", type=int, nargs="+", default=[128])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--cycling", type=float, default=0.25,
                    help="mean prevalence of the independent 'cycling' label")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    res = run(args)
    print()
    print(table(res))
    print("\nmean ± sd over seeds; test patients are fully annotated; AP per label is the mean "
          "over seeds.\ncommand: nice .venv/bin/python benchmarks/partial_labels.py "
          + " ".join(f"--{k.replace('_', '-')} {_arg(v)}" for k, v in vars(args).items()))


def _arg(v: object) -> str:
    return " ".join(map(str, v)) if isinstance(v, list) else str(v)


if __name__ == "__main__":
    main()
