"""The repertoire task's verbs: encode → split → train (per fold, and final) → evaluate; predict.

Each verb takes the experiment's resolved spec (its config block, DESIGN §4, plus ``name``; paths
already resolved: ``metadata``, ``repertoires``) and writes its artefact atomically. The CLI and the
Snakemake rules call these and nothing else.

Spec keys read here, beyond DESIGN §4: ``positive_label`` (which label value is positive, when it
cannot be inferred), ``model:`` (options of :class:`~biocls.estimators.RepertoireClassifier`, plus
``top_n`` — attended sequences kept per repertoire — ``pattern_top_n`` and ``threads``) and
``baseline:`` (``kmers``, ``penalties``, ``Cs``, ``inner_folds`` of the k-mer logistic
regression).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from biocls import columns as C
from biocls._errors import BioclsError
from biocls._io import write_json, write_tsv
from biocls.data._airr import (
    find_repertoire_files,
    positive_label,
    read_repertoire_metadata,
)
from biocls.estimators import RepertoireClassifier
from biocls.evaluate import enriched_kmers_by_repertoire, roc_points
from biocls.models import PackedBag, pack_bag
from biocls.preprocess._cdr3 import CDR3Store, build_cdr3_store
from biocls.splits import check_no_leak, patient_folds, read_splits, validation_patients
from biocls.train import CHECKPOINT

__all__ = ["encode", "evaluate", "fit_kmer_baseline", "kmer_matrix", "predict", "split",
           "train_fold"]

log = logging.getLogger(__name__)

PIPELINE_MODEL_KEYS = ("top_n", "pattern_top_n", "threads")
MODEL_DEFAULTS: dict[str, Any] = {"top_n": 20, "pattern_top_n": 5, "threads": None}
BASELINE_DEFAULTS: dict[str, Any] = {"kmers": [3, 4], "penalties": ["l1", "l2"],
                                     "Cs": [0.001, 0.01, 0.1, 1.0, 10.0], "inner_folds": 3}
# the columns are owned by biocls.columns; these names stay for the writers below
PREDICTION_COLUMNS = C.PREDICTION_COLUMNS
ATTENTION_COLUMNS = C.ATTENTION_COLUMNS


# -- spec helpers ------------------------------------------------------------------------------

def _name(spec: Mapping[str, Any]) -> str:
    return str(spec.get("name", "experiment"))


def _model_options(spec: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``spec['model']`` into classifier parameters and pipeline options."""
    given = dict(spec.get("model") or {})
    allowed = set(RepertoireClassifier().get_params()) - {"seed"}
    unknown = sorted(set(given) - allowed - set(PIPELINE_MODEL_KEYS))
    if unknown:
        raise BioclsError(f"unknown model option(s) {unknown}",
                          where=f"experiments.{_name(spec)}.model",
                          fix=f"use only {sorted(allowed | set(PIPELINE_MODEL_KEYS))}")
    params = {k: v for k, v in given.items() if k in allowed}
    params["seed"] = int(spec.get("seed", 0))
    opts = {**MODEL_DEFAULTS, **{k: v for k, v in given.items() if k in PIPELINE_MODEL_KEYS}}
    return params, opts


def _baseline_options(spec: Mapping[str, Any]) -> dict[str, Any]:
    given = dict(spec.get("baseline") or {})
    unknown = sorted(set(given) - set(BASELINE_DEFAULTS))
    if unknown:
        raise BioclsError(f"unknown baseline option(s) {unknown}",
                          where=f"experiments.{_name(spec)}.baseline",
                          fix=f"use only {sorted(BASELINE_DEFAULTS)}")
    return {**BASELINE_DEFAULTS, **given}


def _read_inputs(spec: Mapping[str, Any]) -> tuple[pd.DataFrame, dict[str, Path]]:
    where = f"experiments.{_name(spec)}"
    for key in ("metadata", "repertoires"):
        if not spec.get(key):
            raise BioclsError(f"`{key}` is not set", where=where,
                              fix=f"set `{key}:` (or a `simulate:` block)")
    files = find_repertoire_files(spec["repertoires"])
    meta = read_repertoire_metadata(spec["metadata"], keys=spec.get("keys"), files=files)
    return meta, files


