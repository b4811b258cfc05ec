"""RATT certificate: the formula by hand, the CLI end to end on a tiny simulated cohort."""

from __future__ import annotations

import json
import math

import pytest

from biocls.certify import confidence_term, ratt_bound


def test_bound_matches_a_hand_computed_example() -> None:
    # k = 4 classes, E_clean = 0.1, E_random = 0.7, m = 1000 random-label cells, n = 3000 clean
    main = 0.1 + 3 * (1 - 4 / 3 * 0.7)  # = 0.1 + 3 * 0.0666... = 0.3
    conf = (4 + 2 + 1000 / (3000 * 2)) * math.sqrt(math.log(4 / 0.05) / 2000)
    assert main == pytest.approx(0.3)
    assert conf == pytest.approx(0.2887, abs=1e-4)
    got = ratt_bound(clean_error=0.1, random_error=0.7, k=4, m=1000, n=3000, delta=0.05)
    assert got == pytest.approx(0.3 + 0.2887, abs=1e-4)
    assert confidence_term(k=4, m=1000, n=3000, delta=0.05) == pytest.approx(conf)


def test_binary_case_and_monotonicity() -> None:
    # k = 2: main term E_clean + 1 - 2 E_random; a model at chance on random labels pays nothing
    b = ratt_bound(clean_error=0.05, random_error=0.5, k=2, m=400, n=400, delta=0.1)
    assert b == pytest.approx(0.05 + confidence_term(k=2, m=400, n=400, delta=0.1))
    # fitting the random labels (lower E_random) loosens the bound; so does a smaller delta
    assert ratt_bound(clean_error=0.05, random_error=0.3, k=2, m=400, n=400) > b
    assert confidence_term(k=2, m=400, n=400, delta=0.01) > confidence_term(k=2, m=400, n=400,
                                                                             delta=0.1)
    # more random-label cells tighten it
    assert confidence_term(k=6, m=4000, n=4000) < confidence_term(k=6, m=400, n=4000)


@pytest.mark.parametrize("kw", [{"k": 1}, {"m": 0}, {"delta": 1.0}, {"delta": 0.0}])
def test_bad_arguments_raise(kw: dict) -> None:
    args = {"clean_error": 0.1, "random_error": 0.5, "k": 3, "m": 10, "n": 10, "delta": 0.05}
    with pytest.raises(ValueError):
        ratt_bound(**{**args, **kw})


def test_certify_cli_writes_bounds_and_evaluate_merges_them(tmp_path) -> None:
    import anndata  # noqa: F401  (the simulator writes AnnData)

    from biocls.cli import main
    from biocls.simulate import simulate_cells

    h5 = tmp_path / "cells.h5ad"
    simulate_cells(n_patients=6, cells_per_patient=120, n_genes=200, n_types=3,
                   states=("healthy", "activated"), seed=1).write_h5ad(h5)
    spec = {"task": "cells", "name": "t", "input": str(h5), "folds": 3, "seed": 0,
            "progress": False,
            "keys": {"cell_type": "cell_type", "cell_state": "cell_state", "patient": "patient"},
            "preprocess": {"n_top_genes": 100},
            "model": {"hidden": [32], "max_epochs": 5, "patience": 2},
            "certify": {"delta": 0.1, "fold": 1, "n_pcs": 10}}
    sp = tmp_path / "spec.json"
    sp.write_text(json.dumps(spec))
    splits = tmp_path / "splits.tsv"
    assert main(["-q", "split", "--spec", str(sp), "--out", str(splits)]) == 0
    cert = tmp_path / "certificate.json"
    assert main(["-q", "certify", "--spec", str(sp), "--splits", str(splits),
                 "--out", str(cert), "--threads", "1"]) == 0
    data = json.loads(cert.read_text())
    import pandas as pd

    table = pd.read_csv(splits, sep="\t", dtype={"patient": str})
    held = sorted(table.loc[table["fold"] == 1, "patient"])
    assert data["heldout_patients"] == held
    assert not set(held) & set(data["fit_patients"] + data["validation_patients"])
    for head, k in (("cell_type", 3), ("cell_state", 2)):
        c = data["heads"][head]
        assert c["k"] == k and c["delta"] == 0.1
        assert c["m"] == int(table.loc[table["fold"] == 1, "n_cells"].sum())
        want = ratt_bound(clean_error=c["clean_error"], random_error=c["random_error"], k=k,
                          m=c["m"], n=c["n"], delta=0.1)
        assert c["bound"] == pytest.approx(want)
        assert 0.0 <= c["test_error"] <= 1.0
    # evaluate merges it; a wrong file is a one-line error (exit 2)
    for f in range(3):
        assert main(["-q", "train", "--spec", str(sp), "--splits", str(splits), "--fold",
                     str(f), "--out", str(tmp_path / "folds" / str(f)), "--threads", "1"]) == 0
    args = ["-q", "evaluate", "--spec", str(sp), "--splits", str(splits), "--folds-dir",
            str(tmp_path / "folds"), "--out", str(tmp_path)]
    assert main(args + ["--certificate", str(cert)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["certificate"]) == {"cell_type", "cell_state"}
    assert metrics["certificate"]["cell_type"]["bound"] == pytest.approx(
        data["heads"]["cell_type"]["bound"])
    bogus = tmp_path / "bogus.json"
    bogus.write_text("{}")
    assert main(args + ["--certificate", str(bogus)]) == 2
