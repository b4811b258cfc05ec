"""Read a user's ``.h5ad`` and check it before any work is done on it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from biocls._errors import BioclsError

__all__ = ["check_values", "read_cells", "validate_cells"]

REQUIRED_KEYS = ("cell_type", "patient")


def read_cells(path: str | Path, *, keys: Mapping[str, str | None], backed: bool = False,
               pseudo_patients: int | None = None, seed: int = 0) -> ad.AnnData:
    """Read ``path`` and validate the ``obs`` columns named by ``keys``.

    ``keys`` maps biocls roles (``cell_type``, ``patient``, optional ``cell_state``) to the
    user's ``obs`` column names. The returned object gets canonical ``obs`` columns
    ``biocls_cell_type``, ``biocls_patient`` and (if present) ``biocls_cell_state`` so that later
    steps never need the mapping again. With ``pseudo_patients=N`` a single-donor file is split
    into N random pseudo-patients (see :func:`biocls.splits.assign_pseudo_patients`).
    """
    path = Path(path)
    if not path.exists():
        raise BioclsError("file not found", where=str(path), fix="check `input` in the config")
    if path.suffix != ".h5ad":
        raise BioclsError(f"expected an AnnData .h5ad file, got '{path.suffix or 'no suffix'}'",
                          where=str(path), fix="convert it with anndata (adata.write_h5ad)")
    try:
        adata = ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as e:  # h5py/anndata raise many types for a non-h5ad file
        raise BioclsError(f"not a readable .h5ad ({type(e).__name__}: {e})".split("\n")[0],
                          where=str(path), fix="write it with anndata's write_h5ad") from None
    return validate_cells(adata, keys=keys, pseudo_patients=pseudo_patients, seed=seed,
                          source=str(path), check_x=not backed)


def validate_cells(adata: ad.AnnData, *, keys: Mapping[str, str | None],
                   pseudo_patients: int | None = None, seed: int = 0, source: str = "adata",
                   check_x: bool = True) -> ad.AnnData:
    """Check the ``obs`` columns named by ``keys`` and add biocls's canonical ones, in place.

    Writes ``obs["biocls_cell_type"]``, ``obs["biocls_patient"]`` and (with ``keys.cell_state``)
    ``obs["biocls_cell_state"]``; the file reader and the in-memory API share it, so a notebook
    and the workflow see the same cells.
    """
    path = source
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise BioclsError(f"X has {adata.n_obs} cells and {adata.n_vars} genes",
                          where=f"{path}: X",
                          fix="supply a matrix with at least one cell and one gene")
    obs = adata.obs
    for role in REQUIRED_KEYS:
        col = keys.get(role)
        if pseudo_patients and role == "patient":
            continue
        if not col:
            raise BioclsError(f"no obs column configured for '{role}'", where=f"keys.{role}",
                              fix=f"set keys.{role} to a column of {path}")
    for role, col in keys.items():
        if col is None or (pseudo_patients and role == "patient"):
            continue
        if col not in obs.columns:
            have = ", ".join(map(str, list(obs.columns)[:12]))
            raise BioclsError(f"obs has no column '{col}' (keys.{role}); it has: {have}",
                              where=path, fix=f"set keys.{role} to one of those columns")
        if role in REQUIRED_KEYS and obs[col].isna().any():
            n = int(obs[col].isna().sum())
            raise BioclsError(f"obs column '{col}' (keys.{role}) is empty for {n} cells",
                              where=path, fix="fill or drop those cells")
    if not adata.obs_names.is_unique:
        adata.obs_names_make_unique()
    out = pd.DataFrame(index=adata.obs_names)
    out["biocls_cell_type"] = obs[keys["cell_type"]].astype(str).values
    if pseudo_patients:
        from biocls.splits import assign_pseudo_patients

        out["biocls_patient"] = assign_pseudo_patients(adata.n_obs, pseudo_patients, seed=seed)
    else:
        out["biocls_patient"] = obs[keys["patient"]].astype(str).values
    state = keys.get("cell_state")
    if state:
        s = obs[state]
        out["biocls_cell_state"] = s.astype(object).where(s.notna(), None).astype("object")
        out["biocls_cell_state"] = out["biocls_cell_state"].map(
            lambda v: None if v is None else str(v))
    for c in out.columns:
        adata.obs[c] = out[c].values
    if check_x:
        check_values(adata.X, where=f"{path}: X")
    return adata



def check_values(X: np.ndarray | sp.spmatrix, *, where: str) -> None:
    """Refuse NaN, infinite or negative expression values: they silently corrupt every step."""
    data = X.data if sp.issparse(X) else np.asarray(X)
    if data.size == 0:
        return
    if not np.isfinite(data).all():
        n = int((~np.isfinite(data)).sum())
        raise BioclsError(f"{n} NaN or infinite values", where=where,
                          fix="remove or impute them before running biocls")
    if (data < 0).any():
        n = int((data < 0).sum())
        # Scaled data (e.g. pbmc68k_reduced's X) is negative by design; its .raw is usable.
        raise BioclsError(f"{n} negative values; expected counts or log-normalised expression",
                          where=where,
                          fix="store raw counts or log1p-normalised values in X "
                              "(e.g. adata.X = adata.raw.X for scaled data)")
