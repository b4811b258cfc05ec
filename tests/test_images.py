"""task: images — transforms, readers, encoders, the clinical encoder, fusion choice, the patient
probe, the estimator, and a whole cross-validation on made-up images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from biocls import columns as C
from biocls._errors import BioclsError
from biocls.config import parse_experiment
from biocls.data._images import read_image_manifest, read_image_npz
from biocls.estimators import ImageClassifier
from biocls.models._images import IMAGE_ENCODERS, ImageNet, image_encoder
from biocls.preprocess._clinical import ClinicalEncoder
from biocls.preprocess._images import IMAGE, augment_transforms, read_image
from biocls.tasks import cross_validate, get_task
from biocls.tasks.images import choose_fusion, patient_probe

TYPES = ("A", "B", "C")


def _cell(rng: np.random.Generator, t: int, s: int, size: int = 16) -> np.ndarray:
    """A made-up cell: the type is which colour channel holds the bright square, the state a
    stripe pattern; learnable in a few epochs."""
    img = rng.integers(0, 50, (size, size, 3)).astype(np.uint8)
    img[size // 4: 3 * size // 4, size // 4: 3 * size // 4, t] += np.uint8(150)
    if s:
        img[::3, :, (t + 1) % 3] += np.uint8(60)
    return img


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 patients × 24 RGB PNGs with a patient-unique clinical code and a symptom list."""
    out = tmp_path_factory.mktemp("images")
    (out / "img").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for p in range(6):
        for k in range(24):
            t, s = int(rng.integers(3)), int(rng.integers(2))
            name = f"img/P{p}_{k}.png"
            Image.fromarray(_cell(rng, t, s)).save(out / name)
            rows.append({"image": name, "patient": f"P{p}", "cell_type": TYPES[t],
                         "cell_state": ("healthy", "damaged")[s], "age": 40 + 3 * p,
                         "code": f"ward{p}", "symptoms": "fever;cough" if p % 2 else ""})
    pd.DataFrame(rows).to_csv(out / "manifest.tsv", sep="\t", index=False)
    return out / "manifest.tsv"


# -- transforms and readers ------------------------------------------------------------------

def test_read_image_channels_and_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.tif")
    assert read_image(tmp_path / "rgb.png", 16).shape == (3, 16, 16)
    assert read_image(tmp_path / "grey.png", 16).shape == (1, 16, 16)
    assert read_image(tmp_path / "rgba.png", 16).shape == (3, 16, 16)
    assert read_image(tmp_path / "rgb.tif", 12).shape == (3, 12, 12)
    # at the file's own size nothing moves: rows stay rows (an .npz and a PNG agree)
    Image.fromarray(rgb[:, :20]).save(tmp_path / "square.png")
    same = read_image(tmp_path / "square.png", 20)
    assert np.array_equal(same, np.moveaxis(rgb[:, :20], -1, 0))


def test_augmentations_are_seeded() -> None:
    x = np.random.default_rng(2).integers(0, 255, (3, 16, 16), dtype=np.uint8)

    def run(seed: int) -> list[np.ndarray]:
        tf = augment_transforms()
        tf.set_random_state(seed=seed)
        return [np.asarray(tf({IMAGE: x})[IMAGE]) for _ in range(6)]

    a, b, c = run(5), run(5), run(6)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c, strict=True))
    assert all(u.shape == (3, 16, 16) and u.dtype == np.float32 for u in a)
    assert min(float(u.min()) for u in a) >= -0.2 and max(float(u.max()) for u in a) <= 1.3


def test_manifest_reader(manifest: Path) -> None:
    data = read_image_manifest(manifest, image="image", patient="patient", cell_type="cell_type",
                               cell_state="cell_state", clinical=["age", "code"], size=16,
                               progress=False)
    assert data.images.shape == (144, 3, 16, 16) and data.images.dtype == np.uint8
    assert set(data.obs["biocls_patient"]) == {f"P{p}" for p in range(6)}
    assert list(data.clinical.columns) == ["age", "code"]
    assert data.obs["biocls_image"].iloc[0] == "img/P0_0.png"


