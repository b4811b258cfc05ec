"""Can a model name a cell-type × cell-state pair that no training patient showed it?

    python benchmarks/unseen_combination.py                       # the demo's pair, demo data
    python benchmarks/unseen_combination.py --pairs NK:activated,T_CD8:activated,B:damaged
    python benchmarks/unseen_combination.py --sim-seed 1          # another simulated cohort

Takes the `demo_cells` experiment of configs/default.yaml, withholds each pair from every training
set, cross-validates in memory with ``biocls.tl.cross_validate`` (the workflow's folds, fits and
metrics: split → train per fold → evaluate, without files) and prints, out of fold on the
held-out patients' cells of that pair, the fraction with BOTH labels right for the factored
heads, the joint type×state head and logistic regression, plus overall macro-F1. The joint head
cannot name an unseen pair by construction. Not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import yaml

from biocls.simulate import simulate_cells
from biocls.tl import cross_validate

ROOT = Path(__file__).resolve().parents[1]
#: keys of the demo block that are not options of one cross-validation
NOT_OPTIONS = ("task", "simulate", "example", "input", "certify")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", help="type:state[,type:state...] (default: the demo config's)")
    p.add_argument("--sim-seed", type=int, help="simulator seed (default: the demo config's)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    spec = dict(base["experiments"]["demo_cells"])
    sim = dict(spec["simulate"])
    config = {k: v for k, v in spec.items() if k not in NOT_OPTIONS}
    if args.sim_seed is not None:
        sim["seed"] = args.sim_seed
    pairs = ([tuple(x.split(":")) for x in args.pairs.split(",")] if args.pairs
             else [tuple(x) for x in spec["unseen_combinations"]])
    print(f"data: simulate_cells({json.dumps(sim)}); folds {spec['folds']}, seed {spec['seed']}")
    print(f"{'pair':24s} {'cells':>6s} {'factored':>9s} {'joint':>6s} {'logreg':>7s}   "
          f"type F1 fac/logreg   state F1 fac/logreg")
    adata = simulate_cells(**sim)
    for pair in pairs:
        m = cross_validate(adata, **{**config, "progress": False,
                                     "unseen_combinations": [list(pair)]}).metrics
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
