"""The Splatter-style generator: the same task structure as simulate_cells, other assumptions.

Each test checks a piece of structure the docstring promises (donors, held-out combinations, the
shared state programme, look-alike pairs, donor effects, dropout), so a model that is benchmarked
on this generator is benchmarked on what the docs say it is.
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest

from biocls import BioclsError
from biocls.cli import build_parser, main
from biocls.config import load_config
from biocls.simulate import CELL_MODELS, simulate_cells, simulate_cells_splatter

SMALL = {"n_patients": 4, "cells_per_patient": 50, "n_genes": 200}
CELLS = {"task": "cells", "keys": {"cell_type": "cell_type", "patient": "patient"}}


def _same(a: ad.AnnData, b: ad.AnnData) -> bool:
    return (a.X != b.X).nnz == 0 and a.obs.equals(b.obs) and list(a.var_names) == list(b.var_names)


def _log_profile(adata: ad.AnnData, mask: np.ndarray) -> np.ndarray:
    """Mean log1p of library-normalised expression over the cells in ``mask``, per gene."""
    X = adata.X[np.flatnonzero(mask)].toarray()
    return np.log1p(1e4 * X / X.sum(axis=1, keepdims=True)).mean(axis=0)


def test_names_the_model_and_shares_type_names_with_simulate_cells(tmp_path) -> None:
    """The structure both generators share is tested in tests/test_simulate_cells.py."""
    adata = simulate_cells_splatter(**SMALL, n_types=3, states=("healthy", "sick"))
    # the same type names as simulate_cells, so a config ports between the two generators
    other = simulate_cells(**SMALL, n_types=3)
    assert list(adata.obs["cell_type"].cat.categories) == \
        list(other.obs["cell_type"].cat.categories)
    assert adata.uns["biocls_simulate"]["model"] == "splatter"
    adata.write_h5ad(tmp_path / "sim.h5ad")
    back = ad.read_h5ad(tmp_path / "sim.h5ad")
    assert back.uns["biocls_simulate"]["model"] == "splatter"



def test_mt_genes_carry_a_normal_share_and_are_outside_every_programme() -> None:
    adata = simulate_cells_splatter(n_patients=2, cells_per_patient=200, n_genes=500, seed=2)
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    mt = np.asarray(adata.X[:, adata.var["mt"].to_numpy()].sum(axis=1)).ravel() / totals
    assert 0.01 < np.median(mt) < 0.1
    info = adata.uns["biocls_simulate"]
    touched = {g for genes in info["de_genes"].values() for g in genes}
    touched |= {g for genes in info["state_genes"].values() for g in genes}
    assert not {g for g in touched if g.startswith(("MT-", "RPS", "RPL"))}


def test_shared_state_programme_is_raised_in_every_type() -> None:
    """A state's shared genes go up in each type, the rest of the genes do not: the part that a
    model can transfer to a (type, state) combination it never saw."""
    adata = simulate_cells_splatter(
        n_patients=3, cells_per_patient=400, n_genes=500, de_down_prob=0.0,
        states=("healthy", "activated", "damaged"), seed=0,
    )  # fmt: skip
    info, obs = adata.uns["biocls_simulate"], adata.obs
    assert set(info["state_genes"]) == {"activated", "damaged"}  # none for the baseline
    for state in ("activated", "damaged"):
        shared = adata.var_names.isin(info["state_genes"][state])
        assert shared.sum() == info["params"]["state_genes"] == 20
        specific = info["state_specific_genes"][state]
        assert set(specific) == set(obs["cell_type"].cat.categories)
        assert all(not shared[adata.var_names.isin(g)].any() for g in specific.values())
        for t in obs["cell_type"].cat.categories:
            is_t = (obs["cell_type"] == t).to_numpy()
            diff = (_log_profile(adata, is_t & (obs["cell_state"] == state).to_numpy())
                    - _log_profile(adata, is_t & (obs["cell_state"] == "healthy").to_numpy()))
            assert diff[shared].mean() > 0.15, (state, t)
            assert abs(diff[~shared].mean()) < 0.1, (state, t)


def test_hard_pairs_differ_in_few_genes() -> None:
    adata = simulate_cells_splatter(n_patients=2, cells_per_patient=600, n_genes=500,
                                    states=("healthy",), donor_sd=0.0, hard_pair_genes=6,
                                    seed=1)  # fmt: skip
    info, obs = adata.uns["biocls_simulate"], adata.obs
    assert [list(p) for p in info["hard_pairs"]] == [["T_CD4", "T_CD8"],
                                                      ["monocyte_classical",
                                                       "monocyte_nonclassical"]]
    # truth: outside their own few genes, the pair has the same DE genes
    de = {t: set(g) for t, g in info["de_genes"].items()}
    own = set(info["hard_pair_genes"]["T_CD4"]) | set(info["hard_pair_genes"]["T_CD8"])
    assert len(info["hard_pair_genes"]["T_CD4"]) == 6
    assert (de["T_CD4"] ^ de["T_CD8"]) <= own
    assert len(de["T_CD4"] ^ de["B"]) > 3 * len(own)
    # and in the counts: far fewer genes differ clearly within the pair than across lineages
    prof = {t: _log_profile(adata, (obs["cell_type"] == t).to_numpy())
            for t in ("T_CD4", "T_CD8", "B")}
    pair = (np.abs(prof["T_CD4"] - prof["T_CD8"]) > 0.5).sum()
    other = (np.abs(prof["T_CD4"] - prof["B"]) > 0.5).sum()
    assert pair < 0.5 * other


def _donor_spread(donor_sd: float) -> float:
    """SD over expressed genes of the log ratio of one type's mean profile in two donors."""
    adata = simulate_cells_splatter(n_patients=2, cells_per_patient=400, n_genes=300, n_types=2,
                                    n_hard_pairs=0, states=("healthy",), donor_sd=donor_sd,
                                    dropout_mid=None, seed=7)  # fmt: skip
    logs = []
    for p in ("P01", "P02"):
        mask = ((adata.obs["patient"] == p) & (adata.obs["cell_type"] == "T_CD4")).to_numpy()
        X = adata.X[np.flatnonzero(mask)].toarray()
        logs.append(np.log((X / X.sum(axis=1, keepdims=True)).mean(axis=0) + 1e-6))
    expressed = (logs[0] > np.log(1e-3)) & (logs[1] > np.log(1e-3))
    return float(np.std((logs[0] - logs[1])[expressed]))


