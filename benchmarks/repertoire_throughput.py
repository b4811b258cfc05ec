"""Repertoire MIL throughput (sequences/s) and peak memory, for repertoires of 10^4 and 10^6.

    python benchmarks/repertoire_throughput.py               # default model, 2 threads
    python benchmarks/repertoire_throughput.py --threads 1 --pooling patterns
    python benchmarks/repertoire_throughput.py --device cuda --threads 16
    python benchmarks/repertoire_throughput.py --deeprc ~/src/DeepRC   # + DeepRC, same run

Training: updates of 4 repertoires × 10^4 sequences, every sequence scored without gradients and
the top 10 % back-propagated (the default; DeepRC's setting), counted as sequences per second of
update. Inference: every sequence of one repertoire (10^4, then 10^6), from packed codes to
probability. The 10^6 case also runs ``biocls predict``'s code path (TSV → store → model) in a
child process and reports that process's peak RSS. Random CDR3-like sequences (lengths 10-18);
speed does not depend on content. Not a test: it prints figures.

``--train-big N`` (e.g. 100000) also trains one fold through the workflow's own steps (encode →
split → train, ``biocls train``'s code path) on 40 random repertoires of N sequences, 2 epochs, in
a child process, and reports its peak RSS: what the profile's ``mem_mb`` for ``train_repertoires``
must cover.

``--deeprc PATH`` also times the DeepRC reference model (Widrich et al. 2020) in the same process,
on the same bags, threads and device, right after each biocls measurement, and prints biocls/DeepRC
ratios and the load average. PATH is a checkout of DeepRC's public source supplied by the user;
only ``deeprc.architectures`` is imported from it (needs numpy and torch only; nothing of DeepRC
is part of biocls). DeepRC is built with its default sub-networks (CNN kernel 9 × 32 kernels,
attention 2 × 32 units, linear output) in fp32, counts ignored, top 10 % kept. Training: one update
is ``reduce_and_stack_minibatch`` on 4 bags + ``forward`` + BCE-with-logits + backward + Adam step
(as ``deeprc.training.train``), counted as biocls's. Inference, two figures: every sequence in one
pass (no reduction; like biocls's predict) and DeepRC's own evaluation path
(``deeprc.training.evaluate``: score all, forward the top 10 %).
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

import numpy as np
import pandas as pd
import torch

from biocls.estimators import RepertoireClassifier
from biocls.models import pack_bag
from biocls.preprocess import decode_sequences


def random_bag(n: int, rng: np.random.Generator):
    lens = rng.integers(10, 19, n)
    offs = np.concatenate([[0], np.cumsum(lens)])
    codes = rng.integers(1, 21, int(offs[-1])).astype(np.uint8)
    return pack_bag(codes, offs, rng.zipf(2.0, n).astype(np.float32)), codes, offs


class DeepRCBench:
    """DeepRC (imported from a user-supplied checkout) timed as biocls is, on the same bags."""

    def __init__(self, path: str, dev: torch.device) -> None:
        root = Path(path).expanduser().resolve()
        if not (root / "deeprc" / "architectures.py").is_file():
            raise SystemExit(f"--deeprc: no deeprc/architectures.py under {root}")
        sys.path.insert(0, str(root))
        import deeprc
        from deeprc.architectures import (
            AttentionNetwork,
            DeepRC,
            OutputNetwork,
            SequenceEmbeddingCNN,
        )

        self.where = f"{root} (deeprc {getattr(deeprc, '__version__', '?')})"
        self.dev = dev
        torch.manual_seed(0)
        # DeepRC's position features use ``np.int``, removed in numpy 1.24: alias it while the
        # model is built (a numpy shim; DeepRC's code is used unchanged).
        shim = "int" not in np.__dict__
        if shim:
            np.int = int
        try:
            self.model = DeepRC(
                max_seq_len=30, n_input_features=20,  # 30 as in DeepRC's examples
                sequence_embedding_network=SequenceEmbeddingCNN(
                    n_input_features=20 + 3, kernel_size=9, n_kernels=32, n_layers=1),
                attention_network=AttentionNetwork(n_input_features=32, n_layers=2, n_units=32),
                output_network=OutputNetwork(n_input_features=32, n_output_features=1,
                                             n_layers=0, n_units=32),
                sequence_embedding_as_16_bit=False, consider_seq_counts=False,
                add_positional_information=True, sequence_reduction_fraction=0.1,
                reduction_mb_size=int(5e4), device=dev).to(dev)
        finally:
            if shim:
                del np.int
        self.n_params = sum(p.numel() for p in self.model.parameters())

    @staticmethod
    def convert(bag) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A biocls PackedBag → DeepRC's reader format, in the repertoire's original row order:
        int8 residue indices 0-19 padded with -1, int64 lengths, log(max(count, 1)) float32."""
        inv = torch.argsort(bag.order)
        seqs = (bag.codes[inv].to(torch.int16) - 1).to(torch.int8)  # biocls pads with code 0
        return seqs, bag.lengths[inv].clone(), torch.log(bag.counts[inv].clamp(min=1.0))

    def _sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize()

    def train(self, bags: list, updates: int) -> float:
        """Sequences/s of training updates (4 bags each), 2 warm-up updates, as for biocls."""
        m = self.model
        m.sequence_reduction_fraction = 0.1
        opt = torch.optim.Adam(m.parameters(), lr=1e-4, eps=1e-4)  # as deeprc.training.train
        loss_fn = torch.nn.BCEWithLogitsLoss()
        targets = [torch.tensor([v]) for v in (0.0, 1.0, 0.0, 1.0)]
        for i in range(updates + 2):
            if i == 2:
                self._sync()
                t = time.perf_counter()
            seqs, lens, cnts = zip(*[bags[(4 * i + j) % len(bags)] for j in range(4)],
                                   strict=True)
            with torch.no_grad():
                y, x, ln, n = m.reduce_and_stack_minibatch(targets, list(seqs), list(lens),
                                                           list(cnts))
            opt.zero_grad()
            logits = m(inputs_flat=x, sequence_lengths_flat=ln, n_sequences_per_bag=n)
            loss_fn(logits, y).backward()
            opt.step()
        self._sync()
        return updates * 4 * 10_000 / (time.perf_counter() - t)

    def infer(self, bags: list, fraction: float) -> float:
        """Sequences/s predicting each bag alone (batch size 1, as DeepRC's evaluation loaders),
        after one warm-up bag. ``fraction`` > 1 takes DeepRC's no-reduction branch: every sequence
        through the model once; 0.1 is DeepRC's evaluation (score all, forward the top 10 %)."""
        m = self.model
        m.sequence_reduction_fraction = fraction
        target = [torch.tensor([0.0])]

        def one(bag) -> None:
            with torch.no_grad():
                _, x, ln, n = m.reduce_and_stack_minibatch(target, [bag[0]], [bag[1]], [bag[2]])
                torch.sigmoid(m(inputs_flat=x, sequence_lengths_flat=ln, n_sequences_per_bag=n))

        one(bags[0])
        self._sync()
        t = time.perf_counter()
        for b in bags:
            one(b)
        self._sync()
        m.sequence_reduction_fraction = 0.1
        return sum(len(b[1]) for b in bags) / (time.perf_counter() - t)


