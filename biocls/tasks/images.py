"""The cell-image task (``task: images``): load, fit, predict, save and score cell images.

Everything patient-grouped is the runner's (:mod:`biocls.tasks._runner`). This module knows
images: MONAI transforms and encoders (through :class:`~biocls.estimators.ImageClassifier`), and
what clinical columns add. With ``keys.clinical`` every fold trains the image alone and the image
fused with the clinical data, fits the clinical data alone (logistic regression), and probes how
well each embedding recognises the training patients from images it never trained on. Fusion
that only memorises patients raises the probe and not the score on the fold's new patients.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from biocls import columns as C
from biocls._errors import BioclsError
from biocls._io import atomic_path, write_json, write_tsv
from biocls._provenance import model_provenance
from biocls.config import ImageExperiment, to_dict
from biocls.data._images import ImageSet, read_image_manifest, read_image_npz
from biocls.estimators import ImageClassifier
from biocls.evaluate import (
    classification_metrics,
    confusion_tables,
    known_mask,
    patient_details,
)
from biocls.splits import FoldPlan
from biocls.tasks._protocol import FoldResult
from biocls.tasks.cells import unseen_mask, unseen_report

__all__ = ["ImageFit", "ImagesTask", "choose_fusion", "patient_probe"]

log = logging.getLogger(__name__)

#: a fused model replaces the image-only one only if it makes this many fewer errors (as a
#: share of the validation labels): ties go to the model that cannot memorise patients
FUSION_MARGIN = 0.01
#: files of an image model folder beside the estimator's
CLINICAL_FILE = "clinical.json"
IMAGE_INFO = "images.json"
OFFICIAL_TEST = "official_test.json"


@dataclass
class ImageFit:
    """What one fold fitted: the image model, the fused model and the clinical baseline (with
    clinical columns), the pixel baseline, and what was chosen."""

    image: ImageClassifier
    fused: ImageClassifier | None = None
    #: with pretraining, the image-only model trained from scratch on the same fold
    scratch: ImageClassifier | None = None
    clinical_encoder: Any = None
    clinical: dict[str, Any] | None = None
    logreg: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def shipped(self) -> ImageClassifier:
        return self.fused if self.info.get("fusion_chosen") == "fused" else self.image


class ImagesTask:
    """:class:`~biocls.tasks.Task` for cell images."""

    name: ClassVar[str] = "images"
    items: ClassVar[str] = "images"
    #: ``gallery``: per patient, the most confident mistakes and the least confident images,
    #: as PNGs with their saliency overlays (base64), for the patient pages
    tables: ClassVar[tuple[str, ...]] = ("predictions", "gallery")
    encoded: ClassVar[bool] = False
    patient_labels: ClassVar[bool] = False

    # -- data ------------------------------------------------------------------------------
    def load(self, exp: ImageExperiment, *, store: Path | None = None) -> ImageSet:
        """The experiment's images; with ``official_test`` the ``.npz`` test split is left out
        (only the final model sees it, to be scored)."""
        data = self._read(exp)
        if exp.official_test:
            data = data.subset((data.obs["biocls_split"] != "test").to_numpy())
        if exp.pretrain is not None and store is not None:  # splitting needs no encoder
            data.pretrained = read_pretrained(store, exp)
        return data

    def _read(self, exp: ImageExperiment, splits: tuple[str, ...] = ("train", "val", "test")
              ) -> ImageSet:
        size = exp.model.size
        if exp.input:
            return read_image_npz(exp.input, size=size, pseudo_patients=exp.pseudo_patients,
                                  seed=exp.seed, splits=splits)
        if not exp.manifest:
            raise BioclsError("`manifest` is not set", where=f"experiments.{exp.name}",
                              fix="set manifest: (or input: an .npz, or a simulate: block)")
        k = exp.keys
        return read_image_manifest(exp.manifest, image=k.image, patient=k.patient,
                                   cell_type=k.cell_type, cell_state=k.cell_state,
                                   clinical=k.clinical, size=size,
                                   pseudo_patients=exp.pseudo_patients, seed=exp.seed,
                                   progress=exp.progress)

    def patients(self, data: ImageSet) -> np.ndarray:
        return data.obs["biocls_patient"].to_numpy()

    def strata(self, data: ImageSet) -> np.ndarray:
        return data.obs["biocls_cell_type"].to_numpy()

    # -- fit / predict ---------------------------------------------------------------------
    def fit(self, exp: ImageExperiment, data: ImageSet, plan: FoldPlan, *,
            checkpoint_dir: Path | None = None) -> ImageFit:
        """The image model, and with clinical columns the fused model, the clinical baseline and
        the patient probe; early stopping and the fusion choice use the validation patients."""
        if exp.pretrain is not None and data.pretrained is None:
            read_pretrained(None, exp)  # the one-line error: which folder to pass
        obs = data.obs
        fit_m, val_m, _ = plan.masks(self.patients(data))
        unseen = unseen_mask(obs, exp)
        fit_m, val_m = fit_m & ~unseen, val_m & ~unseen
        has_clinical = bool(exp.keys.clinical) and data.clinical is not None
        probe_m = np.zeros(len(obs), dtype=bool)
        if has_clinical and not plan.final:
            probe_m = _probe_images(obs, fit_m, exp.model.probe_fraction, exp.seed)
        train_m = fit_m & ~probe_m
        log.info("fold %s: %d training images, %d validation images, %d held back for the "
                 "patient probe, %d of unseen combinations withheld", plan.fold, train_m.sum(),
                 val_m.sum(), probe_m.sum(), int(unseen.sum()))
        y = {h: _labels(obs[train_m], h) for h in C.HEADS}
        y_val = {h: _labels(obs[val_m], h) for h in C.HEADS}

        def train(clinical: np.ndarray | None, clinical_val: np.ndarray | None, name: str, *,
                  transfer: bool = True) -> ImageClassifier:
            model = image_classifier(exp)
            return model.fit(data.images[train_m], y[C.CELL_TYPE], y[C.CELL_STATE], clinical,
                             images_val=data.images[val_m], cell_type_val=y_val[C.CELL_TYPE],
                             cell_state_val=y_val[C.CELL_STATE], clinical_val=clinical_val,
                             init_encoder=data.pretrained if transfer else None,
                             checkpoint_dir=checkpoint_dir / name if checkpoint_dir else None)

        image = train(None, None, "image")
        fitted = ImageFit(image, info={"fold": plan.fold, "history": image.history_.as_dict(),
                                       "transfer": data.pretrained is not None})
        if data.pretrained is not None and not plan.final:
            # the same fold from scratch: what the pretraining is compared with
            fitted.scratch = train(None, None, "scratch", transfer=False)
        if has_clinical:
            from biocls.preprocess._clinical import ClinicalEncoder

            enc = ClinicalEncoder().fit(data.clinical[train_m])
            c_train, c_val = enc.transform(data.clinical[train_m]), \
                enc.transform(data.clinical[val_m])
            fitted.clinical_encoder = enc
            fitted.fused = train(c_train, c_val, "fused")
            if not plan.final:  # a comparison only: the final fit predicts no held-out patients
                fitted.clinical = {h: _logreg_fit(c_train, y[h], exp.seed) for h in C.HEADS
                                   if y[h] is not None}
            errors = {"image": _error(image.predict(data.images[val_m]), y_val),
                      "fused": _error(fitted.fused.predict(data.images[val_m], c_val), y_val)}
            fitted.info["fusion_validation_error"] = errors
            fitted.info["fusion_chosen"] = choose_fusion(errors, exp.model.fusion)
            if probe_m.any():
                fitted.info["patient_probe"] = {
                    "image": patient_probe(image.embed(data.images[train_m]),
                                           obs["biocls_patient"][train_m],
                                           image.embed(data.images[probe_m]),
                                           obs["biocls_patient"][probe_m], seed=exp.seed),
                    "fused": patient_probe(
                        fitted.fused.embed(data.images[train_m], c_train),
                        obs["biocls_patient"][train_m],
                        fitted.fused.embed(data.images[probe_m],
                                           enc.transform(data.clinical[probe_m])),
                        obs["biocls_patient"][probe_m], seed=exp.seed)}
        else:
            fitted.info["fusion_chosen"] = "image"
        if not plan.final:
            fitted.logreg = {h: _logreg_fit(_pixels(data.images[train_m]), y[h], exp.seed)
                             for h in C.HEADS if y[h] is not None}
        return fitted

    def predict(self, exp: ImageExperiment, fitted: ImageFit, data: ImageSet,
                plan: FoldPlan) -> FoldResult:
        """The held-out patients' images: the shipped model's calls and probabilities, and every
        comparison's calls side by side (columns: :mod:`biocls.columns`)."""
        test_m = plan.masks(self.patients(data))[2]
        test = data.subset(test_m)
        o = test.obs
        pred = pd.DataFrame({C.CELL_ID: o.index.astype(str), C.PATIENT: o["biocls_patient"],
                             C.FOLD: int(plan.fold), C.IMAGE: o["biocls_image"],
                             C.true_col(C.CELL_TYPE): o["biocls_cell_type"]})
        has_state = "biocls_cell_state" in o and bool(known_mask(o["biocls_cell_state"]).any())
        if has_state:
            pred[C.true_col(C.CELL_STATE)] = o["biocls_cell_state"].to_numpy(dtype=object)
        clin = (None if fitted.clinical_encoder is None
                else fitted.clinical_encoder.transform(test.clinical))
        shipped = fitted.shipped
        proba = shipped.predict_proba(test.images, clin if shipped is fitted.fused else None)
        vocab = {C.CELL_TYPE: shipped.types_, C.CELL_STATE: shipped.states_}
        for head, p in proba.items():
            pred[C.pred_col(head)] = np.asarray(vocab[head])[p.argmax(1)]
            pred[C.confidence_col(head)] = p.max(1)
        calls = {"image": fitted.image.predict(test.images)}
        if fitted.scratch is not None:
            calls["scratch"] = fitted.scratch.predict(test.images)
        if fitted.fused is not None:
            calls["fused"] = fitted.fused.predict(test.images, clin)
            calls["clinical"] = {h: m.predict(clin) for h, m in fitted.clinical.items()}
        if fitted.logreg:
            px = _pixels(test.images)
            calls["logreg"] = {h: m.predict(px) for h, m in fitted.logreg.items()}
        for name, by_head in calls.items():
            for head, labels in by_head.items():
                pred[C.pred_col(head, name)] = labels
        for head, p in proba.items():
            for j, cls in enumerate(vocab[head]):
                pred[C.prob_col(head, cls)] = p[:, j]
        gallery = _gallery(pred, test, shipped, clin if shipped is fitted.fused else None)
        return FoldResult({"predictions": pred, "gallery": gallery}, dict(fitted.info))

    def save(self, exp: ImageExperiment, fitted: ImageFit, data: ImageSet, plan: FoldPlan,
             directory: Path) -> None:
        """The final model folder: the shipped model, its clinical encoder when it fuses, what
        a manifest must hold for ``biocls predict``, and (``official_test``) its test score."""
        shipped = fitted.shipped
        shipped.save(directory, meta={"spec_name": exp.name, "keys": to_dict(exp.keys),
                                      **model_provenance(exp)})
        fuses = shipped is fitted.fused
        if fuses:
            fitted.clinical_encoder.save(directory / CLINICAL_FILE)
        write_json(directory / IMAGE_INFO, {
            "size": exp.model.size, "channels": int(data.images.shape[1]),
            "image_key": exp.keys.image,
            "clinical": list(exp.keys.clinical) if fuses else [],
            "fusion_chosen": fitted.info.get("fusion_chosen"),
            "fusion_validation_error": fitted.info.get("fusion_validation_error")})
        write_json(directory / "train_info.json", {**plan.as_dict(), **fitted.info})
        if exp.official_test:
            test = self._read(exp, ("test",))
            calls = shipped.predict(test.images)
            write_json(directory / OFFICIAL_TEST, {
                "n_images": len(test),
                **classification_metrics(test.obs["biocls_cell_type"], calls[C.CELL_TYPE]),
                "roc_auc_ovr": _auc(test.obs["biocls_cell_type"].to_numpy(),
                                    shipped.predict_proba(test.images)[C.CELL_TYPE],
                                    shipped.types_)})

    # -- metrics ---------------------------------------------------------------------------
    def metrics(self, exp: ImageExperiment, tables: dict[str, pd.DataFrame],
                infos: list[dict[str, Any]]) -> dict[str, Any]:
        """``metrics.json``: as for cells, plus ``fusion`` and ``patient_probe`` (DESIGN §4c)."""
        pred = tables["predictions"]
        heads = [h for h in C.HEADS if C.true_col(h) in pred]
        metrics: dict[str, Any] = {"task": "images", "experiment": exp.name,
                                   "n_patients": int(pred[C.PATIENT].nunique()),
                                   "n_images": int(len(pred)), "n_cells": int(len(pred)),
                                   "folds": len(infos), "baselines": {}}
        for h in heads:
            true = pred[C.true_col(h)]
            metrics[h] = classification_metrics(true, pred[C.pred_col(h)])
            metrics[h]["by_fold"] = [
                classification_metrics(g[C.true_col(h)], g[C.pred_col(h)])["macro_f1"]
                for _, g in pred.groupby(C.FOLD)]
            for name in C.IMAGE_MODELS[1:]:
                if C.pred_col(h, name) in pred:
                    metrics["baselines"].setdefault(name, {})[h] = classification_metrics(
                        true, pred[C.pred_col(h, name)])
        metrics["per_patient"] = {
            str(p): {"fold": int(g[C.FOLD].iloc[0]), "n_cells": int(len(g)),
                     **{h: classification_metrics(g[C.true_col(h)], g[C.pred_col(h)])
                        for h in heads}}
            for p, g in pred.groupby(C.PATIENT)}
        metrics["unseen_combinations"] = unseen_report(pred, exp)
        metrics["confusion"] = confusion_tables(pred)
        metrics["patient_details"] = patient_details(pred)
        if exp.pretrain is not None:
            metrics["transfer"] = transfer_summary(metrics, heads, exp)
        if exp.keys.clinical:
            metrics["fusion"] = fusion_summary(metrics, infos, heads, exp.model.fusion)
            metrics["patient_probe"] = probe_summary(infos)
        if exp.pseudo_patients:
            metrics["pseudo_groups"] = (
                f"images without patients split into {exp.pseudo_patients} random "
                "pseudo-patients: folds measure new images, not new patients")
        return metrics

    def attach(self, exp: ImageExperiment, metrics: dict[str, Any], out_dir: Path) -> None:
        """The final model's score on the ``.npz``'s official test split, when asked for."""
        path = Path(out_dir) / "model" / OFFICIAL_TEST
        if exp.official_test and path.exists():
            metrics["official_test"] = json.loads(path.read_text())

    # -- new data --------------------------------------------------------------------------
    def predict_file(self, model_dir: Path, input: Path, output: Path) -> None:  # noqa: A002
        """``biocls predict`` on a manifest: one row per image (DESIGN §4c), written atomically."""
        model_dir, input, output = Path(model_dir), Path(input), Path(output)
        model = ImageClassifier.load(model_dir)
        info = json.loads((model_dir / IMAGE_INFO).read_text())
        if input.suffix not in (".tsv", ".txt"):
            raise BioclsError(f"expected a manifest .tsv, got '{input.suffix or 'no suffix'}'",
                              where=str(input), fix="list the images in a TSV (DESIGN §4c)")
        data = read_image_manifest(input, image=info["image_key"], patient=None, cell_type=None,
                                   clinical=info["clinical"], size=info["size"], progress=False)
        if data.images.shape[1] != info["channels"]:
            raise BioclsError(f"images have {data.images.shape[1]} channels; the model was "
                              f"trained on {info['channels']}", where=str(input),
                              fix="give images with the model's channel count")
        clin = None
        if info["clinical"]:
            from biocls.preprocess._clinical import ClinicalEncoder

            enc = ClinicalEncoder.load(model_dir / CLINICAL_FILE)
            clin = enc.transform(data.clinical, source=str(input))
        proba = model.predict_proba(data.images, clin)
        out = pd.DataFrame({info["image_key"]: data.obs["biocls_image"].to_numpy()})
        vocab = {C.CELL_TYPE: model.types_, C.CELL_STATE: model.states_}
        for head, p in proba.items():
            out[f"biocls_{head}"] = np.asarray(vocab[head])[p.argmax(1)]
            out[f"biocls_{head}_confidence"] = p.max(1)
        with atomic_path(output) as tmp:
            write_tsv(tmp, out)


