"""One end-to-end Snakemake run on a tiny cells config, then everything a user does next:
the output contract, a no-op second run, ``biocls predict`` and ``snakemake --report``.

Marked ``slow`` but part of the default ``pytest`` run (nothing deselects it). Cells only: the
repertoire path needs OLGA and twice the jobs; tests/test_repertoire_pipeline.py covers it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from snakemake_run import run_snakemake, tool_env

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO.parent / "shared" / "check_outputs.py"  # CI's checkout has ../shared beside the repo
EXP = "tiny_cells"
N_PATIENTS = 4

CONFIG = {"experiments": {EXP: {
    "task": "cells",
    "simulate": {"n_patients": N_PATIENTS, "cells_per_patient": 60, "n_genes": 200,
                 "n_types": 3, "seed": 0},
    "keys": {"cell_type": "cell_type", "cell_state": "cell_state", "patient": "patient"},
    "folds": 2,
    "seed": 0,
    "progress": False,
    "preprocess": {"n_top_genes": 50, "n_pcs": 10},
    "model": {"hidden": [16], "max_epochs": 3, "patience": 3},
    "certify": {"delta": 0.05},
}}}


def snakemake(work: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return run_snakemake("--directory", str(work), "--configfile", str(work / "tiny.yaml"), *args,
                         timeout=timeout)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("workflow")
    (work / "tiny.yaml").write_text(yaml.safe_dump(CONFIG))
    proc = snakemake(work, "--cores", "2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work


@pytest.mark.slow
def test_outputs_match_the_contract(run: Path) -> None:
    res = run / "results" / EXP
    if CHECK.exists():
        proc = subprocess.run([sys.executable, str(CHECK), str(res)], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "matches the output contract" in proc.stdout
    # our own reading of DESIGN §4b, so the test means something where ../shared is absent
    splits = pd.read_csv(res / "splits.tsv", sep="\t", dtype={"patient": str})
    assert {"patient", "fold"} <= set(splits.columns)
    assert len(splits) == N_PATIENTS and not splits["patient"].duplicated().any()
    assert sorted(splits["fold"].unique()) == [0, 1]
    pred = pd.read_csv(res / "predictions.tsv", sep="\t", dtype={"patient": str})
    for col in ("patient", "fold", "true_cell_type", "pred_cell_type", "true_cell_state",
                "pred_cell_state", "joint_pred_cell_type", "logreg_pred_cell_type"):
        assert col in pred.columns, col
    assert any(c.startswith("prob_cell_type:") for c in pred.columns)
    fold_of = dict(zip(splits["patient"], splits["fold"], strict=True))
    assert (pred["fold"] == pred["patient"].map(fold_of)).all()  # out of fold, every cell
    assert set(pred["patient"]) == set(splits["patient"])
    m = json.loads((res / "metrics.json").read_text())
    assert m["task"] == "cells" and m["folds"] == 2 and m["n_patients"] == N_PATIENTS
    assert m["n_cells"] == len(pred)
    for head in ("cell_type", "cell_state"):
        assert 0.0 <= m[head]["macro_f1"] <= 1.0
        assert "macro_f1" in m["baselines"]["logreg"][head]
        assert "macro_f1" in m["baselines"]["joint"][head]
    assert set(m["per_patient"]) == set(splits["patient"])
    assert (res / "model" / "model.json").exists()
    assert (res / "reports" / "index.html").stat().st_size > 0
    pages = sorted(p.stem for p in (res / "reports" / "patients").glob("*.html"))
    assert pages == sorted(splits["patient"])


@pytest.mark.slow
def test_second_run_has_nothing_to_do(run: Path) -> None:
    proc = snakemake(run, "-n", "--cores", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


@pytest.mark.slow
def test_predict_writes_the_obs_columns(run: Path) -> None:
    import anndata as ad

    src = run / "resources" / EXP / "cells.h5ad"
    out = run / "annotated.h5ad"
    proc = subprocess.run([sys.executable, "-m", "biocls", "predict", "--model",
                           str(run / "results" / EXP / "model"), "--input", str(src),
                           "--output", str(out)], capture_output=True, text=True, timeout=120,
                          env=tool_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, after = ad.read_h5ad(src), ad.read_h5ad(out)
    assert after.n_obs == before.n_obs and list(after.obs_names) == list(before.obs_names)
    for head in ("cell_type", "cell_state"):
        labels = after.obs[f"biocls_{head}"].astype(str)
        assert set(labels) <= set(before.obs[head].astype(str))
        conf = after.obs[f"biocls_{head}_confidence"].to_numpy()
        assert ((conf > 0) & (conf <= 1)).all()
    # the user's own columns are kept
    assert (after.obs["cell_type"].astype(str) == before.obs["cell_type"].astype(str)).all()


@pytest.mark.slow
def test_snakemake_report_builds(run: Path) -> None:
    report = run / "report.html"
    proc = snakemake(run, "--report", str(report), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report.exists() and report.stat().st_size > 10_000


@pytest.mark.slow
def test_snakemake_report_pages_link_within_themselves(run: Path, tmp_path: Path) -> None:
    """Issue 11: Snakemake's report.html shows each result as a data: URL in a frame, where a
    relative link ("patients/P1.html", "../index.html") opens a blank page. It embeds one page
    per experiment, all_pages.html, whose every link is an anchor of that same page; the
    standalone pages keep their relative links, to files that exist."""
    import base64
    import re

    from report_checks import check_bundle, check_links

    report = tmp_path / "report.html"
    proc = snakemake(run, "--report", str(report), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r'<script id="results">\s*var results = (.*?);\s*</script>',
                      report.read_text(), re.S)
    assert found, "Snakemake's report layout changed: no results script"
    html = {path: r for path, r in json.loads(found.group(1)).items()
            if r["mime_type"] == "text/html"}
    assert list(html) == [f"results/{EXP}/reports/all_pages.html"]
    uri = html[f"results/{EXP}/reports/all_pages.html"]["data_uri"]
    assert len(uri) < 2 * 1024 * 1024  # Chromium shows no longer data: URL in a frame
    page = base64.b64decode(uri.split("base64,", 1)[1]).decode("utf-8")
    check_bundle(page, N_PATIENTS)
    assert re.search(r"config [0-9a-f]{12}", page)  # the rule passes the config hash
    reports = run / "results" / EXP / "reports"
    for standalone in [reports / "index.html", *sorted((reports / "patients").glob("*.html"))]:
        assert check_links(standalone), standalone.name


@pytest.mark.slow
def test_same_config_twice_gives_identical_results(run: Path, tmp_path: Path) -> None:
    """Issue 5: on CPU a second run from scratch, in another folder, is byte-identical."""
    shutil.copy(run / "tiny.yaml", tmp_path / "tiny.yaml")
    proc = snakemake(tmp_path, "--cores", "2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ("metrics.json", "predictions.tsv", "splits.tsv"):
        first, second = run / "results" / EXP / name, tmp_path / "results" / EXP / name
        assert first.read_bytes() == second.read_bytes(), name


def _planned_jobs(stdout: str) -> set[str]:
    """The rules of a dry run's job table ("rule_name   count")."""
    import re

    return {m.group(1) for m in re.finditer(r"(?m)^(\w+)\s+\d+$", stdout)} - {"total"}


