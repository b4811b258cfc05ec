"""What both estimators share: scikit-learn's parameter contract, the fitted check, and one shape
of model folder (``weights.pt`` + ``model.json``: kind, parameters, what the fit learned, and the
caller's metadata).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from torch import nn

from biocls._errors import BioclsError
from biocls.models import load_model_files, save_model_files

__all__ = ["NOT_TRAINING", "NetEstimator"]

#: Parameters that change how a fit runs, not what it learns: a checkpoint signature leaves them
#: out, so that a run resumes on another device or without its progress bar.
NOT_TRAINING = frozenset({"device", "progress"})


class NetEstimator(BaseEstimator):
    """Base of the estimators that fit one torch net, ``net_``.

    :class:`sklearn.base.BaseEstimator` reads the parameters from the signature of ``__init__``
    (``get_params``, ``set_params``, :func:`sklearn.base.clone`), so ``__init__`` stores each one
    untouched under its own name, and everything a fit learns ends in ``_``.
    """

    #: ``kind`` written into ``model.json``; :meth:`_read` also accepts ``OLD_KINDS``.
    KIND: ClassVar[str]
    OLD_KINDS: ClassVar[tuple[str, ...]] = ()
    #: What the model was trained on, for the error on a foreign model folder.
    TASK: ClassVar[str]
    #: Keys of ``model.json`` that the estimator itself writes (the rest of an old-format file,
    #: which kept the caller's metadata at the top level, is that metadata).
    FILE_KEYS: ClassVar[frozenset[str]] = frozenset({"kind", "params"})

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "net_")

    def _check_fitted(self) -> nn.Module:
        """The fitted net, or scikit-learn's ``NotFittedError`` (one line, says what to call)."""
        check_is_fitted(self, msg=f"{type(self).__name__} is not fitted; call fit() or load() "
                                  "first")
        return self.net_

    def _training_params(self) -> dict[str, Any]:
        """The parameters a checkpoint signature covers: all but :data:`NOT_TRAINING`."""
        return {k: v for k, v in self.get_params(deep=False).items() if k not in NOT_TRAINING}

    def _write(self, directory: str | Path, learned: dict[str, Any],
               meta: dict[str, Any] | None) -> None:
        """Write ``net_`` and ``model.json``; ``meta=None`` keeps the metadata of a loaded model."""
        net = self._check_fitted()
        meta = dict(getattr(self, "meta_", {}) if meta is None else meta)
        save_model_files(directory, net, {"kind": self.KIND,
                                          "params": self.get_params(deep=False),
                                          **learned, "meta": meta})

    @classmethod
    def _read(cls, directory: str | Path
              ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
        """``(state_dict, model.json, caller's metadata)``; a model of another kind is a one-line
        error."""
        state, info = load_model_files(directory)
        kind = info.get("kind")
        if kind not in (cls.KIND, *cls.OLD_KINDS):
            raise BioclsError(f"model kind is {kind!r}, not a {cls.KIND}", where=str(directory),
                              fix=f"use a model trained on {cls.TASK}")
        if "meta" in info:
            meta = dict(info["meta"])
        else:
            meta = {k: v for k, v in info.items() if k not in cls.FILE_KEYS}
        return state, info, meta