def pretrain(exp: ImageExperiment, out: Path) -> None:
    """``biocls pretrain``: train the encoder on ``pretrain.input``'s labels (its train split;
    its val split stops early) at the experiment's image size and channel count, and write its
    weights (``encoder.pt``) and what it reached (``pretrain.json``) into ``out``."""
    import torch

    assert exp.pretrain is not None
    pre = exp.pretrain
    target = ImagesTask()._read(exp)
    channels = int(target.images.shape[1])
    src = read_image_npz(pre.input, size=exp.model.size, pseudo_patients=2, seed=exp.seed,
                         splits=("train", "val"))
    images = _match_channels(src.images, channels)
    train_m = (src.obs["biocls_split"] == "train").to_numpy()
    if pre.max_images is not None and train_m.sum() > pre.max_images:
        keep = np.random.default_rng([exp.seed, 9_303]).choice(
            np.flatnonzero(train_m), size=pre.max_images, replace=False)
        train_m = np.isin(np.arange(len(train_m)), keep)
    val_m = (src.obs["biocls_split"] == "val").to_numpy()
    labels = src.obs["biocls_cell_type"].to_numpy(dtype=object)
    model = image_classifier(exp)
    model.set_params(max_epochs=pre.max_epochs)
    model.fit(images[train_m], labels[train_m], images_val=images[val_m],
              cell_type_val=labels[val_m])
    acc = float(np.mean(model.predict(images[val_m])[C.CELL_TYPE] == labels[val_m].astype(str)))
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        torch.save(model.encoder_state(), tmp / "encoder.pt")
        write_json(tmp / "pretrain.json", {
            "source": pre.input, "n_train": int(train_m.sum()), "n_val": int(val_m.sum()),
            "classes": model.types_, "val_accuracy": acc, "channels": channels,
            "size": exp.model.size, "encoder": exp.model.encoder,
            "history": model.history_.as_dict()})
    log.info("pretrained the %s encoder on %d images of %s: validation accuracy %.3f",
             exp.model.encoder, int(train_m.sum()), pre.input, acc)


