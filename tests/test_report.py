"""The report renderer: one page per patient, escaped user data, self-contained, atomic."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_checks import check_bundle, check_links

from biocls import BioclsError
from biocls.columns import read_predictions
from biocls.evaluate import (
    confusion_tables,
    enriched_kmers,
    enriched_kmers_by_repertoire,
    enriched_motifs,
    patient_details,
    roc_curve,
    roc_points,
)
from biocls.report import _plots, page_names, render_reports
from biocls.report import _render as render_module

EVIL = "<script>alert(1)</script>"
AMP_LABEL = "B & plasma"
PATIENTS = ["P1", "p1", EVIL, "007"]  # case clash, markup, leading zeros


def _write(path: Path, frame: pd.DataFrame) -> None:
    frame.to_csv(path, sep="\t", index=False)


def _cells_results(root: Path, *, with_state: bool = True) -> Path:
    rng = np.random.default_rng(0)
    d = root / "results" / "cells_exp"
    d.mkdir(parents=True)
    _write(d / "splits.tsv", pd.DataFrame({"patient": PATIENTS, "fold": [0, 1, 0, 1]}))
    types, states = ["T", AMP_LABEL, "NK"], ["rest", "cycling"]
    rows = []
    for i in range(32):
        patient = PATIENTS[i % 3]  # "007" gets no cells: its page must still exist
        t, s = types[i % 3], states[i % 2]
        row = {
            "cell_id": f"c{i}",
            "patient": patient,
            "fold": PATIENTS.index(patient) % 2,
            "true_cell_type": t,
            "pred_cell_type": t if i % 5 else types[(i + 1) % 3],
            "cell_type_confidence": rng.uniform(0.3, 1.0),
            "joint_pred_cell_type": t,
            "logreg_pred_cell_type": t,
        }
        if with_state:
            row.update(
                {
                    "true_cell_state": "" if i % 7 == 0 else s,
                    "pred_cell_state": s if i % 4 else states[(i + 1) % 2],
                    "cell_state_confidence": rng.uniform(0.3, 1.0),
                    "joint_pred_cell_state": s,
                    "logreg_pred_cell_state": s,
                }
            )
        for lab in types:
            row[f"prob_cell_type:{lab}"] = 1 / 3
        rows.append(row)
    _write(d / "predictions.tsv", pd.DataFrame(rows))
    pred = read_predictions(d / "predictions.tsv")  # as evaluate reads it
    head = {"macro_f1": 0.8123, "balanced_accuracy": 0.7891, "accuracy": 0.85}
    metrics = {
        "task": "cells",
        "experiment": "exp <b>bold</b>",
        "n_patients": 4,
        "n_cells": 32,
        "folds": 2,
        "cell_type": head,
        "cell_state": {"macro_f1": 0.6543, "balanced_accuracy": 0.6, "accuracy": 0.7},
        "baselines": {
            "joint": {"cell_type": {"macro_f1": 0.7011}, "cell_state": {"macro_f1": 0.7777}},
            "logreg": {"cell_type": {"macro_f1": 0.5}, "cell_state": {"macro_f1": 0.4}},
        },
        "per_patient": {
            p: {
                "fold": k % 2,
                "n_cells": int((pred["patient"] == p).sum()),
                "cell_type": {"macro_f1": 0.9, "accuracy": 0.91},
                "cell_state": {"macro_f1": 0.55, "accuracy": 0.6},
            }
            for k, p in enumerate(PATIENTS[:3])
        },
        "unseen_combinations": [
            {
                "cell_type": AMP_LABEL,
                "cell_state": "cycling",
                "n_cells": 5,
                "factored_both_correct": 0.6,
                "joint_both_correct": 0.0,
                "logreg_both_correct": 0.2,
            }
        ],
        "certificate": {
            "model": {"path": "results/cells_exp/model", "signature": "ab12cd34ef56ab78cd90"},
            "heldout_patients": ["P1"], "random_fraction": 0.2,
            "delta_note": "δ = 0.05 split equally over 2 statements",
            "heads": {"cell_type": {"bound": 0.3141, "patient_bound": 0.8771, "test_error": 0.15,
                                    "patient_errors": {"P1": 0.15}, "delta": 0.025, "m": 100,
                                    "n": 400, "k": 3}},
        },
        "preprocess": {"raw_counts": True, "note": "normalised & log1p", "qc_removed": 7,
                       "qc_removed_by_patient": {"P1": 5, "p1": 2, EVIL: 0, "007": 0}},
        "pseudo_groups": "one donor: cells split into 4 pseudo-patients",
    }
    if not with_state:
        del metrics["cell_state"], metrics["unseen_combinations"]
    # the report's own numbers, computed as the pipeline's evaluate computes them
    metrics["confusion"] = confusion_tables(pred)
    metrics["patient_details"] = patient_details(pred)
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


def _repertoire_results(root: Path) -> Path:
    rng = np.random.default_rng(1)
    d = root / "results" / "rep_exp"
    d.mkdir(parents=True)
    subjects = ["S1", EVIL, "S 3"]
    _write(d / "splits.tsv", pd.DataFrame({"patient": subjects, "fold": [0, 1, 2]}))
    reps = [(f"r{i}", subjects[i % 3], i % 3, i % 2) for i in range(6)]
    _write(
        d / "predictions.tsv",
        pd.DataFrame(
            [
                {
                    "repertoire_id": r,
                    "patient": p,
                    "fold": f,
                    "label": y,
                    "probability": 0.3 + 0.4 * y + 0.05 * i,
                    "kmer_probability": 0.5,
                    "predicted": int(0.3 + 0.4 * y + 0.05 * i >= 0.5),
                }
                for i, (r, p, f, y) in enumerate(reps)
            ]
        ),
    )
    aa = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    att = [
        {
            "repertoire_id": r,
            "patient": p,
            "rank": k + 1,
            "junction_aa": "CASS" + "".join(rng.choice(aa, 6)) + ("GGG" if y else "") + "F",
            "v_call": "TRBV5-1",
            "j_call": "TRBJ2-7",
            "duplicate_count": int(rng.integers(1, 9)),
            "weight": 1 / (k + 1),
        }
        for r, p, _, y in reps
        for k in range(4)
    ]
    att[0]["junction_aa"] = "CASS<img>F"
    _write(d / "attention.tsv", pd.DataFrame(att))
    _write(
        d / "patterns.tsv",
        pd.DataFrame(
            [
                {
                    "pattern": q,
                    "rank": k + 1,
                    "junction_aa": f"CASSGGG{q}{k}F",
                    "similarity": 0.9 - 0.1 * k,
                    "head_weight": 1.0 - 0.25 * q,
                    "pattern_rank": q + 1,
                    "repertoire_id": "r0",
                }
                for q in range(10)
                for k in range(3)
            ]
        ),
    )
    metrics = {
        "task": "repertoires",
        "experiment": "reps",
        "n_patients": 3,
        "n_repertoires": 6,
        "folds": 3,
        "pooling": "attention",
        "roc_auc": {"mean": 0.8771, "sd": 0.05, "folds": [0.9, 0.85, 0.88]},
        "baselines": {
            "kmer_logreg": {"roc_auc": {"mean": 0.6123, "sd": 0.1, "folds": [0.6, 0.5, 0.7]}}
        },
        "per_patient": {
            s: {"probability": 0.4321, "label": 1, "fold": k, "predicted": 0, "n_repertoires": 2}
            for k, s in enumerate(subjects)
        },
        "threshold": 0.5,
        "dropped_sequences": {"r0": 4},  # as RepertoiresTask.metrics writes it: a count
    }
    pred = read_predictions(d / "predictions.tsv")
    metrics["roc_curve"] = {
        "model": roc_points(pred["label"], pred["probability"]),
        "kmer_logreg": roc_points(pred["label"], pred["kmer_probability"]),
    }
    attention = read_predictions(d / "attention.tsv", required=["repertoire_id"])
    metrics["enriched_kmers"] = enriched_kmers_by_repertoire(attention)
    metrics["enriched_motifs"] = enriched_motifs(attention)
    metrics["n_patterns"] = 10
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "model").mkdir()  # the final model's metadata names the positive class
    (d / "model" / "model.json").write_text(json.dumps({"meta": {"positive_label": "CMV+"}}))
    return d


def _check_pages(results: Path, paths: list[Path], n_patients: int) -> tuple[str, list[str]]:
    reports = results / "reports"
    assert paths[0] == reports / "index.html" and paths[-1] == reports / "all_pages.html"
    pages = sorted((reports / "patients").glob("*.html"))
    assert len(pages) == n_patients == len(paths) - 2
    assert sorted(paths[1:-1]) == pages
    index = (reports / "index.html").read_text()
    bundle = (reports / "all_pages.html").read_text()
    texts = [index] + [p.read_text() for p in pages] + [bundle]
    check_links(reports / "index.html")
    for page in pages:
        assert re.fullmatch(r"[A-Za-z0-9._-]+\.html", page.name)
        assert f'href="patients/{page.name}"' in index
        assert 'href="../index.html"' in page.read_text()
        check_links(page)
    check_bundle(bundle, n_patients)
    for text in texts:
        assert "<script" not in text.lower()
        assert "http" not in text  # self-contained: no external links, scripts or fonts
    for text in (index, bundle):
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    return index, texts


def test_cells_report(tmp_path: Path) -> None:
    results = _cells_results(tmp_path)
    paths = render_reports(results)
    index, texts = _check_pages(results, paths, len(PATIENTS))
    for value in ("0.812", "0.789", "0.654", "0.701", "0.778", "0.314", "0.877",  # + certificate
                  "ab12cd34ef56ab78", "split equally over 2 statements"):
        assert value in index
    assert '<td class="num best">0.778</td>' in index  # joint wins cell-state macro-F1
    assert "B &amp; plasma" in index and "B & plasma" not in index
    assert "exp &lt;b&gt;bold&lt;/b&gt;" in index
    # who each certificate figure is for, and that it is the shipped model's
    assert "pseudo-patients" in index and "a new patient drawn like the held-out" in index
    assert "results/cells_exp/model" in index and "P1)" in index
    # confusion matrices: type and state, each model next to logreg; the joint head's two;
    # the unseen-combination bars and the certificate's bounds
    assert index.count("data:image/png;base64,") == 8
    assert "biocls report --results" in index
    evil_page = (
        results / "reports" / "patients" / f"{page_names(PATIENTS)[EVIL]}.html"
    ).read_text()
    assert "Patient &lt;script&gt;alert(1)&lt;/script&gt;" in evil_page
    assert evil_page.count("data:image/png;base64,") == 2  # composition + confidence
    assert "most frequent mistakes" in evil_page
    empty_page = (results / "reports" / "patients" / "007.html").read_text()
    assert "no rows in predictions.tsv" in empty_page


def test_cells_without_state(tmp_path: Path) -> None:
    results = _cells_results(tmp_path, with_state=False)
    index, _ = _check_pages(results, render_reports(results), len(PATIENTS))
    assert "state macro-F1" not in index and "Unseen" not in index


def test_repertoire_report(tmp_path: Path) -> None:
    results = _repertoire_results(tmp_path)
    out = tmp_path / "elsewhere"
    paths = render_reports(results, out)
    assert paths[0] == out / "index.html" and not (results / "reports").exists()
    out.rename(results / "reports")
    index, texts = _check_pages(
        results, [results / "reports" / p.relative_to(out) for p in paths], 3
    )
    assert "0.877" in index and "0.612" in index and "0.432" in index
    assert index.count("data:image/png;base64,") == 2  # ROC + per-fold AUC
    assert index.count("<h3>Pattern ") == 8  # first 8 of 10 patterns
    page = (results / "reports" / "patients" / "S1.html").read_text()
    assert "CASS&lt;IMG&gt;F" in page and "<IMG>" not in page
    assert "TRBV5-1" in page and "Enriched motifs" in page
    assert "4 sequence(s) in this repertoire's file were dropped" in page
    assert (results / "reports" / "patients" / "S_3.html").exists()
    # classes by name (the model's positive label), the call, its threshold; never a bare 0/1
    assert "metadata label “CMV+”" in index and "positive when the model's probability" in index
    assert "Annotated: <strong>positive</strong>" in page
    assert "Predicted: <strong>negative</strong>" in page and ">wrong<" in page
    assert "called positive from 0.50" in page
    for text in texts:
        assert "label 1" not in text and "label 0" not in text
    assert "restart kept" not in index  # one fit per fold: no restart columns


def test_repertoire_report_lists_the_restart_kept_per_fold(tmp_path: Path) -> None:
    results = _repertoire_results(tmp_path)
    m = json.loads((results / "metrics.json").read_text())
    m["restarts"] = {"0": {"val_loss": [0.41, 0.2345, 0.5], "chosen": 1},
                     "2": {"val_loss": [0.3, 0.6], "chosen": 0}}
    (results / "metrics.json").write_text(json.dumps(m))
    render_reports(results)
    index = (results / "reports" / "index.html").read_text()
    assert "restart kept" in index
    assert "<td>2 of 3</td><td>0.410, 0.234, 0.500</td>" in index  # fold 0: 1-based
    assert "<td>1 of 2</td>" in index and index.count("<td>—</td><td>—</td>") == 1  # fold 1
    assert "test subjects never took part" in index


def test_failure_leaves_no_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = _cells_results(tmp_path)

    def boom(*args: object, **kwargs: object) -> str:
        raise RuntimeError("plot failed")

    monkeypatch.setattr(_plots, "confidence_histograms", boom)
    with pytest.raises(RuntimeError, match="plot failed"):
        render_reports(results)
    assert not (results / "reports").exists()
    assert [p.name for p in results.iterdir() if p.name.startswith(".")] == []


def test_user_errors_before_writing(tmp_path: Path) -> None:
    results = _cells_results(tmp_path)
    (results / "predictions.tsv").unlink()
    with pytest.raises(BioclsError, match="predictions.tsv"):
        render_reports(results)
    (results / "metrics.json").write_text(json.dumps({"task": "spectra"}))
    with pytest.raises(BioclsError, match="unknown task 'spectra'"):
        render_reports(results)
    assert not (results / "reports").exists()


def test_page_names_are_safe_and_unique() -> None:
    names = page_names(["a/b", "a b", "A_b", "..", "", "ok-1.x"])
    assert list(names.values()) == ["a_b", "a_b-2", "A_b-3", "_..", "patient", "ok-1.x"]


def test_roc_and_kmers() -> None:
    y = np.array([0, 0, 1, 1, 1, 0], dtype=float)
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.5, 0.5])  # one tie across classes
    _, _, auc = roc_curve(y, s)
    pos, neg = s[y == 1], s[y == 0]
    mw = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auc == pytest.approx(mw)
    background = Counter({"AAA": 1, "GGG": 10, "CCC": 50})
    top = enriched_kmers(["AAAA"], background)
    assert top[0]["kmer"] == "AAA" and top[0]["n"] == 2 and top[0]["log2_ratio"] > 0


def _record(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple]:
    """Replace one plot function by a recorder of its arguments (the page still renders)."""
    calls: list[tuple] = []
    real = getattr(_plots, name)

    def record(*args: object, **kwargs: object) -> str:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(_plots, name, record)
    return calls


def test_cell_pages_show_the_numbers_of_metrics_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Numbers that disagree with predictions.tsv on purpose: the page must show metrics.json's."""
    results = _cells_results(tmp_path)
    m = json.loads((results / "metrics.json").read_text())
    m["confusion"]["cell_type"]["factored"] = {"labels": ["Q", "R"], "counts": [[41, 2], [3, 57]]}
    d = m["patient_details"]["P1"]
    d["top_errors"]["cell_type"] = [{"true": "Q", "pred": "R", "n": 977}]
    d["per_type"] = [{"type": "Q", "n": 613, "type_acc": 0.4321, "state_acc": 0.875}]
    d["state_view"]["rows"] = [
        {"label": "zz", "annotated": 808, "agree": 0.25, "predicted": 809, "filled": 810}
    ]
    d["composition"] = {"types": ["Q"], "annotated_states": ["s"], "predicted_states": ["s"],
                        "annotated": [[5]], "predicted": [[6]]}
    d["confidence"] = {"cell_type": {"bins": [0.0, 0.5, 1.0], "correct": [1, 7], "wrong": [4, 0]}}
    (results / "metrics.json").write_text(json.dumps(m))
    confusion = _record(monkeypatch, "confusion_matrix")
    composition = _record(monkeypatch, "composition")
    confidence = _record(monkeypatch, "confidence_histograms")
    render_reports(results)
    assert confusion[0][1] == ["Q", "R"]
    assert np.asarray(confusion[0][0]).tolist() == [[41, 2], [3, 57]]
    page = (results / "reports" / "patients" / "P1.html").read_text()
    for shown in ("<td>Q</td><td>R</td><td class=\"num\">977</td>", ">613<", "43.2%", "87.5%",
                  ">808<", "25.0%", ">809<", ">810<"):
        assert shown in page, shown
    assert [np.asarray(a).tolist() for a in composition[0][:2]] == [[[5]], [[6]]]
    assert confidence[0][0] == [("cell type", [0.0, 0.5, 1.0], [1, 7], [4, 0])]


