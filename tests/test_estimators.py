"""Both estimators keep scikit-learn's contract: parameters in, ``clone``/``get_params``/
``set_params``, fitted attributes ending in ``_``, a fitted check, and one save/load shape."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import (
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
)

from biocls._errors import BioclsError
from biocls.estimators import CellClassifier, RepertoireClassifier
from biocls.models import pack_bag

ESTIMATORS = [CellClassifier, RepertoireClassifier]


# -- tiny data ------------------------------------------------------------------------------------
def cells(seed: int = 0, n: int = 60, g: int = 10):
    rng = np.random.default_rng(seed)
    t = np.array(["a", "b", "c"])[rng.integers(0, 3, n)]
    s = np.array(["x", "y"])[rng.integers(0, 2, n)]
    X = rng.normal(size=(n, g)).astype(np.float32)
    X[:, 0] += 3 * (t == "a")
    X[:, 1] += 3 * (s == "x")
    return X, t, s


def bags(n_bags: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_bags):
        lens = rng.integers(5, 15, 30)
        offs = np.concatenate([[0], np.cumsum(lens)])
        codes = rng.integers(1, 21, int(offs[-1])).astype(np.uint8)
        out.append(pack_bag(codes, offs, rng.integers(1, 5, 30).astype(np.float32)))
    return out, [0, 1] * (n_bags // 2)


def cell_model(**kw) -> CellClassifier:
    base = {"hidden": (8,), "max_epochs": 2, "patience": 2, "batch_size": 16, "progress": False,
            "device": "cpu", "priors": {"x": 0.3}}
    return CellClassifier(**{**base, **kw})


def rep_model(**kw) -> RepertoireClassifier:
    base = {"n_filters": 4, "n_patterns": 3, "max_epochs": 2, "patience": 2, "seed_filters": 2,
            "batch_size": 2, "device": "cpu", "chunk": 7}
    return RepertoireClassifier(**{**base, **kw})


@pytest.fixture(scope="module")
def fitted_cells() -> tuple[CellClassifier, np.ndarray]:
    X, t, s = cells()
    return cell_model().fit(X, t, s), X


@pytest.fixture(scope="module", params=["attention", "patterns"])
def fitted_reps(request) -> tuple[RepertoireClassifier, list]:
    b, y = bags()
    return rep_model(pooling=request.param, use_counts=True).fit(b, y, progress=False), b


# -- parameters -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_init_only_stores_parameters(cls) -> None:
    """scikit-learn's own checks: defaults of allowed types, nothing but parameters set in
    ``__init__`` (so clone and set_params see everything that defines the model)."""
    check_parameters_default_constructible(cls.__name__, cls())
    check_no_attributes_set_in_init(cls.__name__, cls())
    assert "checkpoint_dir" not in cls().get_params()  # a run's argument, not the model's


def test_clone_gives_equal_params_and_an_unfitted_copy(fitted_cells, fitted_reps) -> None:
    for est in (fitted_cells[0], fitted_reps[0]):
        copy = clone(est)
        assert type(copy) is type(est) and copy is not est
        assert copy.get_params(deep=True) == est.get_params(deep=True)
        assert not hasattr(copy, "net_") and not hasattr(copy, "history_")
        with pytest.raises(NotFittedError):
            copy.save("unused")
    cell = fitted_cells[0]
    assert clone(cell).priors == cell.priors and clone(cell).priors is not cell.priors


@pytest.mark.parametrize("est,changes", [
    (cell_model(), {"encoder": "mixer", "hidden": (16, 4), "input_dropout": 0.1,
                    "priors": {"x": 0.9}, "device": "auto"}),
    (rep_model(), {"pooling": "patterns", "top_fraction": None, "chunk": 99, "lr": 1e-2}),
], ids=["CellClassifier", "RepertoireClassifier"])
def test_set_params_then_get_params_round_trips(est, changes: dict) -> None:
    before = est.get_params(deep=True)
    assert est.set_params(**changes) is est
    assert est.get_params(deep=True) == {**before, **changes}
    for k, v in changes.items():
        assert getattr(est, k) == v
    with pytest.raises(ValueError, match="Invalid parameter"):
        est.set_params(checkpoint_dir="x")


def test_fit_validates_parameters_and_returns_self() -> None:
    b, y = bags()
    for bad in ({"top_fraction": 1.5}, {"chunk": 0}, {"lr": 0.0}, {"pooling": "gated"}):
        with pytest.raises(ValueError):
            rep_model(**bad).fit(b, y, progress=False)
    X, t, s = cells()
    with pytest.raises(ValueError, match="state_input"):
        cell_model(state_input="whitened").fit(X, t, s)
    est = rep_model()
    assert est.fit(b, y, progress=False) is est
    est = cell_model()
    assert est.fit(X, t, s) is est
    learned = {k for k in vars(est) if k not in est.get_params()}
    assert learned and all(k.endswith("_") for k in learned), learned


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_unfitted_predict_raises(cls) -> None:
    est = cls()
    if cls is CellClassifier:
        X, _, _ = cells()
        calls = [lambda: est.predict(X), lambda: est.predict_proba(X)]
    else:
        b, _ = bags(2)
        calls = [lambda: est.predict(b), lambda: est.predict_proba(b),
                 lambda: est.attend(b[0]), lambda: est.pattern_neighbours(b)]
    for call in calls:
        with pytest.raises(NotFittedError, match=f"{cls.__name__} is not fitted"):
            call()


# -- checkpoints ----------------------------------------------------------------------------------
def test_checkpoint_signature_ignores_device_and_progress(tmp_path: Path) -> None:
    """A run resumes on another device setting or without its progress bar, but not with
    other settings; the signature is the same for equal parameters."""
    X, t, s = cells()
    first = cell_model(max_epochs=3, patience=3).fit(X, t, s, checkpoint_dir=tmp_path)
    assert first.history_.resumed_from == 0
    moved = cell_model(max_epochs=3, patience=3, device="auto", progress=True)
    assert moved._training_params() == first._training_params()
    assert moved.fit(X, t, s, checkpoint_dir=tmp_path).history_.resumed_from == 3
    other = cell_model(max_epochs=3, patience=3, lr=1e-2).fit(X, t, s, checkpoint_dir=tmp_path)
    assert other.history_.resumed_from == 0
    params = rep_model()._training_params()
    assert {"device", "progress"}.isdisjoint(params) and params["chunk"] == 7


# -- save / load ----------------------------------------------------------------------------------
META = {"experiment": "e1", "keys": {"patient": "donor"}, "top_n": 3}


def _save_and_load(est, tmp_path: Path):
    """save(meta=...) then Cls.load: model.json names the kind, meta_ comes back as given."""
    cls = type(est)
    est.save(tmp_path / "m", meta=META)
    info = json.loads((tmp_path / "m" / "model.json").read_text())
    assert info["kind"] == cls.__name__ and info["meta"] == META
    back = cls.load(tmp_path / "m")
    assert isinstance(back, cls) and back.meta_ == META
    return back


def test_cells_save_load_round_trip(fitted_cells, tmp_path: Path) -> None:
    est, X = fitted_cells
    back = _save_and_load(est, tmp_path)
    a, b = est.predict_proba(X), back.predict_proba(X)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    back.save(tmp_path / "again")  # meta=None keeps the loaded metadata
    assert CellClassifier.load(tmp_path / "again").meta_ == META


def test_repertoires_save_load_round_trip(fitted_reps, tmp_path: Path) -> None:
    est, b = fitted_reps
    back = _save_and_load(est, tmp_path)
    assert back.get_params() == {**est.get_params(), "device": "cpu"}
    np.testing.assert_array_equal(back.predict_proba(b), est.predict_proba(b))
    np.testing.assert_array_equal(back.predict(b), (est.predict_proba(b) >= 0.5).astype(int))
    for x, y in zip(back.attend(b[0], 5), est.attend(b[0], 5), strict=True):
        np.testing.assert_array_equal(x, y)


def test_old_repertoire_model_folder_still_loads(fitted_reps, tmp_path: Path) -> None:
    """Folders written before the estimators moved: kind ``repertoire_mil``, the caller's
    metadata at the top level of model.json."""
    est, b = fitted_reps
    est.save(tmp_path / "m", meta=META)
    path = tmp_path / "m" / "model.json"
    info = json.loads(path.read_text())
    path.write_text(json.dumps({"kind": "repertoire_mil", "params": info["params"], **META}))
    back = RepertoireClassifier.load(tmp_path / "m")
    assert back.meta_ == META
    np.testing.assert_array_equal(back.predict_proba(b), est.predict_proba(b))


def test_load_refuses_a_model_of_the_other_kind(fitted_cells, fitted_reps,
                                                tmp_path: Path) -> None:
    fitted_cells[0].save(tmp_path / "cells")
    fitted_reps[0].save(tmp_path / "reps")
    with pytest.raises(BioclsError, match="not a RepertoireClassifier"):
        RepertoireClassifier.load(tmp_path / "cells")
    with pytest.raises(BioclsError, match="not a CellClassifier"):
        CellClassifier.load(tmp_path / "reps")


def test_loaded_estimators_are_fitted_and_cloneable(fitted_cells, tmp_path: Path) -> None:
    fitted_cells[0].save(tmp_path / "m")
    back = CellClassifier.load(tmp_path / "m")
    assert back.meta_ == {}
    assert not hasattr(clone(back), "net_") and not hasattr(clone(back), "meta_")
    assert isinstance(back.net_, torch.nn.Module)


def test_kmer_baseline_chooses_on_training_rows_and_clones() -> None:
    """The k-mer baseline picks k by inner grouped CV (the informative k wins), and follows the
    same contract as the other estimators."""
    from sklearn.base import clone

    from biocls.estimators import KmerLogisticRegression

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    groups = np.arange(40) // 2  # two repertoires per subject
    noise = rng.normal(size=(40, 30))
    signal = noise.copy()
    signal[:, 0] += 3.0 * y  # only the k=4 features carry the label
    est = KmerLogisticRegression(kmers=(3, 4), Cs=(0.1, 1.0), inner_folds=3, seed=0)
    est.fit({3: noise, 4: signal}, y, groups)
    assert est.k_ == 4 and est.chosen()["inner_roc_auc"] > 0.9
    proba = est.predict_proba(signal[:6])
    assert proba.shape == (6,) and ((proba >= 0) & (proba <= 1)).all()
    copy = clone(est)
    assert copy.get_params() == est.get_params() and not hasattr(copy, "model_")
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        copy.predict_proba(signal)
