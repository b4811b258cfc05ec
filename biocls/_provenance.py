"""Where a prediction comes from, and what a final model was trained on.

A final model folder records, at save time, the biocls version and the ``config_hash`` of the
experiment it was trained under (in ``model.json``'s metadata), and one 64-bit fingerprint per
training item in ``training_fingerprints.npy``. A prediction records :func:`prediction_provenance`
(``adata.uns["biocls_predict"]`` for cells, ``<output>.json`` beside a repertoire TSV) and counts
the input items whose fingerprint is in the model's record.

A fingerprint is a hash of what the model reads, not of a name: for a cell, its values on the
model's genes (matched by name, as float64, so that int/float32/float64 and sparse/dense copies
of one matrix agree); for a repertoire, its encoded sequences, in order, with their counts. Names
are left out on purpose: ``obs_names`` change when data sets are concatenated
(``anndata.concat(index_unique=...)``) and 10x barcodes repeat across libraries, so a name is
neither needed nor enough to say that the model has seen a cell.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from biocls import __version__

__all__ = ["FINGERPRINTS", "bag_fingerprint", "cell_fingerprints", "model_provenance",
           "model_signature",
           "prediction_provenance", "read_fingerprints", "write_fingerprints"]

#: The file of a model folder that lists its training items' fingerprints (sorted uint64).
FINGERPRINTS = "training_fingerprints.npy"
_ROWS = 2048  # cells densified at a time


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def cell_fingerprints(X: Any, var_names: Sequence[str] | pd.Index,
                      genes: Sequence[str]) -> np.ndarray:
    """One uint64 per row of ``X``: a hash of the row's values on ``genes`` (matched by name in
    ``var_names``; a gene that is absent counts as 0), taken as float64."""
    pos = pd.Index(var_names).astype(str).get_indexer(pd.Index(list(genes)).astype(str))
    present = np.flatnonzero(pos >= 0)
    cols = pos[present]
    if sp.issparse(X) and X.format != "csr":
        X = X.tocsr()
    out = np.empty(X.shape[0], dtype=np.uint64)
    for start in range(0, X.shape[0], _ROWS):
        stop = min(X.shape[0], start + _ROWS)
        block = X[start:stop][:, cols]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        full = np.zeros((stop - start, len(pos)), dtype=np.float64)
        full[:, present] = block
        full += 0.0  # -0.0 and 0.0 hash alike
        for i, row in enumerate(full):
            out[start + i] = _digest(row.tobytes())
    return out


def bag_fingerprint(codes: np.ndarray, offsets: np.ndarray, counts: np.ndarray) -> int:
    """A hash of one repertoire as the store holds it: residue codes, sequence boundaries (from
    0) and duplicate counts."""
    offsets = np.asarray(offsets, dtype=np.int64)
    h = hashlib.blake2b(digest_size=8)
    for part in (np.asarray(codes, dtype=np.uint8), offsets - offsets[0],
                 np.asarray(counts, dtype=np.float64)):
        h.update(np.ascontiguousarray(part).tobytes())
        h.update(b"|")
    return int.from_bytes(h.digest(), "little")


def write_fingerprints(directory: str | Path, fingerprints: Sequence[int] | np.ndarray) -> None:
    """Write the sorted, unique fingerprints to ``<directory>/training_fingerprints.npy``."""
    arr = np.unique(np.asarray(fingerprints, dtype=np.uint64))
    with open(Path(directory) / FINGERPRINTS, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def read_fingerprints(directory: str | Path) -> np.ndarray | None:
    """A model folder's record of its training items, or ``None`` for a model saved before
    biocls kept one."""
    path = Path(directory) / FINGERPRINTS
    if not path.is_file():
        return None
    return np.load(path, allow_pickle=False).astype(np.uint64)


def model_signature(directory: str | Path) -> str:
    """A SHA-256 over a model folder's files (relative names and bytes, in sorted order): a
    certificate names the exact weights and preprocessing it holds for."""
    root = Path(directory)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def model_provenance(exp: Any) -> dict[str, str]:
    """What a model's metadata records at save time: the biocls version and the experiment's
    :func:`~biocls.config.config_hash`."""
    from biocls.config import config_hash

    return {"biocls_version": __version__, "config_hash": config_hash(exp)}


def prediction_provenance(model: str | Path, meta: Mapping[str, Any], *,
                          experiment: str | None = None, config_hash: str | None = None,
                          n_seen: int | None = None) -> dict[str, Any]:
    """The record of one prediction: ``biocls_version`` (now), ``model`` (path),
    ``experiment``, ``config_hash`` and ``model_biocls_version`` (from the model's metadata),
    ``predicted_at`` (UTC, ISO 8601) and ``n_seen_in_training``. Keys that a model saved by an
    older biocls cannot tell are left out (no ``None``: the record must fit an ``.h5ad``)."""
    out: dict[str, Any] = {
        "biocls_version": __version__,
        "model": str(model),
        "experiment": experiment or meta.get("experiment") or meta.get("spec_name"),
        "config_hash": config_hash or meta.get("config_hash"),
        "model_biocls_version": meta.get("biocls_version"),
        "predicted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_seen_in_training": None if n_seen is None else int(n_seen),
    }
    return {k: v for k, v in out.items() if v is not None}