def test_multilabel_state_page(tmp_path: Path) -> None:
    """Multi-label states: the summary from metrics.json, the cell list from predictions.tsv."""
    d = tmp_path / "ml"
    d.mkdir()
    _write(d / "splits.tsv", pd.DataFrame({"patient": ["P1"], "fold": [0]}))
    pred = pd.DataFrame({
        "cell_id": ["c0", "c1", "c2"], "patient": "P1", "fold": 0,
        "true_cell_type": ["T", "T", "NK"], "pred_cell_type": ["T", "NK", "NK"],
        "cell_type_confidence": [0.9, 0.6, 0.8],
        "true_state:act": [1.0, np.nan, 0.0], "pred_state:act": [1, 1, 1],
        "prob_state:act": [0.91, 0.77, 0.66], "logreg_prob_state:act": [0.5, 0.5, 0.5],
    })
    _write(d / "predictions.tsv", pred)
    frame = read_predictions(d / "predictions.tsv")
    metrics = {"task": "cells", "n_patients": 1, "n_cells": 3, "folds": 1,
               "state_labels": ["act"], "per_patient": {"P1": {"fold": 0, "n_cells": 3}},
               "confusion": confusion_tables(frame), "patient_details": patient_details(frame)}
    (d / "metrics.json").write_text(json.dumps(metrics))
    render_reports(d)
    page = (d / "reports" / "patients" / "P1.html").read_text()
    assert "State labels: annotated and predicted" in page
    row = metrics["patient_details"]["P1"]["state_view"]["rows"][0]
    assert (row["present"], row["absent"], row["unknown"], row["agree"]) == (1, 1, 1, 0.5)
    assert "50.0%" in page and page.count('class="filled"') == 1
    assert "? → <em>+</em> (0.77)" in page and page.index("c1") < page.index("c0")