def _set_threads(opts: Mapping[str, Any]) -> None:
    if opts.get("threads"):
        torch.set_num_threads(int(opts["threads"]))


# -- verbs -------------------------------------------------------------------------------------

def encode(spec: dict, out: Path) -> None:
    """Validate the inputs and encode them into the store at ``out`` (HDF5, written atomically).

    Invalid or empty sequences are dropped and counted; every other problem is a one-line error
    naming the file and repertoire ID, raised before ``out`` exists.
    """
    meta, files = _read_inputs(spec)
    pos = positive_label(meta["label"], given=spec.get("positive_label"),
                         where=f"{spec['metadata']}: labels")
    info = build_cdr3_store(meta, files, out, positive=pos)
    if info["n_dropped"].sum():
        log.warning("%d sequence(s) dropped in %d repertoire(s); see n_dropped in the store and "
                    "dropped_sequences in metrics.json", int(info["n_dropped"].sum()),
                    int((info["n_dropped"] > 0).sum()))


def split(spec: dict, out: Path) -> None:
    """Write ``splits.tsv``: one row per subject (``patient, fold, n_items, label``), folds
    stratified by label and grouped by subject, so that a subject's repertoires share a fold."""
    meta, _ = _read_inputs(spec)
    folds = patient_folds(meta["patient"], meta["label"], n_folds=int(spec.get("folds", 5)),
                          seed=int(spec.get("seed", 0)),
                          source=f"experiments.{_name(spec)}")
    lab = meta.groupby("patient")["label"].agg(lambda s: s.iat[0] if s.nunique() == 1
                                               else "mixed")
    folds["label"] = folds["patient"].map(lab)
    write_tsv(out, folds)


def _bags(st: CDR3Store, rows: Sequence[int], max_length: int) -> list[PackedBag]:
    out = []
    for i in rows:
        b = st.bag(int(i))
        out.append(pack_bag(b.codes, b.offsets, b.counts, max_length=max_length))
    return out


def _fold_of(st: CDR3Store, splits: Path) -> pd.Series:
    sp = read_splits(str(splits))
    fold_of = dict(zip(sp["patient"].astype(str), sp["fold"].astype(int), strict=False))
    missing = sorted(set(st.repertoires["patient"]) - set(fold_of))
    if missing:
        raise BioclsError(f"patient {missing[0]!r} of the store is not in the splits",
                          where=str(splits), fix="rerun `biocls split` (the inputs changed)")
    return st.repertoires["patient"].map(fold_of)


