"""BloodMNIST (MedMNIST v2, 28×28 RGB, 8 cell types): accuracy, AUC and speed of the image path.

    python benchmarks/images_bloodmnist.py                          # resnet, official splits
    python benchmarks/images_bloodmnist.py --encoders resnet vit mixer --json out.json
    python benchmarks/images_bloodmnist.py --model '{"widths": [24, 48, 96, 192]}'
    python benchmarks/images_bloodmnist.py --quick                  # smoke run, < 1 minute
    python benchmarks/images_bloodmnist.py --no-test --save DIR     # tune: val split only
    python benchmarks/images_bloodmnist.py --load DIR               # then test the chosen one

Official splits: ``ImageClassifier`` trains on ``train`` (11,959 images) and early-stops on
``val`` (1,712); ``test`` (3,421) is evaluated once, after the fit. Per encoder: val and test
accuracy, test macro one-vs-rest ROC AUC, training wall time, training images/s (train images ×
epochs run / training time, validation passes included), inference images/s on the test split,
peak RSS and epochs run. Each encoder runs in its own process, so its peak RSS is its own.

The peer for the speed ratio is scikit-learn's logistic regression on the flattened pixels
scaled to [0, 1]. Targets (from the MedMNIST v2 paper: ResNet-18 at 28×28 reaches 0.958 test
accuracy, Google AutoML Vision 0.966): test accuracy >= 0.958, training < 30 min on 2 cores.
These are figures to read, not tests.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENCODERS = ("resnet", "vit", "mixer", "densenet121")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def load_splits(args: argparse.Namespace) -> dict:
    """``{split: (images uint8 [N, 3, 28, 28], labels as strings)}``, subsetted by --quick."""
    import numpy as np

    z = np.load(args.npz)
    out = {}
    for split in ("train", "val", "test"):
        x = np.ascontiguousarray(np.moveaxis(z[f"{split}_images"], -1, 1))
        y = z[f"{split}_labels"].reshape(-1).astype(str)
        n = {"train": args.train_subset, "val": args.val_subset,
             "test": args.test_subset}[split]
        if n and n < len(x):
            keep = np.random.default_rng(0).permutation(len(x))[:n]
            x, y = x[keep], y[keep]
        out[split] = (x, y)
    return out


def auc(y, proba, classes) -> float:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    if len(set(y)) < len(classes):  # a tiny --quick subset may miss a class
        keep = np.isin(classes, np.unique(y))
        proba = proba[:, keep] / proba[:, keep].sum(1, keepdims=True)
        classes = list(np.asarray(classes)[keep])
    if len(classes) == 2:
        return float(roc_auc_score(y == classes[1], proba[:, 1]))
    return float(roc_auc_score(y, proba, multi_class="ovr", labels=classes))


def stage_encoder(args: argparse.Namespace) -> dict:
    """Fit one encoder with the estimator as shipped; evaluate on val and test."""
    import numpy as np
    import torch

    from biocls.estimators import ImageClassifier

    torch.set_num_threads(args.threads)
    data = load_splits(args)
    (xt, yt), (xv, yv), (xs, ys) = data["train"], data["val"], data["test"]
    params = {"encoder": args.encoder, "seed": args.seed, "progress": False, "device": "cpu"}
    if args.epochs:
        params["max_epochs"] = args.epochs
    params.update(json.loads(args.model) if args.model else {})
    if "widths" in params:
        params["widths"] = tuple(params["widths"])
    if args.load:  # a model fitted by an earlier (--no-test --save) run: evaluate it only
        clf = ImageClassifier.load(Path(args.load) / args.encoder)
        train_s = clf.meta_.get("train_s", float("nan"))
    else:
        clf = ImageClassifier(**params)
        t = time.perf_counter()
        clf.fit(xt, yt, images_val=xv, cell_type_val=yv)
        train_s = time.perf_counter() - t
    epochs = len(clf.history_.train_loss)
    types = clf.types_
    pv = clf.predict_proba(xv)["cell_type"]
    out = {"encoder": args.encoder, "params": {k: v for k, v in clf.get_params().items()},
           "train_images": len(xt), "epochs": epochs, "best_epoch": clf.history_.best_epoch + 1,
           "val_score_per_epoch": [round(v, 4) for v in clf.history_.val_score],
           "train_loss_per_epoch": [round(v, 4) for v in clf.history_.train_loss],
           "train_s": train_s, "train_img_s": len(xt) * epochs / train_s,
           "val_acc": float(np.mean(np.asarray(types)[pv.argmax(1)] == yv)),
           "val_auc": auc(yv, pv, types)}
    if not args.no_test:
        t = time.perf_counter()
        ps = clf.predict_proba(xs)["cell_type"]
        infer_s = time.perf_counter() - t
        out.update(test_acc=float(np.mean(np.asarray(types)[ps.argmax(1)] == ys)),
                   test_auc=auc(ys, ps, types), infer_img_s=len(xs) / infer_s)
    else:  # inference speed on the val split instead: the test split stays unseen
        t = time.perf_counter()
        clf.predict_proba(xv)
        out["infer_img_s"] = len(xv) / (time.perf_counter() - t)
    if args.save:
        clf.save(Path(args.save) / args.encoder, meta={"train_s": train_s})
    out["peak_rss_gib"] = peak_rss_gib()
    return out


def stage_peer(args: argparse.Namespace) -> dict:
    """scikit-learn's logistic regression on the flattened pixels in [0, 1]."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    data = load_splits(args)

    def flat(x):
        return x.reshape(len(x), -1).astype(np.float32) / 255.0

    (xt, yt), (xv, yv), (xs, ys) = data["train"], data["val"], data["test"]
    with threadpool_limits(args.threads):
        lr = LogisticRegression(max_iter=args.peer_iter)
        t = time.perf_counter()
        lr.fit(flat(xt), yt)
        fit_s = time.perf_counter() - t
        classes = list(lr.classes_)
        pv = lr.predict_proba(flat(xv))
        out = {"encoder": "peer: logistic regression (pixels)", "train_images": len(xt),
               "epochs": int(np.max(lr.n_iter_)), "train_s": fit_s,
               "train_img_s": len(xt) / fit_s,
               "val_acc": float(np.mean(lr.classes_[pv.argmax(1)] == yv)),
               "val_auc": auc(yv, pv, classes)}
        x_eval, y_eval = (xv, yv) if args.no_test else (xs, ys)
        t = time.perf_counter()
        p = lr.predict_proba(flat(x_eval))  # timed from uint8, as biocls is
        out["infer_img_s"] = len(x_eval) / (time.perf_counter() - t)
        if not args.no_test:
            out.update(test_acc=float(np.mean(lr.classes_[p.argmax(1)] == y_eval)),
                       test_auc=auc(y_eval, p, classes))
    out["peak_rss_gib"] = peak_rss_gib()
    return out