def _garbage_image(t: pd.DataFrame, d: Path) -> pd.DataFrame:
    (d / "img" / "bad.png").write_text("not a png")
    return t.assign(image=["img/bad.png"] + list(t["image"][1:]))


def _grey_among_rgb(t: pd.DataFrame, d: Path) -> pd.DataFrame:
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(d / "img" / "grey.png")
    return t.assign(image=list(t["image"][:-1]) + ["img/grey.png"])


@pytest.mark.parametrize("edit, message", [
    (lambda t, d: t.drop(columns="cell_type"), "no column 'cell_type'"),
    (lambda t, d: t.assign(cell_type=[""] + list(t["cell_type"][1:])), "is empty on line 2"),
    (lambda t, d: t.assign(image=["img/none.png"] + list(t["image"][1:])), "missing"),
    (_garbage_image, "unreadable image"),
    (_grey_among_rgb, "1 channels"),
])
def test_manifest_errors_are_one_line(manifest: Path, tmp_path: Path, edit, message) -> None:
    (tmp_path / "img").mkdir()
    table = pd.read_csv(manifest, sep="\t", dtype=str, keep_default_na=False)
    for name in table["image"]:
        (tmp_path / name).write_bytes((manifest.parent / name).read_bytes())
    edit(table, tmp_path).to_csv(tmp_path / "m.tsv", sep="\t", index=False)
    with pytest.raises(BioclsError, match=message) as err:
        read_image_manifest(tmp_path / "m.tsv", image="image", patient="patient",
                            cell_type="cell_type", size=16, progress=False)
    assert "\n" not in str(err.value)


def test_npz_reader(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    arrays = {f"{s}_images": rng.integers(0, 255, (n, 20, 20, 3), dtype=np.uint8)
              for s, n in (("train", 30), ("val", 10), ("test", 12))}
    arrays |= {f"{s}_labels": rng.integers(0, 4, (len(arrays[f"{s}_images"]), 1))
               for s in ("train", "val", "test")}
    np.savez(tmp_path / "set.npz", **arrays)
    data = read_image_npz(tmp_path / "set.npz", size=16, pseudo_patients=4)
    assert data.images.shape == (52, 3, 16, 16)
    assert data.obs["biocls_split"].value_counts().to_dict() == {"train": 30, "test": 12,
                                                                 "val": 10}
    assert data.obs["biocls_patient"].nunique() == 4
    np.savez(tmp_path / "bad.npz", train_images=arrays["train_images"])
    with pytest.raises(BioclsError, match="train_labels"):
        read_image_npz(tmp_path / "bad.npz", pseudo_patients=4)
    with pytest.raises(BioclsError, match="pseudo_patients"):
        parse_experiment({"task": "images", "input": str(tmp_path / "set.npz")}, name="x")


# -- nets and estimator ----------------------------------------------------------------------

@pytest.mark.parametrize("encoder", IMAGE_ENCODERS)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_encoder_with_both_heads_and_fusion(encoder: str, channels: int) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, channels, 16, 16)
    for head in ("factored", "joint"):
        for n_clinical in (0, 5):
            enc = image_encoder(encoder, in_channels=channels, size=16, dim=16, depth=1)
            net = ImageNet(enc, n_types=3, n_states=2, n_clinical=n_clinical, head=head,
                           pairs=torch.tensor([[0, 0], [1, 1], [2, 0]]))
            clin = torch.rand(2, n_clinical) if n_clinical else None
            out = net(x, clin)
            assert out["cell_type"].shape == (2, 3) and out["cell_state"].shape == (2, 2)
            assert net.embed(x, clin).shape[1] == enc.out_features + (32 if n_clinical else 0)
            if head == "joint":
                assert out["pair"].shape == (2, 3)
            if n_clinical:
                with pytest.raises(ValueError, match="clinical"):
                    net(x)