def train_fold(spec: dict, *, store: Path, splits: Path, fold: str, out_dir: Path,
               checkpoints: Path | None = None) -> None:
    """Train the MIL model (and, for a numeric fold, the k-mer baseline) for one fold.

    ``fold`` ``"k"``: train on the other folds' subjects (early stopping on held-back training
    subjects), then write ``predictions.tsv`` and ``attention.tsv`` for fold ``k``'s repertoires
    into ``out_dir``. ``fold`` ``"final"``: train on every subject (with, as in the folds, ~15 %
    of the training subjects held back for early stopping) and write the model folder
    (``weights.pt``, ``model.json``) and, for ``pooling: patterns``, ``patterns.tsv`` into
    ``out_dir``. A killed run resumes from ``checkpoints`` (default ``out_dir/checkpoints``),
    which is removed once the outputs are written.
    """
    out_dir = Path(out_dir)
    params, opts = _model_options(spec)
    _set_threads(opts)
    seed = int(spec.get("seed", 0))
    clf = RepertoireClassifier(**params)
    with CDR3Store(store) as st:
        reps = st.repertoires.copy()
        reps["fold"] = _fold_of(st, splits).to_numpy()
        if fold == "final":
            train_rows = np.arange(len(reps))
            test_rows = np.zeros(0, dtype=int)
        else:
            try:
                k = int(fold)
            except ValueError:
                raise BioclsError(f"fold {fold!r} is neither a number nor 'final'",
                                  where="--fold", fix="pass 0..K-1 or final") from None
            if k not in set(reps["fold"]):
                raise BioclsError(f"fold {k} not in the splits", where=str(splits),
                                  fix=f"use one of {sorted(set(reps['fold']))}")
            train_rows = np.flatnonzero(reps["fold"].to_numpy() != k)
            test_rows = np.flatnonzero(reps["fold"].to_numpy() == k)
        train_pat = reps["patient"].to_numpy()[train_rows]
        val_pat = set(validation_patients(train_pat, seed=seed))
        is_val = np.isin(train_pat, list(val_pat))
        fit_rows, val_rows = train_rows[~is_val], train_rows[is_val]
        test_pat = reps["patient"].to_numpy()[test_rows]
        check_no_leak(train_pat, test_pat, what=f"fold {fold}")
        check_no_leak(reps["patient"].to_numpy()[fit_rows], list(val_pat),
                      what=f"fold {fold} validation")
        y = reps["y"].to_numpy()
        if len(set(y[fit_rows])) < 2:
            raise BioclsError(f"fold {fold}: the training repertoires hold one class only",
                              where=str(splits), fix="lower `folds` or add subjects")
        log.info("fold %s: %d train, %d validation, %d test repertoires", fold, len(fit_rows),
                 len(val_rows), len(test_rows))
        ml = clf.max_length
        fit_bags = _bags(st, fit_rows, ml)
        val_bags = _bags(st, val_rows, ml)
        ckpt = Path(checkpoints) if checkpoints else out_dir / "checkpoints"
        clf.fit(fit_bags, y[fit_rows], val_bags=val_bags or None,
                val_y=y[val_rows] if len(val_rows) else None, checkpoint_dir=ckpt,
                desc=f"{_name(spec)} fold {fold}")
        hist = clf.history_.as_dict()
        if fold == "final":
            _write_final(spec, clf, st, reps, train_rows, fit_bags + val_bags,
                         np.concatenate([fit_rows, val_rows]), out_dir, opts, hist)
        else:
            _write_fold(spec, clf, st, reps, train_rows, test_rows, int(fold), out_dir, opts,
                        hist)
    (ckpt / CHECKPOINT).unlink(missing_ok=True)
    try:
        ckpt.rmdir()
    except OSError:
        pass


