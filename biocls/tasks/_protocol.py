"""What a task (cells, repertoires, images) implements so that one fold runner, one evaluator and
one CLI serve them all (STYLE habit 2: a new task adds a dataset, a model and a report section,
not a copy of the pipeline)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import pandas as pd

from biocls.config import Experiment
from biocls.splits import FoldPlan

__all__ = ["FoldResult", "Task"]


@dataclass
class FoldResult:
    """One fold's held-out outputs: named tables (``predictions`` first) and a JSON-able info.

    On disk each table is ``<fold dir>/<name>.tsv`` and the info ``fold_info.json``.
    """

    tables: dict[str, pd.DataFrame]
    info: dict[str, Any] = field(default_factory=dict)


class Task(Protocol):
    """The verbs a task implements; the runner (:mod:`biocls.tasks._runner`) does the rest."""

    #: the config's ``task:`` value
    name: ClassVar[str]
    #: per-fold tables the evaluator gathers, ``predictions`` first
    tables: ClassVar[tuple[str, ...]]
    #: what one item is called (``n_<items>`` in splits.tsv)
    items: ClassVar[str]
    #: training reads an encoded store (``biocls encode``), not the raw input
    encoded: ClassVar[bool]
    #: every patient carries one label (splits.tsv then shows it)
    patient_labels: ClassVar[bool]

    def load(self, exp: Experiment, *, store: Path | None = None) -> Any:
        """Read and validate the experiment's items (cells, repertoires) once."""

    def patients(self, data: Any) -> np.ndarray:
        """The patient of every item."""

    def strata(self, data: Any) -> np.ndarray:
        """The label every item's fold assignment is stratified by."""

    def fit(self, exp: Experiment, data: Any, plan: FoldPlan, *,
            checkpoint_dir: Path | None = None) -> Any:
        """Fit on ``plan.fit`` patients, early-stopping on ``plan.validation``; baselines too
        unless ``plan.final``."""

    def predict(self, exp: Experiment, fitted: Any, data: Any, plan: FoldPlan) -> FoldResult:
        """The held-out (``plan.test``) items' predictions, from the model and its baselines."""

    def save(self, exp: Experiment, fitted: Any, data: Any, plan: FoldPlan,
             directory: Path) -> None:
        """Write the final model folder (loadable by ``biocls predict``)."""

    def metrics(self, exp: Experiment, tables: dict[str, pd.DataFrame],
                infos: list[dict[str, Any]]) -> dict[str, Any]:
        """``metrics.json`` from the gathered out-of-fold tables (DESIGN §4b)."""

    def attach(self, exp: Experiment, metrics: dict[str, Any], out_dir: Path) -> None:
        """Outputs beside the gathered tables that come from elsewhere (the final model)."""

    def predict_file(self, model_dir: Path, input: Path, output: Path) -> None:  # noqa: A002
        """``biocls predict``: apply a final model to new data on disk."""
