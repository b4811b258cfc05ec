"""Repertoire MIL quality at low witness rates: a tuning group and an evaluation group of simulated
cohorts, several seeds each, the MIL model against the k-mer baseline on the same folds.

    python benchmarks/repertoire_quality.py --group tuning                  # choose settings here
    python benchmarks/repertoire_quality.py --group evaluation              # report here, once
    python benchmarks/repertoire_quality.py --group tuning --sets t_w0.1 --seeds 11 \\
        --model '{"restarts": 3}' --folds 5
    python benchmarks/repertoire_quality.py --group smoke --folds 2          # < 5 minutes

Cohorts come from `biocls simulate repertoires` (OLGA background, ``biocls[simulate]``) and are
cached under ``--cache``. Every set implants its motifs with in-group residue swaps (p = 0.3) and
gives 20 % of subjects a second repertoire. The two groups share no motif and no seed, and the
evaluation group adds what the tuning group lacks (another species' background, motif copies in
negatives), so a setting chosen on the tuning group is judged on cohorts it never saw:

* tuning (seeds 11, 12, 13): 0.1 % witnesses with motifs of rare residues (their exact 4-mers are
  absent from the background); 0.05 % with rare-residue motifs and a few copies in negatives;
  0.1 % with motifs of common residues (their exact k-mers occur in the background); 0.05 % with
  two motifs that overlap in three residues; 0.01 % in 10^5-sequence repertoires
  (``t_w0.01_1e5``, DeepRC's largest setting: not in the default list, slow);
* evaluation (seeds 21, 22, 23): the same kinds with other motifs, copies in negatives in two
  sets, and one set on a mouse TRB background instead of the overlap set; 0.01 % at 10^5
  (``e_w0.01_1e5``, likewise not in the default list).

Runs the workflow's own steps (encode → split → train per fold → evaluate, through
``biocls.tasks``), so the baseline is the one the report shows. Prints one row per set and seed
(model and k-mer AUC mean ± sd over folds, the worst fold, motif recovery, and the AUC of
counting exact motif matches knowing the motifs: how solvable the cohort is), then one per set
over all seeds × folds, with the gap to the k-mer baseline. Results are cached per model setting
(``--work``/<set>/<seed>/<setting hash>), so rerunning with another ``--model`` never reuses
another setting's folds. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from biocls.config import parse_experiment
from biocls.simulate import simulate_repertoires
from biocls.tasks import evaluate, get_task, split, train
from biocls.train import set_threads

COMMON = dict(n_subjects=120, n_sequences=10_000, swap_p=0.3, two_repertoire_fraction=0.2)
SETS: dict[str, dict[str, Any]] = {
    # tuning group
    "t_w0.1": dict(COMMON, witness_rate=0.001, motifs=["NHWM", "HMXWK"]),
    "t_w0.05_rare": dict(COMMON, witness_rate=0.0005, motifs=["WMHC", "CYXWH"],
                         negative_witness_rate=0.00005),
    "t_w0.1_bgkmers": dict(COMMON, witness_rate=0.001, motifs=["AMGE", "QHXSL"]),
    "t_w0.05_overlap": dict(COMMON, witness_rate=0.0005, motifs=["KWYG", "WYGD"]),
    "t_w0.01_1e5": dict(COMMON, n_sequences=100_000, witness_rate=0.0001, motifs=["NHWM"]),
    # dropped from the default list: at 0.05 % with motifs of common residues, counting exact
    # motif matches knowing the motifs reaches only 0.80 (seed 11), so no method can be judged
    "t_w0.05_bgkmers": dict(COMMON, witness_rate=0.0005, motifs=["AMGE", "QHXSL"]),
    # evaluation group: other motifs, another background, copies in negatives
    "e_w0.1": dict(COMMON, witness_rate=0.001, motifs=["FYRW", "DWXMK"]),
    "e_w0.05_rare": dict(COMMON, witness_rate=0.0005, motifs=["HWMY", "MCXHW"],
                         negative_witness_rate=0.00005),
    "e_w0.1_bgkmers": dict(COMMON, witness_rate=0.001, motifs=["SLGE", "TDXEA"],
                           negative_witness_rate=0.00005),
    "e_w0.05_mouse": dict(COMMON, witness_rate=0.0005, motifs=["YHWN", "HWNXR"],
                          model="mouse_T_beta"),
    "e_w0.01_1e5": dict(COMMON, n_sequences=100_000, witness_rate=0.0001, motifs=["FYRW"]),
    # a quick check that the suite runs
    "smoke": dict(n_subjects=40, n_sequences=2000, witness_rate=0.005, motifs=["NHWM"],
                  swap_p=0.3, two_repertoire_fraction=0.2),
}
GROUPS: dict[str, dict[str, list]] = {
    "tuning": {"sets": ["t_w0.1", "t_w0.05_rare", "t_w0.1_bgkmers", "t_w0.05_overlap"],
               "seeds": [11, 12, 13]},
    "evaluation": {"sets": ["e_w0.1", "e_w0.05_rare", "e_w0.1_bgkmers", "e_w0.05_mouse"],
                   "seeds": [21, 22, 23]},
    "smoke": {"sets": ["smoke"], "seeds": [1]},
}
#: a set whose motif-count AUC is below this carries too little signal to judge a method by
WEAK_SIGNAL = 0.8
KEYS = {"repertoire": "repertoire_id", "patient": "subject_id", "label": "label"}
#: DeepRC's published figures for implanted motifs (Widrich et al. 2020, as DESIGN §6 quotes them),
#: printed beside the suite's table; they are the paper's, not measured here
DEEPRC = ("DeepRC, published (implanted motifs, Widrich et al. 2020): AUC 0.984 at a 0.1 % "
          "witness rate with one motif, 0.938 with several")


def dataset(cache: Path, name: str, seed: int) -> Path:
    """The cohort of ``name`` at ``seed``, simulated once and reused while its parameters hold."""
    d = cache / f"{name}_s{seed}"
    params = {**SETS[name], "seed": seed}
    if (d / "params.json").exists():
        old = json.loads((d / "params.json").read_text())
        if all(old.get(k) == v for k, v in params.items()):
            return d
    t = time.time()
    simulate_repertoires(d, progress=False, **params)
    print(f"# simulated {name} seed {seed} in {time.time() - t:.0f} s", flush=True)
    return d


def recovery(att: pd.DataFrame, pred: pd.DataFrame, truth: pd.DataFrame, n: int = 100) -> float:
    """Share of witnesses among the ``n`` highest-scored attended sequences of positives."""
    pos = set(pred.loc[pred["label"] == 1, "repertoire_id"])
    a = att[att["repertoire_id"].isin(pos)].sort_values("score", ascending=False).head(n)
    wit = set(zip(truth["repertoire_id"], truth["junction_aa"], strict=False))
    hits = [(r, s) in wit for r, s in zip(a["repertoire_id"], a["junction_aa"], strict=True)]
    return sum(hits) / max(len(hits), 1)


def oracle_auc(data: Path, motifs: list[str]) -> float:
    """ROC AUC of counting exact motif matches (``X`` = any residue), knowing the motifs: how
    solvable a cohort is; swapped residues and background copies keep it below 1."""
    import re

    from biocls.evaluate import roc_auc

    pattern = re.compile("|".join(m.replace("X", ".") for m in motifs))
    meta = pd.read_csv(data / "metadata.tsv", sep="\t")
    counts = [sum(bool(pattern.search(q)) for q in pd.read_csv(
        data / "repertoires" / f"{r}.tsv", sep="\t", usecols=["junction_aa"])["junction_aa"])
        for r in meta["repertoire_id"]]
    return float(roc_auc(meta["label"].to_numpy(), np.asarray(counts, dtype=float)))


def setting_hash(model: dict, baseline: dict) -> str:
    blob = json.dumps({"model": model, "baseline": baseline}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def run_one(args: argparse.Namespace, name: str, seed: int) -> dict[str, Any]:
    """Cross-validate the MIL model (and the baseline) on one cohort; its per-fold figures."""
    task = get_task("repertoires")
    data = dataset(args.cache, name, seed)
    model, baseline = json.loads(args.model), json.loads(args.baseline)
    work = args.work / f"{name}_s{seed}"
    base = {"name": name.replace(".", "_"), "task": "repertoires",
            "metadata": str(data / "metadata.tsv"), "repertoires": str(data / "repertoires"),
            "keys": KEYS, "folds": 5, "seed": 0, "progress": False}
    if not (work / "store.h5").exists():
        task.encode(parse_experiment(base), work / "store.h5")
    if not (work / "splits.tsv").exists():
        split(task, parse_experiment(base), work / "splits.tsv")
    exp = parse_experiment({**base, "model": {"threads": args.threads, **model},
                            "baseline": baseline})
    out = work / setting_hash(model, baseline)
    t = time.time()
    for k in range(args.folds):
        if not (out / "folds" / str(k) / "predictions.tsv").exists():
            train(task, exp, store=work / "store.h5", splits=work / "splits.tsv", fold=str(k),
                  out_dir=out / "folds" / str(k), checkpoint_dir=out / "checkpoints" / str(k))
    secs = time.time() - t
    splits = work / "splits.tsv"
    if args.folds < 5:  # evaluate the folds that ran
        sp = pd.read_csv(splits, sep="\t")
        splits = out / "splits_subset.tsv"
        sp[sp["fold"] < args.folds].to_csv(splits, sep="\t", index=False)
    evaluate(task, exp, splits=splits, folds_dir=out / "folds", out_dir=out)
    m = json.loads((out / "metrics.json").read_text())
    pred = pd.read_csv(out / "predictions.tsv", sep="\t")
    att = pd.read_csv(out / "attention.tsv", sep="\t")
    truth = pd.read_csv(data / "truth.tsv", sep="\t")
    oracle = work / "oracle_auc.json"
    if not oracle.exists():
        oracle.write_text(json.dumps(oracle_auc(data, SETS[name]["motifs"])))
    return {"set": name, "seed": seed, "model_folds": m["roc_auc"]["folds"],
            "oracle": json.loads(oracle.read_text()),
            "kmer_folds": m["baselines"]["kmer_logreg"]["roc_auc"]["folds"],
            "recovery": recovery(att, pred, truth), "train_s": secs,
            "restarts_chosen": {k: v["chosen"] for k, v in m.get("restarts", {}).items()}}


def mean_sd(v: list[float]) -> str:
    a = np.asarray(v, dtype=float)
    return f"{a.mean():.3f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.3f}"


def seed_row(r: dict[str, Any]) -> dict[str, Any]:
    return {"set": r["set"], "seed": r["seed"], "model AUC": mean_sd(r["model_folds"]),
            "k-mer AUC": mean_sd(r["kmer_folds"]), "worst fold": f"{min(r['model_folds']):.3f}",
            "motif count AUC": f"{r.get('oracle', float('nan')):.3f}",
            "folds": " ".join(f"{x:.3f}" for x in r["model_folds"]),
            "recovery@100": f"{r['recovery']:.2f}", "train s": f"{r['train_s']:.0f}"}


def set_rows(results: list[dict[str, Any]]) -> pd.DataFrame:
    """Per set, over all seeds × folds: the figures the issue judges (mean, sd, worst, gap)."""
    rows = []
    for name in dict.fromkeys(r["set"] for r in results):
        rs = [r for r in results if r["set"] == name]
        mf = [x for r in rs for x in r["model_folds"]]
        kf = [x for r in rs for x in r["kmer_folds"]]
        seed_means = [float(np.mean(r["model_folds"])) for r in rs]
        rows.append({"set": name, "seeds": len(rs), "folds": len(mf),
                     "model AUC": mean_sd(mf), "k-mer AUC": mean_sd(kf),
                     "model − k-mer": f"{np.mean(mf) - np.mean(kf):+.3f}",
                     "motif count AUC": mean_sd([r.get("oracle", float("nan")) for r in rs]),
                     "worst fold": f"{min(mf):.3f}",
                     "seed means": " ".join(f"{x:.3f}" for x in seed_means)})
    return pd.DataFrame(rows)


def print_tables(results: list[dict[str, Any]]) -> None:
    print()
    print(pd.DataFrame([seed_row(r) for r in results]).to_string(index=False))
    print()
    print(set_rows(results).to_string(index=False))
    weak = sorted({r["set"] for r in results if r.get("oracle", float("nan")) < WEAK_SIGNAL})
    if weak:
        print(f"# weak signal: in {', '.join(weak)}, counting exact motif matches knowing the "
              f"motifs reaches AUC < {WEAK_SIGNAL} (the bar that dropped t_w0.05_bgkmers from "
              "the tuning group before any model ran on it)")
    print(DEEPRC)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", choices=sorted(GROUPS), default="tuning")
    ap.add_argument("--sets", default="", help="comma-separated set names (default: the group's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="default: the group's seeds")
    ap.add_argument("--folds", type=int, default=5, help="folds to run (of 5)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/biocls_rep_suite"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/biocls_rep_suite_runs"))
    ap.add_argument("--model", default="{}", help="JSON of model options, e.g. "
                                                  "'{\"restarts\": 3}'")
    ap.add_argument("--baseline", default="{}", help="JSON of k-mer baseline options")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--json", type=Path, default=None, help="write the per-seed results here")
    ap.add_argument("--from-json", type=Path, nargs="+", default=None, metavar="JSON",
                    help="run nothing: print the tables of earlier runs' --json files together "
                         "(e.g. one run per set and seed)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.from_json:
        results = [r for f in args.from_json for r in json.loads(f.read_text())["results"]]
        print_tables(results)
        return 0
    group = GROUPS[args.group]
    sets = args.sets.split(",") if args.sets else group["sets"]
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        ap.error(f"unknown set(s) {unknown}; known: {sorted(SETS)}")
    seeds = args.seeds or group["seeds"]
    load = os.getloadavg()
    print("# command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"# group {args.group}: sets {sets}, seeds {seeds}; model {args.model}; "
          f"load {load[0]:.2f} at start ({os.cpu_count()} CPUs)", flush=True)
    set_threads(args.threads)  # as `biocls train --threads` does
    results = []
    for name in sets:
        for seed in seeds:
            r = run_one(args, name, seed)
            results.append(r)
            print(pd.DataFrame([seed_row(r)]).to_string(index=False), flush=True)
    print_tables(results)
    print(f"# load {os.getloadavg()[0]:.2f} at end")
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv[1:], "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
