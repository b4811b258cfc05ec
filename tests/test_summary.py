"""Issue 11, part 6: `biocls summary` (the end of `make demo`) prints each experiment's headline
figures from its metrics.json and where its report is."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from biocls.cli import main
from biocls.summary import Headline, headlines, summary_table

CELLS = {
    "task": "cells", "experiment": "demo_cells", "folds": 4,
    "cell_type": {"macro_f1": 0.8889, "by_fold": [0.88, 0.89]},
    "cell_state": {"macro_f1": 0.7678},
    "baselines": {"logreg": {"cell_type": {"macro_f1": 0.8877}, "cell_state": {"macro_f1": 0.7381}},
                  "joint": {"cell_type": {"macro_f1": 0.8690}, "cell_state": {"macro_f1": 0.7031}}},
}
REPS = {
    "task": "repertoires", "experiment": "demo_repertoires", "folds": 3, "pooling": "patterns",
    "roc_auc": {"folds": [0.9, 1.0, 0.95], "mean": 0.95, "sd": 0.05, "pooled": 0.94},
    "baselines": {"kmer_logreg": {"roc_auc": {"folds": [0.7, 0.8, 0.9], "mean": 0.8, "sd": 0.1}}},
}


def _write(root: Path, metrics: dict, *, report: bool = True) -> Path:
    d = root / metrics["experiment"]
    (d / "reports").mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps(metrics))
    if report:
        (d / "reports" / "index.html").write_text("<html></html>")
    return d


def test_cells_headlines_compare_the_factored_model_with_both_baselines() -> None:
    assert headlines(CELLS) == [
        Headline("demo_cells", "cell type macro-F1", "factored 0.889",
                 ("logreg 0.888", "joint 0.869")),
        Headline("demo_cells", "cell state macro-F1", "factored 0.768",
                 ("logreg 0.738", "joint 0.703")),
    ]


def test_repertoire_headline_is_auc_mean_sd_against_kmer() -> None:
    assert headlines(REPS) == [Headline("demo_repertoires", "ROC AUC, mean ± sd over 3 folds",
                                        "MIL (patterns) 0.950 ± 0.050", ("k-mer 0.800 ± 0.100",))]


def test_missing_pieces_do_not_break_the_table() -> None:
    """No cell_state head; partial labels (no joint baseline); a NaN written as null."""
    m = {**copy.deepcopy(CELLS), "cell_state": {"macro_f1": None}}
    del m["baselines"]["joint"]["cell_state"]
    rows = headlines(m)
    assert rows[1].model == "factored –" and rows[1].baselines == ("logreg 0.738",)
    only_type = {k: v for k, v in CELLS.items() if k != "cell_state"}
    assert [r.figure for r in headlines(only_type)] == ["cell type macro-F1"]


def test_a_certified_experiment_adds_its_bounds_and_measured_error() -> None:
    m = {**copy.deepcopy(CELLS), "certificate": {"heads": {"cell_type": {
        "bound": 0.685, "patient_bound": 0.899, "test_error": 0.171}}}}
    rows = headlines(m)
    assert [r.figure for r in rows] == ["cell type macro-F1", "cell state macro-F1",
                                        "cell type error, certified"]
    assert rows[2].model == "bound 0.685 per cell"
    assert rows[2].baselines == ("0.899 per patient", "measured 0.171 on held-out patients")
    assert len(headlines(CELLS)) == 2  # none without a certificate


def test_table_from_a_results_folder(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _write(results, CELLS)
    _write(results, REPS, report=False)
    _write(results, {**CELLS, "experiment": "pbmc68k",
                     "pseudo_groups": "single donor split into 5 pseudo-patients"})
    (results / "half_done").mkdir()  # an experiment not evaluated yet: not in the table
    text = summary_table([results])
    lines = text.splitlines()
    row = {(m.group(1), m.group(2)): line for line in lines
           if (m := re.match(r"(\S+)\s+(cell type|cell state|ROC AUC)", line))}
    assert re.search(r"factored 0\.889\s+logreg 0\.888\s+joint 0\.869",
                     row[("demo_cells", "cell type")])
    assert re.search(r"factored 0\.768\s+logreg 0\.738\s+joint 0\.703",
                     row[("demo_cells", "cell state")])
    assert re.search(r"MIL \(patterns\) 0\.950 ± 0\.050\s+k-mer 0\.800 ± 0\.100",
                     row[("demo_repertoires", "ROC AUC")])
    # one donor: marked, and the footnote says what the numbers measure
    assert ("pbmc68k*", "cell type") in row
    assert "* pbmc68k: single donor split into 5 pseudo-patients" in lines
    assert f"Reports: {results / 'demo_cells' / 'reports' / 'index.html'}" in lines
    assert f"{results / 'demo_repertoires' / 'reports' / 'index.html'} (not built yet)" in text
    assert "half_done" not in text
    # the columns line up: every figure starts where the header's does
    col = lines[2].index("figure")
    assert all(line[col - 2:col] == "  " and line[col] != " " for line in lines[3:6])


def test_cli_prints_the_table_and_errors_in_one_line(tmp_path: Path, capsys) -> None:
    d = _write(tmp_path / "results", REPS)
    assert main(["-q", "summary", str(d / "metrics.json")]) == 0
    out = capsys.readouterr().out
    assert "demo_repertoires" in out and "MIL (patterns) 0.950 ± 0.050" in out
    assert main(["-q", "summary", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("biocls summary: error: ") and "nope" in err and "fix:" in err
    (tmp_path / "empty").mkdir()
    assert main(["-q", "summary", str(tmp_path / "empty")]) == 2
    assert "no metrics.json found" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_unreadable_metrics_is_one_line(tmp_path: Path, text: str, capsys) -> None:
    f = tmp_path / "metrics.json"
    f.write_text(text)
    assert main(["-q", "summary", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("biocls summary: error: ") and str(f) in err and "\n" not in err