def read_pretrained(store: Path | None, exp: ImageExperiment) -> Any:
    """The encoder weights ``biocls pretrain`` wrote (``--store`` of ``biocls train``)."""
    import torch

    if store is None:
        raise BioclsError("this experiment has a pretrain: block, but no pretrained encoder was "
                          "given", where="--store",
                          fix="run `biocls pretrain` and pass its folder as --store")
    path = Path(store) / "encoder.pt"
    if not path.exists():
        raise BioclsError("no encoder.pt", where=str(store),
                          fix="pass the folder `biocls pretrain --out` wrote")
    info = json.loads((Path(store) / "pretrain.json").read_text())
    if info.get("encoder") != exp.model.encoder or info.get("size") != exp.model.size:
        raise BioclsError(f"pretrained a {info.get('encoder')} at {info.get('size')} px; this "
                          f"experiment trains a {exp.model.encoder} at {exp.model.size} px",
                          where=str(store), fix="run `biocls pretrain` again for this experiment")
    return torch.load(path, map_location="cpu", weights_only=True)


def _match_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Grey ↔ colour so that a pretraining set fits the target's channel count."""
    if images.shape[1] == channels:
        return images
    if channels == 1:
        return np.rint(images.mean(1, keepdims=True)).astype(np.uint8)
    return np.repeat(images, channels, axis=1)


