"""Single-cell preprocessing that is fitted on training patients and applied to anyone else.

Everything a model sees at predict time must be computed with statistics from the training
patients only (gene selection, scaling), otherwise cross-validation leaks held-out patients into
the model. :class:`CellPreprocessor` therefore learns those statistics in ``fit`` and stores them
as plain JSON + ``.npz`` next to the model, so ``biocls predict`` repeats exactly the same steps.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from biocls._errors import BioclsError
from biocls._io import atomic_path, write_json

logger = logging.getLogger(__name__)

_FLAVORS = ("cell_ranger", "seurat")
# more missing selected genes than this fraction is an error, not a warning
_MAX_MISSING = 0.5
_CHUNK_ROWS = 8192  # rows densified at a time in transform
_SAMPLE_ROWS = 1000  # rows inspected by is_raw_counts
_FORMAT_VERSION = 1
_JSON_NAME = "cell_preprocessor.json"
_NPZ_NAME = "cell_preprocessor.npz"


def _where(source: str | os.PathLike[str] | None, field: str) -> str:
    return f"{source}: {field}" if source else field


def _check_values(X: Any, source: str | os.PathLike[str] | None = None) -> None:
    """Raise if ``X`` holds NaN or negative values; one pass over the stored values only."""
    values = X.data if sp.issparse(X) else np.asarray(X)
    if values.size == 0:
        return
    low = values.min()  # NaN propagates through min, so one pass catches both problems
    if np.isnan(low):
        raise BioclsError(
            "expression matrix contains NaN values",
            where=_where(source, "X"),
            fix="put raw counts or log-normalised values without NaN in X",
        )
    if low < 0:
        raise BioclsError(
            f"expression matrix contains negative values (min {float(low):.3g}); it looks scaled",
            where=_where(source, "X"),
            fix="put raw counts or log-normalised values (e.g. adata.raw) in X; biocls scales",
        )


def _check_unique(names: pd.Index, source: str | os.PathLike[str] | None) -> None:
    if not names.is_unique:
        dup = names[names.duplicated()][0]
        raise BioclsError(
            f"gene names are not unique (e.g. {dup!r})",
            where=_where(source, "var_names"),
            fix="call adata.var_names_make_unique() before running biocls",
        )


def is_raw_counts(X: Any, *, n_rows: int = _SAMPLE_ROWS) -> bool:
    """Whether ``X`` looks like raw counts: non-negative integers (checked on sampled rows).

    Normalisation and count-based QC only make sense on raw counts; log-normalised or scaled
    matrices fail the integer test. Rows are sampled evenly so the check is cheap on any size.
    """
    n = X.shape[0]
    if n == 0:
        return False
    rows = np.unique(np.linspace(0, n - 1, num=min(n, n_rows)).astype(np.int64))
    sub = X[rows]
    values = sub.data if sp.issparse(sub) else np.asarray(sub).ravel()
    if values.size == 0:
        return True
    if np.issubdtype(values.dtype, np.integer):
        return bool(values.min() >= 0)
    if not np.all(np.isfinite(values)) or values.min() < 0:
        return False
    return bool(np.all(values == np.round(values)))


def qc_metrics(adata: ad.AnnData, *, inplace: bool = True) -> pd.DataFrame | None:
    """Compute per-cell QC metrics with scanpy, flagging mitochondrial and ribosomal genes.

    Genes starting with ``MT-`` (any case) are mitochondrial, ``RPS``/``RPL`` ribosomal.
    Writes ``var["mt"]``, ``var["ribo"]`` and scanpy's ``calculate_qc_metrics`` columns
    (``total_counts``, ``n_genes_by_counts``, ``pct_counts_mt``, ``pct_counts_ribo``, their
    ``log1p_`` versions) to ``obs``/``var``; with ``inplace=False`` returns the ``obs`` table
    instead and leaves ``adata`` untouched.
    """
    names = pd.Index(adata.var_names).str.upper()
    mt = np.asarray(names.str.startswith("MT-"))
    ribo = np.asarray(names.str.startswith(("RPS", "RPL")))
    if inplace:
        adata.var["mt"] = mt
        adata.var["ribo"] = ribo
        sc.pp.calculate_qc_metrics(
            adata, qc_vars=["mt", "ribo"], percent_top=None, log1p=True, inplace=True
        )
        return None
    # Work on a light shell so that views and the caller's var are never modified.
    shell = ad.AnnData(X=adata.X, obs=pd.DataFrame(index=adata.obs_names))
    shell.var_names = adata.var_names
    shell.var["mt"] = mt
    shell.var["ribo"] = ribo
    obs, _ = sc.pp.calculate_qc_metrics(
        shell, qc_vars=["mt", "ribo"], percent_top=None, log1p=True, inplace=False
    )
    return obs


def _outlier_mask(metrics: pd.DataFrame, groups: np.ndarray | None, nmads: float) -> np.ndarray:
    """MAD outliers per group: log counts and log genes on both sides, MT fraction above only.

    Uses the unscaled MAD (as in the single-cell best-practices book); a metric whose MAD is 0 in
    a group is skipped there rather than flagging every cell that differs from the median.
    """
    spec = (
        ("log1p_total_counts", True),
        ("log1p_n_genes_by_counts", True),
        ("pct_counts_mt", False),
    )
    n = len(metrics)
    out = np.zeros(n, dtype=bool)
    if groups is None:
        groups = np.zeros(n, dtype=np.int64)
    for g in pd.unique(groups):
        sel = np.flatnonzero(groups == g)
        for column, two_sided in spec:
            x = metrics[column].to_numpy(dtype=np.float64)[sel]
            med = np.median(x)
            mad = np.median(np.abs(x - med))
            if mad == 0:
                continue
            dev = x - med
            far = np.abs(dev) > nmads * mad if two_sided else dev > nmads * mad
            out[sel[far]] = True
    return out


def _validate_nmads(nmads: float) -> None:
    if not (isinstance(nmads, (int, float)) and np.isfinite(nmads) and nmads > 0):
        raise BioclsError(
            f"nmads must be a positive number, got {nmads!r}",
            where="preprocess.nmads",
            fix="use e.g. 5 (larger keeps more cells)",
        )


def _qc_keep(
    adata: ad.AnnData,
    *,
    nmads: float,
    groupby: str | None,
    source: str | os.PathLike[str] | None,
) -> tuple[np.ndarray, pd.DataFrame, dict[str, int]]:
    """Which cells pass QC, the metrics table, and how many cells each group lost."""
    _validate_nmads(nmads)
    if groupby is not None and groupby not in adata.obs:
        raise BioclsError(
            f"obs has no column {groupby!r} to run QC per patient",
            where=_where(source, f"obs['{groupby}']"),
            fix="set keys.patient to the patient column, or run QC globally (groupby=None)",
        )
    metrics = qc_metrics(adata, inplace=False)
    assert metrics is not None
    groups = None if groupby is None else adata.obs[groupby].astype(str).to_numpy()
    keep = ~_outlier_mask(metrics, groups, nmads)
    removed: dict[str, int] = {}
    labels = groups if groups is not None else np.full(adata.n_obs, "all", dtype=object)
    for g in pd.unique(labels):
        in_g = labels == g
        n_in, n_kept = int(in_g.sum()), int(keep[in_g].sum())
        removed[str(g)] = n_in - n_kept
        if n_kept == 0:
            who = f"patient {g!r}" if groups is not None else "the data set"
            raise BioclsError(
                f"{who} has no cells left after QC (all {n_in} cells are outliers at "
                f"nmads={nmads})",
                where=_where(source, f"obs['{groupby}']={g}" if groupby else "X"),
                fix="loosen preprocess.nmads or remove the patient",
            )
    return keep, metrics, removed


def filter_outliers(
    adata: ad.AnnData,
    *,
    nmads: float = 5.0,
    groupby: str | None = "patient",
    source: str | os.PathLike[str] | None = None,
) -> ad.AnnData:
    """Drop low-quality cells by median absolute deviations, per patient by default.

    Low-quality cells (broken, empty droplets) differ in library size, number of detected genes
    and mitochondrial fraction. Thresholds are adaptive (``nmads`` MADs from the median of each
    ``groupby`` group) because sequencing depth differs between patients. Count-based QC is only
    meaningful on raw counts: on anything else the input is returned unchanged (same object) and
    a log message says so.

    Returns a filtered copy with the :func:`qc_metrics` columns in ``obs``/``var`` and
    ``uns["biocls_qc"]`` = ``{"params": {...}, "n_removed": {group: n}}``.
    ``source`` (the input file) is only used to name it in error messages.
    """
    _check_values(adata.X, source)
    if not is_raw_counts(adata.X):
        logger.info(
            "input is not raw counts (non-integer values in X)%s; skipping count-based QC",
            f" in {source}" if source else "",
        )
        return adata
    keep, metrics, removed = _qc_keep(adata, nmads=nmads, groupby=groupby, source=source)
    out = adata[keep].copy()
    for column in metrics.columns:
        out.obs[column] = metrics[column].to_numpy()[keep]
    names = pd.Index(out.var_names).str.upper()
    out.var["mt"] = np.asarray(names.str.startswith("MT-"))
    out.var["ribo"] = np.asarray(names.str.startswith(("RPS", "RPL")))
    out.uns["biocls_qc"] = {
        "params": {"nmads": float(nmads), "groupby": groupby or "none"},
        "n_removed": removed,
    }
    logger.info("QC removed %d of %d cells", adata.n_obs - out.n_obs, adata.n_obs)
    return out


def _row_totals(X: Any, in_fit: np.ndarray | None) -> np.ndarray:
    """Library size per cell over the fitted genes (``in_fit``: mask of input columns, or None)."""
    if in_fit is None:
        totals = X.sum(axis=1)
    else:
        totals = X @ in_fit.astype(np.float64)
    return np.asarray(totals, dtype=np.float64).ravel()


def _size_factors(totals: np.ndarray, target_sum: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        scale = np.where(totals > 0, target_sum / totals, 0.0)
    return scale.astype(np.float32)


def _column_mean_var(X: Any, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased variance of the chosen columns, in float64, a block of rows at a time."""
    n = X.shape[0]
    total = np.zeros(len(cols), dtype=np.float64)
    total_sq = np.zeros(len(cols), dtype=np.float64)
    for start in range(0, n, _CHUNK_ROWS):
        block = X[start : start + _CHUNK_ROWS][:, cols]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        total += block.sum(axis=0, dtype=np.float64)
        total_sq += np.square(block, dtype=np.float64).sum(axis=0)
    mean = total / n
    var = np.maximum(total_sq / n - mean**2, 0.0) * n / max(n - 1, 1)
    return mean, var