def _write_fold(spec: dict, clf: RepertoireClassifier, st: CDR3Store, reps: pd.DataFrame,
                train_rows: np.ndarray, test_rows: np.ndarray, k: int, out_dir: Path,
                opts: Mapping[str, Any], hist: dict) -> None:
    preds, att = [], []
    for i in test_rows:
        b = st.bag(int(i))
        pb = pack_bag(b.codes, b.offsets, b.counts, max_length=clf.max_length)
        prob, idx, w, s = clf.attend(pb, int(opts["top_n"]))
        r = reps.iloc[int(i)]
        preds.append({"repertoire_id": r.repertoire_id, "patient": r.patient, "fold": k,
                      "label": int(r.y), "probability": prob, "predicted": int(prob >= 0.5),
                      "n_sequences": int(r.n_sequences), "n_dropped": int(r.n_dropped)})
        seqs = b.sequences(idx)
        for rank, (j, sq) in enumerate(zip(idx, seqs, strict=False), start=1):
            att.append({"repertoire_id": r.repertoire_id, "patient": r.patient, "rank": rank,
                        "junction_aa": sq, "v_call": st.v_vocab[b.v[j]],
                        "j_call": st.j_vocab[b.j[j]], "duplicate_count": float(b.counts[j]),
                        "weight": float(w[rank - 1]), "score": float(s[rank - 1])})
    kmer_prob, chosen = fit_kmer_baseline(st, train_rows, test_rows, reps["y"].to_numpy(),
                                          reps["patient"].to_numpy(), _baseline_options(spec),
                                          seed=int(spec.get("seed", 0)))
    pred = pd.DataFrame(preds)
    pred["kmer_probability"] = kmer_prob
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tsv(out_dir / "predictions.tsv", pred[PREDICTION_COLUMNS])
    write_tsv(out_dir / "attention.tsv", pd.DataFrame(att, columns=ATTENTION_COLUMNS))
    write_json(out_dir / "fold.json", {"fold": k, "history": _finite(hist),
                                       "kmer_logreg": chosen,
                                       "model": clf.get_params()})


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _write_final(spec: dict, clf: RepertoireClassifier, st: CDR3Store, reps: pd.DataFrame,
                 train_rows: np.ndarray, bags: list[PackedBag], bag_rows: np.ndarray,
                 out_dir: Path, opts: Mapping[str, Any], hist: dict) -> None:
    meta = {"experiment": _name(spec), "task": "repertoires",
            "positive_label": st.positive_label, "keys": dict(spec.get("keys") or {}),
            "n_repertoires": int(len(train_rows)),
            "n_patients": int(reps["patient"].nunique()),
            "top_n": int(opts["top_n"]), "history": _finite(hist)}
    clf.save(out_dir, meta=meta)
    if clf.pooling == "patterns":
        weights, rows = clf.pattern_neighbours(bags, int(opts["pattern_top_n"]))
        order = {s: r for r, s in enumerate(np.argsort(-weights))}
        recs = []
        cache: dict[int, Any] = {}
        for s, bi, ix, sim in rows:
            row = int(bag_rows[bi])
            if row not in cache:
                cache[row] = st.bag(row)
            b = cache[row]
            recs.append({"pattern": int(s), "pattern_rank": order[s] + 1,
                         "head_weight": float(weights[s]), "junction_aa": b.sequences([ix])[0],
                         "similarity": sim, "repertoire_id": reps["repertoire_id"].iat[row]})
        df = pd.DataFrame(recs)
        df["rank"] = df.groupby("pattern").cumcount() + 1
        df = df.sort_values(["pattern_rank", "rank"])
        write_tsv(out_dir / "patterns.tsv",
                  df[["pattern", "rank", "junction_aa", "similarity", "head_weight",
                      "pattern_rank", "repertoire_id"]])


# -- k-mer baseline ----------------------------------------------------------------------------

def kmer_matrix(st: CDR3Store, rows: Sequence[int], k: int) -> np.ndarray:
    """k-mer frequencies ``[len(rows), 20**k]`` (float32; each unique sequence counted once)."""
    out = np.zeros((len(rows), 20 ** k), dtype=np.float32)
    for r, i in enumerate(rows):
        b = st.bag(int(i))
        c = b.codes.astype(np.int64) - 1
        n = len(c) - k + 1
        if n <= 0:
            continue
        idx = np.zeros(n, dtype=np.int64)
        for j in range(k):
            idx = idx * 20 + c[j:j + n]
        pos = np.arange(n) - np.repeat(b.offsets[:-1], b.lengths)[:n]
        ln = np.repeat(b.lengths, b.lengths)[:n]
        ok = pos <= ln - k
        cnt = np.bincount(idx[ok], minlength=20 ** k)
        out[r] = cnt / max(cnt.sum(), 1)
    return out


