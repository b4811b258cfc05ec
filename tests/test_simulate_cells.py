"""The simulator is the demo's ground truth: its structure must be what the docs promise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from biocls import BioclsError
from biocls.simulate import simulate_cells, simulate_cells_splatter

SMALL = {"n_patients": 4, "cells_per_patient": 50, "n_genes": 200}
#: what both generators promise alike (tests/test_simulate_splatter.py has the rest of Splatter's)
BOTH = pytest.mark.parametrize("simulate", [simulate_cells, simulate_cells_splatter],
                               ids=["biocls", "splatter"])


def _same(a, b) -> bool:
    return (a.X != b.X).nnz == 0 and a.obs.equals(b.obs) and list(a.var_names) == list(b.var_names)


@BOTH
def test_seed_reproduces_exactly_and_differs_across_seeds(simulate):
    a, b = simulate(**SMALL, seed=3), simulate(**SMALL, seed=3)
    c = simulate(**SMALL, seed=4)
    assert _same(a, b)
    assert (a.X != c.X).nnz > 0
    assert not a.obs["cell_type"].equals(c.obs["cell_type"])


@BOTH
def test_a_patient_does_not_depend_on_how_many_patients_follow(simulate):
    two = simulate(n_patients=2, cells_per_patient=30, n_genes=100, seed=1)
    three = simulate(n_patients=3, cells_per_patient=30, n_genes=100, seed=1)
    first = three[three.obs["patient"] != "P03"]
    assert (two.X != first.X).nnz == 0
    assert list(two.obs["cell_state"]) == list(first.obs["cell_state"])
    assert list(two.obs["cell_type"]) == list(first.obs["cell_type"])


@BOTH
def test_structure_counts_names_and_params(simulate, tmp_path):
    adata = simulate(**SMALL, n_types=3, states=("healthy", "sick"))
    assert adata.shape == (200, 200)
    assert sp.issparse(adata.X) and adata.X.format == "csr"
    assert adata.X.data.min() >= 0 and np.all(adata.X.data == np.round(adata.X.data))
    for key in ("cell_type", "cell_state", "patient"):
        assert isinstance(adata.obs[key].dtype, pd.CategoricalDtype)
    assert list(adata.obs["patient"].cat.categories) == ["P01", "P02", "P03", "P04"]
    assert (adata.obs["patient"].value_counts() == 50).all()
    assert set(adata.obs["cell_state"]) == {"healthy", "sick"}
    assert adata.obs["cell_type"].nunique() == 3
    assert adata.obs_names.is_unique and adata.var_names.is_unique
    names = pd.Index(adata.var_names)
    assert names.str.startswith("MT-").sum() >= 1 and adata.var["mt"].sum() >= 1
    assert names.str.startswith(("RPS", "RPL")).sum() >= 1
    assert "GENE0001" in names
    params = adata.uns["biocls_simulate"]["params"]
    assert params["seed"] == 0 and params["n_types"] == 3
    assert list(params["states"]) == ["healthy", "sick"]
    adata.write_h5ad(tmp_path / "sim.h5ad")  # uns must be serialisable



@BOTH
def test_absent_combinations_only_in_named_patients(simulate):
    adata = simulate(
        n_patients=4,
        cells_per_patient=300,
        n_genes=100,
        absent_combinations=[("T_CD4", "malignant")],
        absent_in_patients=["P01", "P02"],
        seed=2,
    )
    obs = adata.obs
    combo = (obs["cell_type"] == "T_CD4") & (obs["cell_state"] == "malignant")
    named = obs["patient"].isin(["P01", "P02"])
    assert combo[named].sum() == 0
    assert combo[~named].sum() > 0
    # the type and the state still occur in the named patients, just not together
    assert (obs["cell_type"][named] == "T_CD4").sum() > 0
    assert (obs["cell_state"][named] == "malignant").sum() > 0


@BOTH
def test_absent_in_all_patients_by_default(simulate):
    adata = simulate(
        **SMALL, absent_combinations=[("T_CD8", "activated"), ("B", "healthy")], seed=5
    )
    obs = adata.obs
    assert not ((obs["cell_type"] == "T_CD8") & (obs["cell_state"] == "activated")).any()
    assert not ((obs["cell_type"] == "B") & (obs["cell_state"] == "healthy")).any()
    assert (obs["cell_type"] == "T_CD8").sum() > 0 and (obs["cell_type"] == "B").sum() > 0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"absent_combinations": [("not_a_type", "healthy")]}, "absent_combinations"),
        ({"absent_combinations": [("B", "asleep")]}, "absent_combinations"),
        ({"absent_combinations": [("B", "healthy")], "absent_in_patients": ["P99"]},
         "absent_in_patients"),
        ({"states": ("healthy",), "absent_combinations": [("B", "healthy")]},
         "absent_combinations"),
        ({"n_hard_pairs": 4}, "n_hard_pairs"),
    ],
)  # fmt: skip
def test_bad_arguments_raise_one_line_errors(kwargs, field):
    with pytest.raises(BioclsError, match=f"simulate.{field}") as info:
        simulate_cells(**{**SMALL, **kwargs})
    assert "\n" not in str(info.value) and "fix:" in str(info.value)


def _patient_log_means(adata, patient):
    X = adata.X[np.flatnonzero((adata.obs["patient"] == patient).to_numpy())].toarray()
    X = X / X.sum(axis=1, keepdims=True)
    return np.log(X.mean(axis=0) + 1e-6)


def test_batch_effect_differs_between_patients():
    def spread(batch_sd):
        adata = simulate_cells(
            n_patients=2, cells_per_patient=400, n_genes=200, n_types=2, n_hard_pairs=0,
            states=("healthy",), batch_sd=batch_sd, low_quality_fraction=0.0, seed=7,
        )  # fmt: skip
        a, b = _patient_log_means(adata, "P01"), _patient_log_means(adata, "P02")
        expressed = (a > np.log(1e-3)) & (b > np.log(1e-3))
        return np.std((a - b)[expressed])

    assert spread(0.6) > 2.5 * spread(0.0)


def test_hard_pair_is_closer_than_other_types():
    adata = simulate_cells(
        n_patients=2, cells_per_patient=600, n_genes=300, states=("healthy",), seed=0
    )
    profiles = {}
    for t in ("T_CD4", "T_CD8", "B"):
        X = adata.X[np.flatnonzero((adata.obs["cell_type"] == t).to_numpy())].toarray()
        profiles[t] = np.log1p(1e4 * X / X.sum(axis=1, keepdims=True)).mean(axis=0)
    pair = np.abs(profiles["T_CD4"] - profiles["T_CD8"]).sum()
    other = np.abs(profiles["T_CD4"] - profiles["B"]).sum()
    assert pair < 0.7 * other
    assert adata.uns["biocls_simulate"]["hard_pairs"][0] == ["T_CD4", "T_CD8"]


def test_low_quality_cells_have_small_libraries_and_high_mt():
    adata = simulate_cells(n_patients=2, cells_per_patient=400, n_genes=200,
                           low_quality_fraction=0.05, seed=1)  # fmt: skip
    low = adata.obs["low_quality"].to_numpy()
    assert 5 <= low.sum() <= 80
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    mt = np.asarray(adata.X[:, adata.var["mt"].to_numpy()].sum(axis=1)).ravel() / totals
    assert np.median(totals[low]) < 0.3 * np.median(totals[~low])
    assert np.median(mt[low]) > 4 * np.median(mt[~low])


def test_independent_states_are_extra_yes_no_labels_and_leave_the_rest_alone():
    base = simulate_cells(n_patients=3, cells_per_patient=200, n_genes=1000, seed=4)
    extra = simulate_cells(n_patients=3, cells_per_patient=200, n_genes=1000, seed=4,
                           independent_states={"cycling": 0.3})
    assert "cycling" not in base.obs
    assert set(np.unique(extra.obs["cycling"])) == {0.0, 1.0}
    assert 0.1 < extra.obs["cycling"].mean() < 0.5
    # independent of cell_state: cycling cells of several states exist
    assert extra.obs.loc[extra.obs["cycling"] == 1, "cell_state"].nunique() >= 2
    # same types and states; the cycling program raises some genes in cycling cells
    assert (base.obs["cell_state"].to_numpy() == extra.obs["cell_state"].to_numpy()).all()
    cyc = (extra.obs["cycling"] == 1).to_numpy()
    X = extra.X.toarray()
    X = X / X.sum(1, keepdims=True)
    expressed = X.mean(0) > 0.5 / X.shape[1]
    lfc = np.log((X[cyc].mean(0) + 1e-5) / (X[~cyc].mean(0) + 1e-5))[expressed]
    assert (lfc > 0.4).sum() >= 6  # 15 program genes; 1 such gene without the program
    with pytest.raises(BioclsError, match="independent_states"):
        simulate_cells(n_patients=1, cells_per_patient=10, n_genes=100,
                       independent_states={"cycling": 1.5})
