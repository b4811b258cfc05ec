"""RATT error certificates: a bound on test error from held-out cells given random labels.

Garg, Balakrishnan, Kolter & Lipton 2021, "RATT: Leveraging Unlabeled Data to Guarantee
Generalization" (ICML 2021, arXiv:2105.00303). Train on the clean labelled set ``S`` (``n``
cells) together with ``m`` unlabelled cells ``S~`` that were given labels drawn uniformly from the
``k`` classes, stopping early on clean validation data. If the model fits the clean cells but not
the random labels, its error on new data is small:

    error <= E_clean + (k - 1) * (1 - k / (k - 1) * E_random) + confidence term

with ``E_clean`` the error on ``S``, ``E_random`` the error on ``S~`` *against its random
labels*, and, with probability at least ``1 - delta``, the confidence term of the paper's
multi-class result (its Theorem 3, as we read it)::

    (k + sqrt(k) + m / (n * sqrt(k))) * sqrt(log(4 / delta) / (2 * m))

For ``k = 2`` the main term is the binary ``E_clean + 1 - 2 * E_random``. The paper proves the
bound for empirical risk minimisation and for linear models trained by gradient descent; for deep
nets it rests on its "early learning" assumption (clean labels are fitted before random ones).

What it certifies, in biocls terms:

- the unlabelled cells come from held-out patients, disjoint from the training (and validation)
  patients, and the bound is **per cell**: the expected error rate on a cell drawn from the same
  distribution, not a per-patient error;
- it assumes **exchangeability across patients**: new patients are drawn like these (same cohort,
  protocol, annotation). Cells of one patient are correlated, so the effective sample size is
  below ``m``; the confidence term treats cells as independent draws, which flatters it;
- the certified model is the RATT-trained model (clean + random labels) on the top principal
  components (``certify.n_pcs``), not the cross-validated gene-level model, and it is trained on
  every type×state combination (no ``unseen_combinations`` holdout), because the bound needs
  clean and held-out cells from one distribution. Its measured test error is on the held-out
  cells themselves, which it saw only with random labels.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from biocls._errors import BioclsError
from biocls._io import write_json
from biocls.config import CellExperiment, Certify
from biocls.evaluate import known_mask

__all__ = ["certify", "confidence_term", "ratt_bound"]

log = logging.getLogger(__name__)

HEADS = ("cell_type", "cell_state")


def confidence_term(*, k: int, m: int, n: int, delta: float = 0.05) -> float:
    """RATT's multi-class confidence term at level ``delta`` (see the module docstring)."""
    _check(k, m, n, delta)
    return (k + math.sqrt(k) + m / (n * math.sqrt(k))) * math.sqrt(math.log(4 / delta) / (2 * m))


def ratt_bound(*, clean_error: float, random_error: float, k: int, m: int, n: int,
               delta: float = 0.05) -> float:
    """Upper bound on the test error (holds with probability ≥ ``1 - delta``); may exceed 1.

    ``clean_error``: error on the ``n`` clean training cells; ``random_error``: error on the
    ``m`` randomly labelled cells against their random labels; ``k``: number of classes.
    """
    _check(k, m, n, delta)
    main = clean_error + (k - 1) * (1 - k / (k - 1) * random_error)
    return float(main + confidence_term(k=k, m=m, n=n, delta=delta))


