"""RATT certificates: the formulas by hand, the per-patient bound, δ splitting, what RATT training
fits its preprocessing on, and the CLI end to end (the shipped model; an unlabelled cohort)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from biocls.certify import (
    ab_halves,
    confidence_term,
    patient_bound,
    ratt_bound,
    split_delta,
)


def test_bound_matches_a_hand_computed_example() -> None:
    # k = 4 classes, E_clean = 0.1, E_random = 0.7, m = 1000 random-label cells, n = 3000 clean
    main = 0.1 + 3 * (1 - 4 / 3 * 0.7)  # = 0.1 + 3 * 0.0666... = 0.3
    conf = (4 + 2 + 1000 / (3000 * 2)) * math.sqrt(math.log(4 / 0.05) / 2000)
    assert main == pytest.approx(0.3)
    assert conf == pytest.approx(0.2887, abs=1e-4)
    got = ratt_bound(clean_error=0.1, random_error=0.7, k=4, m=1000, n=3000, delta=0.05)
    assert got == pytest.approx(0.3 + 0.2887, abs=1e-4)
    assert confidence_term(k=4, m=1000, n=3000, delta=0.05) == pytest.approx(conf)


def test_exact_form_with_the_random_correct_error_by_hand() -> None:
    # the exact form: (k - 1) - k E_S~ + E_S~C; k = 3, E_S~ = 0.6, E_S~C = 0.25 -> 0.45
    exact = (3 - 1) - 3 * 0.6 + 0.25
    assert exact == pytest.approx(0.45)
    got = ratt_bound(clean_error=0.25, random_error=0.6, k=3, m=500, n=2000, delta=0.1)
    assert got - confidence_term(k=3, m=500, n=2000, delta=0.1) == pytest.approx(exact)


def test_binary_case_and_monotonicity() -> None:
    # k = 2: main term E_clean + 1 - 2 E_random; a model at chance on random labels pays nothing
    b = ratt_bound(clean_error=0.05, random_error=0.5, k=2, m=400, n=400, delta=0.1)
    assert b == pytest.approx(0.05 + confidence_term(k=2, m=400, n=400, delta=0.1))
    # fitting the random labels (lower E_random) loosens the bound; so does a smaller delta
    assert ratt_bound(clean_error=0.05, random_error=0.3, k=2, m=400, n=400) > b
    assert confidence_term(k=2, m=400, n=400, delta=0.01) > confidence_term(k=2, m=400, n=400,
                                                                             delta=0.1)
    assert confidence_term(k=6, m=4000, n=4000) < confidence_term(k=6, m=400, n=4000)


@pytest.mark.parametrize("kw", [{"k": 1}, {"m": 0}, {"delta": 1.0}, {"delta": 0.0}])
def test_bad_arguments_raise(kw: dict) -> None:
    args = {"clean_error": 0.1, "random_error": 0.5, "k": 3, "m": 10, "n": 10, "delta": 0.05}
    with pytest.raises(ValueError):
        ratt_bound(**{**args, **kw})


def test_patient_bound_closed_form_and_definition() -> None:
    # no errors at all: n kl(0 || q) = -n log(1 - q) = log(1/delta)  =>  q = 1 - delta^(1/n)
    assert patient_bound([0.0] * 5, delta=0.05) == pytest.approx(1 - 0.05 ** (1 / 5), abs=1e-9)
    # otherwise the bound is where n kl(mean || q) reaches log(1/delta)
    errs = [0.1, 0.3, 0.2, 0.0, 0.15, 0.25]
    q, p = patient_bound(errs, delta=0.1), float(np.mean(errs))
    kl = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    assert len(errs) * kl == pytest.approx(math.log(10), rel=1e-6)
    # never below the mean, wider with fewer patients, at most 1
    assert q > p
    assert patient_bound(errs[:3], delta=0.1) > patient_bound(errs[:3] * 4, delta=0.1)
    assert patient_bound([0.9, 0.95], delta=0.01) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError):
        patient_bound([], delta=0.1)
    with pytest.raises(ValueError):
        patient_bound([1.5], delta=0.1)


def test_patient_bound_covers_the_mean_at_its_level() -> None:
    """Simulated patients with mean error 0.2: the bound falls below 0.2 in at most ~δ of the
    draws (a bound that was too tight would fail this)."""
    rng = np.random.default_rng(0)
    misses = sum(patient_bound(rng.beta(2, 8, size=4), delta=0.1) < 0.2 for _ in range(2000))
    assert misses / 2000 <= 0.1


def test_delta_is_split_so_that_all_statements_hold_together() -> None:
    assert split_delta(0.05, 4) * 4 == pytest.approx(0.05)
    with pytest.raises(ValueError):
        split_delta(0.05, 0)


def test_ab_halves_split_every_cell_once() -> None:
    a = ab_halves(11, seed=3)
    assert a.sum() == 6 and (~a).sum() == 5
    assert (ab_halves(11, seed=3) == a).all() and not (ab_halves(11, seed=4) == a).all()


# -- RATT training and the CLI ------------------------------------------------------------------

@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from biocls.simulate import simulate_cells

    d = tmp_path_factory.mktemp("ratt")
    h5 = d / "cells.h5ad"
    simulate_cells(n_patients=6, cells_per_patient=120, n_genes=200, n_types=3,
                   states=("healthy", "activated"), seed=1).write_h5ad(h5)
    spec = {"task": "cells", "name": "t", "input": str(h5), "folds": 3, "seed": 0,
            "progress": False,
            "keys": {"cell_type": "cell_type", "cell_state": "cell_state", "patient": "patient"},
            "preprocess": {"n_top_genes": 100, "n_pcs": 10},
            "model": {"hidden": [32], "max_epochs": 5, "patience": 2},
            "certify": {"delta": 0.1, "fold": 1, "random_fraction": 0.2}}
    sp = d / "spec.json"
    sp.write_text(json.dumps(spec))
    return d, h5, sp, spec


def test_ratt_cells_and_random_labels() -> None:
    from biocls.config import parse_experiment
    from biocls.tasks.cells import _random_labels, ratt_cells

    fit = np.zeros(1000, dtype=bool)
    fit[100:900] = True
    r = ratt_cells(fit, 0.25, seed=0)
    assert r.sum() == 200 and not (r & ~fit).any()
    assert (ratt_cells(fit, 0.25, seed=0) == r).all()
    exp = parse_experiment({"task": "cells", "certify": {"random_fraction": 0.25}}, name="e",
                           partial=True)
    obs = pd.DataFrame({"biocls_cell_type": ["A"] * 400 + ["B"] * 300 + ["C"] * 100},
                       index=[f"c{i}" for i in range(800)])
    rand = r[fit]
    y, _, rec = _random_labels(obs, rand, obs["biocls_cell_type"].to_numpy(dtype=object),
                               None, exp)
    assert rec["cells"] == obs.index[rand].tolist() and rec["m"] == 200 and rec["n"] == 600
    assert rec["classes"]["cell_type"] == ["A", "B", "C"]
    assert list(y[rand]) == rec["labels"]["cell_type"]
    assert (y[~rand] == obs["biocls_cell_type"].to_numpy()[~rand]).all()
    # uniform over the classes, not the class frequencies (C is 1/8 of the cells)
    share_c = np.mean(np.asarray(rec["labels"]["cell_type"]) == "C")
    assert 0.2 < share_c < 0.47


def test_final_model_is_trained_the_ratt_way(cohort) -> None:
    """The certified final model holds fold `certify.fold` out, records its random-label cells,
    and fits its preprocessing on the expression of S ∪ S~ (not on S alone)."""
    from biocls.cli import load_spec
    from biocls.preprocess import CellPreprocessor
    from biocls.splits import plan_fold
    from biocls.tasks import make_splits
    from biocls.tasks._runner import final_hold_out
    from biocls.tasks.cells import CellsTask, fit_cells, ratt_cells

    d, h5, sp, spec = cohort
    exp = load_spec(str(sp))
    task = CellsTask()
    data = task.load(exp)
    splits = make_splits(task, exp, data)
    plan = plan_fold(splits, "final", task.patients(data), validation_fraction=0.2, seed=0,
                     hold_out=final_hold_out(exp, "final"))
    held = sorted(splits.loc[splits["fold"] == 1, "patient"])
    assert list(plan.test) == held and not set(held) & set(plan.fit + plan.validation)
    fit_m = plan.masks(task.patients(data))[0]
    fitted = task.fit(exp, data, plan)
    assert fitted.ratt["m"] == round(0.2 * fit_m.sum())
    rand = data.obs.index.isin(fitted.ratt["cells"])
    assert not (rand & ~fit_m).any()
    pre = fitted.preprocessor
    assert pre.n_cells_fit_ == fit_m.sum()
    whole = CellPreprocessor(nmads=None, n_top_genes=100, n_pcs=10).fit(data[fit_m])
    clean_only = CellPreprocessor(nmads=None, n_top_genes=100, n_pcs=10).fit(
        data[fit_m & ~rand])
    np.testing.assert_allclose(pre.mean_, whole.mean_, rtol=1e-6)
    assert not np.allclose(pre.mean_, clean_only.mean_, rtol=1e-6)
    # the same mask, rebuilt from the config, is what fit_cells was given
    assert (ratt_cells(fit_m, 0.2, 0) == rand).all()
    # fit_cells refuses random labels outside the fit patients
    with pytest.raises(ValueError, match="outside"):
        fit_cells(exp, data, plan, randomise=~fit_m)


def test_certify_cli_certifies_the_shipped_model(cohort) -> None:
    from biocls._provenance import model_signature
    from biocls.cli import main

    d, h5, sp, spec = cohort
    splits, model = d / "splits.tsv", d / "model"
    assert main(["-q", "split", "--spec", str(sp), "--out", str(splits)]) == 0
    assert main(["-q", "train", "--spec", str(sp), "--splits", str(splits), "--fold", "final",
                 "--out", str(model), "--threads", "1"]) == 0
    cert_path = d / "certificate.json"
    assert main(["-q", "certify", "--spec", str(sp), "--model", str(model),
                 "--out", str(cert_path), "--threads", "1"]) == 0
    cert = json.loads(cert_path.read_text())
    table = pd.read_csv(splits, sep="\t", dtype={"patient": str})
    held = sorted(table.loc[table["fold"] == 1, "patient"])
    assert cert["heldout_patients"] == held
    assert not set(held) & set(cert["fit_patients"] + cert["validation_patients"])
    assert cert["model"]["signature"] == model_signature(model)
    assert cert["n_statements"] == 4 and cert["delta_each"] == pytest.approx(0.1 / 4)
    ratt = json.loads((model / "ratt.json").read_text())
    for head, k in (("cell_type", 3), ("cell_state", 2)):
        c = cert["heads"][head]
        assert c["k"] == k and c["delta"] == pytest.approx(0.025) and c["m"] == ratt["m"]
        assert c["bound"] == pytest.approx(ratt_bound(
            clean_error=c["clean_error"], random_error=c["random_error"], k=k, m=c["m"],
            n=c["n"], delta=0.025))
        assert c["bound_with_random_correct"] == pytest.approx(ratt_bound(
            clean_error=c["random_correct_error"], random_error=c["random_error"], k=k,
            m=c["m"], n=c["n"], delta=0.025))
        assert set(c["patient_errors"]) == set(held)
        assert c["patient_bound"] == pytest.approx(patient_bound(
            list(c["patient_errors"].values()), delta=0.025))
        assert c["patient_bound"] >= c["patient_mean_error"]
        assert c["n_random_correct"] > 0
    # a model trained without random labels cannot be certified (one-line error, exit 2)
    plain = dict(spec)
    plain.pop("certify")
    sp2 = d / "plain.json"
    sp2.write_text(json.dumps(plain))
    assert main(["-q", "train", "--spec", str(sp2), "--splits", str(splits), "--fold", "final",
                 "--out", str(d / "plain_model"), "--threads", "1"]) == 0
    assert not (d / "plain_model" / "ratt.json").exists()
    assert main(["-q", "certify", "--spec", str(sp), "--model", str(d / "plain_model"),
                 "--out", str(d / "no.json")]) == 2
    assert not (d / "no.json").exists()
    # evaluate merges the certificate; a wrong file is a one-line error (exit 2)
    for f in range(3):
        assert main(["-q", "train", "--spec", str(sp), "--splits", str(splits), "--fold",
                     str(f), "--out", str(d / "folds" / str(f)), "--threads", "1"]) == 0
    args = ["-q", "evaluate", "--spec", str(sp), "--splits", str(splits), "--folds-dir",
            str(d / "folds"), "--out", str(d)]
    assert main(args + ["--certificate", str(cert_path)]) == 0
    metrics = json.loads((d / "metrics.json").read_text())
    assert set(metrics["certificate"]["heads"]) == {"cell_type", "cell_state"}
    assert metrics["certificate"]["model"]["signature"] == cert["model"]["signature"]
    bogus = d / "bogus.json"
    bogus.write_text("{}")
    assert main(args + ["--certificate", str(bogus)]) == 2


def test_unlabelled_cohort_is_certified_by_ab_halves(cohort, tmp_path) -> None:
    """Every cell of the cohort is predicted by the model that trained on the *other* half with
    random labels, never by the one that saw it randomly labelled; δ is halved per half."""
    import anndata as ad

    from biocls.cli import main
    from biocls.simulate import simulate_cells

    d, h5, sp, spec = cohort
    splits = tmp_path / "splits.tsv"
    assert main(["-q", "split", "--spec", str(sp), "--out", str(splits)]) == 0
    new = simulate_cells(n_patients=2, cells_per_patient=45, n_genes=200, n_types=3,
                         states=("healthy", "activated"), seed=9)
    new.obs = new.obs[[]]  # unlabelled
    path = tmp_path / "new.h5ad"
    new.write_h5ad(path)
    out, pred = tmp_path / "cert.json", tmp_path / "pred.h5ad"
    assert main(["-q", "certify", "--spec", str(sp), "--splits", str(splits), "--unlabelled",
                 str(path), "--out", str(out), "--predictions", str(pred),
                 "--threads", "1"]) == 0
    cert = json.loads(out.read_text())
    got = ad.read_h5ad(pred)
    half = got.obs["biocls_ratt_half"].astype(str).to_numpy()
    by = got.obs["biocls_certified_by"].astype(str).to_numpy()
    assert set(half) == {"A", "B"} and (by != "model_" + half).all()
    assert (half == np.where(ab_halves(new.n_obs, 0), "A", "B")).all()
    assert got.obs["biocls_cell_type"].notna().all()
    for name in "AB":
        h = cert["halves"][name]
        assert h["n_cells"] == int((half == name).sum())
        assert h["heads"]["cell_type"]["m"] == h["n_cells"]
        assert h["heads"]["cell_type"]["delta"] == pytest.approx(cert["delta_each"] / 2)
    a, b = (cert["halves"][x] for x in "AB")
    want = (b["n_cells"] * a["heads"]["cell_type"]["bound"]
            + a["n_cells"] * b["heads"]["cell_type"]["bound"]) / new.n_obs
    assert cert["heads"]["cell_type"]["bound"] == pytest.approx(want)
    # a cohort on other genes is a one-line error, and nothing is written
    other = new.copy()
    other.var_names = [f"X{i}" for i in range(other.n_vars)]
    bad = tmp_path / "other.h5ad"
    other.write_h5ad(bad)
    assert main(["-q", "certify", "--spec", str(sp), "--splits", str(splits), "--unlabelled",
                 str(bad), "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()