def image_classifier(exp: ImageExperiment) -> ImageClassifier:
    """The estimator an experiment's ``model:`` block describes (one place for all callers)."""
    m = exp.model
    return ImageClassifier(encoder=m.encoder, widths=tuple(m.widths), patch=m.patch, dim=m.dim,
                           depth=m.depth, augment=m.augment, dropout=m.dropout, lr=m.lr,
                           weight_decay=m.weight_decay, batch_size=m.batch_size,
                           max_epochs=m.max_epochs, patience=m.patience,
                           lr_schedule=m.lr_schedule, device=m.device,
                           seed=exp.seed, progress=exp.progress)


def choose_fusion(errors: dict[str, float], setting: str,
                  margin: float = FUSION_MARGIN) -> str:
    """``"fused"`` or ``"image"``: with ``auto``, fused only if its validation error (on patients
    the fit never saw, so memorising fit patients cannot help) is lower by at least ``margin``."""
    if setting == "always":
        return "fused"
    if setting == "never":
        return "image"
    return "fused" if errors["fused"] <= errors["image"] - margin else "image"


def patient_probe(train_embedding: np.ndarray, train_patients: Any,
                  probe_embedding: np.ndarray, probe_patients: Any, *,
                  seed: int = 0) -> dict[str, float]:
    """How well a linear probe on an embedding names the patient of images it never trained on.

    A logistic regression learns patient IDs from the embeddings of training images; its
    accuracy on held-back images of the same patients is compared with chance (the commonest
    patient's share). An embedding that carries a patient's identity (e.g. a nearly unique
    clinical value) scores far above chance.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    y, y_probe = np.asarray(train_patients).astype(str), np.asarray(probe_patients).astype(str)
    scaler = StandardScaler().fit(train_embedding)
    clf = LogisticRegression(C=1.0, max_iter=500, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(scaler.transform(train_embedding), y)
    acc = float(np.mean(clf.predict(scaler.transform(probe_embedding)) == y_probe))
    chance = float(pd.Series(y_probe).value_counts(normalize=True).max())
    return {"accuracy": acc, "chance": chance, "n_patients": int(len(set(y))),
            "n_images": int(len(y_probe))}


def fusion_summary(metrics: dict[str, Any], infos: list[dict[str, Any]], heads: list[str],
                   setting: str) -> dict[str, Any]:
    """Image only / clinical only / fused macro-F1 per head on the same folds, what each fold
    shipped, and one plain sentence: did fusion help on new patients?"""
    table = {h: {name: metrics["baselines"].get(name, {}).get(h, {}).get("macro_f1")
                 for name in ("image", "clinical", "fused")} for h in heads}
    rows = {h: t for h, t in table.items() if t["fused"] is not None and t["image"] is not None}
    verdict = _compare("Fusion", {h: (t["fused"], t["image"]) for h, t in rows.items()},
                       "fused", "image only")
    for h, t in rows.items():
        labels = ((metrics.get("confusion") or {}).get(h) or {}).get("factored", {}).get("labels")
        chance = 1.0 / len(labels) if labels else None
        if (chance is not None and t["fused"] - t["image"] >= FUSION_MARGIN
                and t["clinical"] is not None and t["clinical"] <= chance + 0.05):
            verdict += (f" The clinical data alone score {t['clinical']:.3f} on "
                        f"{h.replace('_', ' ')}, near chance ({chance:.2f}): the gain there is "
                        "more likely the image model's training variance than clinical "
                        "information.")
    return {"macro_f1": table, "setting": setting, "verdict": verdict,
            "chosen_by_fold": [i.get("fusion_chosen") for i in infos],
            "validation_error_by_fold": [i.get("fusion_validation_error") for i in infos]}


def transfer_summary(metrics: dict[str, Any], heads: list[str],
                     exp: ImageExperiment) -> dict[str, Any]:
    """Image-only macro-F1 from scratch and after pretraining, per head, on the same folds."""
    table = {h: {"scratch": metrics["baselines"].get("scratch", {}).get(h, {}).get("macro_f1"),
                 "transfer": metrics["baselines"].get("image", {}).get(h, {}).get("macro_f1")}
             for h in heads}
    verdict = _compare("Pretraining", {h: (t["transfer"], t["scratch"]) for h, t in table.items()
                                       if None not in t.values()},
                       "pretrained", "from scratch")
    assert exp.pretrain is not None
    return {"macro_f1": table, "source": exp.pretrain.input, "verdict": verdict}


def probe_summary(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """The patient probe's accuracy per fold and on average, image only and fused."""
    out: dict[str, Any] = {}
    for name in ("image", "fused"):
        folds = [i["patient_probe"][name] for i in infos if i.get("patient_probe")]
        if folds:
            out[name] = {"accuracy": float(np.mean([f["accuracy"] for f in folds])),
                         "chance": float(np.mean([f["chance"] for f in folds])),
                         "by_fold": [f["accuracy"] for f in folds]}
    return out


