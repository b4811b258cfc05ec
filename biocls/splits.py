"""Patient-grouped folds, shared by every task.

No patient is ever on both sides of a split: :func:`patient_folds` builds the folds,
:func:`check_no_leak` is the guard every training step calls before it touches data.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from biocls._errors import BioclsError

__all__ = ["FoldPlan", "assign_pseudo_patients", "check_no_leak", "patient_folds", "plan_fold",
           "read_splits", "validation_patients"]

log = logging.getLogger(__name__)


def patient_folds(
    patients: Sequence[str] | np.ndarray,
    labels: Sequence[str] | np.ndarray | None = None,
    *,
    n_folds: int = 5,
    seed: int = 0,
    source: str = "input",
) -> pd.DataFrame:
    """Assign every patient to one of ``n_folds`` folds, stratified by ``labels`` where possible.

    ``patients`` and ``labels`` are per item (cell or repertoire). Stratification uses sklearn's
    ``StratifiedGroupKFold``, which places groups greedily, so the balance is approximate; the
    achieved sizes are logged. Returns one row per patient: ``patient``, ``fold``, ``n_items``.
    """
    patients = np.asarray(patients).astype(str)
    uniq = np.unique(patients)
    if n_folds < 2:
        raise BioclsError(f"folds is {n_folds}", where=f"{source}: folds",
                          fix="set folds to 2 or more")
    if len(uniq) < n_folds:
        raise BioclsError(
            f"{len(uniq)} patient(s) for {n_folds} folds; no patient may sit in two folds",
            where=f"{source}: keys.patient",
            fix="lower `folds`, add patients, or set `pseudo_patients: N` to split a single donor "
                "into N pseudo-patients (documented in the README; not patient-level evaluation)",
        )
    y = np.zeros(len(patients), dtype=int) if labels is None else _encode(labels)
    # StratifiedGroupKFold needs every class to have >= n_folds members to stratify cleanly;
    # it still returns valid grouped folds otherwise, only less balanced.
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold_of: dict[str, int] = {}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, test) in enumerate(splitter.split(np.zeros(len(patients)), y, patients)):
            for p in np.unique(patients[test]):
                fold_of[p] = k
    counts = pd.Series(patients).value_counts()
    out = pd.DataFrame({"patient": uniq, "fold": [fold_of[p] for p in uniq],
                        "n_items": [int(counts[p]) for p in uniq]})
    sizes = out.groupby("fold").agg(patients=("patient", "size"), items=("n_items", "sum"))
    log.info("fold sizes (patients/items): %s",
             ", ".join(f"{k}: {r['patients']}/{r['items']}" for k, r in sizes.iterrows()))
    if sizes.shape[0] < n_folds:
        raise BioclsError(f"only {sizes.shape[0]} of {n_folds} folds received patients",
                          where=f"{source}: folds", fix="lower `folds`")
    return out


def validation_patients(train_patients: Sequence[str], *, fraction: float = 0.15,
                        seed: int = 0) -> list[str]:
    """Pick whole training patients for early stopping (at least one, never all)."""
    pats = sorted(set(map(str, train_patients)))
    if len(pats) < 2:
        return []
    n = min(len(pats) - 1, max(1, int(round(fraction * len(pats)))))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(pats, size=n, replace=False).tolist())


def check_no_leak(train_patients: Sequence[str], test_patients: Sequence[str], *,
                  what: str = "fold") -> None:
    """Raise loudly if any patient is on both sides of a split."""
    both = sorted(set(map(str, train_patients)) & set(map(str, test_patients)))
    if both:
        raise RuntimeError(
            f"patient leakage in {what}: {len(both)} patient(s) on both sides "
            f"({', '.join(both[:5])}{'…' if len(both) > 5 else ''})")


@dataclass(frozen=True)
class FoldPlan:
    """Which patients a fold fits on, early-stops on and tests on (disjoint, checked)."""

    fold: str
    fit: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]

    @property
    def final(self) -> bool:
        """The final model: every patient trains, none is tested."""
        return self.fold == "final"

    def masks(self, patients: Sequence[str] | np.ndarray) -> tuple[np.ndarray, ...]:
        """Per-item boolean masks ``(fit, validation, test)`` for items of ``patients``."""
        p = np.asarray(patients).astype(str)
        return tuple(np.isin(p, list(s)) for s in (self.fit, self.validation, self.test))

    def as_dict(self) -> dict[str, object]:
        return {"fold": self.fold, "fit_patients": list(self.fit),
                "validation_patients": list(self.validation), "test_patients": list(self.test)}


def plan_fold(fold_of: Mapping[str, int] | pd.DataFrame, fold: str | int,
              patients: Sequence[str] | np.ndarray, *, validation_fraction: float,
              seed: int = 0, source: str = "splits.tsv",
              hold_out: int | None = None) -> FoldPlan:
    """The one place a fold's fit, validation and test patients are chosen, for every task.

    ``fold_of`` maps patient → fold (or is ``splits.tsv``); ``patients`` are the patients present
    in the data. ``fold="final"`` tests nobody, unless ``hold_out`` names a fold whose patients
    the final model must never see (a certified model is measured on them). Validation patients
    are whole training patients (:func:`validation_patients`); every pair of sets is checked for
    leakage.
    """
    if isinstance(fold_of, pd.DataFrame):
        fold_of = dict(zip(fold_of["patient"].astype(str), fold_of["fold"].astype(int),
                           strict=True))
    present = sorted(set(np.asarray(patients).astype(str)))
    unknown = [p for p in present if p not in fold_of]
    if unknown:
        raise BioclsError(f"patients {unknown[:3]} are not in the splits", where=source,
                          fix="re-run `biocls split` (delete the file) after changing the input")
    fold = str(fold)
    if fold == "final" and hold_out is None:
        test: list[str] = []
    else:
        try:
            k = int(hold_out if fold == "final" else fold)
        except ValueError:
            raise BioclsError(f"fold {fold!r} is neither a number nor 'final'", where="--fold",
                              fix="pass 0..K-1 or final") from None
        if k not in set(fold_of.values()):
            raise BioclsError(f"fold {k} is not in the splits", where=source,
                              fix=f"use one of {sorted(set(fold_of.values()))}")
        test = sorted(p for p in present if fold_of[p] == k)
    train = sorted(set(present) - set(test))
    val = validation_patients(train, fraction=validation_fraction, seed=seed)
    fit = sorted(set(train) - set(val))
    check_no_leak(train, test, what=f"fold {fold} (train vs test)")
    check_no_leak(fit, val, what=f"fold {fold} (fit vs validation)")
    return FoldPlan(fold, tuple(fit), tuple(val), tuple(test))


def assign_pseudo_patients(n_items: int, n_groups: int, *, seed: int = 0) -> np.ndarray:
    """Randomly split a single donor's items into ``n_groups`` pseudo-patients.

    Only for data with one donor (e.g. pbmc68k_reduced): folds then measure within-donor
    generalisation, which is optimistic compared to new patients. Reports say so.
    """
    rng = np.random.default_rng(seed)
    groups = np.arange(n_items) % n_groups
    rng.shuffle(groups)
    return np.array([f"pseudo{g:02d}" for g in groups])


def read_splits(path: str) -> pd.DataFrame:
    """Read ``splits.tsv`` and check that each patient appears once."""
    df = pd.read_csv(path, sep="\t", dtype={"patient": str}, keep_default_na=False)
    if not {"patient", "fold"} <= set(df.columns):
        raise BioclsError("needs columns patient, fold", where=path,
                          fix="regenerate it with `biocls split`")
    dup = df["patient"][df["patient"].duplicated()].tolist()
    if dup:
        raise RuntimeError(f"{path}: patient(s) {dup[:5]} assigned to more than one fold")
    return df


def _encode(labels: Sequence[str] | np.ndarray) -> np.ndarray:
    return pd.factorize(pd.Series(np.asarray(labels)).astype(str))[0]