def test_renderer_does_not_compute() -> None:
    """Importing the report package loads no metric library: the numbers come from evaluate."""
    code = "import sys, biocls.report; print(sorted(m for m in sys.modules if m.startswith(" \
           "('sklearn', 'biocls.evaluate'))))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert proc.stdout.strip() == "[]"


def test_repertoire_patterns_explain_their_order_and_scale(tmp_path: Path) -> None:
    results = _repertoire_results(tmp_path)
    render_reports(results)
    index = (results / "reports" / "index.html").read_text()
    assert "<strong>Order:</strong>" in index and "<strong>Scale:</strong>" in index
    assert "Pattern 0 · rank 1 · head weight +1.000" in index
    assert "Pattern 7 · rank 8 · head weight -0.750" in index  # negative weights say so
    assert index.index("Pattern 0 ·") < index.index("Pattern 1 ·")


def test_motif_is_ranked_first_and_marked_in_the_sequences(tmp_path: Path) -> None:
    """A motif in every attended sequence of one patient tops its table and is highlighted."""
    results = _repertoire_results(tmp_path)
    att = read_predictions(results / "attention.tsv", required=["repertoire_id"])
    mine = att["patient"] == "S1"
    # 8 distinct sequences, the motif between varied neighbours
    att.loc[mine, "junction_aa"] = [f"CA{'QRTE'[i % 4]}WHKW{'GSAL'[i % 4]}{'YH'[i // 4]}F"
                                    for i in range(int(mine.sum()))]
    _write(results / "attention.tsv", att)
    m = json.loads((results / "metrics.json").read_text())
    m["enriched_motifs"] = enriched_motifs(att)
    (results / "metrics.json").write_text(json.dumps(m))
    render_reports(results)
    page = (results / "reports" / "patients" / "S1.html").read_text()
    first = m["enriched_motifs"]["by_patient"]["S1"]["rows"][0]
    assert first["kmer"] == "WHKW" and first["significant"]
    assert '<td class="seq"><mark>WHKW</mark></td>' in page  # first row of the motif table
    attended = "".join(page.split("Most attended")[1:])
    assert attended.count("<mark>WHKW</mark>") == int(mine.sum())  # every attended sequence
    other = (results / "reports" / "patients" / "S_3.html").read_text()
    assert "No k-mer is enriched beyond chance" in other and "<mark>" not in other