# -- helpers ---------------------------------------------------------------------------------

def _compare(subject: str, scores: dict[str, tuple[float, float]], new: str, old: str) -> str:
    """One plain sentence on what ``subject`` (fusion, pretraining) did to macro-F1 per head on
    new patients: ``scores`` maps a head to (with, without); a change under one point
    (:data:`FUSION_MARGIN`) is no change."""
    gains = [a - b for a, b in scores.values()]
    better = any(g >= FUSION_MARGIN for g in gains)
    worse = any(g <= -FUSION_MARGIN for g in gains)
    if better and not worse:
        verdict = f"{subject} helped on new patients"
    elif worse and not better:
        verdict = f"{subject} did not help on new patients: it lowered macro-F1"
    elif worse:
        verdict = f"{subject} helped one head and hurt the other on new patients"
    else:
        verdict = f"{subject} made no clear difference on new patients (within one point)"
    return verdict + ": " + "; ".join(
        f"{h.replace('_', ' ')} {a:.3f} {new} vs {b:.3f} {old}"
        for h, (a, b) in scores.items()) + "."


def _labels(o: pd.DataFrame, head: str) -> np.ndarray | None:
    col = f"biocls_{head}"
    return o[col].to_numpy(dtype=object) if col in o else None


def _probe_images(obs: pd.DataFrame, fit_m: np.ndarray, fraction: float,
                  seed: int) -> np.ndarray:
    """A ``fraction`` of each fit patient's images, kept out of training for the probe."""
    rng = np.random.default_rng([seed, 9_101])
    out = np.zeros(len(obs), dtype=bool)
    patients = obs["biocls_patient"].to_numpy()
    for p in np.unique(patients[fit_m]):
        idx = np.flatnonzero(fit_m & (patients == p))
        k = int(round(fraction * len(idx)))
        if 0 < k < len(idx):
            out[rng.choice(idx, size=k, replace=False)] = True
    return out


