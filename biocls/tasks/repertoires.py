"""The immune-repertoire task (``task: repertoires``): encode, load, fit, predict, save, score.

A repertoire is a bag of CDR3s with one label; the MIL model (:class:`RepertoireClassifier`) and
the k-mer baseline (:class:`KmerLogisticRegression`) are fitted on the same fold's subjects.
Planning folds, writing and gathering is the runner's (:mod:`biocls.tasks._runner`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from biocls import columns as C
from biocls._errors import BioclsError
from biocls._io import write_json, write_tsv
from biocls._provenance import (
    bag_fingerprint,
    model_provenance,
    prediction_provenance,
    read_fingerprints,
    write_fingerprints,
)
from biocls.config import RepertoireExperiment, RepertoireModel, to_dict
from biocls.data import (
    find_repertoire_files,
    positive_label,
    read_repertoire_metadata,
    scan_repertoire_folder,
)
from biocls.estimators import KmerLogisticRegression, RepertoireClassifier, kmer_frequencies
from biocls.evaluate import (
    THRESHOLD,
    call_counts,
    enriched_kmers_by_repertoire,
    enriched_motifs,
    roc_auc,
    roc_points,
)
from biocls.models import PackedBag, pack_bag
from biocls.preprocess import CDR3Store, build_cdr3_store
from biocls.splits import FoldPlan
from biocls.tasks._protocol import FoldResult

__all__ = ["RepertoireData", "RepertoiresTask", "kmer_matrix", "score_folder"]

log = logging.getLogger(__name__)


@dataclass
class RepertoireData:
    """The metadata (one row per repertoire) and, once encoded, the open sequence store."""

    reps: pd.DataFrame
    store: CDR3Store | None = None

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


@dataclass
class RepertoireFit:
    """What one fold fitted: the MIL model, the k-mer baseline, the bags they trained on."""

    mil: RepertoireClassifier
    kmer: KmerLogisticRegression | None
    bags: list[PackedBag]
    bag_rows: np.ndarray
    info: dict[str, Any]
    #: final fits: the fingerprints of ``bag_rows``, taken as the bags were read
    fingerprints: list[int] | None = None


class RepertoiresTask:
    """:class:`~biocls.tasks.Task` for immune repertoires."""

    name: ClassVar[str] = "repertoires"
    items: ClassVar[str] = "repertoires"
    tables: ClassVar[tuple[str, ...]] = ("predictions", "attention")
    encoded: ClassVar[bool] = True
    patient_labels: ClassVar[bool] = True

    # -- data ------------------------------------------------------------------------------
    def _inputs(self, exp: RepertoireExperiment) -> tuple[pd.DataFrame, dict[str, Path]]:
        for key in ("metadata", "repertoires"):
            if not getattr(exp, key):
                raise BioclsError(f"`{key}` is not set", where=f"experiments.{exp.name}",
                                  fix=f"set `{key}:` (or a `simulate:` block)")
        files = find_repertoire_files(str(exp.repertoires))
        meta = read_repertoire_metadata(str(exp.metadata), keys=to_dict(exp.keys), files=files)
        return meta, files

    def encode(self, exp: RepertoireExperiment, out: Path) -> None:
        """Validate the inputs and encode them into the store at ``out`` (HDF5, atomically).

        Invalid or empty sequences are dropped and counted; every other problem is a one-line
        error naming the file and repertoire ID, raised before ``out`` exists.
        """
        meta, files = self._inputs(exp)
        pos = positive_label(meta["label"], given=exp.positive_label,
                             where=f"{exp.metadata}: labels")
        info = build_cdr3_store(meta, files, out, positive=pos)
        if info["n_dropped"].sum():
            log.warning("%d sequence(s) dropped in %d repertoire(s); see n_dropped in the store "
                        "and dropped_sequences in metrics.json", int(info["n_dropped"].sum()),
                        int((info["n_dropped"] > 0).sum()))

    def load(self, exp: RepertoireExperiment, *, store: Path | None = None) -> RepertoireData:
        """The encoded store (for training), or the metadata alone (for splitting)."""
        if store is None:
            return RepertoireData(self._inputs(exp)[0])
        st = CDR3Store(store)
        return RepertoireData(st.repertoires.copy(), st)

    def patients(self, data: RepertoireData) -> np.ndarray:
        return data.reps["patient"].to_numpy()

    def strata(self, data: RepertoireData) -> np.ndarray:
        return data.reps["label"].to_numpy()

    # -- fit / predict ---------------------------------------------------------------------
    def fit(self, exp: RepertoireExperiment, data: RepertoireData, plan: FoldPlan, *,
            checkpoint_dir: Path | None = None) -> RepertoireFit:
        """The MIL model on the fit subjects (early stopping on the validation subjects), and
        the k-mer baseline on all training subjects (its own inner CV), unless final."""
        st = _store(data)
        fit_m, val_m, _ = plan.masks(self.patients(data))
        fit_rows, val_rows = np.flatnonzero(fit_m), np.flatnonzero(val_m)
        y = data.reps["y"].to_numpy()
        if len(set(y[fit_rows])) < 2:
            raise BioclsError(f"fold {plan.fold}: the training repertoires hold one class only",
                              where=f"experiments.{exp.name}", fix="lower `folds` or add subjects")
        log.info("fold %s: %d train, %d validation repertoires", plan.fold, len(fit_rows),
                 len(val_rows))
        mil = classifier(exp)
        fit_bags, fit_prints = _bags(st, fit_rows, mil.max_length, fingerprint=plan.final)
        val_bags, val_prints = _bags(st, val_rows, mil.max_length, fingerprint=plan.final)
        mil.fit(fit_bags, y[fit_rows], val_bags=val_bags or None,
                val_y=y[val_rows] if len(val_rows) else None, checkpoint_dir=checkpoint_dir,
                progress=exp.progress, desc=f"{exp.name} fold {plan.fold}")
        kmer = None
        info: dict[str, Any] = {"history": mil.history_.as_dict()}
        if mil.restarts > 1:
            info["restarts"] = {"val_loss": mil.restart_scores_, "chosen": mil.restart_}
        if not plan.final:
            train_rows = np.flatnonzero(fit_m | val_m)
            b = exp.baseline
            kmer = KmerLogisticRegression(kmers=b.kmers, penalties=b.penalties, Cs=b.Cs,
                                          inner_folds=b.inner_folds, seed=exp.seed)
            kmer.fit({int(k): kmer_matrix(st, train_rows, int(k)) for k in b.kmers},
                     y[train_rows], self.patients(data)[train_rows])
            info.update(kmer_logreg=kmer.chosen(), model=mil.get_params())
        return RepertoireFit(mil, kmer, fit_bags + val_bags,
                             np.concatenate([fit_rows, val_rows]), info,
                             fit_prints + val_prints if plan.final else None)

    def predict(self, exp: RepertoireExperiment, fitted: RepertoireFit, data: RepertoireData,
                plan: FoldPlan) -> FoldResult:
        """Each held-out repertoire's probability (model and baseline) and its most-attended
        sequences."""
        st, mil, reps = _store(data), fitted.mil, data.reps
        test_rows = np.flatnonzero(plan.masks(self.patients(data))[2])
        preds, att = [], []
        for i in test_rows:
            b = st.bag(int(i))
            pb = pack_bag(b.codes, b.offsets, b.counts, max_length=mil.max_length)
            prob, idx, w, s = mil.attend(pb, exp.model.top_n)
            r = reps.iloc[int(i)]
            preds.append({C.REPERTOIRE_ID: r.repertoire_id, C.PATIENT: r.patient,
                          C.FOLD: int(plan.fold), C.LABEL: int(r.y), C.PROBABILITY: prob,
                          C.PREDICTED: int(prob >= THRESHOLD), C.N_SEQUENCES: int(r.n_sequences),
                          C.N_DROPPED: int(r.n_dropped)})
            for rank, (j, sq) in enumerate(zip(idx, b.sequences(idx), strict=False), start=1):
                att.append({C.REPERTOIRE_ID: r.repertoire_id, C.PATIENT: r.patient,
                            C.RANK: rank, C.JUNCTION_AA: sq, "v_call": st.v_vocab[b.v[j]],
                            "j_call": st.j_vocab[b.j[j]], "duplicate_count": float(b.counts[j]),
                            C.WEIGHT: float(w[rank - 1]), "score": float(s[rank - 1])})
        pred = pd.DataFrame(preds, columns=[c for c in C.PREDICTION_COLUMNS
                                            if c != C.KMER_PROBABILITY])
        assert fitted.kmer is not None
        pred[C.KMER_PROBABILITY] = fitted.kmer.predict_proba(
            kmer_matrix(st, test_rows, fitted.kmer.k_))
        pred = pred[C.PREDICTION_COLUMNS].sort_values(C.REPERTOIRE_ID, kind="stable")
        return FoldResult({"predictions": pred.reset_index(drop=True),
                           "attention": pd.DataFrame(att, columns=C.ATTENTION_COLUMNS)},
                          dict(fitted.info))

    def save(self, exp: RepertoireExperiment, fitted: RepertoireFit, data: RepertoireData,
             plan: FoldPlan, directory: Path) -> None:
        """The final model folder; with ``pooling: patterns`` also ``patterns.tsv``: the
        training sequences nearest each learned pattern, patterns ranked by head weight."""
        st, mil, reps = _store(data), fitted.mil, data.reps
        meta = {"experiment": exp.name, "task": "repertoires",
                "positive_label": st.positive_label, "keys": to_dict(exp.keys),
                "n_repertoires": int(len(reps)), "n_patients": int(reps["patient"].nunique()),
                "top_n": exp.model.top_n, "history": fitted.info["history"],
                **model_provenance(exp)}
        mil.save(directory, meta=meta)
        # what the model was trained on (fit and early-stopping repertoires), for predict's check
        write_fingerprints(directory, fitted.fingerprints or [])
        if mil.pooling != "patterns":
            return
        weights, rows = mil.pattern_neighbours(fitted.bags, exp.model.pattern_top_n)
        order = {s: r for r, s in enumerate(np.argsort(-weights))}
        recs, cache = [], {}
        for s, bi, ix, sim in rows:
            row = int(fitted.bag_rows[bi])
            if row not in cache:
                cache[row] = st.bag(row)
            recs.append({C.PATTERN: int(s), C.PATTERN_RANK: order[s] + 1,
                         C.HEAD_WEIGHT: float(weights[s]),
                         C.JUNCTION_AA: cache[row].sequences([ix])[0], C.SIMILARITY: sim,
                         C.REPERTOIRE_ID: reps["repertoire_id"].iat[row]})
        df = pd.DataFrame(recs)
        df[C.RANK] = df.groupby(C.PATTERN).cumcount() + 1
        write_tsv(directory / "patterns.tsv",
                  df.sort_values([C.PATTERN_RANK, C.RANK])[C.PATTERN_COLUMNS])

    # -- metrics ---------------------------------------------------------------------------
    def metrics(self, exp: RepertoireExperiment, tables: dict[str, pd.DataFrame],
                infos: list[dict[str, Any]]) -> dict[str, Any]:
        """``metrics.json`` (DESIGN §4b) plus the report's numbers: ``restarts`` (per fold,
        each restart's validation loss and the one kept, when ``model.restarts > 1``),
        ``roc_curve`` (pooled out-of-fold ROC points per model), ``enriched_kmers`` (per
        repertoire), ``enriched_motifs`` (per patient, :func:`~biocls.evaluate.enriched_motifs`),
        the call at ``threshold`` (``calls`` per model, ``predicted`` per patient from its mean
        probability) and ``n_dropped`` (sequences dropped on reading, all repertoires)."""
        pred, att = tables["predictions"], tables["attention"]
        ks = sorted(int(k) for k in pred[C.FOLD].unique())
        y, p, q = (pred[c].to_numpy() for c in (C.LABEL, C.PROBABILITY, C.KMER_PROBABILITY))
        fold = pred[C.FOLD].to_numpy()
        per_patient = {}
        for pat, g in pred.groupby(C.PATIENT):
            prob, kprob = float(g[C.PROBABILITY].mean()), float(g[C.KMER_PROBABILITY].mean())
            per_patient[str(pat)] = {"probability": prob, "kmer_probability": kprob,
                                     "label": int(g[C.LABEL].max()),
                                     "fold": int(g[C.FOLD].iat[0]), "n_repertoires": int(len(g)),
                                     "predicted": int(prob >= THRESHOLD),
                                     "kmer_predicted": int(kprob >= THRESHOLD)}
        metrics: dict[str, Any] = {
            "task": "repertoires", "experiment": exp.name, "pooling": exp.model.pooling,
            "n_patients": int(pred[C.PATIENT].nunique()), "n_repertoires": int(len(pred)),
            "n_sequences": int(pred[C.N_SEQUENCES].sum()), "folds": len(ks),
            "roc_auc": {**_summary([roc_auc(y[fold == k], p[fold == k]) for k in ks]),
                        "pooled": roc_auc(y, p)},
            "baselines": {"kmer_logreg": {
                "roc_auc": {**_summary([roc_auc(y[fold == k], q[fold == k]) for k in ks]),
                            "pooled": roc_auc(y, q)},
                "chosen": {str(i.get("fold")): i.get("kmer_logreg") for i in infos}}},
            "per_patient": per_patient,
            "roc_curve": {name: curve for name, curve in (
                ("model", roc_points(y, p)), ("kmer_logreg", roc_points(y, q))) if curve},
            "enriched_kmers": enriched_kmers_by_repertoire(att),
            "enriched_motifs": enriched_motifs(att),
            "threshold": THRESHOLD,
            "calls": {"model": call_counts(y, p), "kmer_logreg": call_counts(y, q)},
            "n_dropped": int(pred[C.N_DROPPED].sum()),
        }
        restarts = {str(i.get("fold")): i["restarts"] for i in infos if "restarts" in i}
        if restarts:
            metrics["restarts"] = restarts
        dropped = {str(r): int(n)
                   for r, n in zip(pred[C.REPERTOIRE_ID], pred[C.N_DROPPED], strict=True) if n}
        if dropped:
            metrics["dropped_sequences"] = dropped
        return metrics

    def attach(self, exp: RepertoireExperiment, metrics: dict[str, Any], out_dir: Path) -> None:
        """Copy the final model's ``patterns.tsv`` beside the results and count its patterns."""
        patterns = Path(out_dir) / "model" / "patterns.tsv"
        if patterns.exists():
            metrics["n_patterns"] = int(
                C.read_predictions(patterns, required=[C.PATTERN])[C.PATTERN].nunique())
            shutil.copyfile(patterns, Path(out_dir) / "patterns.tsv")

    # -- new data --------------------------------------------------------------------------
    def predict_file(self, model_dir: Path, input: Path, output: Path) -> None:  # noqa: A002
        """``biocls predict`` on a folder of repertoire files: a TSV of probabilities, and
        ``<output>.json`` recording where they come from (``scores.attrs["biocls_predict"]``)."""
        scores = score_folder(Path(model_dir), Path(input))
        output = Path(output)
        write_tsv(output, scores)
        write_json(output.with_name(output.name + ".json"), scores.attrs["biocls_predict"])
        log.info("predicted %d repertoire(s) with %s into %s (provenance: %s.json)", len(scores),
                 model_dir, output, output.name)