def test_estimator_learns_saves_and_loads(manifest: Path, tmp_path: Path) -> None:
    data = read_image_manifest(manifest, image="image", patient="patient", cell_type="cell_type",
                               cell_state="cell_state", size=16, progress=False)
    y = data.obs["biocls_cell_type"].to_numpy()
    s = data.obs["biocls_cell_state"].to_numpy()
    model = ImageClassifier(max_epochs=8, patience=8, progress=False, batch_size=32)
    model.fit(data.images[:96], y[:96], s[:96], images_val=data.images[96:],
              cell_type_val=y[96:], cell_state_val=s[96:])
    acc = np.mean(model.predict(data.images[96:])["cell_type"] == y[96:])
    assert acc > 0.6  # chance is 1/3: the squares' colour is easy
    model.save(tmp_path / "m")
    again = ImageClassifier.load(tmp_path / "m")
    p1, p2 = model.predict_proba(data.images[96:]), again.predict_proba(data.images[96:])
    assert np.allclose(p1["cell_type"], p2["cell_type"], atol=1e-5)
    assert np.allclose(p1["cell_state"], p2["cell_state"], atol=1e-5)
    with pytest.raises(ValueError, match="fitted on"):
        model.predict_proba(data.images[:2, :1])


def test_transfer_starts_from_the_given_encoder(manifest: Path) -> None:
    data = read_image_manifest(manifest, image="image", patient="patient", cell_type="cell_type",
                               size=16, progress=False)
    y = data.obs["biocls_cell_type"].to_numpy()
    first = ImageClassifier(max_epochs=1, progress=False, seed=1).fit(data.images, y)
    state = first.encoder_state()
    # no learning at all (lr≈0): the encoder must still hold the weights it started from
    second = ImageClassifier(max_epochs=1, progress=False, seed=2, lr=1e-12,
                             weight_decay=0.0).fit(data.images, y, init_encoder=state)
    after = second.encoder_state()
    for k, v in state.items():
        if v.dtype.is_floating_point and "running" not in k:
            assert torch.allclose(v, after[k], atol=1e-6), k
    assert second.transferred_ and not first.transferred_


# -- clinical data, fusion and the probe ----------------------------------------------------

def test_clinical_encoder_reads_each_column_as_what_it_holds(tmp_path: Path) -> None:
    fit = pd.DataFrame({"age": ["40", "50", "", "60"], "sex": ["F", "M", "F", "M"],
                        "symptoms": ["fever;cough", "cough", "", "fever"]})
    enc = ClinicalEncoder().fit(fit)
    kinds = {c["name"]: c["kind"] for c in enc.columns_}
    assert kinds == {"age": "numeric", "sex": "categorical", "symptoms": "text"}
    X = enc.transform(fit)
    assert X.shape == (4, 2 + 2 + 2) and enc.n_features_ == 6
    assert X[2, 1] == 1.0 and X[0, 1] == 0.0  # the gap is flagged, and imputed
    new = enc.transform(pd.DataFrame({"age": ["45"], "sex": ["X"], "symptoms": ["rash;fever"]}))
    assert new[0, 2:4].sum() == 0.0  # an unseen category is all zeros
    assert new[0, 4:].max() > 0  # the known term counts, the unknown one does not
    enc.save(tmp_path / "c.json")
    assert np.array_equal(ClinicalEncoder.load(tmp_path / "c.json").transform(fit), X)
    with pytest.raises(BioclsError, match="no clinical column 'sex'"):
        enc.transform(fit.drop(columns="sex"))


def test_choose_fusion() -> None:
    assert choose_fusion({"image": 0.30, "fused": 0.29}, "auto") == "fused"
    assert choose_fusion({"image": 0.30, "fused": 0.295}, "auto") == "image"  # within margin
    assert choose_fusion({"image": 0.10, "fused": 0.40}, "always") == "fused"
    assert choose_fusion({"image": 0.40, "fused": 0.10}, "never") == "image"


