"""One Snakemake run of a tiny simulated image experiment with clinical columns, then what a user
does next (``biocls predict`` on the manifest), and a bad manifest as the console shows it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import markupsafe
import pandas as pd
import pytest
import yaml
from snakemake_run import run_snakemake, tool_env

from biocls import columns as C

EXP = "tiny_images"
CONFIG = {"experiments": {EXP: {
    "task": "images",
    "simulate": {"n_patients": 6, "images_per_patient": 16, "size": 16, "seed": 0},
    "keys": {"cell_state": "cell_state",
             "clinical": ["age", "sex", "crp", "symptoms", "sample_code"]},
    "folds": 2,
    "progress": False,
    "model": {"size": 16, "max_epochs": 2, "patience": 2, "batch_size": 16},
}}}


def snakemake(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_snakemake("--directory", str(work), "--configfile", str(work / "tiny.yaml"), *args,
                         timeout=400)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("images_workflow")
    (work / "tiny.yaml").write_text(yaml.safe_dump(CONFIG))
    proc = snakemake(work, "--cores", "2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work


@pytest.mark.slow
def test_outputs(run: Path) -> None:
    res = run / "results" / EXP
    metrics = json.loads((res / "metrics.json").read_text())
    assert metrics["task"] == "images" and metrics["n_images"] == 96
    assert set(metrics["baselines"]) == {"image", "fused", "clinical", "logreg"}
    assert "verdict" in metrics["fusion"] and set(metrics["patient_probe"]) == {"image", "fused"}
    pred = C.read_predictions(res / "predictions.tsv", required=(C.PATIENT, C.FOLD))
    assert len(pred) == 96 and pred.groupby(C.PATIENT)[C.FOLD].nunique().max() == 1
    splits = pd.read_csv(res / "splits.tsv", sep="\t")
    assert set(splits["patient"]) == set(pred[C.PATIENT])
    gallery = pd.read_csv(res / "gallery.tsv", sep="\t")
    assert set(gallery[C.PATIENT]) <= set(pred[C.PATIENT]) and len(gallery) > 0
    index = (res / "reports" / "index.html").read_text()
    # the page shows the verdict as written in metrics.json (HTML-escaped, as Jinja writes it)
    assert "Patient-identity probe" in index
    assert str(markupsafe.escape(metrics["fusion"]["verdict"])) in index
    page = (res / "reports" / "patients" / "P01.html").read_text()
    assert "Gallery" in page and "data:image/png;base64," in page
    assert snakemake(run, "--cores", "2", "-n").stdout.count("Job stats") == 0


@pytest.mark.slow
def test_predict_on_the_manifest(run: Path) -> None:
    manifest = run / "resources" / EXP / "images" / "manifest.tsv"
    out = run / "new.tsv"
    proc = subprocess.run([sys.executable, "-m", "biocls", "predict", "--model",
                           str(run / "results" / EXP / "model"), "--input", str(manifest),
                           "--output", str(out)], capture_output=True, text=True,
                          env=tool_env())
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out, sep="\t")
    assert list(table.columns) == ["image", "biocls_cell_type", "biocls_cell_type_confidence",
                                   "biocls_cell_state", "biocls_cell_state_confidence"]
    assert len(table) == 96 and table["biocls_cell_type_confidence"].between(0, 1).all()


@pytest.mark.slow
def test_a_bad_manifest_is_one_line_on_the_console(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    pd.DataFrame({"image": ["img/a.png", "img/b.png"], "patient": ["P1", "P2"],
                  "cell_type": ["A", "B"]}).to_csv(tmp_path / "m.tsv", sep="\t", index=False)
    cfg = {"experiments": {"bad": {"task": "images", "manifest": str(tmp_path / "m.tsv"),
                                   "folds": 2}}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "--cores", "1")
    assert proc.returncode != 0
    console = proc.stdout + proc.stderr
    assert "2 image files are missing" in console and "relative to the manifest" in console
    assert not (tmp_path / "results" / "bad" / "splits.tsv").exists()