#: images per patient and kind in the report's gallery
GALLERY_SIZE = 4
GALLERY_COLUMNS = [C.CELL_ID, C.PATIENT, C.FOLD, C.IMAGE, "kind", C.true_col(C.CELL_TYPE),
                   C.pred_col(C.CELL_TYPE), C.confidence_col(C.CELL_TYPE), "image_png",
                   "saliency_png"]


def _gallery(pred: pd.DataFrame, test: ImageSet, model: ImageClassifier,
             clinical: np.ndarray | None, *, size: int = GALLERY_SIZE) -> pd.DataFrame:
    """Per patient: the ``size`` most confident cell-type mistakes and the ``size`` least
    confident images, each with a Grad-CAM or occlusion overlay for the type it was called."""
    from biocls.saliency import overlay_png, saliency_maps

    conf = pred[C.confidence_col(C.CELL_TYPE)].to_numpy()
    wrong = (pred[C.pred_col(C.CELL_TYPE)].astype(str)
             != pred[C.true_col(C.CELL_TYPE)].astype(str)).to_numpy()
    rows: list[tuple[int, str]] = []
    for _, idx in pred.groupby(C.PATIENT, sort=False).indices.items():
        mistakes = idx[wrong[idx]]
        mistakes = mistakes[np.argsort(-conf[mistakes])][:size]
        rows += [(int(i), "confident mistake") for i in mistakes]
        rows += [(int(i), "least confident") for i in idx[np.argsort(conf[idx])][:size]]
    if not rows:
        return pd.DataFrame(columns=GALLERY_COLUMNS)
    at = np.array([i for i, _ in rows])
    maps = saliency_maps(model, test.images[at], None if clinical is None else clinical[at])
    out = pred.iloc[at][[C.CELL_ID, C.PATIENT, C.FOLD, C.IMAGE, C.true_col(C.CELL_TYPE),
                         C.pred_col(C.CELL_TYPE), C.confidence_col(C.CELL_TYPE)]].copy()
    out.insert(4, "kind", [k for _, k in rows])
    out["image_png"] = [overlay_png(test.images[i]) for i in at]
    out["saliency_png"] = [overlay_png(test.images[i], m) for i, m in zip(at, maps, strict=True)]
    return out[GALLERY_COLUMNS].reset_index(drop=True)


