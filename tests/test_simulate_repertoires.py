"""The repertoire simulator (OLGA background, implanted motifs): witnesses where, and as many
as, the parameters say, recorded in truth.tsv and nowhere in the repertoire files' columns."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("olga")

from biocls.simulate import simulate_repertoires  # noqa: E402


def _read(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]:
    meta = pd.read_csv(out / "metadata.tsv", sep="\t")
    truth = pd.read_csv(out / "truth.tsv", sep="\t")
    reps = {r: pd.read_csv(out / "repertoires" / f"{r}.tsv", sep="\t")
            for r in meta["repertoire_id"]}
    return meta, truth, reps


def test_witnesses_follow_the_rates_and_the_truth_table(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    meta = simulate_repertoires(out, n_subjects=10, n_sequences=400, witness_rate=0.01,
                                motifs=["WHKW", "NXWM"], two_repertoire_fraction=0.0, seed=3,
                                progress=False)
    meta, truth, reps = _read(out)
    label = meta.set_index("repertoire_id")["label"]
    per_rep = truth.groupby("repertoire_id").size()
    assert set(per_rep.index) == set(label[label == 1].index)  # positives only, all of them
    assert (per_rep == 4).all()  # 1 % of 400
    for r in truth.itertuples():
        row = reps[r.repertoire_id].iloc[r.row]
        assert row["junction_aa"] == r.junction_aa and r.implanted in r.junction_aa
        assert r.motif in ("WHKW", "NXWM")
    assert "motif" not in reps[truth["repertoire_id"].iat[0]].columns  # no leak in the input


def test_negative_witnesses_are_few_and_leave_the_rest_unchanged(tmp_path: Path) -> None:
    kw = dict(n_subjects=40, n_sequences=500, witness_rate=0.01, motifs=["WHKW"],
              two_repertoire_fraction=0.0, seed=5, progress=False)
    simulate_repertoires(tmp_path / "plain", **kw)
    simulate_repertoires(tmp_path / "neg", negative_witness_rate=0.002, **kw)
    meta, truth, _ = _read(tmp_path / "neg")
    neg = set(meta.loc[meta["label"] == 0, "repertoire_id"])
    in_neg = truth[truth["repertoire_id"].isin(neg)].groupby("repertoire_id").size()
    # binomial(500, 0.002): about 1 per negative, some with none; far fewer than positives' 5
    assert 0 < len(in_neg) < len(neg) and in_neg.sum() < 2.5 * len(neg)
    pos_truth = truth[~truth["repertoire_id"].isin(neg)]
    assert (pos_truth.groupby("repertoire_id").size() == 5).all()
    # by default negatives hold no witness; the labels do not depend on the option
    plain_meta, plain_truth, _ = _read(tmp_path / "plain")
    assert plain_truth["repertoire_id"].isin(neg).sum() == 0
    pd.testing.assert_frame_equal(plain_meta, meta)


def test_rates_are_checked(tmp_path: Path) -> None:
    from biocls import BioclsError

    with pytest.raises(BioclsError, match="negative_witness_rate"):
        simulate_repertoires(tmp_path / "x", negative_witness_rate=2.0, progress=False)
    assert not (tmp_path / "x").exists()
