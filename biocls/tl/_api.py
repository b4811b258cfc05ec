"""The in-memory verbs behind :mod:`biocls.tl` (see its docstring)."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anndata as ad
import pandas as pd

from biocls.config import CellExperiment, RepertoireExperiment, parse_experiment
from biocls.tasks import CVResult
from biocls.tasks import cross_validate as run_cv


def _cells(adata: ad.AnnData, verb: str, block: dict[str, Any]) -> tuple[Any, CellExperiment,
                                                                          ad.AnnData]:
    """The cells task, the experiment the caller's options describe (the workflow's loader), and
    a checked, QC-filtered copy of ``adata``."""
    from biocls.tasks.cells import CellsTask

    exp = parse_experiment({"task": "cells", **block}, name=verb, source=f"biocls.tl.{verb}",
                           partial=True)
    assert isinstance(exp, CellExperiment)
    task = CellsTask()
    return task, exp, task.prepare(exp, adata.copy())


def cross_validate(adata: ad.AnnData, *, keys: Mapping[str, Any] | None = None, folds: int = 5,
                   seed: int = 0, progress: bool = False, **config: Any) -> CVResult:
    """Patient-grouped cross-validation of the factored model (and its baselines), in memory.

    ``keys`` names the ``obs`` columns (``cell_type``, ``patient``, optional ``cell_state``);
    ``config`` takes any other experiment key (``preprocess={...}``, ``model={...}``,
    ``unseen_combinations=[...]``, ``pseudo_patients=N``). Preprocessing is fitted on each fold's
    training patients only, exactly as ``snakemake`` does it. ``adata`` is not modified.

    Returns a :class:`~biocls.tasks.CVResult`: ``predictions`` (one row per cell, the columns of
    ``predictions.tsv``), ``metrics`` (``metrics.json``), ``splits`` (patient → fold).
    """
    task, exp, data = _cells(adata, "cross_validate", {
        "keys": dict(keys or {}), "folds": folds, "seed": seed, "progress": progress, **config})
    return run_cv(task, exp, data)


def train(adata: ad.AnnData, *, keys: Mapping[str, Any] | None = None, seed: int = 0,
          progress: bool = False, **config: Any) -> Any:
    """Fit the final model on every patient of ``adata`` (as the workflow's ``model/``).

    Options as for :func:`cross_validate`; early stopping holds back whole patients. Returns a
    model :func:`annotate` takes; ``model.save(directory)`` writes a folder that
    ``biocls predict`` and :func:`annotate` load.
    """
    from biocls.splits import plan_fold
    from biocls.tasks import fit_fold
    from biocls.tasks.cells import CellModelBundle

    task, exp, data = _cells(adata, "train", {"keys": dict(keys or {}), "seed": seed,
                                              "progress": progress, **config})
    patients = task.patients(data)
    plan = plan_fold({str(p): 0 for p in set(patients)}, "final", patients,
                     validation_fraction=exp.validation_fraction, seed=exp.seed)
    fitted, _ = fit_fold(task, exp, data, plan)
    return CellModelBundle(fitted.factored, fitted.preprocessor, "(in memory)", exp=exp,
                           info={**plan.as_dict(), **fitted.info}, seen=fitted.seen)


def annotate(adata: ad.AnnData, model: str | Path | Any, *, copy: bool = False
             ) -> ad.AnnData | None:
    """Annotate cells with a final model (``results/<exp>/model``, or one loaded from it).

    Writes into ``adata.obs``: ``biocls_cell_type`` and ``biocls_cell_type_confidence``;
    ``biocls_cell_state`` and ``biocls_cell_state_confidence`` for a single-label state model,
    or one ``biocls_state:<label>`` probability per label for a multi-label one; and
    ``biocls_seen_in_training`` (bool), when the model records its training cells: True for a
    cell with the same values on the model's genes as one it was trained on (a warning gives the
    count; such calls say nothing about accuracy on new cells).

    Writes into ``adata.uns["biocls_predict"]``: ``params`` (``model``, ``experiment``),
    ``biocls_version``, ``model``, ``experiment``, ``config_hash`` (of the training config),
    ``model_biocls_version``, ``predicted_at`` (UTC, ISO 8601) and ``n_seen_in_training``; a
    model saved by an older biocls lacks ``config_hash``, ``model_biocls_version`` and
    ``n_seen_in_training``, and they are left out. Genes are matched by name; missing ones are
    zero-filled with a warning. Returns a copy with ``copy=True``.
    """
    from biocls.tasks.cells import CellsTask, load_cell_model

    bundle = load_cell_model(model) if isinstance(model, (str, Path)) else model
    target = adata.copy() if copy else adata
    CellsTask().annotate(bundle, target)
    return target if copy else None


def cross_validate_repertoires(metadata: str | Path, repertoires: str | Path, *,
                               keys: Mapping[str, Any] | None = None, folds: int = 5,
                               seed: int = 0, progress: bool = False,
                               **config: Any) -> CVResult:
    """Subject-grouped cross-validation of the MIL model and the k-mer baseline, in memory.

    ``metadata`` is the one-row-per-repertoire TSV, ``repertoires`` the folder of
    ``<repertoire_id>.tsv`` files; ``config`` takes any other experiment key (``model={...}``,
    ``baseline={...}``, ``positive_label``). The sequences are encoded once into a temporary
    store, as ``biocls encode`` does. ``predictions`` has one row per repertoire; the
    ``attention`` table (``CVResult.tables``) the most-attended sequences.
    """
    from biocls.tasks.repertoires import RepertoiresTask

    exp = parse_experiment({"task": "repertoires", "metadata": str(metadata),
                            "repertoires": str(repertoires), "keys": dict(keys or {}),
                            "folds": folds, "seed": seed, "progress": progress, **config},
                           name="cross_validate",
                           source="biocls.tl.cross_validate_repertoires")
    assert isinstance(exp, RepertoireExperiment)
    task = RepertoiresTask()
    with tempfile.TemporaryDirectory(prefix="biocls-cv-") as tmp:
        store = Path(tmp) / "store.h5"
        task.encode(exp, store)
        data = task.load(exp, store=store)
        try:
            return run_cv(task, exp, data)
        finally:
            data.close()


def score_repertoires(model: str | Path, repertoires: str | Path) -> pd.DataFrame:
    """Probability of the positive class for every repertoire file in a folder (AIRR or DeepRC
    columns), from a final model: a frame with ``repertoire_id`` and ``probability``.

    Other TSVs in the folder (``metadata.tsv``, ...) are skipped with a warning. The frame's
    ``attrs["biocls_predict"]`` holds the provenance that ``biocls predict`` writes to
    ``<output>.json`` (as :func:`annotate`'s ``uns``, plus ``input``, ``n_repertoires``,
    ``skipped``)."""
    from biocls.tasks.repertoires import score_folder

    return score_folder(Path(model), Path(repertoires))
