"""Issue 11, part 3: a failed step's one-line error reaches the console of `snakemake`.

Each rule sends the stderr of its `biocls` verb to logs/<exp>/<rule>.log. Before this, the
console said `message: None`, printed the shell command and "check log file(s)"; the line that
names the field or file and the fix was only in the log. These run Snakemake as a user does, on
tiny inputs that fail at the first step (seconds: nothing trains).

The hooks themselves (biocls._console) are also checked on hand-made log records, including the
shape the SLURM executor reports (its own message, an extra SLURM log) and a retry that succeeds.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import yaml
from snakemake_run import run_snakemake

from biocls import _console
from biocls.simulate import simulate_cells

KEYS = {"cell_type": "cell_type", "cell_state": "cell_state", "patient": "patient"}
MODEL = {"hidden": [8], "max_epochs": 1, "patience": 1}


def _cells(path: Path, *, negative: bool = False) -> Path:
    adata = simulate_cells(n_patients=4, cells_per_patient=20, n_genes=50, n_types=2, seed=0)
    if negative:  # as if the user saved scaled (z-scored) values in X
        X = np.asarray(adata.X.toarray() if sp.issparse(adata.X) else adata.X, dtype=np.float32)
        X[3, 4] = -1.5
        adata.X = X
    adata.write_h5ad(path)
    return path


def _repertoires(root: Path, *, missing: str) -> tuple[Path, Path]:
    """metadata.tsv with six repertoires, and files for all but ``missing``."""
    folder = root / "repertoires"
    folder.mkdir(parents=True)
    rows = ["repertoire_id\tsubject_id\tlabel"]
    for i in range(6):
        rid = f"r{i}"
        rows.append(f"{rid}\ts{i}\t{i % 2}")
        if rid != missing:
            (folder / f"{rid}.tsv").write_text("junction_aa\tv_call\tj_call\tduplicate_count\n"
                                               "CASSLGQGYEQYF\tTRBV1\tTRBJ1\t1\n")
    metadata = root / "metadata.tsv"
    metadata.write_text("\n".join(rows) + "\n")
    return metadata, folder


def _run(tmp_path: Path, experiment: dict) -> str:
    """Run the workflow on a one-experiment config; the console (stderr + stdout) it printed."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"experiments": {"tiny": experiment}}))
    proc = run_snakemake("--directory", str(tmp_path / "work"), "--configfile", str(cfg),
                         "--cores", "1", timeout=180)
    console = proc.stderr + proc.stdout
    assert proc.returncode != 0, console[-3000:]
    return console


def _assert_error_on_console(console: str, *, verbs: str, names: list[str]) -> str:
    """The `biocls <verb>: error: ...` line is on the console, names each of ``names`` and the
    fix, is the `message:` of Snakemake's error block (not `None`), and is repeated in the
    marked summary at the end."""
    pattern = re.compile(rf"^\s*biocls (?:{verbs}): error: .+ — fix: .+$", flags=re.M)
    lines = [m.group(0).strip() for m in pattern.finditer(console)]
    assert lines, console[-3000:]
    for name in names:
        assert name in lines[-1], f"{name!r} not in {lines[-1]!r}"
    messages = re.findall(r"^\s+message: (.*)$", console, flags=re.M)
    assert messages, console[-3000:]
    assert "None" not in messages, console[-3000:]
    assert any(lines[-1] in m for m in messages), (lines[-1], messages)
    # the summary after Snakemake's own messages: marked, and below the error block
    summary = console.rindex(_console.BANNER)
    assert console.rindex(lines[-1]) > summary > console.rindex("Error in rule")
    return lines[-1]


def test_missing_obs_column_is_on_the_console(tmp_path: Path) -> None:
    """(a) keys.cell_type names a column that the file does not have."""
    data = _cells(tmp_path / "cells.h5ad")
    console = _run(tmp_path, {"task": "cells", "input": str(data), "folds": 2, "model": MODEL,
                              "keys": {**KEYS, "cell_type": "nope"}})
    _assert_error_on_console(console, verbs="split",
                             names=[str(data), "'nope'", "keys.cell_type"])
    assert "logs/tiny/split.log" in console
    # the rule's ~1 KB --spec JSON is shortened wherever Snakemake prints the failed command
    assert '"keys":' not in console and "--spec '{…}' --out results/tiny/splits.tsv" in console


def test_negative_values_in_x_are_on_the_console(tmp_path: Path) -> None:
    """(b) X holds scaled data (a negative value)."""
    data = _cells(tmp_path / "scaled.h5ad", negative=True)
    console = _run(tmp_path, {"task": "cells", "input": str(data), "folds": 2, "model": MODEL,
                              "keys": KEYS})
    _assert_error_on_console(console, verbs="split", names=[f"{data}: X", "negative"])


def test_missing_repertoire_file_is_on_the_console(tmp_path: Path) -> None:
    """(c) metadata.tsv names a repertoire whose file is not in the folder."""
    metadata, folder = _repertoires(tmp_path / "rep", missing="r3")
    console = _run(tmp_path, {
        "task": "repertoires", "metadata": str(metadata), "repertoires": str(folder),
        "keys": {"repertoire": "repertoire_id", "patient": "subject_id", "label": "label"},
        "folds": 2})
    # encode and split both read the metadata; whichever runs first stops the workflow
    _assert_error_on_console(console, verbs="encode|split",
                             names=[str(metadata), "'r3'", "r3.tsv"])