@pytest.mark.slow
def test_editing_delta_reruns_only_the_certificate_and_what_reads_it(run: Path) -> None:
    """Each rule gets only its slice of the experiment: a new certify.delta changes the
    certificate's params, so the certificate and the evaluation (and the report) rerun, never
    the split or a fold."""
    edited = {"experiments": {EXP: {**CONFIG["experiments"][EXP],
                                    "certify": {"delta": 0.1}}}}
    cfg = run / "delta.yaml"
    cfg.write_text(yaml.safe_dump(edited))
    proc = run_snakemake("--directory", str(run), "--configfile", str(cfg), "-n", "--cores", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _planned_jobs(proc.stdout)
    assert {"certify_cells", "evaluate_cells", "report"} <= jobs, proc.stdout
    assert not jobs & {"split_cells", "train_cells", "train_cells_final", "simulate_cells"}, jobs
    # and a model edit does retrain the folds (the test above would pass if nothing reran)
    edited["experiments"][EXP]["model"] = {"hidden": [8], "max_epochs": 3, "patience": 3}
    cfg.write_text(yaml.safe_dump(edited))
    proc = run_snakemake("--directory", str(run), "--configfile", str(cfg), "-n", "--cores", "1")
    assert {"train_cells", "train_cells_final"} <= _planned_jobs(proc.stdout), proc.stdout


def _assert_close(a: object, b: object, path: str = "") -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.mark.slow
def test_cross_validate_in_memory_equals_the_workflow(run: Path) -> None:
    """biocls.tl.cross_validate on the same cells and config gives the workflow's out-of-fold
    metrics and predictions: the notebook and Snakemake share one fold runner and evaluator."""
    import anndata as ad

    import biocls
    from biocls._io import _finite

    block = {k: v for k, v in CONFIG["experiments"][EXP].items()
             if k not in ("task", "simulate", "certify")}
    adata = ad.read_h5ad(run / "resources" / EXP / "cells.h5ad")
    cv = biocls.tl.cross_validate(adata, **block)
    want = json.loads((run / "results" / EXP / "metrics.json").read_text())
    want.pop("certificate")
    got = json.loads(json.dumps(_finite(cv.metrics)))
    got["experiment"] = want["experiment"]
    _assert_close(got, want)
    pred = pd.read_csv(run / "results" / EXP / "predictions.tsv", sep="\t",
                       dtype={"patient": str, "cell_id": str})
    assert list(cv.predictions.columns) == list(pred.columns)
    assert (cv.predictions["pred_cell_type"].astype(str).to_numpy()
            == pred["pred_cell_type"].astype(str).to_numpy()).all()
    splits = pd.read_csv(run / "results" / EXP / "splits.tsv", sep="\t", dtype={"patient": str})
    assert cv.splits[["patient", "fold"]].equals(splits[["patient", "fold"]])
    assert "biocls_cell_type" not in adata.obs  # the caller's AnnData is left alone


@pytest.mark.slow
def test_annotate_in_memory_equals_predict(run: Path) -> None:
    import anndata as ad

    import biocls

    adata = ad.read_h5ad(run / "resources" / EXP / "cells.h5ad")
    out = biocls.tl.annotate(adata, run / "results" / EXP / "model", copy=True)
    assert out is not None and "biocls_cell_type" not in adata.obs
    assert set(out.obs["biocls_cell_state"].astype(str)) <= set(adata.obs["cell_state"].astype(str))
    assert out.uns["biocls_predict"]["params"]["experiment"] == EXP
    assert biocls.tl.annotate(adata, run / "results" / EXP / "model") is None
    assert (adata.obs["biocls_cell_type"].astype(str)
            == out.obs["biocls_cell_type"].astype(str)).all()