def test_donor_effects_are_gene_wise_and_vanish_at_zero_sd() -> None:
    assert _donor_spread(0.25) > 3 * _donor_spread(0.0)


def test_donors_differ_in_state_prevalence_and_can_miss_types() -> None:
    adata = simulate_cells_splatter(n_patients=8, cells_per_patient=200, n_genes=100,
                                    state_concentration=2.0, missing_type_prob=0.3, seed=3)
    obs = adata.obs
    healthy = (obs["cell_state"] == "healthy").groupby(obs["patient"], observed=True).mean()
    assert healthy.max() - healthy.min() > 0.2
    missing = adata.uns["biocls_simulate"]["missing_types"]
    assert sum(len(v) for v in missing.values()) > 0
    for pid, lacks in missing.items():
        present = set(obs.loc[obs["patient"] == pid, "cell_type"])
        assert present and not present & set(lacks)
    none = simulate_cells_splatter(**SMALL, seed=3).uns["biocls_simulate"]["missing_types"]
    assert all(len(v) == 0 for v in none.values())


def test_dropout_only_zeroes_counts_and_mostly_in_low_mean_genes() -> None:
    kw = {"n_patients": 2, "cells_per_patient": 200, "n_genes": 300, "seed": 1}
    with_drop = simulate_cells_splatter(**kw).X.toarray()
    without = simulate_cells_splatter(**kw, dropout_mid=None).X.toarray()
    assert np.all((with_drop == without) | (with_drop == 0))
    assert (with_drop == 0).mean() > (without == 0).mean() + 0.05
    lost = ((with_drop == 0) & (without > 0)).sum(axis=0) / np.maximum((without > 0).sum(0), 1)
    order = np.argsort(without.mean(axis=0))
    assert lost[order[:75]].mean() > 3 * lost[order[-30:]].mean()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"absent_combinations": [("not_a_type", "healthy")]}, "absent_combinations"),
        ({"absent_combinations": [("B", "healthy")], "absent_in_patients": ["P99"]},
         "absent_in_patients"),
        ({"states": ("healthy",), "absent_combinations": [("B", "healthy")]},
         "absent_combinations"),
        ({"n_hard_pairs": 4}, "n_hard_pairs"),
        ({"de_prob": 1.5}, "de_prob"),
        ({"donor_sd": -0.1}, "donor_sd"),
        ({"bcv_df": 0}, "bcv_df"),
        ({"state_prevalence": [0.5, 0.5]}, "state_prevalence"),
        ({"state_genes": 10_000}, "state_genes"),
    ],
)  # fmt: skip
def test_bad_arguments_raise_one_line_errors(kwargs: dict, field: str) -> None:
    with pytest.raises(BioclsError, match=f"simulate.{field}") as info:
        simulate_cells_splatter(**{**SMALL, **kwargs})
    assert "\n" not in str(info.value) and "fix:" in str(info.value)