def fit_kmer_baseline(st: CDR3Store, train_rows: np.ndarray, test_rows: np.ndarray,
                      y: np.ndarray, patients: np.ndarray, options: Mapping[str, Any], *,
                      seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """k-mer frequency logistic regression: k, penalty and C chosen by inner subject-grouped CV
    (ROC AUC) on the training repertoires, then refitted on all of them. Returns the test
    probabilities and the chosen setting with its inner AUC."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.preprocessing import StandardScaler

    ytr, gtr = y[train_rows], patients[train_rows]
    n_inner = min(int(options["inner_folds"]), len(np.unique(gtr)))
    inner = list(StratifiedGroupKFold(n_splits=n_inner, shuffle=True, random_state=seed)
                 .split(np.zeros(len(ytr)), ytr, gtr))
    best: dict[str, Any] = {"auc": -1.0}

    import inspect

    new_api = inspect.signature(LogisticRegression).parameters["penalty"].default != "l2"

    def model(pen: str, c: float) -> LogisticRegression:
        # scikit-learn >= 1.8 spells the penalty as l1_ratio; older versions need `penalty`
        kw = {"l1_ratio": 1.0 if pen == "l1" else 0.0} if new_api else {"penalty": pen}
        return LogisticRegression(C=c, solver="liblinear", max_iter=200, random_state=seed,
                                  **kw)

    mats = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for k in options["kmers"]:
            X = kmer_matrix(st, np.concatenate([train_rows, test_rows]), int(k))
            mats[k] = X
            Xtr = X[:len(train_rows)]
            folds = []
            for a, b in inner:
                sc = StandardScaler().fit(Xtr[a])
                folds.append((sc.transform(Xtr[a]), sc.transform(Xtr[b]), a, b))
            for pen in options["penalties"]:
                for c in options["Cs"]:
                    aucs = []
                    for xa, xb, a, b in folds:
                        if len(set(ytr[a])) < 2 or len(set(ytr[b])) < 2:
                            continue
                        m = model(pen, float(c)).fit(xa, ytr[a])
                        aucs.append(roc_auc_score(ytr[b], m.decision_function(xb)))
                    auc = float(np.mean(aucs)) if aucs else 0.5
                    if auc > best["auc"]:
                        best = {"k": int(k), "penalty": pen, "C": float(c), "auc": auc}
        X = mats[best["k"]]
        sc = StandardScaler().fit(X[:len(train_rows)])
        m = model(best["penalty"], best["C"]).fit(sc.transform(X[:len(train_rows)]), ytr)
        prob = m.predict_proba(sc.transform(X[len(train_rows):]))[:, 1] if len(test_rows) else \
            np.zeros(0)
    log.info("k-mer baseline: %s", best)
    inner_auc = best.pop("auc")
    return prob, {**best, "inner_roc_auc": inner_auc}


# -- evaluate ----------------------------------------------------------------------------------

def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(set(y.tolist())) < 2:
        return None
    return float(roc_auc_score(y, p))


def _summary(values: list[float | None]) -> dict[str, Any]:
    v = [x for x in values if x is not None]
    return {"mean": float(np.mean(v)) if v else None,
            "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 if v else None,
            "folds": values}


def evaluate(spec: dict, *, splits: Path, folds_dir: Path, out_dir: Path) -> None:
    """Gather the per-fold outputs into ``predictions.tsv``, ``attention.tsv`` and
    ``metrics.json`` (DESIGN §4b), and copy the final model's ``patterns.tsv`` when present
    (``folds_dir/final/`` or ``out_dir/model/``).

    Besides the metrics of DESIGN §4b, ``metrics.json`` holds every number the report shows, so
    that the renderer only renders: ``roc_curve`` (pooled out-of-fold ROC points per model,
    :func:`~biocls.evaluate.roc_points`), ``enriched_kmers`` (per repertoire,
    :func:`~biocls.evaluate.enriched_kmers_by_repertoire`) and ``n_patterns``."""
    folds_dir, out_dir = Path(folds_dir), Path(out_dir)
    sp = read_splits(str(splits))
    ks = sorted(int(k) for k in sp["fold"].unique())
    preds, atts, fold_info = [], [], {}
    for k in ks:
        d = folds_dir / str(k)
        if not (d / "predictions.tsv").exists():
            raise BioclsError(f"fold {k} has no predictions.tsv", where=str(d),
                              fix=f"run `biocls train --fold {k}` first")
        preds.append(C.read_predictions(d / "predictions.tsv", required=(C.PATIENT, C.FOLD)))
        if (d / "attention.tsv").exists():
            atts.append(C.read_predictions(d / "attention.tsv", required=[C.REPERTOIRE_ID]))
        if (d / "fold.json").exists():
            fold_info[k] = json.loads((d / "fold.json").read_text())
    pred = pd.concat(preds, ignore_index=True).sort_values([C.FOLD, C.REPERTOIRE_ID])
    att = (pd.concat(atts, ignore_index=True) if atts
           else pd.DataFrame(columns=C.ATTENTION_COLUMNS))
    y, p, q = (pred[c].to_numpy() for c in (C.LABEL, C.PROBABILITY, C.KMER_PROBABILITY))
    fold = pred[C.FOLD]
    per_fold = [_auc(y[fold == k], p[fold == k]) for k in ks]
    per_fold_k = [_auc(y[fold == k], q[fold == k]) for k in ks]
    per_patient = {}
    for pat, g in pred.groupby(C.PATIENT):
        per_patient[str(pat)] = {"probability": float(g[C.PROBABILITY].mean()),
                                 "kmer_probability": float(g[C.KMER_PROBABILITY].mean()),
                                 "label": int(g[C.LABEL].max()), "fold": int(g[C.FOLD].iat[0]),
                                 "n_repertoires": int(len(g))}
    pooling = (spec.get("model") or {}).get("pooling", "attention")
    metrics: dict[str, Any] = {
        "task": "repertoires", "experiment": _name(spec), "pooling": pooling,
        "n_patients": int(pred[C.PATIENT].nunique()), "n_repertoires": int(len(pred)),
        "n_sequences": int(pred[C.N_SEQUENCES].sum()), "folds": len(ks),
        "roc_auc": {**_summary(per_fold), "pooled": _auc(y, p)},
        "baselines": {"kmer_logreg": {
            "roc_auc": {**_summary(per_fold_k), "pooled": _auc(y, q)},
            "chosen": {str(k): v.get("kmer_logreg") for k, v in fold_info.items()}}},
        "per_patient": per_patient,
        "roc_curve": {name: curve for name, curve in (
            ("model", roc_points(y, p)), ("kmer_logreg", roc_points(y, q))) if curve},
        "enriched_kmers": enriched_kmers_by_repertoire(att),
    }
    dropped = {str(r): int(n)
               for r, n in zip(pred[C.REPERTOIRE_ID], pred[C.N_DROPPED], strict=True) if n}
    if dropped:
        metrics["dropped_sequences"] = dropped
    patterns = next((f for f in (folds_dir / "final" / "patterns.tsv",
                                 out_dir / "model" / "patterns.tsv") if f.exists()), None)
    if patterns is not None:
        metrics["n_patterns"] = int(
            C.read_predictions(patterns, required=[C.PATTERN])[C.PATTERN].nunique())
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tsv(out_dir / "predictions.tsv", pred)
    write_tsv(out_dir / "attention.tsv", att)
    write_json(out_dir / "metrics.json", _finite(metrics))
    if patterns is not None:
        shutil.copyfile(patterns, out_dir / "patterns.tsv")


# -- predict -----------------------------------------------------------------------------------

def predict(model_dir: Path, input: Path, output: Path) -> None:  # noqa: A002 - CLI name
    """Apply a final model to a folder of repertoire TSVs (AIRR or DeepRC columns; a
    ``metadata.tsv`` there is ignored, as is a ``repertoires/`` subfolder's parent) and write a TSV
    ``repertoire_id, probability``."""
    clf = RepertoireClassifier.load(model_dir)
    src = Path(input)
    files = find_repertoire_files(src)
    if not files and (src / "repertoires").is_dir():
        files = find_repertoire_files(src / "repertoires")
    if not files:
        raise BioclsError("no repertoire files (*.tsv, *.tsv.gz)", where=str(src),
                          fix="point --input at a folder of <repertoire_id>.tsv files")
    rows = pd.DataFrame({"repertoire_id": list(files), "patient": list(files), "label": "?"})
    with tempfile.TemporaryDirectory(prefix="biocls-predict-") as tmp:
        store = Path(tmp) / "store.h5"
        build_cdr3_store(rows, files, store, positive="?")
        out = []
        with CDR3Store(store) as st:
            for i, rid in enumerate(st.repertoires["repertoire_id"]):
                b = st.bag(i)
                pb = pack_bag(b.codes, b.offsets, b.counts, max_length=clf.max_length)
                del b
                out.append({"repertoire_id": rid, "probability": float(clf.predict_proba([pb])[0])})
    write_tsv(output, pd.DataFrame(out, columns=["repertoire_id", "probability"]))
    log.info("predicted %d repertoire(s) with %s (%s) into %s", len(out), model_dir,
             clf.meta_.get("experiment"), output)