def test_fusion_verdict_doubts_a_gain_the_clinical_data_cannot_explain() -> None:
    from biocls.tasks.images import fusion_summary

    metrics = {"baselines": {"image": {"cell_type": {"macro_f1": 0.80}},
                             "fused": {"cell_type": {"macro_f1": 0.95}},
                             "clinical": {"cell_type": {"macro_f1": 0.13}}},
               "confusion": {"cell_type": {"factored": {"labels": ["a", "b", "c", "d"]}}}}
    verdict = fusion_summary(metrics, [], ["cell_type"], "auto")["verdict"]
    assert verdict.startswith("Fusion helped") and "training variance" in verdict
    metrics["baselines"]["clinical"]["cell_type"]["macro_f1"] = 0.70  # informative on its own
    assert "training variance" not in fusion_summary(metrics, [], ["cell_type"], "auto")["verdict"]


def test_patient_probe_knows_an_identifying_embedding_from_a_blind_one() -> None:
    rng = np.random.default_rng(4)
    patients = np.repeat([f"P{i}" for i in range(8)], 30)
    onehot = (patients[:, None] == np.unique(patients)[None]).astype(float)
    identifying = onehot + 0.1 * rng.normal(size=onehot.shape)
    blind = rng.normal(size=(len(patients), 8))
    probe = rng.random(len(patients)) < 0.25
    known = patient_probe(identifying[~probe], patients[~probe], identifying[probe],
                          patients[probe])
    chance = patient_probe(blind[~probe], patients[~probe], blind[probe], patients[probe])
    assert known["accuracy"] > 0.95
    assert chance["accuracy"] < 0.3 and abs(chance["chance"] - 1 / 8) < 0.1


# -- the task end to end --------------------------------------------------------------------

def test_cross_validation_with_clinical_columns(manifest: Path, tmp_path: Path) -> None:
    exp = parse_experiment({
        "task": "images", "manifest": str(manifest), "folds": 3, "progress": False,
        "keys": {"cell_state": "cell_state", "clinical": ["age", "code", "symptoms"]},
        "model": {"size": 16, "max_epochs": 3, "patience": 3, "batch_size": 32}}, name="img")
    task = get_task("images")
    data = task.load(exp)
    res = cross_validate(task, exp, data)
    pred, m = res.predictions, res.metrics
    assert len(pred) == 144 and pred.groupby(C.PATIENT)[C.FOLD].nunique().max() == 1
    for name in ("image", "fused", "clinical", "logreg"):
        assert C.pred_col(C.CELL_TYPE, name) in pred and name in m["baselines"]
    assert m["task"] == "images" and m["n_images"] == 144
    assert set(m["fusion"]["macro_f1"]) == {"cell_type", "cell_state"}
    assert len(m["fusion"]["chosen_by_fold"]) == 3 and m["fusion"]["verdict"]
    # a per-patient ward code is one-hot in the fused embedding: the probe names patients
    probe = m["patient_probe"]
    assert probe["fused"]["accuracy"] > 0.9
    assert probe["fused"]["accuracy"] > probe["image"]["accuracy"] + 0.3
    # each fold's shipped calls are exactly the model it chose
    for k, chosen in enumerate(m["fusion"]["chosen_by_fold"]):
        fold = pred[pred[C.FOLD] == k]
        assert (fold[C.pred_col(C.CELL_TYPE)] == fold[C.pred_col(C.CELL_TYPE, chosen)]).all()
    gallery = res.tables["gallery"]
    assert set(gallery["kind"]) <= {"confident mistake", "least confident"}
    assert gallery.groupby([C.PATIENT, "kind"]).size().max() <= 4
    assert gallery["saliency_png"].str.len().min() > 100