def test_roc_curves_that_coincide_stay_distinguishable() -> None:
    """Two perfect classifiers: the same points, drawn in different styles, AUCs in the legend."""
    fpr, tpr = np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0])
    fig = _plots._roc_figure([("model", fpr, tpr, 1.0), ("k-mer", fpr, tpr, 1.0)])
    ax = fig.axes[0]
    model, kmer = ax.lines[1], ax.lines[2]
    assert (model.get_linestyle(), model.get_marker()) != (kmer.get_linestyle(), kmer.get_marker())
    assert model.get_linewidth() > kmer.get_linewidth() and kmer.get_zorder() > model.get_zorder()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "model: pooled AUC 1.000" in labels and "k-mer: pooled AUC 1.000" in labels


def test_cell_pages_show_composition_uncertain_cells_qc_and_logreg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = _cells_results(tmp_path)
    confusion = _record(monkeypatch, "confusion_matrix")
    render_reports(results)
    assert len(confusion) == 6  # type and state: factored and logreg; joint type and state
    index = (results / "reports" / "index.html").read_text()
    assert "cell type, logistic regression" in index and "cell state, logistic regression" in index
    # the model and its baseline share a row of the page
    row = index.split('<div class="grid">')[1].split("</div>")[0]
    assert "factored model" in row and "logistic regression" in row
    assert "7 cells removed before the folds were made" in index
    pages = results / "reports" / "patients"
    p1 = (pages / "P1.html").read_text()
    assert "Quality control removed 5 more of this patient" in p1
    evil = (pages / f"{page_names(PATIENTS)[EVIL]}.html").read_text()
    assert "Quality control removed none" in evil
    # predicted composition: every type of the patient with its share of its cells
    pred = read_predictions(results / "predictions.tsv")
    mine = pred[pred["patient"] == "P1"]
    assert "Predicted composition" in p1
    for label, n in mine["pred_cell_type"].value_counts().items():
        cells = f'<td class="num">{n}</td><td class="num">{100 * n / len(mine):.1f}%</td>'
        assert f"<td>{label.replace('&', '&amp;')}</td>{cells}" in p1
    # the least confident cell first
    conf = mine[["cell_type_confidence", "cell_state_confidence"]].min(axis=1)
    assert "Least confident cells" in p1
    least = p1.split("Least confident cells")[1]
    assert least.index(f"<td>{mine.loc[conf.idxmin(), 'cell_id']}</td>") < least.index("</tbody>")
    assert least.split("<tbody>")[1].split("</td>")[0].endswith(mine.loc[conf.idxmin(), "cell_id"])


