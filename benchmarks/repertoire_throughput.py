"""Repertoire MIL throughput (sequences/s) and peak memory, for repertoires of 10^4 and 10^6.

    python benchmarks/repertoire_throughput.py               # default model, 2 threads
    python benchmarks/repertoire_throughput.py --threads 1 --pooling patterns
    python benchmarks/repertoire_throughput.py --device cuda --threads 16

Training: updates of 4 repertoires × 10^4 sequences, every sequence scored without gradients and
the top 10 % back-propagated (the default; DeepRC's setting), counted as sequences per second of
update. Inference: every sequence of one repertoire (10^4, then 10^6), from packed codes to
probability. The 10^6 case also runs ``biocls predict``'s code path (TSV → store → model) in a
child process and reports that process's peak RSS. Random CDR3-like sequences (lengths 10-18);
speed does not depend on content. Not a test: it prints figures.
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

import numpy as np
import pandas as pd
import torch

from biocls.estimators import RepertoireClassifier
from biocls.models import pack_bag

AA = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)


def random_bag(n: int, rng: np.random.Generator):
    lens = rng.integers(10, 19, n)
    offs = np.concatenate([[0], np.cumsum(lens)])
    codes = rng.integers(1, 21, int(offs[-1])).astype(np.uint8)
    return pack_bag(codes, offs, rng.zipf(2.0, n).astype(np.float32)), codes, offs


def child_predict(model_dir: str, folder: str, out: str) -> None:
    from biocls.tasks import task_of_model

    t = time.time()
    task_of_model(Path(model_dir)).predict_file(Path(model_dir), Path(folder), Path(out))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": time.time() - t, "peak_rss_mib": rss}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pooling", default="attention")
    ap.add_argument("--updates", type=int, default=10)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (training and inference)")
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child_predict(*args.child)
        return 0
    print("# command:", " ".join([Path(sys.executable).name, *sys.argv]))
    rng = np.random.default_rng(0)
    dev = torch.device(args.device)
    clf = RepertoireClassifier(pooling=args.pooling, device=args.device)
    net = clf._build().to(dev)
    clf.net_ = net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    bags = [random_bag(10_000, rng)[0] for _ in range(8)]
    y = torch.tensor([0.0, 1.0, 0.0, 1.0])
    pw = torch.tensor(1.0, device=dev)
    rows = []
    for i in range(args.updates + 2):
        if i == 2:
            t = time.perf_counter()
        batch = [bags[(4 * i + j) % len(bags)] for j in range(4)]
        net.train()
        opt.zero_grad()
        loss = clf._loss(net, batch, y, [None] * 4, pw, dev)
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    rows.append({"what": "train (4 × 10^4 per update, top 10 % backprop)",
                 "seq_per_s": f"{args.updates * 4 * 10_000 / dt:,.0f}", "peak_rss_mib": ""})
    net.eval()
    clf.predict_proba(bags[:1])
    t = time.perf_counter()
    clf.predict_proba(bags)
    dt = time.perf_counter() - t
    rows.append({"what": "inference, 10^4-sequence repertoires",
                 "seq_per_s": f"{len(bags) * 10_000 / dt:,.0f}", "peak_rss_mib": ""})
    del bags
    big, codes, offs = random_bag(args.big, rng)
    t = time.perf_counter()
    clf.predict_proba([big])
    dt = time.perf_counter() - t
    rows.append({"what": f"inference, one {args.big:,}-sequence repertoire (packed)",
                 "seq_per_s": f"{args.big / dt:,.0f}", "peak_rss_mib": ""})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        text = [bytes(AA[codes[offs[i]:offs[i + 1]] - 1]).decode() for i in range(len(offs) - 1)]
        pd.DataFrame({"junction_aa": text, "v_call": "TRBV5-1", "j_call": "TRBJ2-7",
                      "duplicate_count": big.counts.numpy().astype(int)}).to_csv(
            folder / "big.tsv", sep="\t", index=False)
        del text, big, codes
        clf.net_ = net.cpu()
        clf.save(Path(tmp) / "model", meta={"experiment": "throughput"})
        out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads),
                              "--child", str(Path(tmp) / "model"), str(folder),
                              str(Path(tmp) / "p.tsv")], capture_output=True, text=True,
                             check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"what": f"biocls predict, one {args.big:,}-sequence TSV (parse+encode+model)",
                     "seq_per_s": f"{args.big / res['seconds']:,.0f}",
                     "peak_rss_mib": f"{res['peak_rss_mib']:.0f}"})
    print(f"# torch {torch.__version__}, {args.threads} thread(s), pooling={args.pooling}, "
          f"device={args.device} (predict child: cpu)")
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