def child_predict(model_dir: str, folder: str, out: str) -> None:
    from biocls.tasks import task_of_model

    t = time.time()
    task_of_model(Path(model_dir)).predict_file(Path(model_dir), Path(folder), Path(out))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": time.time() - t, "peak_rss_mib": rss}))


def child_train(n_seq: str, work: str) -> None:
    """One fold of ``biocls train`` on 40 random repertoires of ``n_seq`` sequences; peak RSS."""
    from biocls.config import parse_experiment
    from biocls.tasks import get_task, split, train

    rng = np.random.default_rng(0)
    root = Path(work)
    (root / "reps").mkdir(parents=True)
    n = int(n_seq)
    for i in range(40):
        _, codes, offs = random_bag(n, rng)
        pd.DataFrame({"junction_aa": decode_sequences(codes, offs),
                      "duplicate_count": rng.zipf(2.0, n)}).to_csv(
            root / "reps" / f"R{i:02d}.tsv", sep="\t", index=False)
    pd.DataFrame({"repertoire_id": [f"R{i:02d}" for i in range(40)],
                  "subject_id": [f"S{i:02d}" for i in range(40)],
                  "label": ["pos", "neg"] * 20}).to_csv(root / "metadata.tsv", sep="\t",
                                                        index=False)
    task = get_task("repertoires")
    exp = parse_experiment({"name": "mem", "task": "repertoires", "folds": 5, "seed": 0,
                            "metadata": str(root / "metadata.tsv"),
                            "repertoires": str(root / "reps"), "progress": False,
                            "model": {"max_epochs": 2, "patience": 2}})
    task.encode(exp, root / "store.h5")
    split(task, exp, root / "splits.tsv")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.time()
    train(task, exp, store=root / "store.h5", splits=root / "splits.tsv", fold="0",
          out_dir=root / "fold0")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": time.time() - t, "peak_rss_mib": rss,
                      "peak_before_train_mib": base}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pooling", default="attention")
    ap.add_argument("--updates", type=int, default=10)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (training and inference)")
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--deeprc", metavar="PATH",
                    help="checkout of DeepRC's source: also time DeepRC in this run, same bags")
    ap.add_argument("--rounds", type=int, default=None,
                    help="alternating timing rounds of the 10^4-bag figures, median reported "
                         "(default 1, or 5 with --deeprc)")
    ap.add_argument("--train-big", type=int, default=0, metavar="N",
                    help="also train one fold on 40 repertoires of N sequences; peak RSS")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--child-train", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.rounds is None:
        args.rounds = 5 if args.deeprc else 1
    if args.child:
        child_predict(*args.child)
        return 0
    if args.child_train:
        child_train(*args.child_train)
        return 0
    print("# command:", " ".join([Path(sys.executable).name, *sys.argv]))
    load_start = os.getloadavg()
    rng = np.random.default_rng(0)
    dev = torch.device(args.device)
    clf = RepertoireClassifier(pooling=args.pooling, device=args.device)
    net = clf._build().to(dev)
    clf.net_ = net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    # built after biocls's net, so that biocls's initialisation is as without --deeprc
    peer = DeepRCBench(args.deeprc, dev) if args.deeprc else None
    bags = [random_bag(10_000, rng)[0] for _ in range(8)]
    y = torch.tensor([0.0, 1.0, 0.0, 1.0])
    pw = torch.tensor(1.0, device=dev)
    peer_bags = [peer.convert(b) for b in bags] if peer else []

    def train_ours(bags: list) -> float:
        for i in range(args.updates + 2):
            if i == 2:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
            batch = [bags[(4 * i + j) % len(bags)] for j in range(4)]
            net.train()
            opt.zero_grad()
            clf._loss(net, batch, y, [None] * 4, pw, dev).backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return args.updates * 4 * 10_000 / (time.perf_counter() - t)

    def infer_ours(bags: list) -> float:
        net.eval()
        clf.predict_proba(bags[:1])
        t = time.perf_counter()
        clf.predict_proba(bags)
        return len(bags) * 10_000 / (time.perf_counter() - t)

    # Alternating rounds: a burst of load hits both models alike, and the median ratio over
    # rounds is what is compared (the spread is printed too)
    rounds = []
    for _ in range(args.rounds):
        r = {"train": train_ours(bags)}
        if peer:
            r["peer_train"] = peer.train(peer_bags, args.updates)
        r["infer"] = infer_ours(bags)
        if peer:
            r["peer_infer"] = peer.infer(peer_bags, fraction=2.0)
            r["peer_eval"] = peer.infer(peer_bags, fraction=0.1)
        rounds.append(r)
    load_end = os.getloadavg()
    med = {k: float(np.median([r[k] for r in rounds])) for k in rounds[0]}
    ours_train, ours_infer = med["train"], med["infer"]
    rows = [{"what": "train (4 × 10^4 per update, top 10 % backprop)",
             "seq_per_s": f"{ours_train:,.0f}", "peak_rss_mib": ""},
            {"what": "inference, 10^4-sequence repertoires",
             "seq_per_s": f"{ours_infer:,.0f}", "peak_rss_mib": ""}]
    del peer_bags
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
        pd.DataFrame({"junction_aa": decode_sequences(codes, offs), "v_call": "TRBV5-1",
                      "j_call": "TRBJ2-7",
                      "duplicate_count": big.counts.numpy().astype(int)}).to_csv(
            folder / "big.tsv", sep="\t", index=False)
        del big, codes
        clf.net_ = net.cpu()
        clf.save(Path(tmp) / "model", meta={"experiment": "throughput"})
        out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads),
                              "--child", str(Path(tmp) / "model"), str(folder),
                              str(Path(tmp) / "p.tsv")], capture_output=True, text=True,
                             check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        predict_rate = args.big / res["seconds"]
        rows.append({"what": f"biocls predict, one {args.big:,}-sequence TSV (parse+encode+model)",
                     "seq_per_s": f"{predict_rate:,.0f}",
                     "peak_rss_mib": f"{res['peak_rss_mib']:.0f}"})
        if args.train_big:
            out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads),
                                  "--child-train", str(args.train_big), str(Path(tmp) / "fit")],
                                 capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"what": f"biocls train, one fold of 40 × {args.train_big:,}-sequence "
                                 f"repertoires, 2 epochs ({res['seconds']:.0f} s)",
                         "seq_per_s": "", "peak_rss_mib": f"{res['peak_rss_mib']:.0f}"})
    print(f"# torch {torch.__version__}, {args.threads} thread(s), pooling={args.pooling}, "
          f"device={args.device} (predict child: cpu)")
    print(pd.DataFrame(rows).to_string(index=False))
    if peer:
        ours = sum(p.numel() for p in net.parameters())
        print(f"\n# DeepRC from {peer.where}: same process, bags, device ({args.device}), fp32, "
              f"torch threads {torch.get_num_threads()}; timed right after each biocls figure")
        print(f"# parameters: biocls {ours:,}, DeepRC {peer.n_params:,}")
        print("# load average (1, 5, 15 min): start "
              + ", ".join(f"{v:.2f}" for v in load_start) + "; end "
              + ", ".join(f"{v:.2f}" for v in load_end) + f"; {os.cpu_count()} CPUs")
        cmp = [("train (4 × 10^4 per update, top 10 % backprop)", "train", "peer_train"),
               ("inference, 10^4-sequence repertoires, every sequence", "infer", "peer_infer"),
               ("inference, DeepRC's evaluate (score all, top 10 % forward)", "infer",
                "peer_eval")]
        print(f"# median over {args.rounds} alternating round(s); ratio range over rounds")
        table = []
        for what, a, b in cmp:
            ratios = [r[a] / r[b] for r in rounds]
            table.append({"what": what, "biocls_seq_per_s": f"{med[a]:,.0f}",
                          "deeprc_seq_per_s": f"{med[b]:,.0f}",
                          "biocls/deeprc": f"{np.median(ratios):.2f}",
                          "range": f"{min(ratios):.2f}-{max(ratios):.2f}"})
        # one predict run (not alternated): its ratio to DeepRC's median every-sequence inference
        table.append({"what": "biocls predict (TSV → probability) vs DeepRC inference (packed)",
                      "biocls_seq_per_s": f"{predict_rate:,.0f}",
                      "deeprc_seq_per_s": f"{med['peer_infer']:,.0f}",
                      "biocls/deeprc": f"{predict_rate / med['peer_infer']:.2f}", "range": ""})
        print(pd.DataFrame(table).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
