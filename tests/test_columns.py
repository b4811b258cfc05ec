"""The one owner of predictions.tsv's columns: names, the writer's order, and the one reader."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biocls import BioclsError
from biocls import columns as C


def test_column_names() -> None:
    assert C.true_col("cell_type") == "true_cell_type"
    assert [C.pred_col("cell_state", m) for m in C.MODELS] == [
        "pred_cell_state", "joint_pred_cell_state", "logreg_pred_cell_state"]
    assert C.confidence_col("cell_type") == "cell_type_confidence"
    assert C.prob_col("cell_type", "B & plasma") == "prob_cell_type:B & plasma"
    assert C.true_state_col("activated") == "true_state:activated"
    assert C.pred_state_col("activated") == "pred_state:activated"
    assert C.prob_state_col("activated") == "prob_state:activated"
    assert C.prob_state_col("activated", "logreg") == "logreg_prob_state:activated"
    with pytest.raises(ValueError, match="factored, joint, logreg"):
        C.pred_col("cell_type", "svm")
    with pytest.raises(ValueError):
        C.prob_state_col("x", "joint")  # the joint head has no multi-label states
    cols = ["cell_id", "true_state:a:b", "pred_state:a:b", "prob_cell_type:T", "prob_cell_type:NK"]
    assert C.state_labels(cols) == ["a:b"]  # a label may itself hold a colon
    assert C.prob_classes(cols, "cell_type") == ["T", "NK"]
    assert all(C.is_label_col(c) for c in ("true_cell_type", "joint_pred_cell_state"))
    assert not any(C.is_label_col(c) for c in ("true_state:a", "pred_state:a", "predicted",
                                                "cell_type_confidence", "prob_cell_type:T"))


def test_read_predictions_keeps_ids_and_labels_as_text(tmp_path: Path) -> None:
    path = tmp_path / "predictions.tsv"
    path.write_text(
        "cell_id\tpatient\tfold\ttrue_cell_type\tpred_cell_type\tcell_type_confidence"
        "\ttrue_state:a\n"
        "001\tNA\t0\t1\t1\t0.5\t1\n"
        "002\t007\t1\t\t2\t0.25\t\n"
        "NA\tNone\t1\tNA\t1\t\t0\n"
    )
    frame = C.read_predictions(path)
    assert list(frame["cell_id"]) == ["001", "002", "NA"]
    assert list(frame["patient"]) == ["NA", "007", "None"]  # IDs, not missing values
    assert frame["fold"].dtype.kind == "i"
    # numeric-looking labels stay text, so annotated "1" equals predicted "1"
    assert list(frame["pred_cell_type"]) == ["1", "2", "1"]
    assert frame["true_cell_type"].iloc[0] == "1" and frame["true_cell_type"].iloc[2] == "NA"
    assert pd.isna(frame["true_cell_type"].iloc[1])  # only an empty field is missing
    assert frame["cell_type_confidence"].dtype.kind == "f"
    assert frame["true_state:a"].tolist()[0] == 1 and np.isnan(frame["true_state:a"].iloc[1])


def test_read_predictions_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(BioclsError, match="file not found"):
        C.read_predictions(tmp_path / "predictions.tsv")
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(BioclsError, match="empty"):
        C.read_predictions(tmp_path / "empty.tsv")
    (tmp_path / "p.tsv").write_text("cell_id\tpatient\nc1\tP1\n")
    with pytest.raises(BioclsError, match="missing column.*fold") as err:
        C.read_predictions(tmp_path / "p.tsv", required=(C.PATIENT, C.FOLD))
    assert "\n" not in str(err.value)
    assert list(C.read_predictions(tmp_path / "p.tsv").columns) == ["cell_id", "patient"]


def test_read_predictions_from_a_buffer_reads_as_the_file() -> None:
    text = "cell_id\tpatient\tfold\ttrue_cell_type\n007\tNA\t0\t1\n008\tP2\t1\t\n"
    frame = C.read_predictions(io.StringIO(text), required=(C.PATIENT, C.FOLD))
    assert list(frame["cell_id"]) == ["007", "008"] and frame["patient"].iloc[0] == "NA"
    assert frame["true_cell_type"].iloc[0] == "1" and pd.isna(frame["true_cell_type"].iloc[1])


@pytest.mark.parametrize("states", ["single", "multilabel"])
def test_cell_prediction_columns_match_the_writer(tmp_path: Path, states: str) -> None:
    """`cell_prediction_columns` lists exactly what `biocls train` writes, in the same order."""
    import json

    from biocls.cli import main
    from biocls.simulate import simulate_cells

    adata = simulate_cells(n_patients=4, cells_per_patient=40, n_genes=120, n_types=3, seed=0,
                           states=("healthy", "activated", "damaged"))
    keys: dict = {"cell_type": "cell_type", "patient": "patient"}
    labels = ["activated", "damaged"] if states == "multilabel" else []
    if labels:
        for name in labels:
            adata.obs[name] = (adata.obs["cell_state"].astype(str) == name).astype(float)
        adata.obs.iloc[::5, adata.obs.columns.get_loc("damaged")] = np.nan
        keys["state_labels"] = labels
    else:
        keys["cell_state"] = "cell_state"
    adata.write_h5ad(tmp_path / "x.h5ad")
    spec = {"task": "cells", "name": "t", "input": str(tmp_path / "x.h5ad"), "folds": 2,
            "seed": 0, "progress": False, "keys": keys, "preprocess": {"n_top_genes": 60},
            "model": {"hidden": [8], "max_epochs": 1, "patience": 1}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    sp, splits = str(tmp_path / "spec.json"), str(tmp_path / "splits.tsv")
    assert main(["-q", "split", "--spec", sp, "--out", splits]) == 0
    assert main(["-q", "train", "--spec", sp, "--splits", splits, "--fold", "0",
                 "--out", str(tmp_path / "f0"), "--threads", "1"]) == 0
    written = list(C.read_predictions(tmp_path / "f0" / "predictions.tsv").columns)
    heads = C.HEADS if states == "single" else C.HEADS[:1]
    classes = {h: C.prob_classes(written, h) for h in heads}
    assert all(classes.values())
    assert C.cell_prediction_columns(classes=classes, has_state=states == "single",
                                     state_labels=labels) == written