def classifier(exp: RepertoireExperiment) -> RepertoireClassifier:
    """The estimator an experiment's ``model:`` block describes."""
    params = {k: v for k, v in to_dict(exp.model).items()
              if k not in RepertoireModel.PIPELINE_KEYS}
    return RepertoireClassifier(seed=exp.seed, **params)


def score_folder(model_dir: Path, folder: Path) -> pd.DataFrame:
    """Score every repertoire file in ``folder``: ``repertoire_id``, ``probability``.

    A repertoire file is a ``.tsv``/``.tsv.gz`` with a CDR3 column that holds one repertoire
    (:func:`~biocls.data.is_repertoire_file`); other TSVs there (``metadata.tsv``,
    ``truth.tsv``) are skipped with one warning naming them, and a folder with none is an error
    naming the subfolder that has them. ``scores.attrs["biocls_predict"]`` records the
    provenance (:func:`~biocls._provenance.prediction_provenance`), including how many input
    repertoires the model was trained on (same sequences and counts; a warning says so).
    """
    clf = RepertoireClassifier.load(model_dir)
    files, skipped = scan_repertoire_folder(folder)
    if skipped:
        warnings.warn(f"{folder}: skipped {len(skipped)} file(s) that are not one repertoire "
                      f"(no CDR3 column, or rows of several repertoire_ids): "
                      f"{', '.join(p.name for p in skipped)}", UserWarning, stacklevel=2)
    record = read_fingerprints(model_dir)
    rows = pd.DataFrame({"repertoire_id": list(files), "patient": list(files), "label": "?"})
    out, prints = [], []
    with tempfile.TemporaryDirectory(prefix="biocls-predict-") as tmp:
        store = Path(tmp) / "store.h5"
        build_cdr3_store(rows, files, store, positive="?", calls=False)
        with CDR3Store(store) as st:
            for i, rid in enumerate(st.repertoires["repertoire_id"]):
                b = st.bag(i)
                if record is not None:
                    prints.append(_fingerprint(b))
                pb = pack_bag(b.codes, b.offsets, b.counts, max_length=clf.max_length)
                del b
                out.append({C.REPERTOIRE_ID: rid,
                            C.PROBABILITY: float(clf.predict_proba([pb])[0])})
    scores = pd.DataFrame(out, columns=[C.REPERTOIRE_ID, C.PROBABILITY])
    n_seen = None
    if record is not None:
        seen = np.isin(np.asarray(prints, dtype=np.uint64), record)
        n_seen = int(seen.sum())
        if n_seen:
            warnings.warn(
                f"{folder}: {n_seen} of {len(scores)} repertoires were in this model's training "
                f"set (same sequences and counts: {_first(scores[C.REPERTOIRE_ID][seen])}), so "
                "their probabilities say nothing about accuracy on new repertoires; the "
                "out-of-fold predictions.tsv holds held-out ones", UserWarning, stacklevel=2)
    scores.attrs["biocls_predict"] = {
        **prediction_provenance(model_dir, clf.meta_, n_seen=n_seen), "input": str(folder),
        "n_repertoires": int(len(scores)), "skipped": [p.name for p in skipped]}
    return scores


