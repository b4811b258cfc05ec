"""What a RATT certificate costs in accuracy, and what it certifies, on the same folds.

For each cohort, patient-grouped cross-validation of the factored model three ways, on the same
folds and seeds:

- ``genes``: the cohort's recipe as it is (all labels, scaled genes);
- ``recipe``: the recipe a certified experiment uses, all labels: the cohort's options with
  ``--preprocess`` and ``--model`` (JSON) merged over them (default: ``preprocess.n_pcs`` 100);
- ``recipe+random``: the same with ``--random-fraction`` of each fold's fit cells trained with
  uniformly random labels (what ``certify:`` does to the shipped model).

The cost of the random mix is ``recipe+random − recipe`` (paired by fold); the cost of
certifying at all is ``recipe+random − genes``. Then the certified final model is trained as the
workflow trains it (fold 0 held out) and certified by ``biocls.certify.certify``, with the recipe
and with the cohort's own options: per head the per-cell bound, the per-patient bound and the
error measured on the held-out patients.

Cohorts: ``demo`` (``configs/default.yaml``'s ``demo_cells``, simulated here) and any cohort of
``benchmarks/cells_suite.py`` (its cross-validation donors only). Tuning vs evaluation follows
the suite (``demo`` counts as tuning). Everything goes through the workflow's code: the config
loader, ``CellsTask.load``, ``biocls.tasks.cells.fit_cells``, ``CellsTask.predict``,
``biocls.tasks.gather`` and ``biocls.certify.certify``. Not a test.

    python benchmarks/certify_cost.py --cohorts demo tune_splatter eval_splatter_a
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from biocls.certify import certify  # noqa: E402
from biocls.config import CellExperiment, Certify, parse_experiment  # noqa: E402
from biocls.simulate import simulate_cells  # noqa: E402
from biocls.splits import plan_fold  # noqa: E402
from biocls.tasks import gather, make_splits  # noqa: E402
from biocls.tasks.cells import CellsTask, fit_cells, ratt_mask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEADS = ("cell_type", "cell_state")


def demo_experiment(work: Path) -> CellExperiment:
    """``demo_cells`` of configs/default.yaml, its data simulated into ``work``."""
    block = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    block = block["experiments"]["demo_cells"]
    path = work / "demo_cells.h5ad"
    simulate_cells(**block["simulate"]).write_h5ad(path)
    block = {k: v for k, v in block.items() if k != "simulate"}
    return parse_experiment({**block, "input": str(path), "progress": False},
                            name="demo", source="configs/default.yaml", partial=True)


def suite_experiment(name: str, work: Path) -> CellExperiment:
    """A cells_suite cohort's cross-validation donors, as an experiment reading a file."""
    import cells_suite as suite

    args = argparse.Namespace(quick=False, wu2020=None)
    d = suite.COHORTS[name].load(args)
    adata = d.adata[~d.adata.obs[d.keys["patient"]].astype(str).isin(d.new_donors)].copy()
    path = work / f"{name}.h5ad"
    adata.write_h5ad(path)
    exp = suite.experiment(name, d, model={}, source="benchmarks/certify_cost.py")
    return dataclasses.replace(exp, input=str(path))


def cross_validate(exp: CellExperiment, data: Any, splits: Any,
                   random: bool) -> dict[str, list[float]]:
    """Per-fold macro-F1 of the factored model, optionally with the random mix
    (``exp.certify.random_fraction`` of each fold's fit cells)."""
    task = CellsTask()
    patients = task.patients(data)
    results = []
    for k in sorted(splits["fold"].unique()):
        plan = plan_fold(splits, int(k), patients, validation_fraction=exp.validation_fraction,
                         seed=exp.seed, source="splits")
        rnd = ratt_mask(exp, data, plan) if random else None
        fitted = fit_cells(exp, data, plan, randomise=rnd)
        results.append(task.predict(exp, fitted, data, plan))
    _, metrics = gather(task, exp, results)
    return {h: metrics[h]["by_fold"] for h in HEADS if h in metrics}


