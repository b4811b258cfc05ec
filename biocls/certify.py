"""RATT error certificates for the model that ships, per cell and per patient.

Garg, Balakrishnan, Kolter & Lipton 2021, "RATT: Leveraging Unlabeled Data to Guarantee
Generalization" (ICML 2021, arXiv:2105.00303). Train on a clean labelled set ``S`` (``n`` cells)
together with ``m`` cells ``S~`` whose labels were drawn uniformly from the ``k`` classes, with
early stopping on clean validation data only. If the model fits the clean cells but not the random
labels, its error on new cells of the same distribution is small. With probability ≥ ``1 - δ``::

    error <= E_S + (k - 1) * (1 - k / (k - 1) * E_S~) + (k + √k + m / (n √k)) √(log(4/δ) / 2m)

``E_S`` is the error on ``S``, ``E_S~`` the error on ``S~`` *against its random labels* (the
paper's multi-class result, its Theorem 3 as we read it; ``k = 2`` gives the binary
``E_S + 1 - 2 E_S~``). The exact form has ``E_S~C``, the error on the ``S~`` cells whose random
label happens to be right, where ``E_S`` stands: the two agree only when ``S`` and ``S~`` are
exchangeable and treated alike. biocls therefore

- trains the **shipped model** (``results/<exp>/model``) this way when a ``certify:`` block is
  set: ``S~`` is a uniform ``certify.random_fraction`` of the fit patients' cells (so S and S~
  are draws of the same patients' cells), preprocessing is fitted on the expression of S ∪ S~,
  and fold ``certify.fold``'s patients are held out of the model entirely;
- logs ``E_S~C`` beside ``E_S`` (the labels of S~ are known here), and the bound with ``E_S~C``
  in its place;
- measures the error on the held-out patients, who were never randomly labelled nor trained on;
- states two things, each for whom it holds: the **per-cell** RATT bound, for new cells of the
  fitting patients (cells are treated as independent draws); and a **per-patient** bound on the
  mean error of a new patient, from the held-out patients' error rates (one number per patient,
  Hoeffding's Chernoff bound inverted: exact for independent [0, 1] variables, and honest about
  how few patients there are);
- splits ``δ`` equally across every statement (heads × kinds), so they hold *together* at
  ``1 - δ``.

:func:`certify_unlabelled` certifies a user's unlabelled cohort: it is split in halves A and B;
a model trained with A randomly labelled is certified on A and predicts B, and the reverse, at
``δ/2`` each, so no cell is predicted by a model that saw it with a random label. There ``E_S~C``
cannot be measured, so the bound needs the cohort to be exchangeable with the labelled one.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from biocls._errors import BioclsError
from biocls._io import write_json
from biocls.config import CellExperiment, Certify
from biocls.evaluate import known_mask

__all__ = ["ab_halves", "certify", "certify_unlabelled", "confidence_term", "patient_bound",
           "ratt_bound", "split_delta"]

log = logging.getLogger(__name__)

METHOD = "RATT (Garg et al. 2021, arXiv:2105.00303)"
UNLABELLED = "__unlabelled__"  # the pseudo-patient of an unlabelled half while it trains
PER_CELL = ("new cells of the fitting patients, drawn like their cells; cells treated as "
            "independent draws (cells of one patient are correlated, which flatters it)")
PER_PATIENT = ("the mean cell error of a new patient drawn like the held-out patients (each "
               "held-out patient is one independent draw; nothing assumed about cells)")


def confidence_term(*, k: int, m: int, n: int, delta: float = 0.05) -> float:
    """RATT's multi-class confidence term at level ``delta`` (see the module docstring)."""
    _check(k, m, n, delta)
    return (k + math.sqrt(k) + m / (n * math.sqrt(k))) * math.sqrt(math.log(4 / delta) / (2 * m))


def ratt_bound(*, clean_error: float, random_error: float, k: int, m: int, n: int,
               delta: float = 0.05) -> float:
    """Upper bound on the test error (holds with probability ≥ ``1 - delta``); may exceed 1.

    ``clean_error``: error on the ``n`` clean training cells (``E_S``; pass ``E_S~C`` for the
    exact form); ``random_error``: error on the ``m`` randomly labelled cells against their
    random labels; ``k``: number of classes.
    """
    _check(k, m, n, delta)
    main = clean_error + (k - 1) * (1 - k / (k - 1) * random_error)
    return float(main + confidence_term(k=k, m=m, n=n, delta=delta))


