"""Repertoire task end to end on tiny synthetic data: encode, split, train, evaluate, predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biocls import BioclsError
from biocls.config import parse_experiment
from biocls.tasks import evaluate, get_task, split, train

TASK = get_task("repertoires")

AA = list("ACDEFGHIKLMNPQRSTVWY")
MOTIF = "WHKW"


def write_dataset(root: Path, *, n_subjects: int = 16, n_seqs: int = 150, seed: int = 0,
                  witness: float = 0.1) -> dict:
    """Random CDR3s; positive subjects carry MOTIF in ``witness`` of their sequences; every
    fourth subject has two repertoires."""
    rng = np.random.default_rng(seed)
    rep_dir = root / "repertoires"
    rep_dir.mkdir(parents=True)
    meta = []
    for s in range(n_subjects):
        label = s % 2
        for t in range(2 if s % 4 == 0 else 1):
            rid = f"s{s:02d}_t{t}"
            seqs = ["CAS" + "".join(rng.choice(AA, rng.integers(5, 11))) + "F"
                    for _ in range(n_seqs)]
            if label:
                for i in rng.choice(n_seqs, int(witness * n_seqs), replace=False):
                    q = seqs[i]
                    p = int(rng.integers(2, len(q) - 5))
                    seqs[i] = q[:p] + MOTIF + q[p + 4:]
            seqs[0] = "CAS*F"  # dropped and counted
            pd.DataFrame({"junction_aa": seqs, "v_call": "TRBV5-1", "j_call": "TRBJ2-7",
                          "duplicate_count": rng.zipf(2.0, n_seqs)}).to_csv(
                rep_dir / f"{rid}.tsv", sep="\t", index=False)
            meta.append({"repertoire_id": rid, "subject_id": f"subj{s:02d}",
                         "label": ["neg", "pos"][label]})
    pd.DataFrame(meta).to_csv(root / "metadata.tsv", sep="\t", index=False)
    return {"name": "tiny", "task": "repertoires", "metadata": str(root / "metadata.tsv"),
            "repertoires": str(rep_dir), "folds": 3, "seed": 0, "positive_label": "pos",
            "keys": {"repertoire": "repertoire_id", "patient": "subject_id", "label": "label"},
            "model": {"n_filters": 8, "max_epochs": 6, "patience": 6, "batch_size": 4,
                      "top_n": 5, "n_patterns": 8, "seed_filters": 4, "threads": 1},
            "baseline": {"kmers": [3], "penalties": ["l1", "l2"], "Cs": [0.1, 1.0],
                         "inner_folds": 2}}


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    spec = write_dataset(root)
    exp = parse_experiment(spec)
    TASK.encode(exp, root / "store.h5")
    split(TASK, exp, root / "splits.tsv")
    return spec, root


def test_split_keeps_subjects_whole(encoded):
    spec, root = encoded
    sp = pd.read_csv(root / "splits.tsv", sep="\t")
    meta = pd.read_csv(spec["metadata"], sep="\t")
    assert sp["patient"].is_unique and set(sp["fold"]) == {0, 1, 2}
    assert set(sp["patient"]) == set(meta["subject_id"])
    two = sp.set_index("patient").loc["subj00"]
    assert two["n_repertoires"] == 2  # both repertoires of subj00 sit in its single fold
    # stratified: each fold holds both labels
    lab = sp.groupby("fold")["label"].nunique()
    assert (lab == 2).all()


def test_train_refuses_stale_splits(encoded, tmp_path):
    spec, root = encoded
    sp = pd.read_csv(root / "splits.tsv", sep="\t")
    sp[sp["patient"] != "subj03"].to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    with pytest.raises(BioclsError, match="subj03"):
        train(TASK, parse_experiment(spec), store=root / "store.h5", splits=tmp_path / "s.tsv",
              fold="0", out_dir=tmp_path / "f")
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("pooling", ["attention", "patterns"])
def test_end_to_end(encoded, tmp_path, pooling):
    spec, root = encoded
    exp = parse_experiment({**spec, "model": {**spec["model"], "pooling": pooling}})
    folds, res, ckpt = tmp_path / "folds", tmp_path / "res", tmp_path / "checkpoints"
    # the workflow's layout: results/<exp>/{folds/<k>, model, checkpoints/<k>}
    for k in ("0", "1", "2", "final"):
        out = res / "model" if k == "final" else folds / k
        train(TASK, exp, store=root / "store.h5", splits=root / "splits.tsv", fold=k,
              out_dir=out, checkpoint_dir=ckpt / k)
        assert not (ckpt / k).exists()  # spent once the fold's outputs are written
    for k in ("0", "1", "2"):
        info = json.loads((folds / k / "fold_info.json").read_text())
        assert info["fold"] == k and {"k", "penalty", "C"} <= set(info["kmer_logreg"])
    evaluate(TASK, exp, splits=root / "splits.tsv", folds_dir=folds, out_dir=res)
    m = json.loads((res / "metrics.json").read_text())
    assert m["task"] == "repertoires" and m["pooling"] == pooling and m["folds"] == 3
    assert m["n_patients"] == 16 and m["n_repertoires"] == 20
    assert len(m["roc_auc"]["folds"]) == 3
    assert m["roc_auc"]["mean"] >= 0.9  # 10% witnesses of a fixed motif: easy
    assert len(m["baselines"]["kmer_logreg"]["roc_auc"]["folds"]) == 3
    assert set(m["baselines"]["kmer_logreg"]["chosen"]) == {"0", "1", "2"}  # from fold_info
    assert set(m["per_patient"]["subj00"]) >= {"probability", "label", "fold"}
    assert m["dropped_sequences"]["s00_t0"] == 1
    pred = pd.read_csv(res / "predictions.tsv", sep="\t")
    assert {"repertoire_id", "patient", "fold", "label", "probability",
            "kmer_probability"} <= set(pred.columns)
    assert len(pred) == 20 and pred["repertoire_id"].is_unique
    # out-of-fold: each repertoire predicted in its subject's fold
    sp = pd.read_csv(root / "splits.tsv", sep="\t").set_index("patient")["fold"]
    assert (pred["fold"].to_numpy() == sp.loc[pred["patient"]].to_numpy()).all()
    att = pd.read_csv(res / "attention.tsv", sep="\t")
    assert list(att.columns[:8]) == ["repertoire_id", "patient", "rank", "junction_aa", "v_call",
                                    "j_call", "duplicate_count", "weight"]
    assert att.groupby("repertoire_id")["rank"].max().max() == 5
    top = att[att["repertoire_id"].isin(pred.loc[pred["label"] == 1, "repertoire_id"])]
    assert top["junction_aa"].str.contains(MOTIF).mean() > 0.5  # attention finds witnesses
    if pooling == "patterns":
        pat = pd.read_csv(res / "patterns.tsv", sep="\t")
        assert list(pat.columns[:4]) == ["pattern", "rank", "junction_aa", "similarity"]
        assert m["n_patterns"] == pat["pattern"].nunique()
    else:
        assert not (res / "patterns.tsv").exists()
    # the final model applies to a folder of new repertoires
    out = tmp_path / "pred.tsv"
    TASK.predict_file(res / "model", Path(spec["repertoires"]), out)
    p = pd.read_csv(out, sep="\t")
    assert list(p.columns) == ["repertoire_id", "probability"] and len(p) == 20
    lab = pd.read_csv(spec["metadata"], sep="\t").set_index("repertoire_id")["label"]
    assert p.set_index("repertoire_id")["probability"].groupby(
        lab).mean().pipe(lambda s: s["pos"] > s["neg"])


def test_unknown_model_option_is_an_error(encoded):
    """Caught when the experiment is read, before anything trains (CLI `--spec` alike)."""
    spec, _ = encoded
    bad = {**spec, "model": {"poolin": "attention"}}
    with pytest.raises(BioclsError, match="poolin.*did you mean `pooling`"):
        parse_experiment(bad, partial=True)


def test_restarts_choose_on_validation_subjects_only(encoded, tmp_path, monkeypatch):
    """With restarts, the choice reads the fold's validation subjects: no test subject's
    repertoire is ever read while the fold trains, and the choice is recorded per fold."""
    import biocls.tasks.repertoires as rep

    spec, root = encoded
    exp = parse_experiment({**spec, "model": {**spec["model"], "restarts": 2,
                                              "max_epochs": 2}})
    read: list[int] = []
    bags = rep._bags

    def spy(st, rows, *args, **kw):
        read.extend(int(r) for r in rows)
        return bags(st, rows, *args, **kw)

    monkeypatch.setattr(rep, "_bags", spy)
    train(TASK, exp, store=root / "store.h5", splits=root / "splits.tsv", fold="0",
          out_dir=tmp_path / "f0")
    sp = pd.read_csv(root / "splits.tsv", sep="\t").set_index("patient")["fold"]
    from biocls.preprocess import CDR3Store

    with CDR3Store(root / "store.h5") as st:
        fold_of_row = sp.loc[st.repertoires["patient"]].to_numpy()
    assert read and not (fold_of_row[read] == 0).any()
    info = json.loads((tmp_path / "f0" / "fold_info.json").read_text())
    chosen = info["restarts"]
    assert len(chosen["val_loss"]) == 2
    assert chosen["chosen"] == int(np.argmin(chosen["val_loss"]))
