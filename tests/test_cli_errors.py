"""Issue 2, "Bad input": every mistake in the input is one line on stderr naming the file, the
field and the fix; the exit status is non-zero; nothing is left behind where the output would go.

The full matrix calls ``biocls.cli.main`` in-process (same code path as the console script: it
returns the exit status and prints the error itself) to keep the suite fast on 2 cores; a few
cases also run the real console script in a subprocess, and the config case runs Snakemake.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from snakemake_run import run_snakemake

from biocls.cli import main
from biocls.simulate import simulate_cells

REPO = Path(__file__).resolve().parents[1]
KEYS = {"cell_type": "cell_type", "cell_state": "cell_state", "patient": "patient"}


# -- data ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One good tiny file and one corrupted copy per kind of bad input."""
    root = tmp_path_factory.mktemp("inputs")
    good = simulate_cells(n_patients=3, cells_per_patient=30, n_genes=60, seed=1)
    files = {}

    def write(name: str, adata) -> None:
        files[name] = root / f"{name}.h5ad"
        adata.write_h5ad(files[name])

    write("good", good)
    b = good.copy()
    del b.obs["cell_type"]
    write("no_obs_key", b)
    for name, value in (("nan", np.nan), ("negative", -3.0)):
        b = good.copy()
        X = np.asarray(b.X.toarray() if sp.issparse(b.X) else b.X, dtype=np.float32)
        X[5, 7] = value
        b.X = X
        write(name, b)
    write("no_genes", good[:, :0].copy())
    write("no_cells", good[:0].copy())
    files["csv_renamed"] = root / "csv_renamed.h5ad"
    files["csv_renamed"].write_text("cell,gene1,gene2\nc1,1,2\n")
    files["wrong_suffix"] = root / "counts.csv"
    files["wrong_suffix"].write_bytes(files["good"].read_bytes())  # a real h5ad, wrong name
    return files


def spec_for(path: Path, **extra) -> str:
    return json.dumps({"task": "cells", "name": "t", "input": str(path), "keys": KEYS,
                       "folds": 3, "seed": 0, "progress": False, **extra})


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(["-q", *argv])
    return rc, capsys.readouterr().err


def assert_one_line_error(rc: int, err: str, *, verb: str, names: list[str]) -> str:
    """Non-zero exit; stderr is exactly one line, no traceback, naming each of ``names``."""
    assert rc != 0
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"biocls {verb}: error: "), line
    assert "fix:" in line, line
    for name in names:
        assert name in line, f"{name!r} not in {line!r}"
    return line


def assert_nothing_written(out: Path) -> None:
    """The output is absent and its folder holds no temporary leftovers."""
    assert not out.exists()
    if out.parent.exists():
        assert list(out.parent.iterdir()) == [], list(out.parent.iterdir())


# -- split (reads, validates and QC-filters the input) ------------------------------------------
SPLIT_CASES = {
    # case: (file, extra spec, what the line must name besides the file)
    "missing obs key": ("no_obs_key", {}, ["keys.cell_type", "'cell_type'"]),
    "missing patient column": ("good", {"keys": {**KEYS, "patient": "donor_id"}},
                               ["keys.patient", "'donor_id'"]),
    "NaN in counts": ("nan", {}, [": X", "NaN"]),
    "negative counts": ("negative", {}, [": X", "negative"]),
    "no genes": ("no_genes", {}, [": X", "0 genes"]),
    "no cells": ("no_cells", {}, [": X", "0 cells"]),
    "CSV renamed .h5ad": ("csv_renamed", {}, ["not a readable .h5ad"]),
    # the config's schema refuses `input` before the file is opened: it names the field
    "wrong suffix": ("wrong_suffix", {}, ["experiments.t.input", "'.csv'", ".h5ad"]),
    # nmads this strict leaves no cell of the first patient: a named patient, and the setting
    "patient empty after QC": ("good", {"preprocess": {"nmads": 1e-9}},
                               ["no cells left after QC", "P01", "preprocess.nmads"]),
}


@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_split_bad_input(case: str, data, tmp_path: Path, capsys) -> None:
    name, extra, names = SPLIT_CASES[case]
    out = tmp_path / "results" / "splits.tsv"
    rc, err = run_cli(["split", "--spec", spec_for(data[name], **extra), "--out", str(out)],
                      capsys)
    assert_one_line_error(rc, err, verb="split", names=[str(data[name]), *names])
    assert_nothing_written(out)


def test_split_good_input_writes(data, tmp_path: Path, capsys) -> None:
    """The control: the uncorrupted file passes, so the failures above are about the defects."""
    out = tmp_path / "results" / "splits.tsv"
    rc, err = run_cli(["split", "--spec", spec_for(data["good"]), "--out", str(out)], capsys)
    assert rc == 0, err
    assert out.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["splits.tsv"]