def test_predict_on_a_manifest(manifest: Path, tmp_path: Path) -> None:
    from biocls.splits import plan_fold
    from biocls.tasks import make_splits, run_fold

    exp = parse_experiment({
        "task": "images", "manifest": str(manifest), "folds": 3, "progress": False,
        "keys": {"cell_state": "cell_state", "clinical": ["age"]},
        "model": {"size": 16, "max_epochs": 2, "fusion": "always"}}, name="img")
    task = get_task("images")
    data = task.load(exp)
    plan = plan_fold(make_splits(task, exp, data), "final", task.patients(data), seed=0,
                     validation_fraction=0.2, source="splits")
    run_fold(task, exp, data, plan, out_dir=tmp_path / "model")
    assert json.loads((tmp_path / "model" / "images.json").read_text())["clinical"] == ["age"]
    task.predict_file(tmp_path / "model", manifest, tmp_path / "out.tsv")
    out = pd.read_csv(tmp_path / "out.tsv", sep="\t")
    assert list(out.columns) == ["image", "biocls_cell_type", "biocls_cell_type_confidence",
                                 "biocls_cell_state", "biocls_cell_state_confidence"]
    assert len(out) == 144 and set(out["biocls_cell_type"]) <= set(TYPES)
    # the fused model needs its clinical column: a manifest without it is a one-line error
    table = pd.read_csv(manifest, sep="\t").drop(columns="age")
    table.to_csv(manifest.parent / "no_age.tsv", sep="\t", index=False)
    with pytest.raises(BioclsError, match="age"):
        task.predict_file(tmp_path / "model", manifest.parent / "no_age.tsv",
                          tmp_path / "out2.tsv")
    assert not (tmp_path / "out2.tsv").exists()


def test_trainer_schedule_sets_each_update_and_is_counted_in_the_checkpoint(
        tmp_path: Path) -> None:
    from biocls.train import CHECKPOINT, Trainer

    net = torch.nn.Linear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)

    def batches(rng: np.random.Generator):
        yield from ((x[i:i + 4], y[i:i + 4]) for i in (0, 4))

    def loss(module: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return ((module(batch[0]) - batch[1]) ** 2).mean()

    Trainer(max_epochs=3, patience=10, lr=0.1, progress=False, checkpoint_dir=tmp_path,
            schedule=lambda u: 1.0 / (u + 1)).fit(net, batches=batches, loss=loss)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["updates"] == 6
    # the last update (the 6th, u = 5) ran at lr · schedule(5)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.1 / 6)


def test_official_test_split_is_kept_out_and_scored(tmp_path: Path) -> None:
    from biocls.splits import plan_fold
    from biocls.tasks import make_splits, run_fold

    rng = np.random.default_rng(5)
    arrays = {}
    for split, n in (("train", 60), ("val", 20), ("test", 30)):
        labels = rng.integers(0, 3, n)
        arrays[f"{split}_images"] = np.stack([_cell(rng, int(t), 0) for t in labels])
        arrays[f"{split}_labels"] = labels[:, None]
    np.savez(tmp_path / "set.npz", **arrays)
    exp = parse_experiment({"task": "images", "input": str(tmp_path / "set.npz"), "folds": 2,
                            "pseudo_patients": 4, "official_test": True, "progress": False,
                            "model": {"size": 16, "max_epochs": 2}}, name="npz")
    task = get_task("images")
    data = task.load(exp)
    assert len(data) == 80 and "test" not in set(data.obs["biocls_split"])
    plan = plan_fold(make_splits(task, exp, data), "final", task.patients(data), seed=0,
                     validation_fraction=0.25, source="splits")
    run_fold(task, exp, data, plan, out_dir=tmp_path / "res" / "model")
    scored = json.loads((tmp_path / "res" / "model" / "official_test.json").read_text())
    assert scored["n_images"] == 30 and 0.0 <= scored["accuracy"] <= 1.0
    metrics: dict = {}
    task.attach(exp, metrics, tmp_path / "res")
    assert metrics["official_test"] == scored
