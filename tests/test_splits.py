"""Patient-grouped folds and the leakage guard (biocls.splits), and the guard in the fold
runner (biocls.tasks.train)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biocls import BioclsError
from biocls.splits import (
    assign_pseudo_patients,
    check_no_leak,
    patient_folds,
    plan_fold,
    read_splits,
    validation_patients,
)


def cells_of(n_patients: int, *, per_patient: int = 10, seed: int = 0):
    """Per-cell patient IDs and labels; every patient is dominated by one of two labels."""
    rng = np.random.default_rng(seed)
    patients, labels = [], []
    for p in range(n_patients):
        major = "A" if p % 2 == 0 else "B"
        for _ in range(per_patient):
            patients.append(f"P{p:02d}")
            labels.append(major if rng.random() < 0.9 else ("B" if major == "A" else "A"))
    return np.array(patients), np.array(labels)


@pytest.mark.parametrize("n_patients,n_folds", [(5, 5), (7, 3), (20, 5), (13, 2)])
def test_every_patient_in_exactly_one_fold(n_patients: int, n_folds: int) -> None:
    patients, labels = cells_of(n_patients)
    folds = patient_folds(patients, labels, n_folds=n_folds, seed=3)
    assert sorted(folds["patient"]) == sorted(set(patients))  # every patient, once
    assert not folds["patient"].duplicated().any()
    assert set(folds["fold"]) == set(range(n_folds))  # every fold gets someone
    # per cell: the fold's test cells and training cells never share a patient
    fold_of = dict(zip(folds["patient"], folds["fold"], strict=True))
    cell_fold = np.array([fold_of[p] for p in patients])
    for k in range(n_folds):
        assert not set(patients[cell_fold == k]) & set(patients[cell_fold != k])
    counts = pd.Series(patients).value_counts()
    assert (folds.set_index("patient")["n_items"] == counts[folds["patient"]].values).all()


def test_folds_deterministic_per_seed() -> None:
    patients, labels = cells_of(20)
    a = patient_folds(patients, labels, n_folds=4, seed=7)
    b = patient_folds(patients, labels, n_folds=4, seed=7)
    pd.testing.assert_frame_equal(a, b)
    others = [patient_folds(patients, labels, n_folds=4, seed=s)["fold"].tolist()
              for s in range(8, 12)]
    assert any(o != a["fold"].tolist() for o in others), "the seed changes nothing"


def test_stratification_roughly_balanced() -> None:
    patients, labels = cells_of(20, per_patient=20)
    folds = patient_folds(patients, labels, n_folds=5, seed=0)
    fold_of = dict(zip(folds["patient"], folds["fold"], strict=True))
    cell_fold = np.array([fold_of[p] for p in patients])
    overall = np.mean(labels == "A")
    for k in range(5):
        frac = np.mean(labels[cell_fold == k] == "A")
        assert abs(frac - overall) < 0.2, (k, frac, overall)
        assert 3 <= (folds["fold"] == k).sum() <= 5  # 20 patients / 5 folds, approximately


def test_unlabelled_folds_still_grouped() -> None:
    patients, _ = cells_of(6)
    folds = patient_folds(patients, None, n_folds=3, seed=0)
    assert sorted(folds.groupby("fold").size()) == [2, 2, 2]


def test_fewer_patients_than_folds_is_a_clear_error() -> None:
    patients, labels = cells_of(3)
    with pytest.raises(BioclsError, match="pseudo_patients") as e:
        patient_folds(patients, labels, n_folds=5, source="my_exp")
    msg = str(e.value)
    assert "my_exp" in msg and "keys.patient" in msg and "fix:" in msg and "\n" not in msg


def test_one_fold_is_an_error() -> None:
    patients, labels = cells_of(4)
    with pytest.raises(BioclsError, match="folds"):
        patient_folds(patients, labels, n_folds=1)


def test_check_no_leak() -> None:
    check_no_leak(["a", "b"], ["c"])  # disjoint: fine
    check_no_leak([], ["c"])
    with pytest.raises(RuntimeError, match="leakage.*b"):
        check_no_leak(["a", "b"], ["b", "c"], what="fold 0")
    with pytest.raises(RuntimeError, match="leakage"):  # IDs compared as strings
        check_no_leak([1, 2], ["2"])


@pytest.mark.parametrize("n", range(1, 12))
@pytest.mark.parametrize("fraction", [0.01, 0.2, 0.5, 0.99])
def test_validation_patients_never_all(n: int, fraction: float) -> None:
    train = [f"P{i}" for i in range(n)]
    val = validation_patients(train, fraction=fraction, seed=1)
    assert set(val) <= set(train)
    assert len(val) == len(set(val))
    assert len(val) < n or n == 0
    if n >= 2:
        assert len(val) >= 1
    else:
        assert val == []
    assert val == validation_patients(list(reversed(train)), fraction=fraction, seed=1)


def test_validation_patients_depend_on_seed() -> None:
    train = [f"P{i}" for i in range(30)]
    picks = {tuple(validation_patients(train, fraction=0.2, seed=s)) for s in range(5)}
    assert len(picks) > 1


def test_pseudo_patients_deterministic_and_balanced() -> None:
    a = assign_pseudo_patients(103, 4, seed=5)
    assert (a == assign_pseudo_patients(103, 4, seed=5)).all()
    assert (a != assign_pseudo_patients(103, 4, seed=6)).any()
    sizes = pd.Series(a).value_counts()
    assert len(sizes) == 4 and sizes.max() - sizes.min() <= 1
    assert all(str(p).startswith("pseudo") for p in sizes.index)


def test_read_splits_refuses_a_patient_twice(tmp_path: Path) -> None:
    f = tmp_path / "splits.tsv"
    f.write_text("patient\tfold\nP1\t0\nP2\t1\nP1\t1\n")
    with pytest.raises((RuntimeError, BioclsError), match="P1"):
        read_splits(str(f))
    f.write_text("patient\tgroup\nP1\t0\n")
    with pytest.raises(BioclsError, match="patient, fold"):
        read_splits(str(f))


def test_plan_fold_sets_are_disjoint_and_cover_the_patients() -> None:
    patients, labels = cells_of(10)
    folds = patient_folds(patients, labels, n_folds=3, seed=0)
    for k in range(3):
        plan = plan_fold(folds, k, patients, validation_fraction=0.2, seed=1)
        fit, val, test = map(set, (plan.fit, plan.validation, plan.test))
        assert test == set(folds.loc[folds["fold"] == k, "patient"])
        assert not fit & val and not fit & test and not val & test
        assert fit | val | test == set(patients) and val and fit
        assert val == set(validation_patients(sorted(fit | val), fraction=0.2, seed=1))
        m_fit, m_val, m_test = plan.masks(patients)
        assert not (m_fit & m_val).any() and (m_fit | m_val | m_test).all()
    final = plan_fold(folds, "final", patients, validation_fraction=0.2, seed=1)
    assert final.final and final.test == () and set(final.fit) | set(final.validation) == \
        set(patients)
    with pytest.raises(BioclsError, match="fold 7"):
        plan_fold(folds, 7, patients, validation_fraction=0.2)
    with pytest.raises(BioclsError, match="neither a number"):
        plan_fold(folds, "last", patients, validation_fraction=0.2)
    with pytest.raises(BioclsError, match="P10"):  # a patient the splits do not know
        plan_fold(folds, 0, np.append(patients, "P10"), validation_fraction=0.2)


# -- the guard in the fold runner ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    from biocls.config import parse_experiment
    from biocls.simulate import simulate_cells

    root = tmp_path_factory.mktemp("tiny")
    path = root / "cells.h5ad"
    simulate_cells(n_patients=4, cells_per_patient=30, n_genes=60, seed=2).write_h5ad(path)
    return parse_experiment({
        "task": "cells", "name": "tiny", "input": str(path), "folds": 2, "seed": 0,
        "progress": False,
        "keys": {"cell_type": "cell_type", "cell_state": "cell_state", "patient": "patient"},
        "model": {"hidden": [8], "max_epochs": 1, "patience": 1},
        "preprocess": {"n_top_genes": 20}})


@pytest.fixture(scope="module")
def task():
    from biocls.tasks import get_task

    return get_task("cells")


def test_train_fold_refuses_patient_in_two_folds(tiny, task, tmp_path: Path) -> None:
    from biocls.tasks import split, train

    splits = tmp_path / "splits.tsv"
    split(task, tiny, splits)
    table = pd.read_csv(splits, sep="\t", dtype={"patient": str})
    assert sorted(table["fold"].unique()) == [0, 1]
    moved = table.iloc[[0]].assign(fold=1 - int(table["fold"].iloc[0]))
    pd.concat([table, moved]).to_csv(splits, sep="\t", index=False)  # patient on both sides
    out = tmp_path / "folds" / "0"
    with pytest.raises((RuntimeError, BioclsError), match=str(table["patient"].iloc[0])):
        train(task, tiny, splits=splits, fold="0", out_dir=out)
    assert not out.exists()


def test_train_fold_refuses_patient_missing_from_splits(tiny, task, tmp_path: Path) -> None:
    from biocls.tasks import split, train

    splits = tmp_path / "splits.tsv"
    split(task, tiny, splits)
    table = pd.read_csv(splits, sep="\t", dtype={"patient": str})
    table.iloc[1:].to_csv(splits, sep="\t", index=False)
    out = tmp_path / "folds" / "0"
    with pytest.raises(BioclsError, match="not in the splits") as e:
        train(task, tiny, splits=splits, fold="0", out_dir=out)
    assert str(table["patient"].iloc[0]) in str(e.value) and str(splits) in str(e.value)
    assert not out.exists()


def test_fold_predictions_hold_only_that_folds_patients(tiny, task, tmp_path: Path) -> None:
    from biocls.tasks import split, train

    splits = tmp_path / "splits.tsv"
    split(task, tiny, splits)
    table = pd.read_csv(splits, sep="\t", dtype={"patient": str})
    out = tmp_path / "folds" / "1"
    train(task, tiny, splits=splits, fold="1", out_dir=out)
    pred = pd.read_csv(out / "predictions.tsv", sep="\t", dtype={"patient": str})
    held_out = set(table.loc[table["fold"] == 1, "patient"])
    assert set(pred["patient"]) == held_out
    info = json.loads((out / "fold_info.json").read_text())
    trained = set(info["fit_patients"]) | set(info["validation_patients"])
    assert not trained & held_out
    assert trained | held_out == set(table["patient"])


def test_everything_learned_sees_only_fit_patients(tiny, task, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Record what each learner actually receives when a fold trains: gene selection and
    scaling, the factored/joint models and the logistic-regression baseline must see
    fit-patient cells only (validation cells only for early stopping), never the held-out
    fold."""
    from biocls.estimators import CellClassifier
    from biocls.preprocess import CellPreprocessor
    from biocls.tasks import cells, split, train

    seen: dict[str, list] = {"pre": [], "clf": [], "logreg": []}
    real_pre_fit, real_clf_fit, real_logreg = (CellPreprocessor.fit, CellClassifier.fit,
                                               cells._logreg)

    def pre_fit(self, adata, *a, **k):
        seen["pre"].append(set(adata.obs["biocls_patient"]))
        return real_pre_fit(self, adata, *a, **k)

    def clf_fit(self, X, *a, **k):
        seen["clf"].append((len(X), len(k.get("X_val", []))))
        return real_clf_fit(self, X, *a, **k)

    def logreg(X, y, X_test, seed):
        seen["logreg"].append(len(X))
        return real_logreg(X, y, X_test, seed)

    monkeypatch.setattr(CellPreprocessor, "fit", pre_fit)
    monkeypatch.setattr(CellClassifier, "fit", clf_fit)
    monkeypatch.setattr(cells, "_logreg", logreg)
    splits = tmp_path / "splits.tsv"
    split(task, tiny, splits)
    out = tmp_path / "folds" / "0"
    train(task, tiny, splits=splits, fold="0", out_dir=out)
    info = json.loads((out / "fold_info.json").read_text())
    fit_p, val_p = set(info["fit_patients"]), set(info["validation_patients"])
    assert seen["pre"] == [fit_p]
    obs = task.load(tiny).obs
    n_fit = int(obs["biocls_patient"].isin(fit_p).sum())
    n_val = int(obs["biocls_patient"].isin(val_p).sum())
    # the factored model (path: ensemble), its deep and linear members, and its joint twin
    assert len(seen["clf"]) == 4
    assert all(c == (n_fit, n_val) for c in seen["clf"])
    assert seen["logreg"] and all(n == n_fit for n in seen["logreg"])