# -- train ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def splits(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("splits") / "splits.tsv"
    assert main(["-q", "split", "--spec", spec_for(data["good"]), "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("name", ["nan", "negative", "no_obs_key"])
def test_train_bad_input(name: str, data, splits: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "results" / "folds" / "0"
    ckpt = tmp_path / "results" / "checkpoints" / "0"
    rc, err = run_cli(["train", "--spec", spec_for(data[name]), "--splits", str(splits),
                       "--fold", "0", "--out", str(out), "--checkpoints", str(ckpt)], capsys)
    assert_one_line_error(rc, err, verb="train", names=[str(data[name])])
    assert not (tmp_path / "results").exists()


# -- predict -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(data, splits, tmp_path_factory) -> Path:
    """A final model trained for two epochs on the good file."""
    out = tmp_path_factory.mktemp("model") / "model"
    spec = spec_for(data["good"], model={"hidden": [8], "max_epochs": 2, "patience": 2},
                    preprocess={"n_top_genes": 20})
    rc = main(["-q", "train", "--spec", spec, "--splits", str(splits), "--fold", "final",
               "--out", str(out)])
    assert rc == 0
    return out


PREDICT_CASES = {
    "NaN in counts": ("nan", [": X", "NaN"]),
    "negative counts": ("negative", [": X", "negative"]),
    "no genes": ("no_genes", [": X", "0 genes"]),
    "no cells": ("no_cells", [": X", "0 cells"]),
    "CSV renamed .h5ad": ("csv_renamed", ["not a readable .h5ad"]),
    "wrong suffix": ("wrong_suffix", ["'.csv'", ".h5ad"]),
}


@pytest.mark.parametrize("case", list(PREDICT_CASES))
def test_predict_bad_input(case: str, data, model_dir: Path, tmp_path: Path, capsys) -> None:
    name, names = PREDICT_CASES[case]
    out = tmp_path / "out" / "annotated.h5ad"
    rc, err = run_cli(["predict", "--model", str(model_dir), "--input", str(data[name]),
                       "--output", str(out)], capsys)
    assert_one_line_error(rc, err, verb="predict", names=[str(data[name]), *names])
    assert_nothing_written(out)


def test_predict_not_a_model(data, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out" / "annotated.h5ad"
    rc, err = run_cli(["predict", "--model", str(tmp_path), "--input", str(data["good"]),
                       "--output", str(out)], capsys)
    assert_one_line_error(rc, err, verb="predict", names=[str(tmp_path), "model.json"])
    assert_nothing_written(out)


# -- the real console script ---------------------------------------------------------------------
def _biocls(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "biocls", *args], capture_output=True,
                          text=True, timeout=120)


def _last_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "nothing on stderr"
    return lines[-1]


def test_console_script_split(data, tmp_path: Path) -> None:
    name = "no_obs_key"
    out = tmp_path / "results" / "splits.tsv"
    proc = _biocls("split", "--spec", spec_for(data[name]), "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    line = _last_line(proc.stderr)
    assert line.startswith("biocls split: error: ") and "fix:" in line
    assert str(data[name]) in line
    assert_nothing_written(out)


def test_console_script_predict(data, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "annotated.h5ad"
    proc = _biocls("predict", "--model", str(model_dir), "--input", str(data["nan"]),
                   "--output", str(out))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    line = _last_line(proc.stderr)
    assert line.startswith("biocls predict: error: ") and "fix:" in line
    assert f"{data['nan']}: X" in line
    assert_nothing_written(out)


# -- config that does not match the schema -------------------------------------------------------
BAD_CONFIGS = {
    # case: (experiment block, the field the line must name)
    "folds below 2": ({"folds": 1}, "experiments.bad.folds"),
    "unknown encoder": ({"model": {"encoder": "transformer"}}, "experiments.bad.model.encoder"),
    "input not .h5ad": ({"input": "data/x.csv"}, "experiments.bad.input"),
    "dropout out of range": ({"model": {"dropout": 1.5}}, "experiments.bad.model.dropout"),
    "unknown key": ({"fold": 3}, "experiments.bad.fold"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_snakemake_rejects_bad_config(case: str, tmp_path: Path) -> None:
    import yaml

    change, field = BAD_CONFIGS[case]
    block = {"task": "cells", "input": "data/x.h5ad", "keys": {"cell_type": "ct"}, "folds": 2,
             **change}
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"experiments": {"bad": block}}))
    work = tmp_path / "work"
    proc = run_snakemake("-n", "--directory", str(work), "--configfile", str(cfg), "--cores", "1")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "config error" in ln]
    assert len(errors) == 1, proc.stderr
    line = errors[0]
    assert line == _last_line(proc.stderr)
    assert str(cfg) in line and field in line and "fix:" in line, line
    if case == "unknown key":
        assert "did you mean `folds`?" in line, line
    assert not (work / "results").exists() and not (work / "resources").exists()


def test_misspelt_config_does_not_silently_run_the_demo(tmp_path: Path) -> None:
    """The demo config fills in only when the user gives no config file: a user file whose
    `experiments` is misspelt must be rejected, not replaced by the demo."""
    import shutil

    import yaml

    for name in ("workflows", "configs"):
        shutil.copytree(REPO / name, tmp_path / name)
    shutil.copy(REPO / "Snakefile", tmp_path / "Snakefile")
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(yaml.safe_dump({"experiment": {"mine": {"task": "cells",
                                                           "input": "data/mine.h5ad",
                                                           "keys": {"cell_type": "ct"}}}}))
    proc = run_snakemake("-n", "--cores", "1", "--configfile", str(cfg), snakefile=None,
                         cwd=tmp_path)  # the copy's own Snakefile
    assert proc.returncode != 0, "a misspelt config ran the demo instead"
    line = _last_line(proc.stderr)
    assert "config error" in line and str(cfg) in line and "`experiments`" in line, line
    assert "fix:" in line and "demo" not in proc.stdout
    assert not (tmp_path / "results").exists()
