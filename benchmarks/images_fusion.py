"""What clinical data and pretraining add to an image model, on simulated cohorts at several seeds.

For each seed, `biocls simulate images` writes a cohort (per-patient stain, focus and state
prevalence; a clinical table whose `sample_code` is nearly unique per patient), and the
workflow's own cross-validation (`biocls.tasks.cross_validate`, patient-grouped folds) trains on
the same folds: image only, clinical only (logistic regression), fused (late fusion), and, with
`--pretrain NPZ`, image only from scratch against image only fine-tuned from an encoder
pretrained on that file (`biocls pretrain`). It prints one table: macro-F1 per head and model on
the held-out patients, the patient-identity probe (image only and fused) with its chance level,
and what the fusion rule shipped per fold.

    python benchmarks/images_fusion.py --seeds 0 1 2
    python benchmarks/images_fusion.py --seeds 0 1 2 --pretrain ../shared/data/bloodmnist.npz

Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from biocls.config import parse_experiment
from biocls.simulate import simulate_images
from biocls.tasks import cross_validate, get_task

CLINICAL = ["age", "sex", "crp", "symptoms", "sample_code"]


def run_seed(seed: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    folder = work / f"cohort_{seed}"
    simulate_images(folder, n_patients=args.patients, images_per_patient=args.images,
                    size=args.size, seed=seed)
    block: dict[str, Any] = {
        "task": "images", "manifest": str(folder / "manifest.tsv"), "folds": args.folds,
        "seed": seed, "progress": False,
        "keys": {"cell_state": "cell_state", "clinical": CLINICAL},
        "model": {"size": args.size, **json.loads(args.model)}}
    task = get_task("images")
    store = None
    if args.pretrain:
        from biocls.tasks.images import pretrain

        block["pretrain"] = {"input": args.pretrain, "max_epochs": args.pretrain_epochs,
                             "max_images": args.pretrain_images}
        store = work / f"pretrained_{seed}"
        pretrain(parse_experiment(block, name=f"fusion_{seed}"), store)
    exp = parse_experiment(block, name=f"fusion_{seed}")
    t0 = time.perf_counter()
    res = cross_validate(task, exp, task.load(exp, store=store))
    m = res.metrics
    row: dict[str, Any] = {"seed": seed, "seconds": time.perf_counter() - t0}
    for head in ("cell_type", "cell_state"):
        for name in ("image", "clinical", "fused", "scratch", "logreg"):
            row[f"{head}:{name}"] = m["baselines"].get(name, {}).get(head, {}).get("macro_f1")
        row[f"{head}:shipped"] = m[head]["macro_f1"]
    for name, p in m.get("patient_probe", {}).items():
        row[f"probe:{name}"] = p["accuracy"]
        row["probe:chance"] = p["chance"]
    row["shipped"] = m["fusion"]["chosen_by_fold"]
    row["fusion_verdict"] = m["fusion"]["verdict"]
    if "transfer" in m:
        row["transfer_verdict"] = m["transfer"]["verdict"]
    return row


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--patients", type=int, default=12)
    ap.add_argument("--images", type=int, default=60, help="images per patient")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--model", default='{"batch_size": 32, "max_epochs": 30, "patience": 8}',
                    help="image model options (JSON), as in the config's model: block")
    ap.add_argument("--pretrain", help="a MedMNIST-style .npz to pretrain the encoder on")
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--pretrain-images", type=int, default=4000)
    ap.add_argument("--json", help="write the rows here too")
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            rows.append(run_seed(seed, args, Path(tmp)))
            print(json.dumps(rows[-1], default=str), flush=True)
    models = ["image", "clinical", "fused", "shipped", "logreg"]
    if args.pretrain:
        models.insert(0, "scratch")
    print("\n| seed | head | " + " | ".join(models) + " | probe image | probe fused | chance |")
    print("|" + "---|" * (len(models) + 5))
    for r in rows:
        for head in ("cell_type", "cell_state"):
            cells = " | ".join(_fmt(r.get(f"{head}:{n}")) for n in models)
            print(f"| {r['seed']} | {head} | {cells} | {_fmt(r.get('probe:image'))} | "
                  f"{_fmt(r.get('probe:fused'))} | {_fmt(r.get('probe:chance'))} |")
    print("\nmean over seeds (macro-F1):")
    for head in ("cell_type", "cell_state"):
        means = {n: np.mean([r[f"{head}:{n}"] for r in rows if r.get(f"{head}:{n}") is not None])
                 for n in models}
        print(f"  {head}: " + ", ".join(f"{n} {v:.3f}" for n, v in means.items()))
    print(f"  probe: image {np.mean([r['probe:image'] for r in rows]):.3f}, fused "
          f"{np.mean([r['probe:fused'] for r in rows]):.3f}, chance "
          f"{np.mean([r['probe:chance'] for r in rows]):.3f}")
    for r in rows:
        print(f"seed {r['seed']}: shipped per fold {r['shipped']}; {r['fusion_verdict']}"
              + (f" {r['transfer_verdict']}" if "transfer_verdict" in r else ""))
    print(f"load average at end: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
