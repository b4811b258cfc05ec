"""Preprocessing must learn only from training patients and repeat itself at predict time."""

from __future__ import annotations

import json
import logging

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from biocls import BioclsError
from biocls.preprocess import CellPreprocessor, filter_outliers, is_raw_counts, qc_metrics
from biocls.simulate import simulate_cells


@pytest.fixture(scope="module")
def counts() -> ad.AnnData:
    return simulate_cells(n_patients=4, cells_per_patient=60, n_genes=200, seed=11)


def _patients(adata: ad.AnnData, ids: list[str]) -> ad.AnnData:
    return adata[adata.obs["patient"].isin(ids).to_numpy()].copy()


def _lognorm(adata: ad.AnnData) -> ad.AnnData:
    out = adata.copy()
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    return out


def test_is_raw_counts(counts):
    assert is_raw_counts(counts.X)
    assert is_raw_counts(counts.X.toarray())
    assert is_raw_counts(counts.X.astype(np.int32))
    assert not is_raw_counts(_lognorm(counts).X)
    scaled = _lognorm(counts)
    scaled.X = scaled.X.toarray()
    sc.pp.scale(scaled, max_value=10)  # like pbmc68k_reduced's X: dense, centred, negative
    assert not is_raw_counts(scaled.X)


@pytest.mark.parametrize("bad", [np.nan, -1.0])
@pytest.mark.parametrize("sparse", [True, False])
def test_nan_or_negative_raise_naming_file_and_field(counts, bad, sparse):
    adata = counts.copy()
    adata.X = adata.X.astype(np.float32)
    adata.X.data[5] = bad
    if not sparse:
        adata.X = adata.X.toarray()
    with pytest.raises(BioclsError, match=r"data/in\.h5ad: X: .* — fix: "):
        CellPreprocessor().fit(adata, source="data/in.h5ad")
    with pytest.raises(BioclsError, match=r"X"):
        filter_outliers(adata)


def test_fit_uses_only_training_patients(counts):
    """Changing a held-out patient's cells changes nothing fitted on the others."""
    train = _patients(counts, ["P01", "P02"])
    other = simulate_cells(n_patients=4, cells_per_patient=60, n_genes=200, seed=99)
    pre = CellPreprocessor(n_top_genes=50).fit(train)
    pre_again = CellPreprocessor(n_top_genes=50).fit(_patients(counts, ["P01", "P02"]))
    assert pre.hvg_ == pre_again.hvg_
    # the held-out patient transformed alone equals its rows in a joint transform
    held = _patients(counts, ["P03"])
    joint = pre.transform(counts)
    rows = np.flatnonzero((counts.obs["patient"] == "P03").to_numpy())
    np.testing.assert_array_equal(pre.transform(held), joint[rows])
    # swapping P03 for different cells leaves the training rows' output untouched
    swapped = ad.concat([train, _patients(other, ["P03"])], merge="same")
    fit_rows = np.flatnonzero(swapped.obs["patient"].isin(["P01", "P02"]).to_numpy())
    np.testing.assert_array_equal(pre.transform(swapped)[fit_rows], pre.transform(train))


def test_fit_ignores_held_out_when_given_full_data_subset(counts):
    """Fitting on a view of the training rows equals fitting on a copy; P03 is never read."""
    mask = counts.obs["patient"].isin(["P01", "P02"]).to_numpy()
    a = CellPreprocessor(n_top_genes=80).fit(counts[mask])
    changed = counts.copy()
    dense = changed.X.toarray()
    dense[np.flatnonzero(~mask)[:10], :] = 1000  # corrupt held-out cells only
    changed.X = sp.csr_matrix(dense)
    b = CellPreprocessor(n_top_genes=80).fit(changed[mask])
    assert a.hvg_ == b.hvg_
    np.testing.assert_array_equal(a.mean_, b.mean_)
    np.testing.assert_array_equal(a.std_, b.std_)


