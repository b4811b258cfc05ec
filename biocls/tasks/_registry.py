"""Which implementation serves a task name or a model folder (the CLI dispatches through it)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from biocls._errors import BioclsError
from biocls.tasks._protocol import Task

__all__ = ["get_task", "task_of_model"]

#: task name → its implementation, imported on first use (torch, scanpy are heavy)
_REGISTRY = {"cells": "biocls.tasks.cells:CellsTask",
             "repertoires": "biocls.tasks.repertoires:RepertoiresTask",
             "images": "biocls.tasks.images:ImagesTask"}
#: model.json "kind" → the task whose model it is
_MODEL_KINDS = {"CellClassifier": "cells", "RepertoireClassifier": "repertoires",
                "repertoire_mil": "repertoires", "ImageClassifier": "images"}


def get_task(name: str) -> Task:
    """The task implementing ``task: <name>``."""
    if name not in _REGISTRY:
        raise BioclsError(f"unknown task {name!r}", where="task",
                          fix=f"use one of {sorted(_REGISTRY)}")
    module, _, cls = _REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


def task_of_model(model_dir: Path) -> Task:
    """The task that trained the model folder ``model_dir`` (from its ``model.json``)."""
    meta = Path(model_dir) / "model.json"
    if not meta.exists():
        raise BioclsError("not a biocls model folder (no model.json)", where=str(model_dir),
                          fix="point --model at results/<experiment>/model")
    kind = json.loads(meta.read_text()).get("kind")
    if kind not in _MODEL_KINDS:
        raise BioclsError(f"unknown model kind {kind!r}", where=str(meta),
                          fix="retrain the model with this version of biocls")
    return get_task(_MODEL_KINDS[kind])