def _error(calls: dict[str, np.ndarray], truth: dict[str, np.ndarray | None]) -> float:
    """Share of wrong labels over both heads (unknown labels skipped)."""
    wrong = n = 0
    for head, pred in calls.items():
        y = truth.get(head)
        if y is None:
            continue
        ok = known_mask(y)
        wrong += int((np.asarray(pred)[ok].astype(str) != np.asarray(y)[ok].astype(str)).sum())
        n += int(ok.sum())
    return wrong / max(n, 1)


def _pixels(images: np.ndarray) -> np.ndarray:
    """Flattened pixels in [0, 1]: what the logistic-regression baseline reads."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def _logreg_fit(X: np.ndarray, y: np.ndarray, seed: int) -> Any:
    """A logistic regression on the labelled rows (a constant where only one class trains)."""
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    ok = known_mask(y)
    labels = np.asarray(y[ok]).astype(str)
    clf = (LogisticRegression(C=1.0, max_iter=300, random_state=seed)
           if len(set(labels)) > 1 else DummyClassifier(strategy="most_frequent"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on tiny folds
        clf.fit(X[ok], labels)
    return clf


def _auc(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> float | None:
    from sklearn.metrics import roc_auc_score

    present = [c for c in classes if c in set(y.astype(str))]
    if len(present) < 2:
        return None
    cols = [classes.index(c) for c in present]
    p = proba[:, cols] / proba[:, cols].sum(1, keepdims=True)
    return float(roc_auc_score(y.astype(str), p, multi_class="ovr", labels=present))