def test_transform_shape_scaling_and_clipping(counts):
    pre = CellPreprocessor(n_top_genes=60, nmads=None, max_value=3.0)
    Z = pre.fit_transform(counts)
    assert Z.shape == (counts.n_obs, 60) and Z.dtype == np.float32
    assert len(pre.hvg_) == 60 and set(pre.hvg_) <= set(pre.genes_)
    assert pre.raw_counts_ is True
    assert np.abs(Z).max() <= 3.0
    unclipped = CellPreprocessor(n_top_genes=60, nmads=None, max_value=None).fit_transform(counts)
    np.testing.assert_allclose(unclipped.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(unclipped.std(axis=0, ddof=1), 1, atol=1e-3)


def test_normalised_input_skips_normalisation_and_matches_raw_path(counts, caplog):
    raw = CellPreprocessor(n_top_genes=70, nmads=None).fit(counts)
    with caplog.at_level(logging.INFO, logger="biocls.preprocess._cells"):
        logged = CellPreprocessor(n_top_genes=70, nmads=None).fit(_lognorm(counts))
    assert "already normalised" in caplog.text
    assert logged.raw_counts_ is False
    assert logged.hvg_ == raw.hvg_
    np.testing.assert_allclose(logged.mean_, raw.mean_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        logged.transform(_lognorm(counts)), raw.transform(counts), rtol=1e-3, atol=1e-3
    )
    with pytest.raises(BioclsError, match="fitted on raw counts"):
        raw.transform(_lognorm(counts))


def test_genes_aligned_by_name_and_missing_zero_filled_with_warning(counts):
    pre = CellPreprocessor(n_top_genes=40, nmads=None).fit(counts)
    full = pre.transform(counts)
    shuffled = counts[:, np.random.default_rng(0).permutation(counts.n_vars)].copy()
    np.testing.assert_allclose(pre.transform(shuffled), full, rtol=1e-5, atol=1e-5)

    dropped = pre.hvg_[:5]
    keep = ~counts.var_names.isin(dropped)
    with pytest.warns(UserWarning, match=r"^5 of 40 selected genes are missing"):
        Z = pre.transform(counts[:, keep].copy())
    assert Z.shape == full.shape
    assert np.all(Z[:, :5] == 0)
    assert np.any(Z[:, 5:] != 0)


def test_mostly_foreign_gene_names_are_an_error_not_a_constant_prediction(counts):
    """Ensembl IDs against a model trained on symbols would zero-fill every gene."""
    pre = CellPreprocessor(n_top_genes=40, nmads=None).fit(counts)
    renamed = counts.copy()
    renamed.var_names = [f"ENSG{i:011d}" for i in range(renamed.n_vars)]
    with pytest.raises(BioclsError, match=r"var_names: 40 of 40 selected genes are missing"):
        pre.transform(renamed, source="new.h5ad")


def test_projection_is_fitted_on_the_fit_cells_and_survives_a_round_trip(counts, tmp_path):
    """n_pcs: the output is the scaled genes' top components, learnt from the fit cells only
    (uncorrelated there, variance decreasing), and the saved folder gives the same numbers."""
    fit = _patients(counts, ["P01", "P02", "P03"])
    pre = CellPreprocessor(n_top_genes=80, n_pcs=12, nmads=None).fit(fit)
    genes = CellPreprocessor(n_top_genes=80, nmads=None).fit(fit)
    Z, G = pre.transform(fit), genes.transform(fit)
    assert Z.shape == (fit.n_obs, 12) and pre.hvg_ == genes.hvg_
    cov = np.cov(Z, rowvar=False)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-3 * cov.max()
    assert (np.diff(np.diag(cov)) <= 1e-6).all()
    # the projection is a linear map of the scaled genes, centred on the fit cells
    np.testing.assert_allclose(Z, (G - G.mean(0)) @ pre.components_.T, atol=1e-3)
    pre.save(tmp_path / "pcs")
    back = CellPreprocessor.load(tmp_path / "pcs")
    new = _patients(counts, ["P04"])
    np.testing.assert_array_equal(back.transform(new), pre.transform(new))
    # another set of fit cells gives other components: nothing is shared across fits
    other = CellPreprocessor(n_top_genes=80, n_pcs=12, nmads=None).fit(
        _patients(counts, ["P02", "P03", "P04"]))
    assert not np.allclose(other.center_[: len(pre.center_)], pre.center_)


def test_save_load_round_trip_is_identical(counts, tmp_path):
    pre = CellPreprocessor(n_top_genes=50, flavor="cell_ranger").fit(counts)
    pre.save(tmp_path / "model")
    names = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert names == ["cell_preprocessor.json", "cell_preprocessor.npz"]
    meta = json.loads((tmp_path / "model" / "cell_preprocessor.json").read_text())
    assert meta["params"]["flavor"] == "cell_ranger" and len(meta["hvg"]) == 50
    loaded = CellPreprocessor.load(tmp_path / "model")
    assert loaded.get_params() == pre.get_params()
    assert loaded.hvg_ == pre.hvg_ and loaded.genes_ == pre.genes_
    np.testing.assert_array_equal(loaded.transform(counts), pre.transform(counts))
    with pytest.raises(BioclsError, match="not found"):
        CellPreprocessor.load(tmp_path / "nowhere")


def test_qc_removes_low_quality_cells_per_patient():
    adata = simulate_cells(n_patients=3, cells_per_patient=200, n_genes=200,
                           low_quality_fraction=0.05, seed=4)  # fmt: skip
    out = filter_outliers(adata, nmads=5.0, source="sim.h5ad")
    low = adata.obs["low_quality"].to_numpy()
    removed = ~adata.obs_names.isin(out.obs_names)
    assert removed[low].mean() > 0.9  # low-quality cells are found...
    assert removed[~low].mean() < 0.05  # ...and few good ones are lost
    assert "pct_counts_mt" in out.obs and out.var["mt"].sum() >= 1
    assert sum(out.uns["biocls_qc"]["n_removed"].values()) == removed.sum()
    assert "pct_counts_mt" not in adata.obs  # input untouched


def test_qc_emptying_a_patient_raises_naming_patient_and_file(counts):
    adata = _patients(counts, ["P01", "P02"])
    # two cells: both sit exactly 1 MAD from their median, so nmads < 1 removes both
    tiny = np.flatnonzero((adata.obs["patient"] == "P02").to_numpy())[:2]
    adata = adata[np.concatenate([np.flatnonzero(adata.obs["patient"] == "P01"), tiny])].copy()
    assert filter_outliers(adata, nmads=1.0).n_obs > 2
    with pytest.raises(BioclsError, match=r"in\.h5ad.*patient 'P02'.*preprocess\.nmads"):
        filter_outliers(adata, nmads=0.9, source="in.h5ad")


def test_qc_skipped_on_normalised_input(counts, caplog):
    logged = _lognorm(counts)
    with caplog.at_level(logging.INFO, logger="biocls.preprocess._cells"):
        assert filter_outliers(logged) is logged
    assert "skipping count-based QC" in caplog.text


def test_qc_metrics_in_place(counts):
    adata = counts.copy()
    qc_metrics(adata)
    assert {"total_counts", "n_genes_by_counts", "pct_counts_mt", "pct_counts_ribo"} <= set(
        adata.obs
    )
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    np.testing.assert_allclose(adata.obs["total_counts"], totals, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"flavor": "seurat_v9"}, "flavor"), ({"nmads": 0}, "nmads"), ({"n_top_genes": 0},
     "n_top_genes"), ({"max_value": -1.0}, "max_value"), ({"n_pcs": 1}, "n_pcs")],
)  # fmt: skip
def test_bad_params_raise(counts, kwargs, field):
    with pytest.raises(BioclsError, match=f"preprocess.{field}"):
        CellPreprocessor(**kwargs).fit(counts)


def test_unfitted_and_duplicate_genes_raise(counts):
    with pytest.raises(BioclsError, match="not fitted"):
        CellPreprocessor().transform(counts)
    dup = counts.copy()
    dup.var_names = ["GENE0001"] * 2 + list(dup.var_names[2:])
    with pytest.raises(BioclsError, match="var_names_make_unique"):
        CellPreprocessor().fit(dup)


def test_dense_input_matches_sparse(counts):
    dense = counts.copy()
    dense.X = sp.csr_matrix(dense.X).toarray()
    a = CellPreprocessor(n_top_genes=30).fit(counts)
    b = CellPreprocessor(n_top_genes=30).fit(dense)
    assert a.hvg_ == b.hvg_
    np.testing.assert_allclose(a.transform(counts), b.transform(dense), rtol=1e-4, atol=1e-4)
