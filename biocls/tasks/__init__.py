"""Tasks (cells, repertoires) behind one protocol; the CLI dispatches through :func:`get_task`.

A task module implements :class:`Task`; the runner functions re-exported here split, train,
evaluate and cross-validate any of them.
"""

from __future__ import annotations

from biocls.tasks._protocol import FoldResult, Task
from biocls.tasks._registry import get_task, task_of_model
from biocls.tasks._runner import (
    CVResult,
    cross_validate,
    evaluate,
    fit_fold,
    gather,
    make_splits,
    run_fold,
    split,
    train,
)

__all__ = [
    "CVResult",
    "FoldResult",
    "Task",
    "cross_validate",
    "evaluate",
    "fit_fold",
    "gather",
    "get_task",
    "make_splits",
    "run_fold",
    "split",
    "task_of_model",
    "train",
]
