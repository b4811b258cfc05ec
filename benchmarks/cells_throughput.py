"""Throughput and memory of the single-cell path on a large simulated data set.

    python benchmarks/cells_throughput.py                 # 100k cells × 2,000 genes
    python benchmarks/cells_throughput.py --cells 20000   # quicker look

Each stage runs in its own process so that its peak RSS is its own:
1. simulate and write the .h5ad (not timed against a target);
2. QC + preprocessing fit (on 75% of patients) + transform of all cells;
3. one training epoch of the factored MLP (cells/s) and prediction, with the demo's model
   settings (the default batch: 512 cells at 10⁵, where an epoch still has >= 128 updates);
   with ``path: ensemble`` (the default) the fit is the MLP's epoch plus the linear path's
   logistic regressions (per head L1 by FISTA and L2 by L-BFGS, one kept: ``linear_penalty:
   auto``, though with no validation cells here L1 is kept unscored; timed apart: a one-off per
   fit, not per epoch); a small fit first pays torch's one-off imports;
4. scikit-learn's logistic regression (the CellTypist-style baseline) on the same matrix.
Targets on a 2-core machine: >= 20,000 cells/s per epoch, preprocessing <= 60 s, RSS <= 4 GiB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def stage_simulate(args: argparse.Namespace) -> dict:
    from biocls.simulate import simulate_cells

    t = time.perf_counter()
    n_patients = 20
    adata = simulate_cells(n_patients=n_patients, cells_per_patient=args.cells // n_patients,
                           n_genes=args.genes, seed=0)
    adata.write_h5ad(args.work / "cells.h5ad")
    return {"cells": adata.n_obs, "genes": adata.n_vars, "seconds": time.perf_counter() - t}


def stage_preprocess(args: argparse.Namespace) -> dict:
    import anndata as ad
    import numpy as np

    from biocls.preprocess import CellPreprocessor, filter_outliers

    adata = ad.read_h5ad(args.work / "cells.h5ad")
    t = time.perf_counter()
    adata = filter_outliers(adata, nmads=5.0, groupby="patient")
    patients = sorted(adata.obs["patient"].unique())
    train = np.isin(adata.obs["patient"], patients[: int(0.75 * len(patients))])
    pre = CellPreprocessor(n_top_genes=args.genes, nmads=None).fit(adata[train])
    X = pre.transform(adata)
    seconds = time.perf_counter() - t
    np.save(args.work / "X.npy", X)
    np.save(args.work / "type.npy", adata.obs["cell_type"].to_numpy().astype("U"))
    np.save(args.work / "state.npy", adata.obs["cell_state"].to_numpy().astype("U"))
    return {"cells": int(X.shape[0]), "features": int(X.shape[1]), "seconds": seconds}


def stage_train(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from biocls.estimators import CellClassifier

    torch.set_num_threads(args.threads)
    X = np.load(args.work / "X.npy")
    yt, ys = np.load(args.work / "type.npy"), np.load(args.work / "state.npy")
    # the demo's model settings (configs/default.yaml), one epoch, no validation set
    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "default.yaml")
                         .read_text())["experiments"]["demo_cells"]["model"]
    cfg = {k: v for k, v in cfg.items() if k not in {"max_epochs", "patience"}}
    path = cfg.pop("path", CellClassifier().path)
    # one small fit first: torch's one-off imports (use_deterministic_algorithms loads its
    # compiler, ~3 s) are paid once per process, not per epoch
    CellClassifier(max_epochs=1, patience=1, progress=False, device=args.device, path="deep",
                   **cfg).fit(X[:512], yt[:512], ys[:512])
    times, batch = {}, None
    for part in ("deep", "linear") if path == "ensemble" else (path,):
        clf = CellClassifier(max_epochs=1, patience=1, progress=False, device=args.device,
                             path=part, **cfg)
        t = time.perf_counter()
        clf.fit(X, yt, ys)
        times[part] = time.perf_counter() - t
        batch = clf.batch_size_ if part != "linear" else batch
    full = CellClassifier(max_epochs=1, patience=1, progress=False, device=args.device,
                          path=path, **cfg).fit(X, yt, ys)
    t = time.perf_counter()
    full.predict_proba(X)
    predict_s = time.perf_counter() - t
    epoch_s = times.get("deep", times.get(path))
    return {"cells": int(len(X)), "path": path, "epoch_seconds": epoch_s, "batch_size": batch,
            "linear_fit_seconds": times.get("linear"),
            "linear_penalty": cfg.get("linear_penalty", CellClassifier().linear_penalty),
            "train_cells_per_s": len(X) / epoch_s, "predict_cells_per_s": len(X) / predict_s}


def stage_logreg(args: argparse.Namespace) -> dict:
    import warnings

    import numpy as np
    from sklearn.linear_model import LogisticRegression

    X = np.load(args.work / "X.npy")
    yt = np.load(args.work / "type.npy")
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LogisticRegression(max_iter=100).fit(X, yt)
    fit_s = time.perf_counter() - t
    return {"cells": int(len(X)), "fit_seconds": fit_s, "iterations": int(clf.n_iter_.max()),
            "cells_per_s_whole_fit": len(X) / fit_s,
            "cells_per_s_per_iteration": len(X) * int(clf.n_iter_.max()) / fit_s}


STAGES = {"simulate": stage_simulate, "preprocess": stage_preprocess, "train": stage_train,
          "logreg": stage_logreg}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--stage", choices=list(STAGES), help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage:
        out = STAGES[args.stage](args)
        out["peak_rss_gib"] = peak_rss_gib()
        print(json.dumps(out))
        return
    with tempfile.TemporaryDirectory() as work:
        results = {}
        for stage in STAGES:
            cmd = [sys.executable, __file__, "--stage", stage, "--work", work, "--cells",
                   str(args.cells), "--genes", str(args.genes), "--threads", str(args.threads),
                   "--device", args.device]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            results[stage] = json.loads(done.stdout.strip().splitlines()[-1])
    s, pp, tr, lr = (results[k] for k in STAGES)
    print(f"data: {s['cells']:,} simulated cells × {s['genes']:,} genes "
          f"(simulated in {s['seconds']:.1f} s)")
    print(f"preprocessing (QC, fit on 75% of patients, transform all): {pp['seconds']:.1f} s "
          f"[target <= 60 s]  peak RSS {pp['peak_rss_gib']:.2f} GiB")
    print(f"factored MLP (demo settings), one training epoch: "
          f"{tr['train_cells_per_s']:,.0f} cells/s "
          f"({tr['epoch_seconds']:.1f} s, batch {tr['batch_size']}) [target >= 20,000]; "
          f"prediction "
          f"{tr['predict_cells_per_s']:,.0f} cells/s; peak RSS {tr['peak_rss_gib']:.2f} GiB "
          f"[target <= 4 GiB]")
    if tr.get("linear_fit_seconds") is not None:
        print(f"linear path (path: {tr['path']}; {tr['linear_penalty']} logistic regressions "
              f"for type and state, once per fit): {tr['linear_fit_seconds']:.1f} s = "
              f"{tr['linear_fit_seconds'] / lr['fit_seconds']:.2f}× sklearn's type-only fit below")
    print(f"sklearn LogisticRegression (lbfgs, max_iter=100) on the same matrix: fit "
          f"{lr['fit_seconds']:.1f} s, {lr['iterations']} iterations = "
          f"{lr['cells_per_s_whole_fit']:,.0f} cells/s for the whole fit, "
          f"{lr['cells_per_s_per_iteration']:,.0f} cells/s per pass; peak RSS "
          f"{lr['peak_rss_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
