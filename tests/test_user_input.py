"""Issue 11: nothing a user feeds to ``biocls predict`` (or ``biocls.tl``) is silently wrong.

- a folder given to predict is read for repertoire files only; one level too high is an error
  that names the subfolder holding them;
- predicting on cells (or repertoires) the final model was trained on says so, in one warning
  and in the recorded provenance;
- a prediction records where it comes from: ``uns["biocls_predict"]``, ``<output>.json``;
- ``biocls predict --help`` explains ``--input`` and ``--output``; a warning prints once;
- invalid sequences are dropped, counted and reported (through ``biocls report``).

The CLI runs in-process (``biocls.cli.main``, the console script's code path); its warnings are
log records, read with ``caplog``. The one check of what reaches the terminal runs the real
console script.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from test_repertoire_pipeline import write_dataset

import biocls
from biocls.cli import load_spec, main
from biocls.config import config_hash
from biocls.simulate import simulate_cells

KEYS = {"cell_type": "cell_type", "cell_state": "cell_state", "patient": "patient"}
SEEN = "in this model's training set"


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and text in r.getMessage()]


# -- cells ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A final model trained (two epochs) on train.h5ad; new.h5ad holds other cells."""
    root = tmp_path_factory.mktemp("cells")
    simulate_cells(n_patients=3, cells_per_patient=30, n_genes=60, seed=1).write_h5ad(
        root / "train.h5ad")
    simulate_cells(n_patients=2, cells_per_patient=20, n_genes=60, seed=2).write_h5ad(
        root / "new.h5ad")
    spec = json.dumps({"task": "cells", "name": "t", "input": str(root / "train.h5ad"),
                       "keys": KEYS, "folds": 3, "seed": 0, "progress": False,
                       "model": {"hidden": [8], "max_epochs": 2, "patience": 2},
                       "preprocess": {"n_top_genes": 20}})
    assert main(["-q", "split", "--spec", spec, "--out", str(root / "splits.tsv")]) == 0
    assert main(["-q", "train", "--spec", spec, "--splits", str(root / "splits.tsv"),
                 "--fold", "final", "--out", str(root / "model")]) == 0
    return {"root": root, "spec": spec, "model": root / "model"}


def predict(model: Path, input: Path, out: Path) -> ad.AnnData:  # noqa: A002
    assert main(["-q", "predict", "--model", str(model), "--input", str(input),
                 "--output", str(out)]) == 0
    return ad.read_h5ad(out)


def test_predict_on_training_cells_warns_once_and_counts_them(cells, tmp_path, caplog) -> None:
    out = predict(cells["model"], cells["root"] / "train.h5ad", tmp_path / "a.h5ad")
    info = json.loads((cells["model"] / "train_info.json").read_text())
    n_trained = out.n_obs - info["preprocess"]["qc_removed"]  # every patient trains a final model
    assert 0 < n_trained <= out.n_obs
    assert out.uns["biocls_predict"]["n_seen_in_training"] == n_trained
    assert int(out.obs["biocls_seen_in_training"].sum()) == n_trained
    lines = warnings_about(caplog, SEEN)
    assert len(lines) == 1, lines
    assert f"{n_trained} of {out.n_obs} input cells" in lines[0] and "\n" not in lines[0]


def test_predict_on_new_cells_is_quiet_about_training(cells, tmp_path, caplog) -> None:
    out = predict(cells["model"], cells["root"] / "new.h5ad", tmp_path / "b.h5ad")
    assert out.uns["biocls_predict"]["n_seen_in_training"] == 0
    assert not out.obs["biocls_seen_in_training"].any()
    assert warnings_about(caplog, SEEN) == []


def test_model_without_training_record_predicts_as_before(cells, tmp_path, caplog) -> None:
    """A model folder written before biocls recorded its training cells: no record, no warning."""
    old = tmp_path / "old_model"
    shutil.copytree(cells["model"], old)
    (old / "training_fingerprints.npy").unlink(missing_ok=True)
    out = predict(old, cells["root"] / "train.h5ad", tmp_path / "c.h5ad")
    assert "n_seen_in_training" not in out.uns["biocls_predict"]
    assert "biocls_seen_in_training" not in out.obs
    assert warnings_about(caplog, SEEN) == []


def test_prediction_records_its_provenance(cells, tmp_path) -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    out = predict(cells["model"], cells["root"] / "new.h5ad", tmp_path / "d.h5ad")
    rec = out.uns["biocls_predict"]
    assert rec["biocls_version"] == biocls.__version__
    assert rec["model_biocls_version"] == biocls.__version__
    assert rec["model"] == str(cells["model"]) and rec["experiment"] == "t"
    assert rec["config_hash"] == config_hash(load_spec(cells["spec"]))
    assert before <= datetime.fromisoformat(rec["predicted_at"]) <= datetime.now(timezone.utc)
    assert rec["n_seen_in_training"] == 0
    assert rec["params"] == {"model": str(cells["model"]), "experiment": "t"}