def _fingerprint(b: Any) -> int:
    return bag_fingerprint(b.codes, b.offsets, b.counts)


def _first(ids: pd.Series, limit: int = 3) -> str:
    ids = [str(i) for i in ids]
    return ", ".join(ids[:limit]) + (f", and {len(ids) - limit} more" if len(ids) > limit else "")


def kmer_matrix(st: CDR3Store, rows: Sequence[int], k: int) -> np.ndarray:
    """k-mer frequencies ``[len(rows), 20**k]`` of the store's repertoires ``rows``."""
    out = np.zeros((len(rows), 20 ** k), dtype=np.float32)
    for r, i in enumerate(rows):
        b = st.bag(int(i))
        out[r] = kmer_frequencies(b.codes, b.offsets, k)
    return out


def _store(data: RepertoireData) -> CDR3Store:
    if data.store is None:
        raise BioclsError("training needs the encoded store", where="--store",
                          fix="pass the store.h5 written by `biocls encode`")
    return data.store


def _bags(st: CDR3Store, rows: Sequence[int], max_length: int, *,
          fingerprint: bool = False) -> tuple[list[PackedBag], list[int]]:
    """The packed bags of ``rows`` and, with ``fingerprint``, their fingerprints (one read of
    the store serves both)."""
    bags, prints = [], []
    for i in rows:
        b = st.bag(int(i))
        if fingerprint:
            prints.append(_fingerprint(b))
        bags.append(pack_bag(b.codes, b.offsets, b.counts, max_length=max_length))
    return bags, prints


def _summary(values: list[float]) -> dict[str, Any]:
    v = [x for x in values if not np.isnan(x)]
    return {"mean": float(np.mean(v)) if v else None,
            "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 if v else None,
            "folds": values}
