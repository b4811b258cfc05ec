"""The columns of ``predictions.tsv`` (and its siblings), owned in one place (STYLE.md habit 6).

The per-fold and gathered tables of DESIGN.md §4b are written by the tasks (:mod:`biocls.tasks`),
read back by ``evaluate`` and by the report renderer. Every column name they share is defined here,
as a constant or as a small function of the head (``true_col("cell_type")`` →
``"true_cell_type"``), so that renaming a column is one edit and a typo is a ``NameError`` rather
than a silently empty table. :func:`read_predictions` is the one reader: IDs stay text (``"007"``
and ``"NA"`` are IDs, not numbers or missing values), labels stay text, and only an empty field is
missing.

Cells (``task: cells``), one row per cell, in :func:`cell_prediction_columns` order:

- ``cell_id``, ``patient``, ``fold``;
- ``true_<head>`` for ``cell_type`` and (single-label states) ``cell_state``;
- multi-label states: ``true_state:<label>`` (1/0/empty = unknown), ``pred_state:<label>`` (0/1),
  ``prob_state:<label>``, ``logreg_prob_state:<label>``;
- ``pred_<head>`` and ``<head>_confidence`` of the factored model;
- ``joint_pred_<head>`` (joint type×state head) and ``logreg_pred_<head>`` (baseline);
- ``prob_<head>:<class>``, one per class of each softmax head.

Repertoires (``task: repertoires``): :data:`PREDICTION_COLUMNS` (one row per repertoire),
:data:`ATTENTION_COLUMNS` (``attention.tsv``, the top-attended sequences) and
:data:`PATTERN_COLUMNS` (``patterns.tsv``, the sequences nearest each learned pattern).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO

import pandas as pd

from biocls._errors import BioclsError

__all__ = [
    "ATTENTION_COLUMNS",
    "CELL_ID",
    "CELL_STATE",
    "CELL_TYPE",
    "FOLD",
    "HEADS",
    "HEAD_WEIGHT",
    "ID_COLUMNS",
    "IMAGE",
    "IMAGE_MODELS",
    "JUNCTION_AA",
    "KMER_PROBABILITY",
    "LABEL",
    "LOGREG_PROB_STATE",
    "MODELS",
    "N_DROPPED",
    "N_SEQUENCES",
    "PATIENT",
    "PATTERN",
    "PATTERN_COLUMNS",
    "PATTERN_RANK",
    "PREDICTED",
    "PREDICTION_COLUMNS",
    "PRED_STATE",
    "PROBABILITY",
    "PROB_STATE",
    "RANK",
    "REPERTOIRE_ID",
    "SIMILARITY",
    "TRUE_STATE",
    "WEIGHT",
    "cell_prediction_columns",
    "confidence_col",
    "is_label_col",
    "pred_col",
    "pred_state_col",
    "prob_classes",
    "prob_col",
    "prob_state_col",
    "read_predictions",
    "state_labels",
    "true_col",
    "true_state_col",
]

# -- shared by every task ----------------------------------------------------------------------
PATIENT = "patient"
FOLD = "fold"

# -- cells -------------------------------------------------------------------------------------
CELL_ID = "cell_id"
CELL_TYPE = "cell_type"
CELL_STATE = "cell_state"
#: the single-label heads, in the order their columns are written
HEADS: tuple[str, ...] = (CELL_TYPE, CELL_STATE)
#: the models whose predictions sit side by side: the factored model and the two baselines
MODELS: tuple[str, ...] = ("factored", "joint", "logreg")
#: images (``task: images``): the model that ships, then image only, fused with clinical data,
#: clinical data only, logistic regression on the pixels, and (with pretraining) image only
#: trained from scratch
IMAGE_MODELS: tuple[str, ...] = ("factored", "image", "fused", "clinical", "logreg", "scratch")
IMAGE = "image"
_MODEL_PREFIX = {"factored": "", "joint": "joint_", "logreg": "logreg_", "image": "image_",
                 "fused": "fused_", "clinical": "clinical_", "scratch": "scratch_"}
#: prefixes of the multi-label state columns; the state label follows the colon
TRUE_STATE = "true_state:"
PRED_STATE = "pred_state:"
PROB_STATE = "prob_state:"
LOGREG_PROB_STATE = "logreg_prob_state:"

# -- repertoires -------------------------------------------------------------------------------
REPERTOIRE_ID = "repertoire_id"
LABEL = "label"
PROBABILITY = "probability"
KMER_PROBABILITY = "kmer_probability"
PREDICTED = "predicted"
N_SEQUENCES = "n_sequences"
N_DROPPED = "n_dropped"
RANK = "rank"
JUNCTION_AA = "junction_aa"
WEIGHT = "weight"
PATTERN = "pattern"
SIMILARITY = "similarity"
#: a learned pattern's weight in the output head, and its rank by that weight (1 = largest)
HEAD_WEIGHT = "head_weight"
PATTERN_RANK = "pattern_rank"

#: ``predictions.tsv`` of ``task: repertoires``, in written order
PREDICTION_COLUMNS: list[str] = [REPERTOIRE_ID, PATIENT, FOLD, LABEL, PROBABILITY,
                                 KMER_PROBABILITY, PREDICTED, N_SEQUENCES, N_DROPPED]
#: ``attention.tsv``: the top-attended sequences of each repertoire, ``rank`` 1 = most attended
ATTENTION_COLUMNS: list[str] = [REPERTOIRE_ID, PATIENT, RANK, JUNCTION_AA, "v_call", "j_call",
                                "duplicate_count", WEIGHT, "score"]
#: ``patterns.tsv`` (``pooling: patterns``): the sequences nearest each learned pattern
PATTERN_COLUMNS: list[str] = [PATTERN, RANK, JUNCTION_AA, SIMILARITY, HEAD_WEIGHT,
                              PATTERN_RANK, REPERTOIRE_ID]

#: columns read as text whatever they hold: IDs, and sequences/gene calls that may look like "NA"
ID_COLUMNS: tuple[str, ...] = (CELL_ID, PATIENT, REPERTOIRE_ID, JUNCTION_AA, "v_call", "j_call",
                                IMAGE)


def _check_model(model: str) -> str:
    if model not in _MODEL_PREFIX:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    return _MODEL_PREFIX[model]


def true_col(head: str) -> str:
    """The annotated label of ``head``: ``true_<head>`` (empty where not annotated)."""
    return f"true_{head}"


def pred_col(head: str, model: str = "factored") -> str:
    """The predicted label of ``head`` by ``model``: ``pred_<head>``, ``joint_pred_<head>``…"""
    return f"{_check_model(model)}pred_{head}"


def confidence_col(head: str) -> str:
    """The factored model's probability of its predicted label: ``<head>_confidence``."""
    return f"{head}_confidence"


