"""Multi-label, partially annotated states: from an .h5ad with 1/0/NaN columns to predictions."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from biocls.cli import main
from biocls.estimators._cells import _multilabel_codes
from biocls.evaluate import multilabel_metrics
from biocls.simulate import simulate_cells

STATES = ["activated", "damaged"]


@pytest.fixture(scope="module")
def partial_h5ad(tmp_path_factory):
    """6 patients; 'activated' is unannotated for P01-P03, 'damaged' for P04; some NaN spots."""
    d = tmp_path_factory.mktemp("partial")
    adata = simulate_cells(n_patients=6, cells_per_patient=80, n_genes=150, n_types=3,
                           states=("healthy", "activated", "damaged"), seed=2)
    obs = adata.obs
    for s in STATES:
        obs[s] = (obs["cell_state"].astype(str) == s).astype(float)
    obs.loc[obs["patient"].isin(["P01", "P02", "P03"]), "activated"] = np.nan
    obs.loc[obs["patient"] == "P04", "damaged"] = np.nan
    obs.iloc[::7, obs.columns.get_loc("damaged")] = np.nan
    path = d / "partial.h5ad"
    adata.write_h5ad(path)
    return path, obs.copy()


def _spec(path, **model) -> dict:
    return {"task": "cells", "name": "p", "input": str(path), "folds": 2, "seed": 0,
            "progress": False, "validation_fraction": 0.25,
            "keys": {"cell_type": "cell_type", "patient": "patient", "state_labels": STATES},
            "preprocess": {"n_top_genes": 80},
            "model": {"hidden": [16], "max_epochs": 3, "patience": 2, **model}}


def test_partial_h5ad_to_predictions(tmp_path, partial_h5ad) -> None:
    path, obs = partial_h5ad
    sp = tmp_path / "spec.json"
    sp.write_text(json.dumps(_spec(path, partial_loss="selective")))
    splits = tmp_path / "splits.tsv"
    assert main(["-q", "split", "--spec", str(sp), "--out", str(splits)]) == 0
    for f in ("0", "1"):
        assert main(["-q", "train", "--spec", str(sp), "--splits", str(splits), "--fold", f,
                     "--out", str(tmp_path / "folds" / f), "--threads", "1"]) == 0
    assert main(["-q", "evaluate", "--spec", str(sp), "--splits", str(splits), "--folds-dir",
                 str(tmp_path / "folds"), "--out", str(tmp_path)]) == 0
    pred = pd.read_csv(tmp_path / "predictions.tsv", sep="\t", dtype={"patient": str})
    assert 0.9 * len(obs) <= len(pred) <= len(obs)  # QC may drop a few cells
    truth = obs.loc[pred["cell_id"]]
    for s in STATES:
        # unknown stays unknown (empty), never written as 0
        assert pred[f"true_state:{s}"].isna().sum() == truth[s].isna().sum() > 0
        np.testing.assert_array_equal(pred[f"true_state:{s}"].fillna(-1),
                                      truth[s].fillna(-1).to_numpy())
        p = pred[f"prob_state:{s}"]
        assert p.between(0, 1).all()
        assert set(pred[f"pred_state:{s}"]) <= {0, 1}
        np.testing.assert_array_equal(pred[f"pred_state:{s}"], (p >= 0.5).astype(int))
    assert "true_cell_state" not in pred
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["state_labels"] == STATES
    cs = m["cell_state"]
    assert set(cs["per_class_ap"]) == set(STATES)
    assert 0 <= cs["mAP"] <= 1 and 0 <= cs["macro_f1"] <= 1
    annotated = int(sum(pred[f"true_state:{s}"].notna().sum() for s in STATES))
    assert cs["n_annotated"] == annotated
    assert "cell_state" in m["baselines"]["logreg"]
    # patient pages: annotated labels next to predicted, unknown entries as filled in
    assert main(["-q", "report", "--results", str(tmp_path)]) == 0
    index = (tmp_path / "reports" / "index.html").read_text()
    assert "cell state: mAP, annotated entries" in index
    page = (tmp_path / "reports" / "patients" / "P01.html").read_text()
    assert "State labels: annotated and predicted" in page
    assert "? → <em>" in page  # P01 has 'activated' unannotated: filled in by the model
    n_filled = page.count('class="filled"')
    n_unknown = int(pred.loc[pred.patient == "P01", "true_state:activated"].isna().sum())
    assert n_filled >= min(25, n_unknown)


def test_bad_state_value_is_a_one_line_error(tmp_path, partial_h5ad, capsys) -> None:
    import anndata as ad

    path, _ = partial_h5ad
    adata = ad.read_h5ad(path)
    adata.obs.iloc[3, adata.obs.columns.get_loc("damaged")] = 2.0
    bad = tmp_path / "bad.h5ad"
    adata.write_h5ad(bad)
    sp = tmp_path / "spec.json"
    sp.write_text(json.dumps(_spec(bad)))
    assert main(["-q", "split", "--spec", str(sp), "--out", str(tmp_path / "s.tsv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damaged" in err[0] and "1 (present), 0 (absent)" in err[0]
    assert not (tmp_path / "s.tsv").exists()


def test_unknown_codes_and_metrics_use_annotated_entries_only() -> None:
    table = pd.DataFrame({"a": [1.0, np.nan, 0.0], "b": [np.nan, 0.0, 1.0]})
    names, codes = _multilabel_codes(table, 3)
    assert names == ["a", "b"]
    assert codes.tolist() == [[1, -1], [-1, 0], [0, 1]]
    # label a: annotated rows 0 (pos, 0.9) and 2 (neg, 0.2) -> AP 1; the unknown row 1 has a
    # high score for 'a' that would count as a false positive if unknown were negative
    score = np.array([[0.9, 0.1], [0.95, 0.3], [0.2, 0.8]])
    m = multilabel_metrics(table, score)
    assert m["per_class_ap"] == {"a": 1.0, "b": 1.0}
    assert m["mAP"] == 1.0 and m["macro_f1"] == 1.0 and m["n_annotated"] == 4
    negative_view = multilabel_metrics(table.fillna(0.0), score)
    assert negative_view["per_class_ap"]["a"] < 1.0


def test_config_takes_state_labels_partial_loss_and_certify() -> None:
    from biocls._errors import BioclsError
    from biocls.config import load_config

    block = {"task": "cells", "input": "x.h5ad",
             "keys": {"cell_type": "ct", "patient": "donor", "state_labels": STATES},
             "model": {"partial_loss": "negative", "priors": {"activated": 0.2}},
             "certify": {"delta": 0.1}}
    exp = load_config({"experiments": {"e": block}}).experiments["e"]
    assert exp.model.partial_loss == "negative" and exp.model.gamma_unann == 2.0
    assert exp.keys.state_labels == tuple(STATES) and exp.certify.delta == 0.1
    for bad in ({"model": {"partial_loss": "guess"}}, {"certify": {"delta": 1.5}},
                {"keys": {"cell_type": "ct", "state_labels": ["a", "a"]}},
                {"model": {"priors": {"activated": 2.0}}}):
        with pytest.raises(BioclsError):
            load_config({"experiments": {"e": {**block, **bad}}})


def test_classifier_priors_supplied_or_estimated() -> None:
    from biocls.estimators import CellClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 8)).astype(np.float32)
    t = np.where(X[:, 0] > 0, "A", "B")
    y = pd.DataFrame({"a": (X[:, 1] > 0).astype(float), "b": (X[:, 2] > 1).astype(float)})
    y.iloc[:60, 0] = np.nan
    kw = {"state_mode": "multilabel", "hidden": (8,), "max_epochs": 2, "progress": False}
    m = CellClassifier(partial_loss="selective", priors={"b": 0.1, "a": 0.7}, **kw).fit(X, t, y)
    assert m.priors_ == [0.7, 0.1]  # in the order of the state labels
    est = CellClassifier(partial_loss="selective", **kw).fit(X, t, y)
    assert len(est.priors_) == 2 and all(0 < v < 1 for v in est.priors_)
    assert CellClassifier(partial_loss="ignore", **kw).fit(X, t, y).priors_ is None
    with pytest.raises(ValueError, match="priors"):
        CellClassifier(partial_loss="selective", priors=[0.5], **kw).fit(X, t, y)
    with pytest.raises(ValueError, match="factored"):
        CellClassifier(head="joint", **kw).fit(X, t, y)
    proba = est.predict_proba(X)["cell_state"]
    assert proba.shape == (120, 2) and not np.allclose(proba.sum(1), 1.0)  # sigmoids, not softmax


def test_prior_model_early_stops_on_the_validation_cells() -> None:
    """CSL's first (ignore-mode) model estimates the priors; it must stop on the validation
    cells as the model does, not run every epoch on the training cells alone."""
    from biocls.estimators import CellClassifier

    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 8)).astype(np.float32)
    t = np.where(X[:, 0] > 0, "A", "B")
    y = pd.DataFrame({"a": (X[:, 1] > 0).astype(float), "b": (X[:, 2] > 1).astype(float)})
    y.iloc[:80, 0] = np.nan
    fit, val = slice(0, 150), slice(150, 200)
    est = CellClassifier(state_mode="multilabel", hidden=(8,), max_epochs=4, patience=4,
                         progress=False, partial_loss="selective")
    est.fit(X[fit], t[fit], y.iloc[fit], X_val=X[val], cell_type_val=t[val],
            cell_state_val=y.iloc[val])
    assert len(est.prior_history_.val_score) == len(est.prior_history_.train_loss) > 0
    assert len(est.priors_) == 2 and all(0 < p < 1 for p in est.priors_)
