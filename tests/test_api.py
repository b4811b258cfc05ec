"""The Python API (biocls.tl) runs the workflow's code in memory: same folds, same numbers.

The cells half is checked against a real Snakemake run in tests/test_workflow.py; here the
repertoire half is checked against the CLI's verbs on disk, and the API's own contract.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_repertoire_pipeline import write_dataset

import biocls
from biocls import BioclsError
from biocls.cli import main


@pytest.fixture(scope="module")
def reps(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("api")
    return write_dataset(root), root


def test_repertoire_cross_validation_in_memory_equals_the_verbs_on_disk(reps) -> None:
    spec, root = reps
    spec_file = root / "spec.json"
    spec_file.write_text(json.dumps(spec))
    res = root / "res"
    for argv in (["encode", "--out", str(root / "store.h5")],
                 ["split", "--out", str(root / "splits.tsv")]):
        assert main(["-q", argv[0], "--spec", str(spec_file), *argv[1:]]) == 0
    for k in ("0", "1", "2"):
        assert main(["-q", "train", "--spec", str(spec_file), "--store", str(root / "store.h5"),
                     "--splits", str(root / "splits.tsv"), "--fold", k,
                     "--out", str(root / "folds" / k)]) == 0
    assert main(["-q", "evaluate", "--spec", str(spec_file), "--splits",
                 str(root / "splits.tsv"), "--folds-dir", str(root / "folds"),
                 "--out", str(res)]) == 0
    disk = json.loads((res / "metrics.json").read_text())

    options = {k: v for k, v in spec.items()
               if k not in ("task", "name", "metadata", "repertoires")}
    cv = biocls.tl.cross_validate_repertoires(spec["metadata"], spec["repertoires"], **options)
    assert cv.metrics["roc_auc"]["folds"] == pytest.approx(disk["roc_auc"]["folds"], abs=1e-12)
    assert cv.metrics["baselines"]["kmer_logreg"]["roc_auc"]["folds"] == pytest.approx(
        disk["baselines"]["kmer_logreg"]["roc_auc"]["folds"], abs=1e-12)
    pred = pd.read_csv(res / "predictions.tsv", sep="\t", dtype={"repertoire_id": str})
    assert list(cv.predictions["repertoire_id"]) == list(pred["repertoire_id"])
    assert np.allclose(cv.predictions["probability"], pred["probability"], atol=1e-12)
    assert set(cv.tables) == {"predictions", "attention"}
    splits = pd.read_csv(root / "splits.tsv", sep="\t", dtype={"patient": str})
    assert cv.splits[["patient", "fold"]].equals(splits[["patient", "fold"]])


def test_options_are_checked_by_the_config_loader(reps) -> None:
    spec, _ = reps
    with pytest.raises(BioclsError, match="did you mean `folds`"):
        biocls.tl.cross_validate_repertoires(spec["metadata"], spec["repertoires"], fold=3)
    import anndata as ad

    adata = ad.AnnData(np.ones((4, 3), dtype=np.float32))
    with pytest.raises(BioclsError, match="did you mean `preprocess`"):
        biocls.tl.cross_validate(adata, preprocesss={"n_top_genes": 10})


def test_cross_validate_refuses_what_the_workflow_refuses() -> None:
    """A missing obs column is the same one-line error as in the workflow, not a KeyError."""
    import anndata as ad

    adata = ad.AnnData(np.ones((6, 3), dtype=np.float32),
                       obs=pd.DataFrame({"ct": list("aabbcc")}, index=[f"c{i}" for i in range(6)]))
    with pytest.raises(BioclsError, match="obs has no column 'donor'"):
        biocls.tl.cross_validate(adata, keys={"cell_type": "ct", "patient": "donor"}, folds=2)


def test_the_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README promises a runnable example; run it as written."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## From Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    adata, cv = scope["adata"], scope["cv"]
    assert 0 <= cv.metrics["cell_type"]["macro_f1"] <= 1
    n_qc = cv.metrics["preprocess"]["qc_removed"]
    assert len(cv.predictions) == adata.n_obs - n_qc > 0.9 * adata.n_obs  # QC'd cells only
    assert "biocls_cell_type" in adata.obs and (tmp_path / "my_model" / "model.json").exists()
    # the saved folder annotates as the in-memory model did
    again = biocls.tl.annotate(adata, tmp_path / "my_model", copy=True)
    assert (again.obs["biocls_cell_type"].astype(str)
            == adata.obs["biocls_cell_type"].astype(str)).all()


def test_the_ensemble_weight_is_chosen_on_validation_patients_never_test_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Wiring: the mixture of each fold is chosen on that fold's validation patients' cells."""
    from biocls.estimators import CellClassifier
    from biocls.simulate import simulate_cells
    from biocls.splits import plan_fold

    adata = simulate_cells(n_patients=6, cells_per_patient=60, n_genes=200, n_types=3, seed=4)
    n_val: list[int] = []
    original = CellClassifier._fit_ensemble

    def spy(self, X, cell_type, cell_state, *, X_val, **kw):
        n_val.append(len(X_val))
        return original(self, X, cell_type, cell_state, X_val=X_val, **kw)

    monkeypatch.setattr(CellClassifier, "_fit_ensemble", spy)
    res = biocls.tl.cross_validate(
        adata, keys={"cell_type": "cell_type", "cell_state": "cell_state", "patient": "patient"},
        folds=3, preprocess={"n_top_genes": 100}, model={"max_epochs": 2, "hidden": [16]})
    chosen = res.metrics["model_path"]
    assert chosen["setting"] == "ensemble" and len(chosen["by_fold"]) == 3
    for fold in chosen["by_fold"]:
        assert set(fold["linear_weight"]) == {"cell_type", "cell_state"}
        assert set(fold["validation_error"]["cell_type"]) == {"1.0", "0.5", "0.0"}
        # each head's penalty was chosen on the validation patients (their errors recorded),
        # and the linear net then refitted with them; the genes it reads are among the 100
        assert set(fold["linear_penalty_error"]["cell_type"]) == {"l1", "l2"}
        assert set(fold["linear_penalty"].values()) <= {"l1", "l2"}
        assert fold["linear_refitted"] is True
        assert set(fold["genes_used"]) == {"cell_type", "cell_state"}
        assert all(0 < n <= 100 for n in fold["genes_used"].values())
    cells_of = res.predictions.groupby("patient").size()  # every kept cell, once, out of fold
    patients = res.predictions["patient"].to_numpy()
    for k, fold in enumerate(sorted(res.splits["fold"].unique())):
        plan = plan_fold(res.splits, int(fold), patients, validation_fraction=0.2, seed=0,
                         source="test")
        assert plan.validation and not set(plan.validation) & set(plan.test)
        assert n_val[k] == int(cells_of[list(plan.validation)].sum())