def prob_col(head: str, cls: str) -> str:
    """The factored model's probability of class ``cls`` of ``head``: ``prob_<head>:<cls>``."""
    return f"prob_{head}:{cls}"


def true_state_col(label: str) -> str:
    """Multi-label states: 1 (present), 0 (absent) or empty (unknown) for state ``label``."""
    return f"{TRUE_STATE}{label}"


def pred_state_col(label: str) -> str:
    """Multi-label states: the factored model's call, 1 where ``prob_state:<label>`` ≥ 0.5."""
    return f"{PRED_STATE}{label}"


def prob_state_col(label: str, model: str = "factored") -> str:
    """Multi-label states: the predicted probability of ``label`` (``factored`` or ``logreg``)."""
    if model not in ("factored", "logreg"):
        raise ValueError(f"multi-label state probabilities come from factored or logreg, "
                         f"not {model!r}")
    return f"{_check_model(model)}{PROB_STATE}{label}"


def state_labels(columns: Iterable[str]) -> list[str]:
    """The multi-label state labels of a table, in column order (empty: single-label states)."""
    return [c[len(TRUE_STATE):] for c in columns if c.startswith(TRUE_STATE)]


def prob_classes(columns: Iterable[str], head: str) -> list[str]:
    """The classes of ``head`` that have a ``prob_<head>:<class>`` column, in column order."""
    prefix = prob_col(head, "")
    return [c[len(prefix):] for c in columns if c.startswith(prefix)]