# -- the hooks on hand-made records --------------------------------------------------------------
def _record(event: str, **extra) -> logging.LogRecord:
    from snakemake_interface_logger_plugins.common import LogEvent

    rec = logging.LogRecord("snakemake.logging", logging.ERROR, __file__, 0, "Error in rule x",
                            None, None)
    rec.__dict__.update(event=LogEvent(event), **extra)
    return rec


def test_error_line_prefers_the_biocls_line(tmp_path: Path) -> None:
    log = tmp_path / "train_0.log"
    log.write_text("12:00:01 INFO biocls: epoch 1\r epoch 2\n"
                   "biocls train: error: x.h5ad: X: bad — fix: do y\n\nsome trailing noise\n")
    assert _console.error_line([log]) == "biocls train: error: x.h5ad: X: bad — fix: do y"
    log.write_text("Traceback (most recent call last):\n  ...\nRuntimeError: out of memory\n")
    assert _console.error_line([log]) == "RuntimeError: out of memory"
    assert _console.error_line([tmp_path / "absent.log"]) is None
    log.write_text("")
    assert _console.error_line([log]) is None


def test_shorten_spec_keeps_the_other_arguments() -> None:
    import shlex

    spec = shlex.quote('{"input":"/my data/it\'s.h5ad","keys":{"cell_type":"ct"}}')
    cmd = f"biocls split --spec {spec} --out results/e/splits.tsv 2> logs/e/split.log"
    assert _console.shorten_spec(cmd) == ("biocls split --spec '{…}' --out results/e/splits.tsv "
                                          "2> logs/e/split.log")
    assert _console.shorten_spec(f"Command 'biocls train --spec {spec}' returned 2") == (
        "Command 'biocls train --spec '{…}'' returned 2")


def test_slurm_shaped_error_keeps_its_message_and_reads_the_rule_log(tmp_path: Path) -> None:
    """The SLURM executor reports its own message and adds the SLURM log; the rule's log (the
    same file as locally, on the shared file system) gives the line."""
    rule_log = tmp_path / "split.log"
    rule_log.write_text("biocls split: error: a.h5ad: bad — fix: b\n")
    slurm_log = tmp_path / "slurm-1.log"
    slurm_log.write_text("lots of jobstep output\nerror: job failed\n")
    errors = _console.StepErrors()
    rec = _record("job_error", rule_name="split_cells", jobid=3, rule_msg="SLURM-job '1' failed",
                  log=[str(rule_log), str(slurm_log)],
                  shellcmd="biocls split --spec '{\"folds\":4}' --out s.tsv 2> split.log")
    assert errors.filter(rec) is True
    assert rec.rule_msg == "biocls split: error: a.h5ad: bad — fix: b (SLURM-job '1' failed)"
    assert rec.shellcmd == "biocls split --spec '{…}' --out s.tsv 2> split.log"
    text = errors.summary()
    assert _console.BANNER in text and "split_cells" in text and str(rule_log) in text


def test_retried_job_that_succeeds_is_not_reported(tmp_path: Path) -> None:
    log = tmp_path / "train_0.log"
    log.write_text("RuntimeError: out of memory\n")
    errors = _console.StepErrors()
    errors.filter(_record("job_error", rule_name="train_cells", jobid=5, rule_msg=None,
                          log=[str(log)]))
    assert "out of memory" in errors.summary()
    errors.filter(_record("job_finished", job_id=5))
    assert errors.summary() == ""


def test_error_without_a_log_line_still_says_something(tmp_path: Path) -> None:
    rec = _record("job_error", rule_name="report", jobid=1, rule_msg=None,
                  log=[str(tmp_path / "report.log")])
    _console.StepErrors().filter(rec)
    assert rec.rule_msg and "None" not in rec.rule_msg and "report.log" in rec.rule_msg


def test_show_step_errors_installs_one_filter() -> None:
    logger = logging.getLogger("snakemake.logging")
    before = list(logger.filters)
    try:
        first = _console.show_step_errors()
        second = _console.show_step_errors()
        mine = [f for f in logger.filters if isinstance(f, _console.StepErrors)]
        assert mine == [second] and first is not second
    finally:
        logger.filters[:] = before


def test_console_check_fails_on_the_old_console() -> None:
    """The console check above fails on the console Snakemake printed before this change."""
    before = ("Error in rule split_cells:\n    message: None\n    jobid: 2\n"
              "    log: logs/t/split.log (check log file(s) for error details)\n")
    with pytest.raises(AssertionError):
        _assert_error_on_console(before, verbs="split", names=[])


def test_a_log_older_than_the_run_is_not_its_error(tmp_path: Path) -> None:
    """A SLURM job killed before its shell ran leaves the previous run's log in place: its
    error line must not be shown as this failure's."""
    import os
    import time

    from biocls._console import error_line

    log = tmp_path / "train_0.log"
    log.write_text("biocls train: error: an old problem — fix: long fixed\n")
    old = time.time() - 3600
    os.utime(log, (old, old))
    assert error_line([log], since=time.time() - 60) is None
    assert error_line([log]) == "biocls train: error: an old problem — fix: long fixed"