def _check(k: int, m: int, n: int, delta: float) -> None:
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    if m < 1 or n < 1:
        raise ValueError(f"m and n must be >= 1, got m={m}, n={n}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def certify(exp: CellExperiment, *, splits: Path, out: Path) -> None:
    """Train one RATT model and write ``certificate.json`` (per head: bound, test_error, ...).

    The unlabelled set is fold ``certify.fold`` (default 0) of ``splits.tsv``; the remaining
    patients are split into fit and validation patients exactly as ``biocls train`` does
    (:func:`~biocls.splits.plan_fold`). Preprocessing is fitted on the fit patients, then
    (``certify.n_pcs``, default 50) projected on their top principal components: on ~1000 genes
    the network memorises ~1000 random labels within a few epochs, and the bound is vacuous
    (above 1). ``n_pcs: null`` certifies the gene-level model instead. The encoder and head are
    the experiment's ``model`` settings.
    """
    from biocls.preprocess import CellPreprocessor
    from biocls.splits import check_no_leak, plan_fold, read_splits
    from biocls.tasks.cells import PARTIAL_LOSS_KEYS, CellsTask, classifier

    if exp.task != "cells":
        raise BioclsError("`certify` is for cell experiments", where="--spec",
                          fix="pass a `task: cells` experiment")
    opts = exp.certify or Certify()
    delta, fold, seed = opts.delta, opts.fold, exp.seed
    table = read_splits(str(splits))
    if fold not in set(table["fold"].astype(int)):
        raise BioclsError(f"fold {fold} is not in splits.tsv", where="certify.fold",
                          fix=f"use one of {sorted(set(table['fold'].astype(int)))}")
    task = CellsTask()
    adata = task.load(exp)
    obs = adata.obs
    plan = plan_fold(table, fold, task.patients(adata),
                     validation_fraction=exp.validation_fraction, seed=seed, source=str(splits))
    fit_p, val_p = list(plan.fit), list(plan.validation)
    held_p = sorted(table.loc[table["fold"].astype(int) == fold, "patient"].astype(str))
    check_no_leak(fit_p + val_p, held_p, what="certify (training vs random-label patients)")
    fit_m, val_m, held_m = plan.masks(task.patients(adata))
    if not held_m.any():
        raise BioclsError(f"fold {fold} has no cells", where=str(splits), fix="pick another fold")

    pp = exp.preprocess
    pre = CellPreprocessor(nmads=None, n_top_genes=pp.n_top_genes, target_sum=pp.target_sum,
                           max_value=pp.max_value)
    pre.fit(adata[fit_m])
    X_fit, X_val, X_held = (pre.transform(adata[m]) for m in (fit_m, val_m, held_m))
    n_pcs = opts.n_pcs
    if n_pcs:
        X_fit, X_val, X_held = _project(X_fit, (X_fit, X_val, X_held), int(n_pcs), seed)
    o_fit, o_val, o_held = obs[fit_m], obs[val_m], obs[held_m]
    multilabel = bool(exp.keys.state_labels)
    heads = ["cell_type"]
    if not multilabel and "biocls_cell_state" in obs and o_fit["biocls_cell_state"].notna().any():
        heads.append("cell_state")
    rng = np.random.default_rng([seed, 7_772])
    true_fit = {h: o_fit[f"biocls_{h}"].to_numpy(dtype=object) for h in heads}
    vocab = {h: sorted({str(v) for v in true_fit[h] if v is not None}) for h in heads}
    random = {h: np.asarray(vocab[h], dtype=object)[rng.integers(0, len(vocab[h]), len(X_held))]
              for h in heads}

    # the certificate's own network on principal components, as before the linear path existed
    model = classifier(exp, drop=PARTIAL_LOSS_KEYS).set_params(path="deep")
    X = np.concatenate([X_fit, X_held])
    model.fit(X, np.concatenate([true_fit["cell_type"], random["cell_type"]]),
              np.concatenate([true_fit["cell_state"], random["cell_state"]])
              if "cell_state" in heads else None,
              X_val=X_val, cell_type_val=o_val["biocls_cell_type"].to_numpy(dtype=object),
              cell_state_val=(o_val["biocls_cell_state"].to_numpy(dtype=object)
                              if "cell_state" in heads else None))
    pred_fit, pred_held = model.predict(X_fit), model.predict(X_held)

    result: dict[str, Any] = {}
    for h in heads:
        k = len(vocab[h])
        if k < 2:
            log.warning("certify: %s has %d class(es); no bound", h, k)
            continue
        clean = known_mask(true_fit[h])
        truth = o_held[f"biocls_{h}"].to_numpy(dtype=object)
        known_held = known_mask(truth)
        n, m = int(clean.sum()), int(len(X_held))
        e_clean = float(np.mean(pred_fit[h][clean].astype(str) != true_fit[h][clean].astype(str)))
        e_rand = float(np.mean(pred_held[h].astype(str) != random[h].astype(str)))
        test = (float(np.mean(pred_held[h][known_held].astype(str) !=
                              truth[known_held].astype(str))) if known_held.any() else float("nan"))
        bound = ratt_bound(clean_error=e_clean, random_error=e_rand, k=k, m=m, n=n, delta=delta)
        result[h] = {"bound": bound, "test_error": test, "delta": delta, "m": m, "n": n, "k": k,
                     "clean_error": e_clean, "random_error": e_rand,
                     "confidence_term": confidence_term(k=k, m=m, n=n, delta=delta),
                     "n_test": int(known_held.sum())}
        log.info("certify %s: bound %.3f (E_clean %.3f, E_random %.3f, k=%d, m=%d), measured "
                 "test error %.3f", h, bound, e_clean, e_rand, k, m, test)
    write_json(out, {
        "method": "RATT (Garg et al. 2021, arXiv:2105.00303)",
        "experiment": exp.name, "fold": fold, "heldout_patients": held_p,
        "fit_patients": fit_p, "validation_patients": val_p,
        "assumptions": "per-cell bound; new patients exchangeable with these; cells treated as "
                       "independent draws in the confidence term",
        "n_pcs": int(n_pcs) if n_pcs else None,
        "skipped": ["cell_state (multi-label states are not certified)"] if multilabel else [],
        "history": model.history_.as_dict(), "heads": result})


def _project(X_fit: np.ndarray, parts: tuple[np.ndarray, ...], n_pcs: int,
             seed: int) -> tuple[np.ndarray, ...]:
    """Principal components fitted on the clean training cells, applied to every part."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=min(n_pcs, *X_fit.shape), random_state=seed).fit(X_fit)
    return tuple(pca.transform(x).astype(np.float32) for x in parts)


