"""biocls simulate images: the structure a classifier, the patient splits and the memorisation
check rely on, and a folder that is written whole or not at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from biocls._errors import BioclsError
from biocls.simulate._images import _SYMPTOMS, _state_effect, simulate_images

COLUMNS = ["image", "patient", "cell_type", "cell_state", "age", "sex", "crp", "symptoms",
           "sample_code"]
ABSENT_IN = ["P01", "P02", "P03"]
TINY = {"n_patients": 3, "images_per_patient": 6, "size": 16}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("sim") / "cohort"
    manifest = simulate_images(out, n_patients=8, images_per_patient=60, size=24, seed=1,
                               absent_combinations=[("monocyte", "malignant")],
                               absent_in_patients=ABSENT_IN)
    return out, manifest


def _pixels(out: Path, manifest: pd.DataFrame) -> np.ndarray:
    return np.stack([np.asarray(Image.open(out / p)) for p in manifest["image"]]) / 255.0


def test_manifest_and_files(cohort: tuple[Path, pd.DataFrame]) -> None:
    out, manifest = cohort
    on_disk = pd.read_csv(out / "manifest.tsv", sep="\t", keep_default_na=False)
    assert list(on_disk.columns) == COLUMNS
    pd.testing.assert_frame_equal(on_disk, manifest, check_dtype=False)
    assert len(on_disk) == 480
    assert sorted(on_disk["patient"].unique()) == [f"P0{i}" for i in range(1, 9)]
    assert set(on_disk["cell_type"]) == {"lymphocyte", "neutrophil", "monocyte", "eosinophil"}
    assert set(on_disk["cell_state"]) == {"healthy", "damaged", "malignant"}
    for row in on_disk.itertuples():
        assert row.image == f"images/{row.patient}/{Path(row.image).name}"
        assert (out / row.image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in on_disk["image"].iloc[::37]:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size == (24, 24) and im.mode == "RGB"
    assert len(list((out / "images").rglob("*.png"))) == 480  # nothing beyond the manifest
    assert on_disk["age"].dtype.kind == "i" and set(on_disk["sex"]) <= {"F", "M"}
    assert on_disk["crp"].dtype.kind == "f" and (on_disk["crp"] > 0).all()
    words = {w for s in on_disk["symptoms"] for w in s.split(";") if w}
    assert words <= set(_SYMPTOMS)
    # cell types are balanced within each patient (60 images, 4 types: 15 each)
    assert (pd.crosstab(on_disk["patient"], on_disk["cell_type"]) == 15).all().all()


def test_without_clinical_columns(tmp_path: Path) -> None:
    manifest = simulate_images(tmp_path / "x", clinical=False, **TINY)
    assert list(manifest.columns) == COLUMNS[:4]
    assert list(pd.read_csv(tmp_path / "x" / "manifest.tsv", sep="\t").columns) == COLUMNS[:4]
    # the clinical table does not change the images
    full = simulate_images(tmp_path / "full", **TINY)
    pd.testing.assert_frame_equal(full[COLUMNS[:4]], manifest)
    for name in manifest["image"]:
        assert (tmp_path / "x" / name).read_bytes() == (tmp_path / "full" / name).read_bytes()


def test_same_seed_same_cohort(tmp_path: Path) -> None:
    one = simulate_images(tmp_path / "one", seed=4, **TINY)
    two = simulate_images(tmp_path / "two", seed=4, **TINY)
    other = simulate_images(tmp_path / "other", seed=5, **TINY)
    pd.testing.assert_frame_equal(one, two)
    for name in one["image"].iloc[::5]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert not all((tmp_path / "one" / n).read_bytes() == (tmp_path / "other" / n).read_bytes()
                   for n in one["image"])
    assert not one.drop(columns="image").equals(other.drop(columns="image"))
    # each patient draws from its own stream: more patients leave the first ones alone
    more = simulate_images(tmp_path / "more", seed=4, **{**TINY, "n_patients": 4})
    pd.testing.assert_frame_equal(more[more["patient"] != "P04"].reset_index(drop=True), one)
    for name in one["image"]:
        assert (tmp_path / "more" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


def test_absent_combinations_only_where_named(cohort: tuple[Path, pd.DataFrame]) -> None:
    _, m = cohort
    pair = (m["cell_type"] == "monocyte") & (m["cell_state"] == "malignant")
    named = m["patient"].isin(ABSENT_IN)
    assert not pair[named].any()
    assert pair[~named].sum() >= 3
    # the monocytes of the named patients took another state rather than vanishing
    assert (m[named]["cell_type"] == "monocyte").sum() == 45
    # other types keep the state in the named patients
    assert (m[named]["cell_state"] == "malignant").sum() > 0


def test_absent_everywhere_by_default(tmp_path: Path) -> None:
    m = simulate_images(tmp_path / "x", n_patients=3, images_per_patient=40, size=16,
                        absent_combinations=[("lymphocyte", "healthy"),
                                             ("lymphocyte", "damaged")])
    assert set(m.loc[m["cell_type"] == "lymphocyte", "cell_state"]) == {"malignant"}


def test_clinical_columns_are_per_patient(cohort: tuple[Path, pd.DataFrame]) -> None:
    _, m = cohort
    per = m.groupby("patient")[["age", "sex", "crp", "symptoms", "sample_code"]].nunique()
    assert (per == 1).all().all()
    first = m.groupby("patient")[["crp", "sample_code"]].first()
    assert first["sample_code"].nunique() == 8
    share = pd.crosstab(m["patient"], m["cell_state"], normalize="index")
    # the code rises with the patient's malignant share (tempting, and patient-identifying);
    # the lab value rises with the damaged share
    assert np.corrcoef(first["sample_code"], share["malignant"])[0, 1] > 0.7
    assert np.corrcoef(first["crp"], share["damaged"])[0, 1] > 0.5


def test_sample_codes_distinct_across_many_patients(tmp_path: Path) -> None:
    m = simulate_images(tmp_path / "x", n_patients=40, images_per_patient=1, size=16,
                        state_prevalence_concentration=200.0)  # near-equal shares: close codes
    codes = m.groupby("patient")["sample_code"].first()
    assert codes.nunique() == 40
    assert (codes.round(3) == codes).all()


def test_type_and_state_are_learnable(cohort: tuple[Path, pd.DataFrame]) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler

    out, m = cohort
    pixels = _pixels(out, m)
    n = len(m)
    pooled = pixels.reshape(n, 8, 3, 8, 3, 3).mean((2, 4)).reshape(n, -1)
    grey = pixels.mean(-1).reshape(n, -1)
    histogram = np.stack([np.histogram(g, bins=12, range=(0, 1))[0] for g in grey]) / grey.shape[1]
    x = StandardScaler().fit_transform(np.hstack([pooled, histogram]))
    train = ~m["patient"].isin(["P02", "P05", "P08"]).to_numpy()  # held-out patients
    # balanced accuracy, as states are uneven (mostly healthy): chance is 1 / number of classes
    for column, floor in (("cell_type", 0.6), ("cell_state", 0.5)):
        y = m[column].to_numpy()
        clf = LogisticRegression(C=0.02, max_iter=2000, class_weight="balanced")
        pred = clf.fit(x[train], y[train]).predict(x[~train])
        score = balanced_accuracy_score(y[~train], pred)
        assert score > floor, (column, score)


def test_patients_differ_in_acquisition(cohort: tuple[Path, pd.DataFrame]) -> None:
    out, m = cohort
    means = pd.DataFrame(_pixels(out, m).mean((1, 2)), index=m["patient"].to_numpy())
    between = means.groupby(level=0).mean().std().mean()
    halves = [g.iloc[::2].mean() - g.iloc[1::2].mean() for _, g in means.groupby(level=0)]
    assert between > 3 * np.abs(np.array(halves)).mean()
    # with no acquisition effects the patients look alike again
    flat = simulate_images(out.parent / "flat", n_patients=8, images_per_patient=30, size=24,
                           seed=1, stain_sd=0.0, brightness_sd=0.0, blur_max=0.0)
    means = pd.DataFrame(_pixels(out.parent / "flat", flat).mean((1, 2)),
                         index=flat["patient"].to_numpy())
    assert means.groupby(level=0).mean().std().mean() < between / 4


def test_any_names_map_onto_built_in_looks(tmp_path: Path) -> None:
    types = [f"T{i}" for i in range(8)]  # more than the built-in morphologies: they cycle
    states = ["s0", "s1", "s2", "s3", "s4", "s5"]
    m = simulate_images(tmp_path / "x", n_patients=2, images_per_patient=16, size=16,
                        types=types, states=states)
    assert set(m["cell_type"]) == set(types) and set(m["cell_state"]) <= set(states)
    effects = [_state_effect(j) for j in range(6)]
    assert effects[:3] == ["none", "damaged", "malignant"] and effects[5] == "damaged"


@pytest.mark.parametrize("kw, message", [
    ({"n_patients": 1}, "n_patients"),
    ({"images_per_patient": 0}, "images_per_patient"),
    ({"types": ("A",)}, "2 distinct cell types"),
    ({"types": ("A", "A")}, "2 distinct cell types"),
    ({"states": ()}, "states"),
    ({"size": 8}, "size"),
    ({"stain_sd": -0.1}, "stain_sd"),
    ({"state_prevalence_concentration": 0}, "concentration"),
    ({"absent_combinations": [("A", "healthy")]}, "unknown type or state"),
    ({"absent_combinations": [("monocyte", "dead")]}, "unknown type or state"),
    ({"absent_combinations": [("monocyte", s) for s in ("healthy", "damaged", "malignant")]},
     "every state of type monocyte"),
    ({"absent_in_patients": ["P99"]}, "unknown patients"),
])
def test_bad_options(tmp_path: Path, kw: dict, message: str) -> None:
    with pytest.raises(BioclsError, match=message):
        simulate_images(tmp_path / "x", **{"images_per_patient": 2, **kw})
    assert not (tmp_path / "x").exists()


def test_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "x"
    simulate_images(out, seed=1, **TINY)  # a previous complete run
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    calls = {"n": 0}
    save = Image.Image.save

    def failing(self: Image.Image, *a: object, **k: object) -> None:
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError("disk full")
        save(self, *a, **k)

    monkeypatch.setattr(Image.Image, "save", failing)
    with pytest.raises(OSError, match="disk full"):
        simulate_images(tmp_path / "new", n_patients=2, images_per_patient=10)
    assert not (tmp_path / "new").exists()
    calls["n"] = 0
    with pytest.raises(OSError, match="disk full"):
        simulate_images(out, seed=2, n_patients=2, images_per_patient=10)
    # the earlier run is left whole, and no temporary folder is left beside it
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_an_existing_folder_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "x"
    simulate_images(out, **{**TINY, "n_patients": 4})
    (out / "stale.txt").write_text("old")
    simulate_images(out, **TINY)
    assert not (out / "stale.txt").exists() and not (out / "images" / "P04").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