def patient_bound(errors: Sequence[float], *, delta: float) -> float:
    """Upper confidence bound (level ``1 - delta``) on the mean of independent [0, 1] values.

    The values are per-patient error rates; the bound is the largest ``q`` with
    ``len(errors) * kl(mean || q) <= log(1 / delta)`` (Hoeffding 1963, Theorem 1, inverted).
    With no errors at all it is ``1 - delta ** (1 / n)``.
    """
    x = np.asarray(errors, dtype=float)
    if x.size == 0:
        raise ValueError("no patients to bound")
    if ((x < 0) | (x > 1)).any() or not 0 < delta < 1:
        raise ValueError("errors must lie in [0, 1] and delta in (0, 1)")
    mean, budget = float(x.mean()), math.log(1 / delta) / x.size
    if mean >= 1.0 or _kl(mean, 1.0) <= budget:
        return 1.0
    lo, hi = mean, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _kl(mean, mid) <= budget else (lo, mid)
    return hi


def split_delta(delta: float, n_statements: int) -> float:
    """δ for each of ``n_statements`` bounds, so that all hold together at ``1 - delta``
    (union bound)."""
    if n_statements < 1:
        raise ValueError("n_statements must be >= 1")
    return delta / n_statements


def ab_halves(n: int, seed: int) -> np.ndarray:
    """A random split of ``n`` cells into halves: ``True`` for A (``ceil(n / 2)`` cells)."""
    if n < 2:
        raise ValueError("an unlabelled cohort needs at least 2 cells to split")
    out = np.zeros(n, dtype=bool)
    out[np.random.default_rng([seed, 7_773]).permutation(n)[: (n + 1) // 2]] = True
    return out


# -- the shipped model ------------------------------------------------------------------------

def certify(exp: CellExperiment, *, model: Path, out: Path) -> dict[str, Any]:
    """Certify ``model`` (a final model folder trained with ``certify:`` set) and write
    ``certificate.json``: per head the per-cell bound, the per-patient bound, the measured error
    on the held-out patients, ``E_S``, ``E_S~``, ``E_S~C`` and the model's signature."""
    from biocls._provenance import model_signature
    from biocls.splits import check_no_leak
    from biocls.tasks.cells import RATT_FILE, CellsTask, load_cell_model, unseen_mask

    model = Path(model)
    ratt_path, info_path = model / RATT_FILE, model / "train_info.json"
    if not ratt_path.is_file() or not info_path.is_file():
        raise BioclsError("this model was not trained with random labels (no ratt.json)",
                          where=str(model), fix="add a certify: block to the experiment and "
                                                "train the final model again")
    ratt, info = json.loads(ratt_path.read_text()), json.loads(info_path.read_text())
    signature = model_signature(model)
    bundle = load_cell_model(model)
    fit_p, val_p, test_p = (list(info.get(k) or []) for k in
                            ("fit_patients", "validation_patients", "test_patients"))
    if not test_p:
        raise BioclsError("the model holds out no patients to measure it on", where=str(model),
                          fix="retrain it with a certify: block (certify.fold is held out)")
    check_no_leak(fit_p + val_p, test_p, what="certify (trained vs held-out patients)")
    task = CellsTask()
    adata = task.load(exp)
    obs = adata.obs
    patients = obs["biocls_patient"].astype(str).to_numpy()
    unseen = unseen_mask(obs, exp)
    fit_m = np.isin(patients, fit_p) & ~unseen
    rand_m = fit_m & obs.index.astype(str).isin(ratt["cells"])
    if int(rand_m.sum()) != len(ratt["cells"]):
        raise BioclsError(f"{len(ratt['cells']) - int(rand_m.sum())} of the model's randomly "
                          "labelled cells are not in the data", where=str(exp.input),
                          fix="certify with the data the model was trained on")
    clean_m, test_m = fit_m & ~rand_m, np.isin(patients, test_p) & ~unseen

    def predict(mask: np.ndarray) -> dict[str, np.ndarray]:
        return bundle.classifier.predict(bundle.preprocessor.transform(adata[mask]))

    pred = {"clean": predict(clean_m), "random": predict(rand_m), "test": predict(test_m)}
    heads = [h for h in ("cell_type", "cell_state") if h in ratt["labels"]]
    delta = (exp.certify or Certify()).delta
    d_each = split_delta(delta, 2 * len(heads))
    order = {c: i for i, c in enumerate(ratt["cells"])}
    where_r = np.asarray([order[c] for c in obs.index[rand_m].astype(str)])
    result: dict[str, Any] = {}
    for h in heads:
        col = f"biocls_{h}"
        random = np.asarray(ratt["labels"][h], dtype=object)[where_r]
        entry = _head(pred, h, k=len(ratt["classes"][h]), delta=d_each,
                      truth={"clean": obs.loc[clean_m, col].to_numpy(dtype=object),
                             "random": obs.loc[rand_m, col].to_numpy(dtype=object),
                             "test": obs.loc[test_m, col].to_numpy(dtype=object)},
                      random=random, test_patients=patients[test_m])
        result[h] = entry
        log.info("certify %s: per-cell bound %.3f, per-patient bound %.3f, measured error on %d "
                 "held-out patients %.3f (E_S %.3f, E_S~ %.3f, E_S~C %.3f, k=%d, m=%d, n=%d)", h,
                 entry["bound"], entry["patient_bound"], entry["n_test_patients"],
                 entry["test_error"], entry["clean_error"], entry["random_error"],
                 entry["random_correct_error"], entry["k"], entry["m"], entry["n"])
        if entry["bound"] >= 1:
            log.warning("certify %s: the per-cell bound is %.2f, so it certifies nothing: %s", h,
                        entry["bound"], _why_vacuous(entry))
    skipped = (["cell_state (multi-label states are not certified)"]
               if exp.keys.state_labels else [])
    cert = {
        "method": METHOD, "experiment": exp.name,
        "model": {"path": str(model), "signature": signature,
                  "config_hash": (bundle.classifier.meta_ or {}).get("config_hash")},
        "random_fraction": ratt.get("random_fraction"),
        "fit_patients": fit_p, "validation_patients": val_p, "heldout_patients": test_p,
        "delta": delta, "delta_each": d_each, "n_statements": 2 * len(heads),
        "delta_note": f"δ = {delta} split equally over {2 * len(heads)} statements (per-cell "
                      f"and per-patient, for each of {len(heads)} head(s)): each holds at "
                      f"1 - {d_each:.4g}, all together at 1 - {delta}",
        "assumptions": {"per_cell": PER_CELL, "per_patient": PER_PATIENT},
        "skipped": skipped, "heads": result}
    write_json(out, cert)
    return cert


def _ratt_figures(pred_clean: np.ndarray, truth_clean: np.ndarray, pred_random: np.ndarray,
                  random: np.ndarray, *, k: int, delta: float) -> dict[str, Any]:
    """RATT's inputs and bound for one head: E_S on the clean cells whose label is known, E_S~
    against the random labels."""
    clean = known_mask(truth_clean)
    n, m = int(clean.sum()), int(len(random))
    e_clean = _rate(np.asarray(pred_clean)[clean].astype(str) != truth_clean[clean].astype(str))
    e_rand = _rate(np.asarray(pred_random).astype(str) != np.asarray(random).astype(str))
    return {"k": k, "n": n, "m": m, "delta": delta, "clean_error": e_clean,
            "random_error": e_rand,
            "confidence_term": confidence_term(k=k, m=m, n=n, delta=delta),
            "bound": ratt_bound(clean_error=e_clean, random_error=e_rand, k=k, m=m, n=n,
                                delta=delta)}


def _head(pred: dict[str, dict[str, np.ndarray]], head: str, *, k: int, delta: float,
          truth: dict[str, np.ndarray], random: np.ndarray,
          test_patients: np.ndarray) -> dict[str, Any]:
    """One head's figures (see :func:`certify`)."""
    p = {part: np.asarray(pred[part][head]).astype(str) for part in pred}
    entry = _ratt_figures(p["clean"], truth["clean"], p["random"], random, k=k, delta=delta)
    right = known_mask(truth["random"]) & (random.astype(str) == truth["random"].astype(str))
    e_right = _rate(p["random"][right] != random[right].astype(str))
    known_t = known_mask(truth["test"])
    wrong_t = p["test"][known_t] != truth["test"][known_t].astype(str)
    per_patient = {str(q): _rate(wrong_t[test_patients[known_t] == q])
                   for q in np.unique(test_patients[known_t])}
    return {
        **entry,
        "random_correct_error": e_right, "n_random_correct": int(right.sum()),
        "bound_with_random_correct": (ratt_bound(clean_error=e_right,
                                                 random_error=entry["random_error"], k=k,
                                                 m=entry["m"], n=entry["n"], delta=delta)
                                      if right.any() else None),
        "test_error": _rate(wrong_t), "n_test": int(known_t.sum()),
        "patient_errors": per_patient, "n_test_patients": len(per_patient),
        "patient_mean_error": float(np.mean(list(per_patient.values())))
        if per_patient else None,
        "patient_bound": patient_bound(list(per_patient.values()), delta=delta)
        if per_patient else None,
    }


# -- a user's unlabelled cohort ---------------------------------------------------------------

def certify_unlabelled(exp: CellExperiment, *, splits: Path, unlabelled: Path, out: Path,
                       predictions: Path | None = None) -> dict[str, Any]:
    """Certify the experiment's recipe on an unlabelled cohort, the A/B way (module docstring).

    Each half is trained on as RATT's S~ beside every labelled fitting patient (S), with the
    experiment's validation patients for early stopping; its model predicts the other half. The
    cohort's cells are taken as they are (no QC filtering): every cell gets a call.
    ``predictions`` (an ``.h5ad``) receives the cohort with ``obs["biocls_<head>"]``,
    ``obs["biocls_ratt_half"]`` (the half the cell was randomly labelled in) and
    ``obs["biocls_certified_by"]`` (the model that predicted it: the other half's).
    """
    import anndata as ad
    import pandas as pd

    from biocls._io import atomic_path
    from biocls.data import check_values
    from biocls.splits import FoldPlan, plan_fold, read_splits
    from biocls.tasks.cells import CellsTask, fit_cells, unseen_mask

    unlabelled = Path(unlabelled)
    if not unlabelled.is_file():
        raise BioclsError("file not found", where=str(unlabelled),
                          fix="pass the unlabelled cohort's .h5ad to --unlabelled")
    try:
        new = ad.read_h5ad(unlabelled)
    except Exception as e:
        raise BioclsError(f"not a readable .h5ad ({type(e).__name__})", where=str(unlabelled),
                          fix="pass an AnnData .h5ad to --unlabelled") from None
    if new.n_obs < 2:
        raise BioclsError(f"{new.n_obs} cell(s): nothing to split in halves",
                          where=str(unlabelled), fix="pass a cohort of at least 2 cells")
    check_values(new.X, where=f"{unlabelled}: X")
    task = CellsTask()
    adata = task.load(exp)
    genes = adata.var_names.intersection(new.var_names)
    if len(genes) < max(2, adata.n_vars // 2):
        raise BioclsError(f"shares {len(genes)} of the training data's {adata.n_vars} genes",
                          where=f"{unlabelled}: var_names",
                          fix="use the same gene identifiers (symbols or Ensembl IDs) as the "
                              "training data")
    plan = plan_fold(read_splits(str(splits)), "final", task.patients(adata),
                     validation_fraction=exp.validation_fraction, seed=exp.seed,
                     source=str(splits))
    labelled = adata[np.isin(task.patients(adata), plan.fit + plan.validation)][:, genes]
    in_a = ab_halves(new.n_obs, exp.seed)
    heads = ["cell_type"]
    if "biocls_cell_state" in adata.obs and not exp.keys.state_labels:
        heads.append("cell_state")
    delta = (exp.certify or Certify()).delta
    d_each = split_delta(delta, 2 * len(heads))
    calls = {h: np.empty(new.n_obs, dtype=object) for h in heads}
    by = np.empty(new.n_obs, dtype=object)
    halves: dict[str, Any] = {}
    for name, mask in (("A", in_a), ("B", ~in_a)):
        part = new[mask][:, genes].copy()
        part.obs = pd.DataFrame({"biocls_patient": UNLABELLED, "biocls_cell_type": None,
                                 **({"biocls_cell_state": None} if "cell_state" in heads
                                    else {})}, index=[f"{UNLABELLED}{name}:{i}" for i in
                                                      range(part.n_obs)])
        both = ad.concat([labelled, part], join="inner", merge=None)
        fit_plan = FoldPlan("final", (*plan.fit, UNLABELLED), plan.validation, ())
        randomise = (both.obs["biocls_patient"] == UNLABELLED).to_numpy()
        log.info("half %s: %d unlabelled cells trained with random labels", name, randomise.sum())
        fitted = fit_cells(exp, both, fit_plan, randomise=randomise)
        clean_m = (np.isin(both.obs["biocls_patient"].astype(str), plan.fit)
                   & ~unseen_mask(both.obs, exp) & ~randomise)
        model, pre = fitted.factored, fitted.preprocessor
        p_clean = model.predict(pre.transform(both[clean_m]))
        p_rand = model.predict(pre.transform(both[randomise]))
        other = model.predict(pre.transform(new[~mask][:, genes]))
        for h in heads:
            calls[h][~mask] = other[h]
        by[~mask] = f"model_{name}"
        entry: dict[str, Any] = {"n_cells": int(mask.sum()), "heads": {}}
        for h in heads:
            if h in fitted.ratt["labels"]:
                entry["heads"][h] = _ratt_figures(
                    p_clean[h], both.obs.loc[clean_m, f"biocls_{h}"].to_numpy(dtype=object),
                    p_rand[h], np.asarray(fitted.ratt["labels"][h]),
                    k=len(fitted.ratt["classes"][h]), delta=d_each / 2)
        halves[name] = entry
    combined: dict[str, Any] = {}
    for h in heads:
        if all(h in halves[x]["heads"] for x in "AB"):
            # model A predicts B's cells and model B predicts A's: weight each bound by the
            # cells it covers
            a, b = halves["A"], halves["B"]
            combined[h] = {"bound": (b["n_cells"] * a["heads"][h]["bound"]
                                     + a["n_cells"] * b["heads"][h]["bound"]) / new.n_obs,
                           "delta": d_each}
    for h, c in combined.items():
        log.info("certify %s on %s: per-cell bound %.3f (half A's model %.3f, half B's %.3f), "
                 "each cell predicted by the model of the other half", h, unlabelled, c["bound"],
                 halves["A"]["heads"][h]["bound"], halves["B"]["heads"][h]["bound"])
    cert = {"method": METHOD + ", A/B halves of an unlabelled cohort", "experiment": exp.name,
            "unlabelled": str(unlabelled), "n_cells": int(new.n_obs),
            "delta": delta, "delta_each": d_each,
            "delta_note": f"δ = {delta} split over {len(heads)} head(s) and the two halves: "
                          f"each half's bound holds at 1 - {d_each / 2:.4g}",
            "assumptions": "per cell; the cohort is exchangeable with the labelled training "
                           "cells (E_S stands in for E_S~C, which needs the cohort's labels); "
                           "every cell is predicted by the model trained on the other half",
            "halves": halves, "heads": combined}
    write_json(out, cert)
    if predictions is not None:
        for h in heads:
            new.obs[f"biocls_{h}"] = pd.Categorical(calls[h].astype(str))
        new.obs["biocls_certified_by"] = pd.Categorical(by.astype(str))
        new.obs["biocls_ratt_half"] = pd.Categorical(np.where(in_a, "A", "B"))
        new.uns["biocls_certify"] = {"certificate": str(out), "delta": delta}
        with atomic_path(Path(predictions)) as tmp:
            new.write_h5ad(tmp)
    return cert


def _why_vacuous(e: dict[str, Any]) -> str:
    """What to change when a bound is 1 or more: the model learnt the random labels, or m is
    too small for k classes."""
    chance = (e["k"] - 1) / e["k"]
    if e["random_error"] < chance - 0.05:
        return (f"the model learnt the random labels (E_S~ {e['random_error']:.2f}, chance "
                f"{chance:.2f}); give it fewer features (preprocess.n_pcs, e.g. 100)")
    return (f"the confidence term alone is {e['confidence_term']:.2f} with m = {e['m']} randomly "
            f"labelled cells for k = {e['k']} classes; more cells (or a larger "
            "certify.random_fraction) tighten it")


def _rate(wrong: np.ndarray) -> float:
    return float(np.mean(wrong)) if len(wrong) else float("nan")


def _kl(p: float, q: float) -> float:
    """Bernoulli KL divergence kl(p || q), with 0 log 0 = 0."""
    eps = 1e-15
    q = min(max(q, eps), 1 - eps)
    out = 0.0
    if p > 0:
        out += p * math.log(p / q)
    if p < 1:
        out += (1 - p) * math.log((1 - p) / (1 - q))
    return out


def _check(k: int, m: int, n: int, delta: float) -> None:
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    if m < 1 or n < 1:
        raise ValueError(f"m and n must be >= 1, got m={m}, n={n}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