class CellPreprocessor:
    """Normalise, log, select highly variable genes and scale: fitted on training patients.

    ``fit`` sees only the training patients' cells; ``transform`` applies the learned gene list,
    means and standard deviations to any cells (held-out patients, new data at predict time).
    Normalisation to ``target_sum`` and ``log1p`` run only when ``X`` holds raw counts; otherwise
    ``X`` is taken as already log-normalised.

    Learned attributes: ``raw_counts_`` (bool), ``genes_`` (input genes, in order), ``hvg_``
    (selected genes, in input order), ``mean_``/``std_`` (float32, per selected gene),
    ``n_cells_fit_`` and ``n_qc_removed_`` (training cells used / dropped by QC).
    """

    def __init__(
        self,
        *,
        n_top_genes: int = 2000,
        nmads: float | None = 5.0,
        target_sum: float = 1e4,
        max_value: float | None = 10.0,
        flavor: str = "seurat",
        n_pcs: int | None = None,
        seed: int = 0,
    ) -> None:
        self.n_top_genes = n_top_genes
        self.nmads = nmads
        self.target_sum = target_sum
        self.max_value = max_value
        self.flavor = flavor
        self.n_pcs = n_pcs
        self.seed = seed

    def get_params(self) -> dict[str, Any]:
        return {
            "n_top_genes": self.n_top_genes,
            "nmads": self.nmads,
            "target_sum": self.target_sum,
            "max_value": self.max_value,
            "flavor": self.flavor,
            "n_pcs": self.n_pcs,
            "seed": self.seed,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"CellPreprocessor({args})"

    def _validate_params(self) -> None:
        def bad(field: str, what: str, fix: str) -> BioclsError:
            return BioclsError(what, where=f"preprocess.{field}", fix=fix)

        if not isinstance(self.n_top_genes, (int, np.integer)) or self.n_top_genes < 1:
            raise bad("n_top_genes", f"must be a positive integer, got {self.n_top_genes!r}",
                      "use e.g. 2000")  # fmt: skip
        if self.nmads is not None:
            _validate_nmads(self.nmads)
        if not (np.isfinite(self.target_sum) and self.target_sum > 0):
            raise bad("target_sum", f"must be > 0, got {self.target_sum!r}", "use e.g. 10000")
        if self.max_value is not None and not self.max_value > 0:
            raise bad("max_value", f"must be > 0 or null, got {self.max_value!r}",
                      "use e.g. 10, or null to disable clipping")  # fmt: skip
        if self.flavor not in _FLAVORS:
            raise bad("flavor", f"unsupported HVG flavor {self.flavor!r}",
                      f"use one of {list(_FLAVORS)}")  # fmt: skip
        if self.n_pcs is not None and (not isinstance(self.n_pcs, (int, np.integer))
                                       or self.n_pcs < 2):
            raise bad("n_pcs", f"must be an integer >= 2 or null, got {self.n_pcs!r}",
                      "use e.g. 50, or null for no projection")  # fmt: skip

    def fit(
        self,
        adata: ad.AnnData,
        y: Any = None,
        *,
        source: str | os.PathLike[str] | None = None,
    ) -> CellPreprocessor:
        """Learn genes, HVGs and scaling from ``adata`` (the training patients' cells only).

        With raw counts and ``nmads`` set, QC outliers (per ``obs["patient"]`` when present) are
        left out of the statistics; ``transform`` never drops cells.
        """
        self._validate_params()
        X = adata.X
        _check_values(X, source)
        _check_unique(pd.Index(adata.var_names), source)
        if adata.n_obs < 2:
            raise BioclsError(
                f"need at least 2 training cells to fit preprocessing, got {adata.n_obs}",
                where=_where(source, "obs"),
                fix="check the patient split and the QC settings",
            )
        raw = is_raw_counts(X)
        rows: np.ndarray | None = None
        n_removed = 0
        if raw and self.nmads is not None:
            groupby = "patient" if "patient" in adata.obs else None
            keep, _, removed = _qc_keep(adata, nmads=self.nmads, groupby=groupby, source=source)
            n_removed = int(sum(removed.values()))
            rows = np.flatnonzero(keep) if n_removed else None
        elif not raw:
            logger.info(
                "input is already normalised (X is not integer counts); "
                "skipping normalize_total/log1p and count-based QC"
            )

        Xt = X if rows is None else X[rows]
        del X  # on a view, adata.X was a fresh copy: free it before making more
        if sp.issparse(Xt):
            Xt = sp.csr_matrix(Xt, dtype=np.float32, copy=raw and rows is None)
        else:
            Xt = np.array(Xt, dtype=np.float32, copy=raw and rows is None)
        if raw:
            scale = _size_factors(_row_totals(Xt, None), self.target_sum)
            if sp.issparse(Xt):
                Xt.data *= np.repeat(scale, np.diff(Xt.indptr))
                np.log1p(Xt.data, out=Xt.data)
            else:
                Xt *= scale[:, None]
                np.log1p(Xt, out=Xt)

        genes = pd.Index(adata.var_names).astype(str)
        hvg_mask = self._select_hvg(Xt, genes)
        mean, var = _column_mean_var(Xt, np.flatnonzero(hvg_mask))
        n = Xt.shape[0]
        std = np.sqrt(var)
        std[std < 1e-8] = 1.0

        self.raw_counts_ = bool(raw)
        self.genes_ = list(genes)
        self.hvg_ = list(genes[hvg_mask])
        self.mean_ = mean.astype(np.float32)
        self.std_ = std.astype(np.float32)
        self.n_cells_fit_ = int(n)
        self.n_qc_removed_ = n_removed
        self.components_ = self.center_ = None
        if self.n_pcs is not None:
            self._fit_projection(adata if rows is None else adata[rows], source)
        logger.info(
            "preprocessing fitted on %d cells (%d removed by QC): %d of %d genes selected%s",
            n, n_removed, len(self.hvg_), len(self.genes_),
            "" if raw else " (input already normalised)",
        )  # fmt: skip
        return self

    def _fit_projection(self, adata: ad.AnnData, source: Any) -> None:
        """Principal components of the scaled genes of the fitting cells (no labels involved),
        so that a model reads ``n_pcs`` features: few enough that it cannot memorise random
        labels, which a certificate needs (see :mod:`biocls.certify`)."""
        from sklearn.decomposition import PCA

        Z = self.transform(adata, source=source)
        k = int(min(self.n_pcs, *Z.shape))
        pca = PCA(n_components=k, svd_solver="randomized" if k < min(Z.shape) // 2 else "full",
                  random_state=self.seed).fit(Z)
        self.center_ = pca.mean_.astype(np.float32)
        self.components_ = pca.components_.astype(np.float32)
        logger.info("projected on %d principal components (%.0f%% of the variance)", k,
                    100 * float(pca.explained_variance_ratio_.sum()))

    def _select_hvg(self, Xlog: Any, genes: pd.Index) -> np.ndarray:
        if self.n_top_genes >= len(genes):
            return np.ones(len(genes), dtype=bool)
        shell = ad.AnnData(X=Xlog)
        shell.var_names = genes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = sc.pp.highly_variable_genes(
                shell, flavor=self.flavor, n_top_genes=int(self.n_top_genes), inplace=False
            )
        return np.asarray(table["highly_variable"], dtype=bool)

    def _check_fitted(self) -> None:
        if not hasattr(self, "hvg_"):
            raise BioclsError(
                "CellPreprocessor is not fitted",
                where="preprocess",
                fix="call fit() on the training cells or CellPreprocessor.load() first",
            )

    def transform(
        self, adata: ad.AnnData, *, source: str | os.PathLike[str] | None = None
    ) -> np.ndarray:
        """Apply the fitted steps to any cells: ``[n_cells, n_hvg]`` float32 (``[n_cells,
        n_pcs]`` with a projection), no cell dropped.

        Genes are matched by name to ``genes_``. Selected genes missing from ``adata`` are set to
        0 in the output (the training mean, so they carry no signal) with a warning giving the
        count. Only the selected columns are densified, ``_CHUNK_ROWS`` rows at a time.
        """
        self._check_fitted()
        X = adata.X
        _check_values(X, source)
        names = pd.Index(adata.var_names).astype(str)
        _check_unique(names, source)
        raw = is_raw_counts(X) if adata.n_obs else self.raw_counts_
        if raw != self.raw_counts_:
            fitted = "raw counts" if self.raw_counts_ else "normalised values"
            given = "raw counts" if raw else "normalised values"
            raise BioclsError(
                f"preprocessing was fitted on {fitted} but X holds {given}",
                where=_where(source, "X"),
                fix=f"give {fitted} in X, as in the training data",
            )

        pos_hvg = names.get_indexer(pd.Index(self.hvg_))
        present = np.flatnonzero(pos_hvg >= 0)
        n_missing = len(self.hvg_) - len(present)
        if n_missing > _MAX_MISSING * len(self.hvg_):
            # predictions from mostly zero-filled genes would all look alike: refuse them
            expected = ", ".join(map(str, list(self.hvg_)[:3]))
            given = ", ".join(map(str, list(names)[:3]))
            raise BioclsError(
                f"{n_missing} of {len(self.hvg_)} selected genes are missing (expected names "
                f"like {expected}; the input has {given})",
                where=_where(source, "var_names"),
                fix="use the gene identifiers of the training data (symbols vs Ensembl IDs?)",
            )
        if n_missing:
            n_missing_all = int((names.get_indexer(pd.Index(self.genes_)) < 0).sum())
            msg = (
                f"{n_missing} of {len(self.hvg_)} selected genes are missing from the input"
                f"{f' {source}' if source else ''} and were zero-filled "
                f"({n_missing_all} of {len(self.genes_)} fitted genes missing in total)"
            )
            # a warning only: `biocls` prints it as one log line (a second logger.warning here
            # printed it twice on the command line)
            warnings.warn(msg, UserWarning, stacklevel=2)

        if sp.issparse(X) and X.format != "csr":
            X = X.tocsr()
        scale = None
        if raw:
            in_fit = names.isin(pd.Index(self.genes_))
            scale = _size_factors(_row_totals(X, None if in_fit.all() else in_fit),
                                  self.target_sum)  # fmt: skip
        cols = pos_hvg[present]
        mean, std = self.mean_[present], self.std_[present]
        out = np.zeros((adata.n_obs, len(self.hvg_)), dtype=np.float32)
        for start in range(0, adata.n_obs, _CHUNK_ROWS):
            stop = min(adata.n_obs, start + _CHUNK_ROWS)
            block = X[start:stop][:, cols]
            block = block.toarray() if sp.issparse(block) else np.asarray(block)
            block = block.astype(np.float32, copy=False)
            if scale is not None:
                block *= scale[start:stop, None]
                np.log1p(block, out=block)
            block -= mean
            block /= std
            if self.max_value is not None:
                np.clip(block, -self.max_value, self.max_value, out=block)
            out[start:stop, present] = block
        if self.components_ is not None:
            return ((out - self.center_) @ self.components_.T).astype(np.float32)
        return out

    def fit_transform(
        self,
        adata: ad.AnnData,
        y: Any = None,
        *,
        source: str | os.PathLike[str] | None = None,
    ) -> np.ndarray:
        """``fit`` then ``transform`` on the same cells (QC outliers included in the output)."""
        return self.fit(adata, source=source).transform(adata, source=source)

    def save(self, path_dir: str | os.PathLike[str]) -> None:
        """Write ``cell_preprocessor.json`` (params, genes) and ``.npz`` (mean, std) to a folder."""
        self._check_fitted()
        folder = Path(path_dir)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / _NPZ_NAME) as tmp:
            with open(tmp, "wb") as fh:
                extra = ({} if self.components_ is None else
                         {"components": self.components_, "center": self.center_})
                np.savez(fh, mean=self.mean_, std=self.std_, **extra)
        write_json(
            folder / _JSON_NAME,
            {
                "format_version": _FORMAT_VERSION,
                "params": self.get_params(),
                "raw_counts": self.raw_counts_,
                "genes": self.genes_,
                "hvg": self.hvg_,
                "n_cells_fit": self.n_cells_fit_,
                "n_qc_removed": self.n_qc_removed_,
            },
        )

    @classmethod
    def load(cls, path_dir: str | os.PathLike[str]) -> CellPreprocessor:
        """Read a preprocessor written by :meth:`save` (no pickle involved)."""
        folder = Path(path_dir)
        json_path, npz_path = folder / _JSON_NAME, folder / _NPZ_NAME
        for path in (json_path, npz_path):
            if not path.is_file():
                raise BioclsError(
                    "fitted preprocessing not found",
                    where=str(path),
                    fix="point to a model folder written by biocls, or re-run training",
                )
        try:
            meta = json.loads(json_path.read_text(encoding="utf-8"))
            with np.load(npz_path, allow_pickle=False) as arrays:
                mean, std = arrays["mean"], arrays["std"]
                comp = arrays["components"] if "components" in arrays else None
                center = arrays["center"] if "center" in arrays else None
            version = meta["format_version"]
            self = cls(**meta["params"])
            self.raw_counts_ = bool(meta["raw_counts"])
            self.genes_ = [str(g) for g in meta["genes"]]
            self.hvg_ = [str(g) for g in meta["hvg"]]
            self.n_cells_fit_ = int(meta["n_cells_fit"])
            self.n_qc_removed_ = int(meta["n_qc_removed"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BioclsError(
                f"fitted preprocessing is unreadable ({exc})",
                where=str(folder),
                fix="re-run training to write it again",
            ) from exc
        if version != _FORMAT_VERSION or len(mean) != len(self.hvg_) or len(std) != len(mean):
            raise BioclsError(
                "fitted preprocessing is inconsistent (format version or array lengths)",
                where=str(folder),
                fix="re-run training with this biocls version",
            )
        self.mean_ = mean.astype(np.float32)
        self.std_ = std.astype(np.float32)
        self.components_, self.center_ = comp, center
        return self
