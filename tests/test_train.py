"""Issue 5, points 3–4: a killed training run resumes to the same result; runs are deterministic;
a checkpoint written under another configuration is never resumed.

The resume test is real: ``biocls train`` runs in a subprocess, is SIGKILLed once its first
checkpoint exists, and is started again with the same command. Its final metrics.json, from
``biocls evaluate`` over both folds, must equal the uninterrupted run's byte for byte.
(.ci/slurm_demo.py does the same through SLURM: scancel, retry, resume, identical metrics.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from biocls.train import CHECKPOINT, Trainer

MAX_EPOCHS = 60


# -- the real CLI --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny experiment (4 patients × 40 cells × 80 genes) with its splits; many small epochs."""
    from biocls.config import parse_experiment
    from biocls.simulate import simulate_cells
    from biocls.tasks import get_task, split

    root = tmp_path_factory.mktemp("train")
    data = root / "cells.h5ad"
    simulate_cells(n_patients=4, cells_per_patient=40, n_genes=80, seed=0).write_h5ad(data)
    spec = {"task": "cells", "name": "resume", "input": str(data), "folds": 2, "seed": 0,
            "progress": False,
            "keys": {"cell_type": "cell_type", "cell_state": "cell_state", "patient": "patient"},
            "model": {"hidden": [16], "max_epochs": MAX_EPOCHS, "patience": MAX_EPOCHS,
                      "batch_size": 8},
            "preprocess": {"n_top_genes": 50}}
    spec_file = root / "spec.json"
    spec_file.write_text(json.dumps(spec))
    splits = root / "splits.tsv"
    split(get_task("cells"), parse_experiment(spec), splits)
    return {"root": root, "spec": spec_file, "splits": splits}


def train_cmd(job: dict, out: Path, ckpt: Path | None, fold: str = "0") -> list[str]:
    cmd = [sys.executable, "-m", "biocls", "-q", "train", "--spec", str(job["spec"]),
           "--splits", str(job["splits"]), "--fold", fold, "--out", str(out), "--threads", "1"]
    return cmd + (["--checkpoints", str(ckpt)] if ckpt else [])