def run_stage(args: argparse.Namespace, stage: str, encoder: str = "") -> dict:
    """Run one stage in a fresh process (its own peak RSS); return its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, __file__, "--_stage", stage, "--_out", str(out),
               "--_encoder", encoder, *args.passthrough]
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())


def fmt(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    head = ("| encoder | val acc | test acc | test AUC | train s | epochs | train img/s "
            "| infer img/s | peak RSS GiB |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['encoder']} | {fmt(r.get('val_acc'), '.4f')} "
                     f"| {fmt(r.get('test_acc'), '.4f')} | {fmt(r.get('test_auc'), '.4f')} "
                     f"| {fmt(r.get('train_s'), '.0f')} | {r.get('epochs', '—')} "
                     f"| {fmt(r.get('train_img_s'), ',.0f')} "
                     f"| {fmt(r.get('infer_img_s'), ',.0f')} "
                     f"| {fmt(r.get('peak_rss_gib'), '.2f')} |")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--npz", type=Path, default=ROOT.parent / "shared/data/bloodmnist.npz",
                   help="MedMNIST v2 bloodmnist.npz (28×28)")
    p.add_argument("--encoders", nargs="+", default=["resnet"], choices=ENCODERS)
    p.add_argument("--epochs", type=int, default=None,
                   help="max_epochs (default: the estimator's)")
    p.add_argument("--threads", type=int, default=2, help="torch / BLAS threads")
    p.add_argument("--model", default="",
                   help='extra ImageClassifier params as JSON, e.g. \'{"lr": 0.003}\'')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--save", type=Path, default=None, help="save each fitted model under here")
    p.add_argument("--load", type=Path, default=None,
                   help="evaluate models saved by --save under here instead of fitting")
    p.add_argument("--quick", action="store_true",
                   help="tiny subsets and 2 epochs: a smoke run in under a minute")
    p.add_argument("--no-test", action="store_true",
                   help="tuning run: report val only, never touch the test split")
    p.add_argument("--no-peer", action="store_true", help="skip the logistic-regression peer")
    p.add_argument("--peer-iter", type=int, default=200, help="max_iter of the peer")
    p.add_argument("--train-subset", type=int, default=0, help="use only N training images")
    p.add_argument("--val-subset", type=int, default=0)
    p.add_argument("--test-subset", type=int, default=0)
    p.add_argument("--_stage", default="", help=argparse.SUPPRESS)
    p.add_argument("--_out", default="", help=argparse.SUPPRESS)
    p.add_argument("--_encoder", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.train_subset = args.train_subset or 800
        args.val_subset = args.val_subset or 300
        args.test_subset = args.test_subset or 300
        args.epochs = args.epochs or 2
        args.peer_iter = min(args.peer_iter, 50)
    args.encoder = args._encoder
    raw = list(sys.argv[1:] if argv is None else argv)
    # what a stage's process gets: everything but the stage plumbing and the encoder list
    keep, skip = [], False
    for a in raw:
        if skip:
            if a.startswith("--"):
                skip = False
            else:
                continue
        if a in ("--encoders", "--_stage", "--_out", "--_encoder"):
            skip = True
            continue
        keep.append(a)
    args.passthrough = keep
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args._stage:
        result = stage_encoder(args) if args._stage == "encoder" else stage_peer(args)
        Path(args._out).write_text(json.dumps(result))
        return
    load_start = os.getloadavg()
    print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} "
          f"({os.cpu_count()} CPUs, {args.threads} threads)", flush=True)
    rows = []
    for enc in args.encoders:
        r = run_stage(args, "encoder", enc)
        print(f"{enc}: {json.dumps(r)}", flush=True)
        rows.append(r)
    peer = None
    if not args.no_peer:
        peer = run_stage(args, "peer")
        print(f"peer: {json.dumps(peer)}", flush=True)
        rows.append(peer)
    load_end = os.getloadavg()
    print()
    print(table(rows))
    if peer is not None:
        for r in rows[:-1]:
            print(f"inference speed ratio {r['encoder']} / logistic regression: "
                  f"{r['infer_img_s'] / peer['infer_img_s']:.3f}")
    print(f"load average at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"results": rows, "load_start": load_start,
                                         "load_end": load_end, "argv": sys.argv[1:]},
                                        indent=1))


if __name__ == "__main__":
    main()