def test_every_page_states_its_provenance(tmp_path: Path) -> None:
    """biocls version, config hash (from `biocls report --config-hash`), render date, model."""
    from biocls import __version__
    from biocls.cli import main

    results = _cells_results(tmp_path)
    (results / "model").mkdir()
    (results / "model" / "model.json").write_text(json.dumps({"meta": {"spec_name": "x"}}))
    assert main(["report", "--results", str(results), "--config-hash", "0123abcd4567"]) == 0
    pages = sorted((results / "reports").rglob("*.html"))
    assert len(pages) == len(PATIENTS) + 2
    for page in pages:
        text = page.read_text()
        assert f"biocls {__version__}" in text, page.name
        assert "config 0123abcd4567" in text, page.name
        assert re.search(r"rendered \d{4}-\d\d-\d\d \d\d:\d\d UTC", text), page.name
        assert f"model {results / 'model'}" in text, page.name
        assert "--config-hash 0123abcd4567" in text  # the regenerate command keeps it
    # metrics.json is left alone: the date lives on the pages only
    assert "rendered" not in (results / "metrics.json").read_text()
    render_reports(results)
    assert "config not recorded" in (results / "reports" / "index.html").read_text()


def test_a_bundle_too_large_for_a_data_url_drops_the_patients_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = _cells_results(tmp_path)
    render_reports(results)
    bundle = (results / "reports" / "all_pages.html").read_text()
    assert bundle.count("data:image/png;base64,") == 8 + 2 * 3  # index, and 3 patients with cells
    monkeypatch.setattr(render_module, "BUNDLE_LIMIT", 50_000)
    render_reports(results)
    bundle = (results / "reports" / "all_pages.html").read_text()
    assert bundle.count("data:image/png;base64,") == 8  # the index keeps its figures
    assert bundle.count("left out of this single-file view") == 3
    assert "reports/patients/P1.html" in bundle
    assert "snakemake --report report.zip" in bundle  # still over the (patched) limit
    # the standalone pages keep every figure
    page = (results / "reports" / "patients" / "P1.html").read_text()
    assert page.count("data:image/png;base64,") == 2