def run_train_fold(job: dict, out: Path, fold: str, ckpt: Path | None = None) -> None:
    proc = subprocess.run(train_cmd(job, out, ckpt, fold), capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr


def run_train(job: dict, out: Path, ckpt: Path | None = None) -> None:
    run_train_fold(job, out, "0", ckpt)


@pytest.fixture(scope="module")
def uninterrupted(job: dict) -> Path:
    out = job["root"] / "plain"
    run_train(job, out)
    return out


def metrics_json(job: dict, fold0: Path, name: str) -> bytes:
    """metrics.json of ``biocls evaluate`` over this fold 0 and the shared fold 1."""
    fold1 = job["root"] / "fold1"
    if not fold1.exists():
        run_train_fold(job, fold1, "1")
    folds = job["root"] / name / "folds"
    shutil.copytree(fold0, folds / "0")
    shutil.copytree(fold1, folds / "1")
    proc = subprocess.run([sys.executable, "-m", "biocls", "-q", "evaluate", "--spec",
                           str(job["spec"]), "--splits", str(job["splits"]), "--folds-dir",
                           str(folds), "--out", str(folds.parent)], capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr
    data = (folds.parent / "metrics.json").read_bytes()
    assert json.loads(data)["n_patients"] == 4  # both folds' held-out patients
    return data


def predictions(out: Path) -> bytes:
    data = (out / "predictions.tsv").read_bytes()
    assert data.count(b"\n") > 10  # a header and the held-out cells
    return data


def history(out: Path) -> dict:
    return json.loads((out / "fold_info.json").read_text())["history"]


def test_killed_run_resumes_to_identical_results(job: dict, uninterrupted: Path) -> None:
    out, ckpt = job["root"] / "killed", job["root"] / "ckpt"
    first = ckpt / "factored" / "deep" / CHECKPOINT  # path: ensemble trains the deep path here
    proc = subprocess.Popen(train_cmd(job, out, ckpt), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert first.exists(), "no checkpoint was written"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "predictions.tsv").exists()  # nothing that looks like a result
    stopped_at = torch.load(first, weights_only=True)["epoch"]
    assert 0 < stopped_at < MAX_EPOCHS, "the kill did not land mid-way through training"

    run_train(job, out, ckpt)  # the same command again
    assert history(out)["resumed_from"] == stopped_at
    assert not first.exists()  # spent once the fold's outputs are written
    assert predictions(out) == predictions(uninterrupted)
    resumed, plain = history(out), history(uninterrupted)
    assert resumed["train_loss"] == plain["train_loss"]
    assert resumed["val_score"] == plain["val_score"]
    assert resumed["best_epoch"] == plain["best_epoch"]
    assert metrics_json(job, out, "resumed_eval") == metrics_json(job, uninterrupted, "plain_eval")


def test_two_runs_give_identical_predictions(job: dict, uninterrupted: Path) -> None:
    """Same spec twice (the second with checkpoints on, which must not change anything)."""
    out = job["root"] / "again"
    run_train(job, out, job["root"] / "ckpt_again")
    assert predictions(out) == predictions(uninterrupted)
    assert history(out)["train_loss"] == history(uninterrupted)["train_loss"]
    assert history(out)["resumed_from"] == 0


# -- Trainer directly ----------------------------------------------------------------------------
class Boom(Exception):
    pass


def _problem(kill_at: int | None = None):
    """A small regression problem with dropout (so the per-epoch seeding matters)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 5, generator=g)
    y = X @ torch.randn(5, 1, generator=g) + 0.1 * torch.randn(64, 1, generator=g)
    calls = {"epoch": 0}

    def batches(rng: np.random.Generator):
        if kill_at is not None and calls["epoch"] == kill_at:
            raise Boom
        calls["epoch"] += 1
        order = torch.from_numpy(rng.permutation(len(X)))
        for i in range(0, len(X), 16):
            yield X[order[i:i + 16]], y[order[i:i + 16]]

    def loss(net: nn.Module, batch) -> torch.Tensor:
        x, t = batch
        return ((net(x) - t) ** 2).mean()

    def validate(net: nn.Module) -> float:
        return float(((net(X) - y) ** 2).mean())

    return batches, loss, validate


def _net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))


def _fit(ckpt: Path | None, *, kill_at: int | None = None, signature: str = "run",
         max_epochs: int = 8):
    net = _net()
    batches, loss, validate = _problem(kill_at)
    trainer = Trainer(max_epochs=max_epochs, patience=max_epochs, lr=1e-2, device="cpu",
                      seed=3, checkpoint_dir=ckpt, progress=False)
    hist = trainer.fit(net, batches=batches, loss=loss, validate=validate, signature=signature)
    return net, hist


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_trainer_resume_matches_uninterrupted(tmp_path: Path) -> None:
    plain, plain_hist = _fit(None)
    with pytest.raises(Boom):
        _fit(tmp_path, kill_at=3)  # dies inside epoch 3, after checkpointing epochs 0-2
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["epoch"] == 3
    resumed, hist = _fit(tmp_path)
    assert hist.resumed_from == 3
    assert hist.train_loss == plain_hist.train_loss
    assert hist.best_epoch == plain_hist.best_epoch
    assert _same_weights(resumed, plain)


def test_checkpoint_of_another_configuration_is_ignored(tmp_path: Path) -> None:
    _fit(tmp_path, signature="config-A")
    _, hist = _fit(tmp_path, signature="config-A")
    assert hist.resumed_from == 8 and len(hist.train_loss) == 8  # same run: nothing left to do
    fresh, hist = _fit(tmp_path, signature="config-B")
    assert hist.resumed_from == 0 and len(hist.train_loss) == 8  # trained from scratch
    plain, _ = _fit(None)
    assert _same_weights(fresh, plain)
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["signature"] == "config-B"


def test_cell_classifier_ignores_checkpoint_of_other_settings(tmp_path: Path) -> None:
    """A different network shape would not even load: the signature must keep it out."""
    from biocls.estimators import CellClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 12)).astype(np.float32)
    t = np.array(["a", "b", "c"])[rng.integers(0, 3, 60)]
    s = np.array(["x", "y"])[rng.integers(0, 2, 60)]
    kw = {"max_epochs": 3, "patience": 3, "batch_size": 16, "progress": False, "device": "cpu"}
    first = CellClassifier(hidden=[8], **kw).fit(X, t, s, checkpoint_dir=tmp_path)
    assert first.history_.resumed_from == 0
    again = CellClassifier(hidden=[8], **kw).fit(X, t, s, checkpoint_dir=tmp_path)
    assert again.history_.resumed_from == 3
    for k, v in first.predict_proba(X).items():
        np.testing.assert_array_equal(v, again.predict_proba(X)[k])
    other = CellClassifier(hidden=[4], **kw).fit(X, t, s, checkpoint_dir=tmp_path)
    assert other.history_.resumed_from == 0
    other_data = CellClassifier(hidden=[4], **kw).fit(X[::-1].copy(), t[::-1], s[::-1],
                                                      checkpoint_dir=tmp_path)
    assert other_data.history_.resumed_from == 0


def test_progress_bar_in_a_log_file_is_not_redrawn_every_epoch(capsys) -> None:
    """Under Snakemake or SLURM stderr is a log file: 40 epochs must not mean 40 redraws."""
    batches, loss, validate = _problem()

    def slow_validate(net: nn.Module) -> float:
        time.sleep(0.02)  # 40 epochs take > 0.8 s: tqdm's default 0.1 s interval would redraw
        return validate(net)

    Trainer(max_epochs=40, patience=40, device="cpu", progress=True, desc="quiet").fit(
        _net(), batches=batches, loss=loss, validate=slow_validate)
    err = capsys.readouterr().err
    assert "quiet" in err  # the bar is shown
    assert err.count("quiet:") <= 3, err