def certified(exp: CellExperiment, data: Any, splits: Any, work: Path) -> dict[str, Any]:
    """Train the final model as the workflow does with ``certify:`` and certify it."""
    task = CellsTask()
    plan = plan_fold(splits, "final", task.patients(data),
                     validation_fraction=exp.validation_fraction, seed=exp.seed,
                     source="splits", hold_out=exp.certify.fold)
    fitted = task.fit(exp, data, plan)  # a certified final fit: the RATT way
    model = Path(tempfile.mkdtemp(dir=work)) / "model"
    model.mkdir()
    task.save(exp, fitted, data, plan, model)
    return certify(exp, model=model, out=model.parent / "certificate.json")["heads"]


def run(name: str, exp: CellExperiment, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    cert = Certify(delta=args.delta, fold=0, random_fraction=args.random_fraction)
    exp = dataclasses.replace(exp, certify=cert)
    recipe = dataclasses.replace(
        exp, preprocess=dataclasses.replace(exp.preprocess, **args.preprocess),
        model=dataclasses.replace(exp.model, **args.model))
    data = CellsTask().load(exp)
    splits = make_splits(CellsTask(), exp, data)
    out: dict[str, Any] = {"n_cells": int(data.n_obs), "n_patients": int(splits.shape[0]),
                           "folds": int(exp.folds), "cv": {}, "certificate": {}}
    for label, e, random in (("genes", exp, False), ("recipe", recipe, False),
                             ("recipe+random", recipe, True)):
        out["cv"][label] = cross_validate(e, data, splits, random)
        print(f"  {name} {label}: " + ", ".join(
            f"{h} {np.mean(v):.3f}" for h, v in out["cv"][label].items()), flush=True)
    for label, e in (("recipe", recipe), ("genes", exp)):
        out["certificate"][label] = certified(e, data, splits, work)
    out["seconds"] = time.perf_counter() - t0
    return out


def _ms(v: list[float]) -> str:
    return f"{np.mean(v):.3f} ± {np.std(v):.3f}"


def report(name: str, r: dict[str, Any], args: argparse.Namespace) -> None:
    cv = r["cv"]
    print(f"\n## {name}: {r['n_patients']} patients, {r['n_cells']} cells, {r['folds']} folds "
          f"({r['seconds']:.0f} s)")
    print(f"recipe: preprocess {json.dumps(args.preprocess)}, model {json.dumps(args.model)}, "
          f"random fraction {args.random_fraction}")
    print("| head | genes | recipe | recipe+random | random-mix cost | certifying cost |")
    print("|---|---|---|---|---|---|")
    for h in cv["genes"]:
        g, p, pr = (np.asarray(cv[k][h]) for k in ("genes", "recipe", "recipe+random"))
        print(f"| {h} macro-F1 | {_ms(g)} | {_ms(p)} | {_ms(pr)} | {_ms(pr - p)} | "
              f"{_ms(pr - g)} |")
    print("\n| model | head | per-cell bound | per-patient bound | measured error (held-out "
          "patients) | E_S | E_S~ | E_S~C | k |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, heads in r["certificate"].items():
        for h, c in heads.items():
            print(f"| {label} | {h} | {c['bound']:.3f} | {c['patient_bound']:.3f} | "
                  f"{c['test_error']:.3f} | {c['clean_error']:.3f} | {c['random_error']:.3f} | "
                  f"{c['random_correct_error']:.3f} | {c['k']} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohorts", nargs="+", default=["demo", "tune_splatter"],
                    help="demo and/or cells_suite cohort names")
    ap.add_argument("--preprocess", type=json.loads, default={"n_pcs": 100},
                    help='the certified recipe\'s preprocess options, JSON (default: '
                         '\'{"n_pcs": 100}\')')
    ap.add_argument("--model", type=json.loads, default={},
                    help="the certified recipe's model options, JSON (default: none)")
    ap.add_argument("--random-fraction", type=float, default=0.2)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.cohorts:
            exp = demo_experiment(work) if name == "demo" else suite_experiment(name, work)
            results[name] = run(name, exp, args, work)
            report(name, results[name], args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
