"""biocls simulate images: the structure a classifier and the memorisation check rely on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from biocls._errors import BioclsError
from biocls.simulate import simulate_images


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("sim") / "cohort"
    manifest = simulate_images(out, n_patients=6, images_per_patient=80, size=24, seed=1,
                               absent_combinations=[("monocyte", "malignant")],
                               absent_in_patients=["P01", "P02", "P03"])
    return out, manifest


def _pixels(out: Path, manifest: pd.DataFrame) -> np.ndarray:
    return np.stack([np.asarray(Image.open(out / p)) for p in manifest["image"]])


def test_manifest_and_files(cohort: tuple[Path, pd.DataFrame]) -> None:
    out, manifest = cohort
    on_disk = pd.read_csv(out / "manifest.tsv", sep="\t", keep_default_na=False)
    assert list(on_disk.columns) == ["image", "patient", "cell_type", "cell_state", "age", "sex",
                                     "crp", "symptoms", "sample_code"]
    assert len(on_disk) == 480 and on_disk["patient"].nunique() == 6
    for name in on_disk["image"].iloc[::60]:
        im = Image.open(out / name)
        assert im.size == (24, 24) and im.mode == "RGB"


def test_same_seed_same_cohort(cohort: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    out, manifest = cohort
    kw = {"n_patients": 6, "images_per_patient": 80, "size": 24,
          "absent_combinations": [("monocyte", "malignant")],
          "absent_in_patients": ["P01", "P02", "P03"]}
    again = simulate_images(tmp_path / "again", seed=1, **kw)
    other = simulate_images(tmp_path / "other", seed=2, **kw)
    pd.testing.assert_frame_equal(again, manifest)
    assert (tmp_path / "again" / manifest["image"][5]).read_bytes() == \
        (out / manifest["image"][5]).read_bytes()
    assert not other[["cell_type", "cell_state"]].equals(manifest[["cell_type", "cell_state"]])
    # a patient's images come from its own stream: more patients leave the first ones alone
    more = simulate_images(tmp_path / "more", seed=1, **{**kw, "n_patients": 7})
    pd.testing.assert_frame_equal(more[more["patient"] != "P07"].reset_index(drop=True),
                                  manifest)


def test_absent_combinations_only_where_named(cohort: tuple[Path, pd.DataFrame]) -> None:
    _, m = cohort
    pair = (m["cell_type"] == "monocyte") & (m["cell_state"] == "malignant")
    assert not pair[m["patient"].isin(["P01", "P02", "P03"])].any()
    assert pair[m["patient"].isin(["P04", "P05", "P06"])].sum() > 0


def test_clinical_columns_are_per_patient(cohort: tuple[Path, pd.DataFrame]) -> None:
    _, m = cohort
    per = m.groupby("patient")[["age", "sex", "crp", "symptoms", "sample_code"]].nunique()
    assert (per == 1).all().all()
    codes = m.groupby("patient")["sample_code"].first()
    assert codes.nunique() == 6
    malignant = m.assign(x=m["cell_state"] == "malignant").groupby("patient")["x"].mean()
    # the code rises with the patient's malignant share: tempting, and patient-identifying
    assert np.corrcoef(codes, malignant.loc[codes.index])[0, 1] > 0.5


def test_type_and_state_are_learnable_and_patients_differ(
        cohort: tuple[Path, pd.DataFrame]) -> None:
    from sklearn.linear_model import LogisticRegression

    out, m = cohort
    pixels = _pixels(out, m) / 255.0
    # 2×2 mean-pooled pixels: enough for a linear model to see shapes, fast to fit
    x = pixels.reshape(len(m), 12, 2, 12, 2, 3).mean((2, 4)).reshape(len(m), -1)
    train = m["patient"].isin(["P01", "P02", "P03", "P04"]).to_numpy()
    for column, margin in (("cell_type", 0.3), ("cell_state", 0.08)):
        y = m[column].to_numpy()
        clf = LogisticRegression(C=0.1, max_iter=300).fit(x[train], y[train])
        acc = clf.score(x[~train], y[~train])
        base = pd.Series(y[~train]).value_counts(normalize=True).max()
        assert acc > base + margin, (column, acc, base)
    # per-patient acquisition: mean colour differs more between patients than within one
    means = pd.DataFrame(pixels.mean((1, 2)), index=m["patient"].values)
    between = means.groupby(level=0).mean().std().mean()
    halves = [g.iloc[: len(g) // 2].mean() - g.iloc[len(g) // 2:].mean()
              for _, g in means.groupby(level=0)]
    assert between > 2 * np.abs(np.array(halves)).mean()


@pytest.mark.parametrize("kw, message", [
    ({"n_patients": 1}, "n_patients"),
    ({"types": ("A",)}, "2 cell types"),
    ({"size": 8}, "size"),
    ({"absent_combinations": [("A", "healthy")]}, "unknown type or state"),
    ({"absent_in_patients": ["P99"]}, "unknown patients"),
])
def test_bad_options(tmp_path: Path, kw: dict, message: str) -> None:
    with pytest.raises(BioclsError, match=message):
        simulate_images(tmp_path / "x", images_per_patient=2, **kw)
    assert not (tmp_path / "x").exists()


def test_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    save = Image.Image.save

    def failing(self: Image.Image, *a: object, **k: object) -> None:
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError("disk full")
        save(self, *a, **k)

    monkeypatch.setattr(Image.Image, "save", failing)
    with pytest.raises(OSError, match="disk full"):
        simulate_images(tmp_path / "x", n_patients=2, images_per_patient=10)
    assert not (tmp_path / "x").exists()
    assert not list(tmp_path.iterdir())  # no temporary folder left either