_LABEL_COL = re.compile(
    r"^(?:joint_|logreg_|image_|fused_|clinical_|scratch_)?(?:true|pred)_[^:]+$")


def is_label_col(column: str) -> bool:
    """True for the single-label columns (``true_<head>``, ``[joint_|logreg_]pred_<head>``).

    Labels are text even when they look like numbers (cluster ``"01"``), so that an annotated
    ``"1"`` and a predicted ``"1"`` compare equal rather than as ``1.0`` against ``1``.
    """
    return bool(_LABEL_COL.match(column))


def cell_prediction_columns(*, classes: Mapping[str, Sequence[str]], has_state: bool,
                            state_labels: Sequence[str] = ()) -> list[str]:
    """The columns of a cells ``predictions.tsv``, in the order the writer puts them.

    ``classes`` maps each softmax head of the factored model (``cell_type``, and ``cell_state``
    for single-label states) to its class vocabulary; ``has_state`` says whether single-label
    states are annotated (then the state head gets ``true_``, joint and logreg columns);
    ``state_labels`` names the multi-label states, if any.
    """
    cols = [CELL_ID, PATIENT, FOLD, true_col(CELL_TYPE)]
    if has_state:
        cols.append(true_col(CELL_STATE))
    for name in state_labels:
        cols += [true_state_col(name), pred_state_col(name), prob_state_col(name),
                 prob_state_col(name, "logreg")]
    for head in classes:
        cols += [pred_col(head), confidence_col(head)]
    baseline_heads = HEADS if has_state else HEADS[:1]
    if has_state:
        cols += [pred_col(head, "joint") for head in HEADS]
    cols += [pred_col(head, "logreg") for head in baseline_heads]
    for head, names in classes.items():
        cols += [prob_col(head, str(name)) for name in names]
    return cols


def read_predictions(path: str | os.PathLike[str] | IO[str], *, required: Iterable[str] = (),
                     usecols: Callable[[str], bool] | None = None) -> pd.DataFrame:
    """Read a ``predictions.tsv`` (or ``attention.tsv``/``patterns.tsv``) as written.

    Tab-separated; only an empty field is missing (``"NA"`` and ``"None"`` are IDs or labels);
    ID columns (:data:`ID_COLUMNS`) and label columns (:func:`is_label_col`) are text, the rest
    is parsed as numbers where it can be. ``path`` may also be an open text buffer (a table
    round-tripped in memory reads exactly as its file would). ``usecols`` selects columns by
    name. A missing or empty file, or a missing ``required`` column (e.g. ``(PATIENT, FOLD)``),
    is a one-line :class:`~biocls.BioclsError`.
    """
    fix = "re-run the step that writes it (`biocls train` for a fold, `biocls evaluate` after)"
    if hasattr(path, "read"):
        where, source = "predictions table", io.StringIO(path.read())
    else:
        where, source = str(path), path
        if not os.path.isfile(path):
            raise BioclsError("file not found", where=where, fix=fix)
    try:
        header = pd.read_csv(source, sep="\t", nrows=0).columns
    except pd.errors.EmptyDataError:
        raise BioclsError("file is empty", where=where, fix=fix) from None
    if isinstance(source, io.StringIO):
        source.seek(0)
    text = {c: str for c in header if c in ID_COLUMNS or is_label_col(c)}
    frame = pd.read_csv(source, sep="\t", dtype=text, keep_default_na=False, na_values=[""],
                        usecols=usecols)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise BioclsError(f"missing column(s) {', '.join(missing)}", where=where,
                          fix=f"{fix} (DESIGN.md §4b)")
    return frame