def test_index_says_what_each_fold_chose_for_each_head(tmp_path: Path) -> None:
    results = _cells_results(tmp_path)
    m = json.loads((results / "metrics.json").read_text())
    m["model_path"] = {"setting": "ensemble", "linear_penalty": "auto", "by_fold": [
        # as json.dumps(sort_keys) leaves it; fold 1 as metrics.json had it before per-head
        # penalties (one penalty and C for both heads)
        {"fold": "0", "chosen": {"cell_state": "ensemble", "cell_type": "linear"},
         "linear_weight": {"cell_state": 0.5, "cell_type": 1.0}, "linear_refitted": True,
         "linear_penalty": {"cell_state": "l2", "cell_type": "l1"},
         "linear_c": {"cell_state": 1.0, "cell_type": 0.0213},
         "genes_used": {"cell_state": 765, "cell_type": 41}},
        {"fold": "1", "chosen": {"cell_type": "deep", "cell_state": "linear"},
         "linear_weight": {"cell_type": 0.0, "cell_state": 1.0}, "linear_penalty": "l1",
         "linear_c": 0.05, "genes_used": {"cell_state": 112, "cell_type": 37}}]}
    (results / "metrics.json").write_text(json.dumps(m))
    index = (results / "reports" / "index.html")
    render_reports(results)
    text = index.read_text()
    assert "what feeds the heads" in text
    assert "unless scikit-learn's default L2 logistic regression (C = 1)" in text
    assert "refitted on the training and validation patients. Fold 0:" in text
    assert ("Fold 0: type <strong>linear</strong> (L1, C = 0.0213, 41 genes), "
            "state <strong>ensemble</strong> (L2, C = 1, 765 genes); "
            "Fold 1: type <strong>deep</strong> (L1, C = 0.05, 37 genes), "
            "state <strong>linear</strong> (L1, C = 0.05, 112 genes).") in text
    # a deep-only fold names no penalty, and a fixed penalty no choice between two
    m["model_path"] = {"setting": "ensemble", "linear_penalty": "l1", "by_fold": [
        {"fold": "0", "chosen": "deep", "linear_penalty": None, "linear_c": None,
         "genes_used": None}]}
    (results / "metrics.json").write_text(json.dumps(m))
    render_reports(results)
    text = index.read_text()
    assert "Fold 0: <strong>deep</strong>." in text
    assert "default L2" not in text and "refitted" not in text