# -- CLI and config ------------------------------------------------------------------------------
def test_cli_model_choices_are_the_registered_generators() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    model = next(a for a in sub.choices["simulate"]._actions if a.dest == "model")
    assert sorted(model.choices) == sorted(CELL_MODELS)


@pytest.mark.parametrize("how", ["flag", "params", "both"])
def test_cli_model_splatter_writes_a_file(tmp_path, how: str) -> None:
    out = tmp_path / "x.h5ad"
    params = {"n_patients": 2, "cells_per_patient": 20, "n_genes": 80, "donor_sd": 0.1}
    flag = ["--model", "splatter"] if how != "params" else []
    if how != "flag":
        params["model"] = "splatter"
    rc = main(["-q", "simulate", "cells", *flag, "--params", json.dumps(params),
               "--out", str(out)])
    assert rc == 0
    adata = ad.read_h5ad(out)
    assert adata.uns["biocls_simulate"]["model"] == "splatter"
    assert adata.uns["biocls_simulate"]["params"]["donor_sd"] == 0.1
    assert adata.n_obs == 40


@pytest.mark.parametrize(("argv", "params", "names"), [
    (["--model", "biocls"], {"model": "splatter"}, ["--model", "disagrees"]),
    ([], {"model": "scdesign"}, ["simulate.model", "splatter"]),
    (["--model", "splatter"], {"dropout_mids": 0.0}, ["simulate.dropout_mids", "dropout_mid"]),
    ([], {"donor_sd": 0.1}, ["simulate.donor_sd"]),  # a splatter option, not biocls's
])
def test_cli_model_mistakes_are_one_line_errors(tmp_path, capsys, argv: list[str],
                                                params: dict, names: list[str]) -> None:
    out = tmp_path / "x.h5ad"
    rc = main(["-q", "simulate", "cells", *argv, "--params", json.dumps(params),
               "--out", str(out)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("biocls simulate: error: ") and "fix:" in lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert not out.exists()


def test_config_validates_simulate_keys_against_the_chosen_model() -> None:
    def check(sim: dict) -> None:
        load_config({"experiments": {"e": {**CELLS, "simulate": sim}}}, source="my.yaml")

    check({"model": "splatter", "n_patients": 4, "donor_sd": 0.1})
    check({"model": "biocls", "n_patients": 4, "batch_sd": 0.1})
    with pytest.raises(BioclsError) as err:
        check({"model": "splatter", "n_patients": 4, "dropout_mids": 1})
    assert "my.yaml: experiments.e.simulate.dropout_mids" in str(err.value)
    assert "did you mean `dropout_mid`?" in str(err.value)
    with pytest.raises(BioclsError, match="experiments.e.simulate.nonsense"):
        check({"model": "splatter", "n_patients": 4, "nonsense": 1})
    with pytest.raises(BioclsError, match="did you mean `batch_sd`?"):
        check({"n_patients": 4, "batch_sdd": 0.1})  # no model: simulate_cells' keys
    with pytest.raises(BioclsError, match="experiments.e.simulate.donor_sd"):
        check({"n_patients": 4, "donor_sd": 0.1})
    with pytest.raises(BioclsError) as err:
        check({"model": "splat", "n_patients": 4})
    msg = str(err.value)
    assert "experiments.e.simulate.model" in msg and "biocls" in msg and "splatter" in msg
    assert "\n" not in msg
