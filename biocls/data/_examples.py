"""Real data sets that ship inside installed packages, so examples run offline."""

from __future__ import annotations

import anndata as ad

from biocls._errors import BioclsError

__all__ = ["example_dataset"]

EXAMPLES = ("pbmc68k_reduced",)


def example_dataset(name: str) -> ad.AnnData:
    """Return a packaged data set ready for biocls.

    ``pbmc68k_reduced`` (scanpy): 700 PBMCs of one donor. Its ``X`` is scaled (negative values),
    so ``X`` is replaced by the log-normalised ``.raw`` matrix on the same genes; biocls then
    detects that the values are not raw counts and skips normalisation, saying so.
    """
    if name not in EXAMPLES:
        raise BioclsError(f"unknown example '{name}'", where="example",
                          fix=f"use one of {EXAMPLES}")
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    raw = adata.raw.to_adata()
    out = ad.AnnData(X=raw.X.copy(), obs=adata.obs.copy(), var=raw.var[[]].copy())
    out.uns["biocls_example"] = {"name": name, "X": "log-normalised values from .raw"}
    return out