def test_annotate_in_memory_warns_about_training_cells(tmp_path) -> None:
    """biocls.tl: the same record for a model trained in memory, saved, and loaded again."""
    adata = simulate_cells(n_patients=3, cells_per_patient=20, n_genes=60, seed=3)
    model = biocls.tl.train(adata, keys=KEYS, preprocess={"n_top_genes": 20},
                            model={"hidden": [8], "max_epochs": 2, "patience": 2})
    with pytest.warns(UserWarning, match=SEEN):
        biocls.tl.annotate(adata, model)
    n = adata.uns["biocls_predict"]["n_seen_in_training"]
    assert n > 0.9 * adata.n_obs
    model.save(tmp_path / "m")
    with pytest.warns(UserWarning, match=f"{n} of {adata.n_obs} input cells"):
        again = biocls.tl.annotate(adata, tmp_path / "m", copy=True)
    assert again.uns["biocls_predict"]["config_hash"] == adata.uns["biocls_predict"][
        "config_hash"]


def test_missing_genes_warning_prints_once(cells, tmp_path) -> None:
    """It printed twice: once as a Python warning (two lines) and once more as a log line."""
    hvg = json.loads((cells["model"] / "preprocess" / "cell_preprocessor.json").read_text())["hvg"]
    new = ad.read_h5ad(cells["root"] / "new.h5ad")
    new[:, ~new.var_names.isin(hvg[:3])].copy().write_h5ad(tmp_path / "fewer.h5ad")
    out = tmp_path / "e.h5ad"
    proc = subprocess.run([sys.executable, "-m", "biocls", "predict", "--model",
                           str(cells["model"]), "--input", str(tmp_path / "fewer.h5ad"),
                           "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "genes are missing" in ln]
    assert len(lines) == 1, proc.stderr
    assert "3 of 20 selected genes" in lines[0] and str(tmp_path / "fewer.h5ad") in lines[0]
    assert "warnings.warn" not in proc.stderr and "UserWarning" not in proc.stderr


def test_predict_help_explains_input_and_output(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split()).split("--model MODEL", 2)[2]  # options
    input_help = text.split("--input INPUT", 1)[1].split("--output OUTPUT", 1)[0]
    output_help = text.split("--output OUTPUT", 1)[1]
    assert ".h5ad" in input_help and "folder of <repertoire_id>.tsv" in input_help
    assert "metadata.tsv" in input_help  # what is skipped
    assert ".h5ad" in output_help and ".tsv" in output_help and ".json" in output_help


# -- repertoires ---------------------------------------------------------------------------------
#: rows a repertoire file may hold that are dropped and counted (README): stop codon, digit,
#: space, empty
INVALID = ["CAS*F", "CAS1F", "CA SF", ""]


@pytest.fixture(scope="module")
def reps(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The workflow's verbs on a tiny set whose files hold invalid sequences: encode, split,
    two folds, the final model, evaluate."""
    root = tmp_path_factory.mktemp("reps")
    spec = write_dataset(root / "data", n_subjects=8, n_seqs=40)
    spec.update(folds=2, model={**spec["model"], "max_epochs": 2, "patience": 2})
    f = Path(spec["repertoires"]) / "s01_t0.tsv"
    df = pd.read_csv(f, sep="\t", keep_default_na=False)
    bad = pd.DataFrame({"junction_aa": INVALID, "v_call": "TRBV5-1", "j_call": "TRBJ2-7",
                        "duplicate_count": 1})
    pd.concat([df, bad]).to_csv(f, sep="\t", index=False)
    spec_file = root / "spec.json"
    spec_file.write_text(json.dumps(spec))
    res = root / "res"
    s = str(spec_file)
    assert main(["-q", "encode", "--spec", s, "--out", str(root / "store.h5")]) == 0
    assert main(["-q", "split", "--spec", s, "--out", str(res / "splits.tsv")]) == 0
    for k in ("0", "1", "final"):
        assert main(["-q", "train", "--spec", s, "--store", str(root / "store.h5"),
                     "--splits", str(res / "splits.tsv"), "--fold", k,
                     "--out", str(res / ("model" if k == "final" else f"folds/{k}"))]) == 0
    assert main(["-q", "evaluate", "--spec", s, "--splits", str(res / "splits.tsv"),
                 "--folds-dir", str(res / "folds"), "--out", str(res)]) == 0
    return {"root": root, "spec": spec, "spec_file": spec_file, "res": res,
            "model": res / "model"}


def new_repertoires(root: Path) -> Path:
    """A fresh set laid out as the simulator writes it: metadata.tsv and truth.tsv (a
    junction_aa column, rows of several repertoires) beside repertoires/."""
    write_dataset(root, n_subjects=4, n_seqs=30, seed=1)
    pd.DataFrame({"repertoire_id": ["s01_t0", "s03_t0"], "sequence_id": ["s01_t0_3", "s03_t0_5"],
                  "row": [3, 5], "junction_aa": ["CASWHKWF", "CASSWHKWF"],
                  "motif": ["WHKW", "WHKW"]}).to_csv(root / "truth.tsv", sep="\t", index=False)
    return root / "repertoires"


def test_invalid_sequences_are_dropped_and_counted(reps) -> None:
    m = json.loads((reps["res"] / "metrics.json").read_text())
    assert m["dropped_sequences"]["s01_t0"] == 1 + len(INVALID)  # write_dataset adds a CAS*F
    pred = pd.read_csv(reps["res"] / "predictions.tsv", sep="\t").set_index("repertoire_id")
    assert pred.loc["s01_t0", "n_dropped"] == 1 + len(INVALID)


def test_report_renders_dropped_sequences(reps) -> None:
    assert main(["-q", "report", "--results", str(reps["res"])]) == 0
    assert (reps["res"] / "reports" / "index.html").exists()


def test_predict_folder_reads_repertoire_files_only(reps, tmp_path, caplog) -> None:
    folder = new_repertoires(tmp_path / "new")
    shutil.copy(tmp_path / "new" / "metadata.tsv", folder / "metadata.tsv")
    shutil.copy(tmp_path / "new" / "truth.tsv", folder / "truth.tsv")
    n_files = len(list(folder.glob("s*.tsv")))
    out = tmp_path / "scores.tsv"
    assert main(["-q", "predict", "--model", str(reps["model"]), "--input", str(folder),
                 "--output", str(out)]) == 0
    scores = pd.read_csv(out, sep="\t")
    assert sorted(scores["repertoire_id"]) == sorted(p.stem for p in folder.glob("s*.tsv"))
    assert len(scores) == n_files
    lines = warnings_about(caplog, "skipped")
    assert len(lines) == 1, lines
    assert "metadata.tsv" in lines[0] and "truth.tsv" in lines[0] and str(folder) in lines[0]


def test_predict_reads_a_cdr3_only_file_as_training_does(reps, tmp_path) -> None:
    """Training accepts a file with only a CDR3 column (counts 1, no V/J); so must predict."""
    folder = tmp_path / "cdr3_only"
    folder.mkdir()
    pd.DataFrame({"junction_aa": ["CASSWHKWF", "CASSLGF", "CASRQF"]}).to_csv(
        folder / "r1.tsv", sep="\t", index=False)
    out = tmp_path / "scores.tsv"
    assert main(["-q", "predict", "--model", str(reps["model"]), "--input", str(folder),
                 "--output", str(out)]) == 0
    assert pd.read_csv(out, sep="\t")["repertoire_id"].tolist() == ["r1"]


def test_predict_one_level_too_high_is_an_error(reps, tmp_path, capsys) -> None:
    folder = new_repertoires(tmp_path / "new")
    out = tmp_path / "out" / "scores.tsv"
    rc = main(["-q", "predict", "--model", str(reps["model"]), "--input", str(folder.parent),
               "--output", str(out)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, err
    line = lines[0]
    assert line.startswith("biocls predict: error: ") and "fix:" in line
    assert "metadata.tsv" in line and "truth.tsv" in line
    assert f"--input {folder}" in line  # where the repertoire files are
    assert not out.parent.exists()


def test_repertoire_prediction_records_provenance_and_training_overlap(reps, tmp_path,
                                                                       caplog) -> None:
    out = tmp_path / "scores.tsv"
    assert main(["-q", "predict", "--model", str(reps["model"]), "--input",
                 reps["spec"]["repertoires"], "--output", str(out)]) == 0
    n = len(pd.read_csv(out, sep="\t"))
    rec = json.loads((tmp_path / "scores.tsv.json").read_text())
    assert rec["biocls_version"] == biocls.__version__ and rec["experiment"] == "tiny"
    assert rec["model"] == str(reps["model"]) and rec["input"] == reps["spec"]["repertoires"]
    assert rec["config_hash"] == config_hash(load_spec(str(reps["spec_file"])))
    assert datetime.fromisoformat(rec["predicted_at"]).tzinfo is not None
    assert rec["n_repertoires"] == n and rec["skipped"] == []
    assert rec["n_seen_in_training"] == n  # the final model trains on every repertoire
    lines = warnings_about(caplog, SEEN)
    assert len(lines) == 1 and f"{n} of {n} repertoires" in lines[0], lines
    scores = biocls.tl.score_repertoires(reps["model"], reps["spec"]["repertoires"])
    assert scores.attrs["biocls_predict"]["n_seen_in_training"] == n
    assert np.allclose(scores["probability"], pd.read_csv(out, sep="\t")["probability"])
