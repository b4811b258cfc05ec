"""The numbers of the reports, computed by biocls.evaluate and written into metrics.json."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from biocls import columns as C
from biocls.evaluate import (
    call_counts,
    classification_metrics,
    composition,
    confidence_histogram,
    confusion_table,
    confusion_tables,
    enriched_kmers_by_repertoire,
    enriched_motifs,
    least_confident,
    patient_details,
    predicted_composition,
    roc_points,
    state_summary,
    top_errors,
)


def _cells() -> pd.DataFrame:
    """Nine cells of two patients; two lack a type annotation, three a state annotation."""
    return pd.DataFrame({
        "cell_id": [f"c{i}" for i in range(9)],
        "patient": ["P1"] * 5 + ["P2"] * 4,
        "fold": [0] * 5 + [1] * 4,
        "true_cell_type": ["A", "A", "B", np.nan, "B", "C", "A", np.nan, "C"],
        "pred_cell_type": ["A", "B", "B", "A", "B", "A", "A", "C", "A"],
        "cell_type_confidence": [0.9, 0.6, 0.8, 0.3, 0.99, 0.55, 1.0, 0.2, 0.45],
        "true_cell_state": ["x", np.nan, "y", "x", np.nan, "y", np.nan, "x", "x"],
        "pred_cell_state": ["x", "x", "y", "y", "y", "x", "y", "x", "x"],
        "cell_state_confidence": [0.7] * 9,
        "joint_pred_cell_type": ["A", "A", "B", "B", "B", "C", "A", "C", "C"],
        "joint_pred_cell_state": ["x"] * 9,
        "logreg_pred_cell_type": ["B"] * 9,
    })


def test_confusion_table_matches_a_hand_count() -> None:
    pred = _cells()
    table = confusion_table(pred["true_cell_type"], pred["pred_cell_type"])
    assert table["labels"] == ["A", "B", "C"]
    # rows annotated, columns predicted: A→A, A→B, A→A; B→B, B→B; C→A, C→A
    assert table["counts"] == [[2, 1, 0], [0, 2, 0], [2, 0, 0]]
    annotated = int(pred["true_cell_type"].notna().sum())
    assert sum(map(sum, table["counts"])) == annotated == 7
    assert classification_metrics(pred["true_cell_type"], pred["pred_cell_type"])["n"] == 7
    # the diagonal is the accuracy that metrics.json reports
    acc = np.trace(np.array(table["counts"])) / annotated
    assert acc == pytest.approx(
        classification_metrics(pred["true_cell_type"], pred["pred_cell_type"])["accuracy"])


def test_confusion_tables_per_head_and_model() -> None:
    pred = _cells()
    tables = confusion_tables(pred)
    assert set(tables) == {"cell_type", "cell_state"}
    assert set(tables["cell_type"]) == {"factored", "joint", "logreg"}
    assert set(tables["cell_state"]) == {"factored", "joint"}  # no logreg state column
    for head, by_model in tables.items():
        n = int(pred[C.true_col(head)].notna().sum())
        for t in by_model.values():
            assert sum(map(sum, t["counts"])) == n
            assert len(t["counts"]) == len(t["labels"]) == len(t["counts"][0])
    # a head with no annotated cell has no table (the page then shows no state head)
    unannotated = pred.assign(true_cell_state=np.nan)
    assert "cell_state" not in confusion_tables(unannotated)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_points_start_at_zero_end_at_one_and_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60).astype(float)
    score = np.round(rng.uniform(size=60) + 0.3 * y, 1)  # rounded: many ties across classes
    # rows without a usable label or score are left out, as the metric leaves them out
    y_all = np.r_[y, [2.0, 1.0]]
    s_all = np.r_[score, [0.5, np.nan]]
    curve = roc_points(y_all, s_all)
    assert curve is not None
    fpr, tpr = np.array(curve["fpr"]), np.array(curve["tpr"])
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(roc_auc_score(y, score)) == pytest.approx(curve["auc"])
    assert roc_points([1, 1, 1], [0.1, 0.2, 0.3]) is None  # one class: no curve


def test_enriched_kmers_by_repertoire() -> None:
    att = pd.DataFrame({"repertoire_id": ["r1", "r1", "r2"],
                        "junction_aa": ["cassggg ", "CASSGGG", "CASSQQQ"]})
    out = enriched_kmers_by_repertoire(att, top=3)
    assert out["k"] == 3 and set(out["by_repertoire"]) == {"r1", "r2"}
    top_r2 = out["by_repertoire"]["r2"]
    # QQQ occurs only in r2 and GGG only in r1: each is its repertoire's most enriched 3-mer
    assert top_r2[0]["kmer"] in {"SQQ", "QQQ"} and top_r2[0]["n_background"] == 1
    assert out["by_repertoire"]["r1"][0]["kmer"] in {"SGG", "GGG"}
    background = Counter()
    for s in ("CASSGGG", "CASSGGG", "CASSQQQ"):  # stripped and upper-cased
        background.update(s[i:i + 3] for i in range(len(s) - 2))
    assert {r["kmer"]: r["n_background"] for r in top_r2} == \
        {r["kmer"]: background[r["kmer"]] for r in top_r2}


def test_patient_details_count_what_the_pages_show() -> None:
    pred = _cells()
    details = patient_details(pred)
    assert set(details) == {"P1", "P2"}
    p1 = pred[pred["patient"] == "P1"]
    d1 = details["P1"]
    # composition: every cell once on each side
    comp = d1["composition"]
    assert sum(map(sum, comp["annotated"])) == sum(map(sum, comp["predicted"])) == len(p1)
    assert comp["annotated_states"][-1] == "(unannotated)" and "(unannotated)" in comp["types"]
    # confidence: annotated cells with a confidence, split into correct and wrong
    hist = d1["confidence"]["cell_type"]
    assert len(hist["bins"]) == len(hist["correct"]) + 1
    assert sum(hist["correct"]) == 3 and sum(hist["wrong"]) == 1  # c1 A→B is the one mistake
    assert d1["top_errors"]["cell_type"] == [{"true": "A", "pred": "B", "n": 1}]
    assert d1["per_type"] == [
        {"type": "A", "n": 2, "type_acc": 0.5, "state_acc": 1.0},
        {"type": "B", "n": 2, "type_acc": 1.0, "state_acc": 1.0},
    ]
    sv = d1["state_view"]
    assert sv["mode"] == "single" and sv["n_unknown"] == 2
    assert {r["label"]: r["filled"] for r in sv["rows"]} == {"x": 1, "y": 1}
    json.dumps(details)  # JSON-ready: no numpy scalars


def test_composition_without_state_and_histogram_without_columns() -> None:
    pred = _cells().drop(columns=["pred_cell_state"])
    comp = composition(pred)
    assert comp == {"types": ["A", "B", "C"], "annotated": [3, 2, 2], "predicted": [5, 3, 1]}
    assert confidence_histogram(pred, "cell_state") is None  # no state prediction
    full = _cells()
    assert sum(confidence_histogram(full, "cell_state")["correct"]) == 4  # c0, c2, c7, c8
    assert confidence_histogram(full.drop(columns=["cell_state_confidence"]),
                                "cell_state") is None
    assert top_errors(pred["true_cell_type"], pred["pred_cell_type"], top=1) == [
        {"true": "C", "pred": "A", "n": 2}]


def test_multilabel_state_summary_never_counts_unknown_as_absent() -> None:
    cells = pd.DataFrame({
        "true_state:act": [1.0, 0.0, np.nan, np.nan],
        "pred_state:act": [1, 1, 1, 0],
        "prob_state:act": [0.9, 0.6, 0.8, 0.1],
    })
    sv = state_summary(cells)
    assert sv is not None and sv["mode"] == "multilabel" and sv["labels"] == ["act"]
    (row,) = sv["rows"]
    assert (row["present"], row["absent"], row["unknown"]) == (1, 1, 2)
    assert row["agree"] == 0.5  # on the two annotated entries only
    assert (row["filled_present"], row["filled_absent"]) == (1, 1)
    assert row["filled_mean_prob"] == pytest.approx(0.45)


def test_cells_evaluate_writes_the_report_numbers(tmp_path: Path) -> None:
    """The evaluator puts them in metrics.json, consistent with its own metrics."""
    from biocls.config import parse_experiment
    from biocls.tasks import evaluate, get_task

    pred = _cells()
    pd.DataFrame({"patient": ["P1", "P2"], "fold": [0, 1]}).to_csv(
        tmp_path / "splits.tsv", sep="\t", index=False)
    for k, g in pred.groupby("fold"):
        (tmp_path / "folds" / str(k)).mkdir(parents=True)
        g.to_csv(tmp_path / "folds" / str(k) / "predictions.tsv", sep="\t", index=False)
    out = tmp_path / "res"
    evaluate(get_task("cells"), parse_experiment({"task": "cells"}, name="t", partial=True),
             splits=tmp_path / "splits.tsv", folds_dir=tmp_path / "folds", out_dir=out)
    m = json.loads((out / "metrics.json").read_text())
    for head in ("cell_type", "cell_state"):
        factored = m["confusion"][head]["factored"]
        assert sum(map(sum, factored["counts"])) == m[head]["n"]
        acc = np.trace(np.array(factored["counts"])) / m[head]["n"]
        assert acc == pytest.approx(m[head]["accuracy"])
    assert m["confusion"]["cell_type"]["logreg"]["counts"] == [[0, 3, 0], [0, 2, 0], [0, 2, 0]]
    assert set(m["patient_details"]) == set(m["per_patient"]) == {"P1", "P2"}
    assert m["patient_details"]["P2"]["top_errors"]["cell_type"] == [
        {"true": "C", "pred": "A", "n": 2}]


def _evaluated_repertoires(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """Twelve repertoires' fold outputs gathered by ``biocls evaluate`` into ``res/``; r0 (patient
    "NA") had 4 invalid rows dropped on reading."""
    from biocls.config import parse_experiment
    from biocls.tasks import evaluate, get_task

    rng = np.random.default_rng(0)
    reps = pd.DataFrame({"repertoire_id": [f"r{i}" for i in range(12)],
                         "patient": ["NA"] + [f"s{i}" for i in range(1, 12)],
                         "fold": [i % 2 for i in range(12)], "label": [i % 3 == 0 for i in
                                                                       range(12)]})
    reps["label"] = reps["label"].astype(int)
    reps["probability"] = np.round(0.3 * reps["label"] + rng.uniform(size=12), 2)
    reps["kmer_probability"] = rng.uniform(size=12)
    reps["predicted"] = (reps["probability"] >= 0.5).astype(int)
    reps["n_sequences"], reps["n_dropped"] = 100, 0
    reps.loc[0, "n_dropped"] = 4  # invalid rows of r0's file, dropped and counted on reading
    reps[["patient", "fold"]].to_csv(tmp_path / "splits.tsv", sep="\t", index=False)
    for k, g in reps.groupby("fold"):
        d = tmp_path / "folds" / str(k)
        d.mkdir(parents=True)
        g[C.PREDICTION_COLUMNS].to_csv(d / "predictions.tsv", sep="\t", index=False)
        att = pd.DataFrame([{"repertoire_id": r, "patient": p, "rank": j + 1,
                             "junction_aa": f"CASS{'GGG' if y else 'QRT'}{j}F", "v_call": "V",
                             "j_call": "J", "duplicate_count": 1, "weight": 0.5, "score": 0.1}
                            for r, p, y in zip(g["repertoire_id"], g["patient"], g["label"],
                                               strict=True) for j in range(3)])
        att.to_csv(d / "attention.tsv", sep="\t", index=False)
    (tmp_path / "res" / "model").mkdir(parents=True)  # the final model's folder
    pd.DataFrame({"pattern": [0, 0, 1], "rank": [1, 2, 1], "junction_aa": ["CASSGGGF"] * 3,
                  "similarity": [0.9, 0.8, 0.7], "head_weight": 1.0, "pattern_rank": [1, 1, 2],
                  "repertoire_id": "r0"}).to_csv(tmp_path / "res" / "model" / "patterns.tsv",
                                                 sep="\t", index=False)
    out = tmp_path / "res"
    evaluate(get_task("repertoires"),
             parse_experiment({"task": "repertoires"}, name="t", partial=True),
             splits=tmp_path / "splits.tsv", folds_dir=tmp_path / "folds", out_dir=out)
    (out / "splits.tsv").write_text((tmp_path / "splits.tsv").read_text())
    return out, reps


def test_repertoires_evaluate_writes_the_report_numbers(tmp_path: Path) -> None:
    """Pooled ROC points agree with the pooled AUC; k-mers per repertoire; motifs per patient;
    the call at the threshold; patterns counted."""
    from biocls.report import render_reports

    out, reps = _evaluated_repertoires(tmp_path)
    m = json.loads((out / "metrics.json").read_text())
    for key, pooled in (("model", m["roc_auc"]["pooled"]),
                        ("kmer_logreg", m["baselines"]["kmer_logreg"]["roc_auc"]["pooled"])):
        curve = m["roc_curve"][key]
        assert curve["auc"] == pytest.approx(pooled)
        assert curve["fpr"][0] == curve["tpr"][0] == 0
        assert curve["fpr"][-1] == curve["tpr"][-1] == 1
    assert set(m["enriched_kmers"]["by_repertoire"]) == set(reps["repertoire_id"])
    assert m["n_patterns"] == 2 and "NA" in m["per_patient"]
    # the call at the threshold agrees with the predicted column the folds wrote
    assert m["threshold"] == 0.5 and m["n_dropped"] == 4 and m["dropped_sequences"] == {"r0": 4}
    calls = m["calls"]["model"]
    assert calls["tp"] + calls["fp"] == int(reps["predicted"].sum())
    assert calls["tp"] == int((reps["predicted"] & reps["label"]).sum())
    assert calls["n_positive"] == int(reps["label"].sum())
    for patient, g in reps.groupby("patient"):
        assert m["per_patient"][patient]["predicted"] == int(g["probability"].mean() >= 0.5)
    assert set(m["enriched_motifs"]["by_patient"]) == set(reps["patient"])
    render_reports(out)
    page = (out / "reports" / "patients" / "NA.html").read_text()
    top = m["enriched_motifs"]["by_patient"]["NA"]["rows"][0]
    assert f'<td class="seq">{top["kmer"]}</td>' in page
    assert f'{top["log2_enrichment"]:.2f}' in page


def test_report_of_a_repertoire_with_dropped_rows(tmp_path: Path) -> None:
    """Issue 11: rows dropped on reading (a stop codon, an empty CDR3...) are counted per
    repertoire in metrics.json; the patient page then failed (``dictsort`` on that count)."""
    from biocls.report import render_reports

    out, _ = _evaluated_repertoires(tmp_path)
    assert json.loads((out / "metrics.json").read_text())["dropped_sequences"] == {"r0": 4}
    render_reports(out)
    page = (out / "reports" / "patients" / "NA.html").read_text()
    assert "4 sequence(s) in this repertoire's file were dropped on reading" in page


def test_enriched_motifs_put_a_planted_motif_first() -> None:
    """Many tied rare k-mers (each in one sequence here, none elsewhere) must not hide a motif
    that is in every attended sequence of the patient and rare in the others'."""
    rng = np.random.default_rng(0)
    aa = np.array(list("ACDEFGHIKLMNPQRSTVY"))  # no W: the motif's residue is unique

    def random_cdr3() -> str:
        return "CAS" + "".join(rng.choice(aa, 8)) + "F"

    rows = [{"patient": "P", "junction_aa": s[:5] + "WHKW" + s[5:]}
            for s in (random_cdr3() for _ in range(12))]
    rows += [{"patient": f"Q{i % 6}", "junction_aa": random_cdr3()} for i in range(120)]
    rows += [{"patient": "Q0", "junction_aa": "CASWHKWF"}]  # the motif once in the background
    out = enriched_motifs(pd.DataFrame(rows), top=5)
    assert out["ks"] == [3, 4] and out["alpha"] == 0.05
    p = out["by_patient"]["P"]
    assert (p["n_sequences"], p["n_background"]) == (12, 121)
    first = p["rows"][0]
    assert first["kmer"] == "WHKW" and first["k"] == 4  # the longest of the tied motif k-mers
    assert (first["n"], first["n_background"]) == (12, 1) and first["significant"]
    assert {r["kmer"] for r in p["rows"][:3]} == {"WHKW", "WHK", "HKW"}
    assert [r["p_value"] for r in p["rows"]] == sorted(r["p_value"] for r in p["rows"])
    assert first["p_adjusted"] == pytest.approx(min(1.0, first["p_value"] * p["tested"]))
    # a patient without a motif: nothing passes the multiple-testing correction
    assert not any(r["significant"] for r in out["by_patient"]["Q3"]["rows"])
    json.dumps(out)


