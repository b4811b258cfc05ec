"""Clinical columns as numbers a network can read, fitted on the training patients only.

Each column is read as what it holds: numbers are standardised (gaps take the training median and
a missing-flag), short categories are one-hot encoded (an unseen category is all zeros), and free
text such as a symptom list (``fever;cough``) becomes TF-IDF weights over its ``;``/``,``-separated
terms. Everything fitted is plain JSON, so a model folder needs no pickles.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from biocls._errors import BioclsError
from biocls._io import write_json

__all__ = ["ClinicalEncoder"]

#: a column with more distinct values than this (and separators) is read as free text
_SEPARATORS = re.compile(r"[;,|]")


def _terms(value: str) -> list[str]:
    return [t.strip().lower() for t in _SEPARATORS.split(value) if t.strip()]


class ClinicalEncoder:
    """``fit(table)`` on training patients' rows, then ``transform(table)`` → float32 ``[N, F]``.

    Parameters
    ----------
    max_categories
        A non-numeric column without separators and with at most this many distinct values is
        categorical; otherwise it is text.
    """

    def __init__(self, *, max_categories: int = 20) -> None:
        self.max_categories = max_categories

    def fit(self, table: pd.DataFrame) -> ClinicalEncoder:
        self.columns_: list[dict[str, Any]] = []
        for name in table.columns:
            col = table[name].astype(str).str.strip()
            present = col[col != ""]
            num = pd.to_numeric(present, errors="coerce")
            if len(present) and num.notna().all():
                sd = float(num.std(ddof=0)) or 1.0
                self.columns_.append({"name": name, "kind": "numeric",
                                      "median": float(num.median()), "mean": float(num.mean()),
                                      "sd": sd})
            elif (present.str.contains(_SEPARATORS).any()
                  or present.nunique() > self.max_categories):
                docs = [set(_terms(v)) for v in col]
                vocab = sorted(set().union(*docs))
                df = np.array([sum(t in d for d in docs) for t in vocab], dtype=float)
                idf = np.log((1 + len(docs)) / (1 + df)) + 1.0
                self.columns_.append({"name": name, "kind": "text", "vocab": vocab,
                                      "idf": idf.tolist()})
            else:
                self.columns_.append({"name": name, "kind": "categorical",
                                      "levels": sorted(present.unique().tolist())})
        self.n_features_ = int(sum(self._width(c) for c in self.columns_))
        return self

    @staticmethod
    def _width(c: dict[str, Any]) -> int:
        return {"numeric": 2, "text": len(c.get("vocab", [])),
                "categorical": len(c.get("levels", []))}[c["kind"]]

    def transform(self, table: pd.DataFrame, *, source: str = "clinical") -> np.ndarray:
        """The encoded features; a column the encoder was fitted on must be present."""
        blocks = []
        for c in self.columns_:
            if c["name"] not in table.columns:
                raise BioclsError(f"no clinical column '{c['name']}'", where=source,
                                  fix="the model was trained with it; add the column (it may be "
                                      "empty)")
            col = table[c["name"]].astype(str).str.strip()
            if c["kind"] == "numeric":
                num = pd.to_numeric(col.replace("", np.nan), errors="coerce")
                gap = num.isna().to_numpy()
                values = np.where(gap, c["median"], num.to_numpy(dtype=float))
                blocks.append(np.stack([(values - c["mean"]) / c["sd"], gap.astype(float)], 1))
            elif c["kind"] == "categorical":
                levels = {v: j for j, v in enumerate(c["levels"])}
                out = np.zeros((len(col), len(levels)))
                for i, v in enumerate(col):
                    if v in levels:
                        out[i, levels[v]] = 1.0
                blocks.append(out)
            else:
                index = {t: j for j, t in enumerate(c["vocab"])}
                idf = np.asarray(c["idf"])
                out = np.zeros((len(col), len(index)))
                for i, v in enumerate(col):
                    for t in _terms(v):
                        if t in index:
                            out[i, index[t]] += idf[index[t]]
                norm = np.linalg.norm(out, axis=1, keepdims=True)
                blocks.append(out / np.where(norm > 0, norm, 1.0))
        if not blocks:
            return np.zeros((len(table), 0), dtype=np.float32)
        return np.concatenate(blocks, 1).astype(np.float32)

    def save(self, path: str | Path) -> None:
        write_json(path, {"max_categories": self.max_categories, "columns": self.columns_})

    @classmethod
    def load(cls, path: str | Path) -> ClinicalEncoder:
        data = json.loads(Path(path).read_text())
        self = cls(max_categories=data["max_categories"])
        self.columns_ = data["columns"]
        self.n_features_ = int(sum(self._width(c) for c in self.columns_))
        return self
