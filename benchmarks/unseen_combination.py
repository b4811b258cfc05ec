"""Can a model name a cell-type × cell-state pair that no training patient showed it?

    python benchmarks/unseen_combination.py                       # the demo's pair, demo data
    python benchmarks/unseen_combination.py --pairs NK:activated,T_CD8:activated,B:damaged
    python benchmarks/unseen_combination.py --sim-seed 1          # another simulated cohort

Takes the `demo_cells` experiment of configs/default.yaml, withholds each pair from every training
set (folds and final model), runs the same verbs as the workflow (split → train per fold →
evaluate) and prints, out of fold on the held-out patients' cells of that pair, the fraction with
BOTH labels right for the factored heads, the joint type×state head and logistic regression, plus
overall macro-F1. The joint head cannot name an unseen pair by construction. Not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import yaml

from biocls._io import atomic_path
from biocls.pipelines import cells
from biocls.simulate import simulate_cells

ROOT = Path(__file__).resolve().parents[1]


def run(spec: dict, work: Path) -> dict:
    splits = work / "splits.tsv"
    cells.split(spec, splits)
    for k in range(int(spec["folds"])):
        cells.train_fold(spec, splits=splits, fold=str(k), out_dir=work / "folds" / str(k))
    cells.evaluate(spec, splits=splits, folds_dir=work / "folds", out_dir=work)
    return json.loads((work / "metrics.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", help="type:state[,type:state...] (default: the demo config's)")
    p.add_argument("--sim-seed", type=int, help="simulator seed (default: the demo config's)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    spec = dict(base["experiments"]["demo_cells"], name="unseen_benchmark", progress=False)
    spec.pop("certify", None)
    sim = dict(spec.pop("simulate"))
    if args.sim_seed is not None:
        sim["seed"] = args.sim_seed
    pairs = ([tuple(x.split(":")) for x in args.pairs.split(",")] if args.pairs
             else [tuple(x) for x in spec["unseen_combinations"]])
    print(f"data: simulate_cells({json.dumps(sim)}); folds {spec['folds']}, seed {spec['seed']}")
    print(f"{'pair':24s} {'cells':>6s} {'factored':>9s} {'joint':>6s} {'logreg':>7s}   "
          f"type F1 fac/logreg   state F1 fac/logreg")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "cells.h5ad"
        with atomic_path(data) as t:
            simulate_cells(**sim).write_h5ad(t)
        for pair in pairs:
            work = Path(tmp) / "_".join(pair)
            m = run({**spec, "input": str(data), "unseen_combinations": [list(pair)]}, work)
            u = m["unseen_combinations"][0]
            lr = m["baselines"]["logreg"]
            print(f"{pair[0] + ' × ' + pair[1]:24s} {u['n_cells']:6d} "
                  f"{u['factored_both_correct']:9.3f} {u['joint_both_correct']:6.3f} "
                  f"{u['logreg_both_correct']:7.3f}   "
                  f"{m['cell_type']['macro_f1']:.3f}/{lr['cell_type']['macro_f1']:.3f}"
                  f"          {m['cell_state']['macro_f1']:.3f}/{lr['cell_state']['macro_f1']:.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