def test_predicted_composition_and_least_confident_cells() -> None:
    p1 = _cells()[lambda d: d["patient"] == "P1"]
    comp = predicted_composition(p1)
    types = {r["label"]: r for r in comp["cell_type"]["rows"]}
    assert comp["cell_type"]["n_cells"] == 5 and comp["cell_type"]["n_annotated"] == 4
    assert types["A"]["predicted"] == 2 and types["A"]["predicted_fraction"] == pytest.approx(0.4)
    assert types["B"]["annotated"] == 2 and types["B"]["annotated_fraction"] == pytest.approx(0.5)
    assert sum(r["predicted_fraction"] for r in comp["cell_state"]["rows"]) == pytest.approx(1)
    least = least_confident(p1, top=2)
    # c3: type confidence 0.3; then c1 (0.6); states are 0.7 everywhere
    assert [r["cell_id"] for r in least] == ["c3", "c1"]
    assert least[0]["confidence"] == pytest.approx(0.3)
    assert least[0]["cell_type"] == {"annotated": "", "predicted": "A", "confidence": 0.3}
    assert least[1]["cell_state"]["annotated"] == ""  # unannotated state
    details = patient_details(_cells())["P2"]
    assert details["least_confident"][0]["cell_id"] == "c7"
    assert "predicted_composition" in details


def test_call_counts() -> None:
    c = call_counts([1, 1, 0, 0, 2], [0.9, 0.4, 0.5, 0.1, 0.9])
    assert (c["tp"], c["fn"], c["fp"], c["tn"]) == (1, 1, 1, 1)  # label 2 left out; 0.5 calls
    assert c["sensitivity"] == c["specificity"] == c["accuracy"] == 0.5
    assert call_counts([0, 0], [0.1, 0.2])["sensitivity"] is None
