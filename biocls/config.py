"""The typed experiment config: every key, its type and its default, in one place.

A workflow config (DESIGN §4) names experiments; each block becomes a frozen dataclass
(:class:`CellExperiment` or :class:`RepertoireExperiment`) built by :func:`parse_experiment`.
The Snakefile (through :func:`load_config`), the CLI (``--spec``) and Python callers
(:mod:`biocls.tl`) all build it the same way, so an experiment trains alike whichever way it is
started. An unknown key is an error naming the key, its block and the nearest valid name.

The JSON schema in ``workflows/schemas/config.schema.yaml`` is generated from these classes
(:func:`json_schema`; ``biocls schema`` writes it) and a test checks the committed file
against it, so the two cannot drift.

Each workflow step reads a declared slice of its experiment (:meth:`CellExperiment.step_spec`),
so editing a key reruns only the steps that read it.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

from biocls._errors import BioclsError

__all__ = [
    "CellExperiment",
    "CellKeys",
    "CellModel",
    "CellPreprocess",
    "Certify",
    "Experiment",
    "ImageExperiment",
    "ImageKeys",
    "ImageModel",
    "ImagePretrain",
    "KmerBaseline",
    "RepertoireExperiment",
    "RepertoireKeys",
    "RepertoireModel",
    "WorkflowConfig",
    "config_hash",
    "json_schema",
    "load_config",
    "parse_experiment",
    "schema_yaml",
]

SCHEMA_FILE = Path("workflows") / "schemas" / "config.schema.yaml"


def opt(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Any = None,
        **schema: Any) -> Any:
    """A config field: its default, a one-line description and extra JSON-schema keywords."""
    meta = {"doc": doc, "schema": schema}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# -- blocks ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CellKeys:
    """Which ``obs`` columns hold each role; biocls never needs the user's names after reading."""

    cell_type: str = opt("cell_type", "obs column with the cell type")
    cell_state: str | None = opt(None, "obs column with the cell state (optional)")
    patient: str | None = opt("patient", "obs column with the patient/donor ID (null with "
                                         "pseudo_patients)")
    state_labels: tuple[str, ...] = opt(
        (), "multi-label, partially annotated states: obs columns, one per state label, each "
            "holding 1 (present), 0 (absent) or NaN (not annotated); unknown entries are never "
            "taken as negatives (see model.partial_loss). Use instead of cell_state",
        uniqueItems=True)


@dataclass(frozen=True)
class CellPreprocess:
    """Fitted on each fold's training patients only (QC runs per patient before splitting)."""

    n_top_genes: int = opt(2000, "highly variable genes kept", minimum=10)
    nmads: float = opt(5.0, "QC: cells beyond this many MADs of their patient are removed",
                       exclusiveMinimum=0)
    target_sum: float = opt(10000.0, "normalize_total target (raw counts only)",
                            exclusiveMinimum=0)
    max_value: float | None = opt(10.0, "clip scaled values (null: no clipping)")
    n_pcs: int | None = opt(None, "project the scaled genes on this many principal components, "
                                  "fitted on the training cells without labels (null: the "
                                  "genes); a certified model needs it: on ~1000 genes a model "
                                  "memorises random labels", minimum=2)


@dataclass(frozen=True)
class CellModel:
    """Options of :class:`biocls.estimators.CellClassifier` (same names, same defaults)."""

    encoder: Literal["mlp", "mixer"] = opt("mlp", "mlp, or mixer (MLP-Mixer over gene modules)")
    path: Literal["deep", "linear", "ensemble"] = opt(
        "ensemble", "what feeds the factored heads: the encoder (deep), the genes directly as a "
                "factored logistic regression (linear), or both (ensemble: their probabilities "
                "mixed per head; the deep path's share, 0, 0.5 or 1, is raised only where it "
                "lowers the error on the validation patients by at least one point)")
    linear_c: float | None = opt(
        None, "linear path: inverse penalty strength, as LogisticRegression's C (null: 100 / "
              "the training cells, a penalty of 0.01 on the cell-averaged loss whatever the "
              "cohort's size); with linear_penalty auto, the C of its l1 candidate",
        exclusiveMinimum=0)
    linear_penalty: Literal["auto", "l2", "l1"] = opt(
        "auto", "linear path: l1 (most genes' weights exactly 0: a few marker genes per class), "
                "l2 (weight spread over all genes), or auto: per head, l1 unless scikit-learn's "
                "default logistic regression (l2, C = 1) makes at least one point fewer errors "
                "on the validation patients")
    linear_refit: bool = opt(
        True, "linear path: once the validation patients have chosen the penalty (and the "
              "ensemble's mix), refit the linear net on training and validation patients")
    hidden: tuple[int, ...] = opt((256, 128), "mlp: hidden layer widths", minItems=1,
                                  items={"type": "integer", "minimum": 1})
    dropout: float = opt(0.2, "dropout between layers", minimum=0, exclusiveMaximum=1)
    input_dropout: float = opt(0.5, "mlp encoder: fraction of genes dropped at random in "
                                    "training", minimum=0, exclusiveMaximum=1)
    state_input: Literal["centred", "raw"] = opt(
        "centred", "factored head: the state head reads the cell's deviation from its "
                   "(predicted) type's mean training profile (centred), or the cell itself")
    early_stopping: Literal["error", "loss"] = opt(
        "error", "validation criterion: error rate (loss breaks ties), or loss")
    lr_decay: bool = opt(True, "halve the learning rate when validation stalls")
    n_modules: int = opt(32, "mixer: gene-module tokens", minimum=2)
    mixer_dim: int = opt(64, "mixer: channel width", minimum=4)
    mixer_depth: int = opt(2, "mixer: blocks", minimum=1)
    lr: float = opt(0.001, "Adam learning rate", exclusiveMinimum=0)
    weight_decay: float = opt(0.0001, "Adam weight decay", minimum=0)
    batch_size: int | None = opt(
        None, "cells per update (null: 256, or 512 / 1024 where an epoch still has 128 updates: "
              "from 65,536 / 131,072 training cells)", minimum=2)
    max_epochs: int = opt(60, "epochs at most", minimum=1)
    patience: int = opt(10, "epochs without validation improvement before stopping", minimum=1)
    state_weight: float = opt(1.0, "weight of the state loss", minimum=0)
    partial_loss: Literal["ignore", "negative", "selective"] = opt(
        "selective", "multi-label states only: unknown entries are ignored, taken as negative, "
                     "or chosen per entry by the class-aware selective loss (CSL)")
    gamma_pos: float = opt(0.0, "focusing on positives", minimum=0)
    gamma_neg: float = opt(1.0, "focusing on negatives", minimum=0)
    gamma_unann: float = opt(2.0, "focusing on unknown entries taken as negative", minimum=0)
    priors: dict[str, float] | None = opt(
        None, "selective loss: prior per state label, e.g. {activated: 0.3}; null estimates "
              "them from a first model trained with unknowns ignored",
        additionalProperties={"type": "number", "minimum": 0, "maximum": 1})
    prior_threshold: float = opt(0.5, "selective loss: labels with a higher prior are ignored "
                                      "when unknown", minimum=0, maximum=1)
    likelihood_topk: float = opt(0.5, "selective loss: unknowns ignored per cell of the batch",
                                 minimum=0)
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto uses CUDA when present")


@dataclass(frozen=True)
class Certify:
    """RATT error certificate for the shipped model (``biocls certify``).

    With this block the final model (``results/<exp>/model``) is trained the RATT way: fold
    ``fold``'s patients are held out of it entirely, and ``random_fraction`` of the fitting
    patients' cells get uniformly random labels instead of theirs.
    """

    delta: float = opt(0.05, "all the certificate's statements hold together with probability at "
                             "least 1 - delta (split equally across heads and bound kinds)",
                       exclusiveMinimum=0, exclusiveMaximum=1)
    fold: int = opt(0, "fold of splits.tsv whose patients the shipped model never sees: its "
                       "measured error and the per-patient bound come from them", minimum=0)
    random_fraction: float = opt(0.2, "share of the fitting patients' cells trained with random "
                                      "labels (0.2 gives the paper's m = n/4)",
                                 exclusiveMinimum=0, maximum=0.5)


@dataclass(frozen=True)
class RepertoireKeys:
    """Which ``metadata.tsv`` columns hold each role."""

    repertoire: str = opt("repertoire_id", "metadata column naming <repertoire_id>.tsv")
    patient: str = opt("subject_id", "metadata column with the subject/patient ID")
    label: str = opt("label", "metadata column with the repertoire's class")


@dataclass(frozen=True)
class RepertoireModel:
    """Options of :class:`biocls.estimators.RepertoireClassifier`, plus what is kept per bag."""

    pooling: Literal["attention", "patterns"] = opt(
        "attention", "DeepRC-style softmax attention over the bag, or k learned patterns")
    n_filters: int = opt(32, "CNN filters over CDR3s", minimum=1)
    kernel_size: int = opt(9, "CNN kernel width", minimum=1)
    n_patterns: int = opt(64, "patterns pooling: learned key/value patterns (k)", minimum=1)
    attention_hidden: int = opt(32, "attention pooling: hidden units", minimum=1)
    activation: Literal["relu", "selu", "gelu"] = opt("relu", "CNN activation")
    bag_pool: Literal["mean", "max"] = opt("mean", "patterns pooling: across the bag")
    use_counts: bool = opt(False, "weight sequences by their duplicate_count")
    max_length: int = opt(64, "longer CDR3s are cut", minimum=1)
    top_fraction: float | None = opt(0.1, "only the top fraction by attention enters the "
                                          "gradient pass (null: all)",
                                     exclusiveMinimum=0, maximum=1)
    min_selected: int = opt(64, "sequences per bag in the gradient pass at least", minimum=1)
    max_train_sequences: int | None = opt(10_000, "sequences sampled per bag in training",
                                          minimum=1)
    batch_size: int = opt(4, "repertoires per update", minimum=1)
    lr: float = opt(0.003, "Adam learning rate", exclusiveMinimum=0)
    weight_decay: float = opt(0.0001, "Adam weight decay", minimum=0)
    max_epochs: int = opt(30, "epochs at most", minimum=1)
    patience: int = opt(5, "epochs without validation improvement before stopping", minimum=1)
    seed_filters: int = opt(16, "filters started as detectors of enriched 4-mers (0: random)",
                            minimum=0)
    restarts: int = opt(1, "independent fits per fold; the one with the lowest loss on the "
                           "fold's validation subjects is kept (test subjects never choose). "
                           "A choice made on a few validation subjects is noisy: on a 120-subject "
                           "cohort it lowered AUC, so keep 1 unless there are many subjects",
                        minimum=1)
    seed_subsample: float = opt(0.8, "restarts after the first seed their filters from this "
                                     "random share of the training repertoires",
                                exclusiveMinimum=0, maximum=1)
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto uses CUDA when present")
    chunk: int = opt(65_536, "sequences embedded at once at inference", minimum=1)
    top_n: int = opt(20, "attended sequences kept per repertoire", minimum=1)
    pattern_top_n: int = opt(5, "sequences kept per learned pattern", minimum=1)
    threads: int | None = opt(None, "CPU threads for torch (null: all)", minimum=1)

    #: keys that are not options of the estimator
    PIPELINE_KEYS: ClassVar[tuple[str, ...]] = ("top_n", "pattern_top_n", "threads")


@dataclass(frozen=True)
class KmerBaseline:
    """The k-mer logistic regression; k, penalty and C are chosen by inner grouped CV."""

    kmers: tuple[int, ...] = opt((3, 4), "k-mer lengths tried",
                                 items={"type": "integer", "minimum": 1, "maximum": 6})
    penalties: tuple[Literal["l1", "l2"], ...] = opt(("l1", "l2"), "penalties tried")
    Cs: tuple[float, ...] = opt((0.001, 0.01, 0.1, 1.0, 10.0), "inverse regularisation tried",
                                items={"type": "number", "exclusiveMinimum": 0})
    inner_folds: int = opt(3, "inner subject-grouped folds", minimum=2)


@dataclass(frozen=True)
class ImageKeys:
    """Which manifest columns hold each role (DESIGN §4c)."""

    image: str = opt("image", "manifest column with the image path, relative to the manifest")
    patient: str | None = opt("patient", "manifest column with the patient ID (null with "
                                         "pseudo_patients)")
    cell_type: str = opt("cell_type", "manifest column with the cell type")
    cell_state: str | None = opt(None, "manifest column with the cell state (optional)")
    clinical: tuple[str, ...] = opt(
        (), "manifest columns with clinical data (numbers, categories, or ';'-separated text "
            "such as a symptom list): fused with the image, and checked for patient "
            "memorisation", uniqueItems=True)


@dataclass(frozen=True)
class ImageModel:
    """Options of :class:`biocls.estimators.ImageClassifier` and of the fusion comparison."""

    encoder: Literal["resnet", "densenet121", "vit", "mixer"] = opt(
        "resnet", "MONAI network without pretrained weights: a small ResNet, DenseNet121, a "
                  "ViT, or an MLP-Mixer over image patches built from MONAI's blocks")
    size: int = opt(28, "images are resized to size × size", minimum=8)
    widths: tuple[int, ...] = opt((16, 32, 64, 128), "resnet: channels of its four stages",
                                  minItems=4, maxItems=4, items={"type": "integer",
                                                                 "minimum": 1})
    patch: int = opt(4, "vit and mixer: patch side in pixels", minimum=1)
    dim: int = opt(128, "vit and mixer: token width", minimum=8)
    depth: int = opt(4, "vit and mixer: blocks", minimum=1)
    augment: bool = opt(True, "seeded flips, 90° rotations, intensity and stain jitter")
    dropout: float = opt(0.1, "dropout before the heads", minimum=0, exclusiveMaximum=1)
    lr: float = opt(0.002, "AdamW learning rate", exclusiveMinimum=0)
    weight_decay: float = opt(0.0001, "AdamW weight decay", minimum=0)
    batch_size: int = opt(128, "images per update", minimum=2)
    max_epochs: int = opt(30, "epochs at most", minimum=1)
    patience: int = opt(6, "epochs without validation improvement before stopping", minimum=1)
    lr_schedule: Literal["plateau", "cosine"] = opt(
        "plateau", "halve the learning rate when validation stalls (plateau), or decay it to 0 "
                   "over max_epochs (cosine)")
    fusion: Literal["auto", "always", "never"] = opt(
        "auto", "with keys.clinical: the model that ships and predicts reads image and clinical "
                "data (always), the image alone (never), or whichever errs less on each fold's "
                "validation patients (auto); image-only, clinical-only and fused are reported "
                "side by side either way")
    probe_fraction: float = opt(0.2, "share of each fitting patient's images kept out of "
                                     "training for the patient-identity probe",
                                exclusiveMinimum=0, exclusiveMaximum=1)
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto uses CUDA when present")
    threads: int | None = opt(None, "CPU threads for torch (null: all)", minimum=1)


@dataclass(frozen=True)
class ImagePretrain:
    """Transfer: the encoder is first trained on another image set's labels, then fine-tuned."""

    input: str = opt("", "a MedMNIST-style .npz (its train split trains, its val split stops "
                         "early), e.g. BloodMNIST for blood-cell targets", pattern=r"\.npz$")
    max_epochs: int = opt(10, "pretraining epochs at most", minimum=1)
    max_images: int | None = opt(None, "images of the train split used at most (null: all)",
                                 minimum=10)


# -- experiments -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Experiment:
    """Keys every task shares."""

    folds: int = opt(5, "patient-grouped folds", minimum=2)
    seed: int = opt(0, "seeds splits, models and subsampling", minimum=0)
    progress: bool = opt(True, "progress bars")

    STEPS: ClassVar[dict[str, tuple[str, ...]]] = {}

    def step_spec(self, step: str) -> dict[str, Any]:
        """The JSON-able slice of this experiment that ``step`` reads (and nothing else).

        A Snakemake rule passes only this, so editing a key reruns only the steps reading it.
        """
        full = to_dict(self)
        out: dict[str, Any] = {"name": full["name"], "task": full["task"]}
        for path in self.STEPS[step]:
            head, _, rest = path.partition(".")
            value = full.get(head)
            if rest:
                if value is None:
                    continue
                out.setdefault(head, {})[rest] = value[rest]
            elif value is not None:
                out[head] = value
        return out


@dataclass(frozen=True)
class CellExperiment(_Experiment):
    """A single-cell experiment (``task: cells``)."""

    name: str = opt("experiment", "set from the experiment's key in the config")
    task: Literal["cells"] = opt("cells", "cells")
    input: str | None = opt(None, "path to an .h5ad (or give simulate: or example:)",
                            pattern=r"\.h5ad$")
    simulate: dict[str, Any] | None = opt(None, "options of biocls simulate cells")
    example: Literal["pbmc68k_reduced"] | None = opt(None, "a real data set shipped with scanpy")
    keys: CellKeys = opt(factory=CellKeys, doc="obs columns of each role")
    pseudo_patients: int | None = opt(None, "split a single donor into N random "
                                            "pseudo-patients", minimum=2)
    unseen_combinations: tuple[tuple[str, str], ...] = opt(
        (), "[type, state] pairs withheld from every training set",
        items={"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2})
    validation_fraction: float = opt(0.2, "training patients held back for early stopping",
                                     exclusiveMinimum=0, exclusiveMaximum=1)
    preprocess: CellPreprocess = opt(factory=CellPreprocess, doc="preprocessing")
    model: CellModel = opt(factory=CellModel, doc="the factored model (and its joint twin)")
    certify: Certify | None = opt(None, "RATT error certificate (omit: none)")

    SOURCES: ClassVar[tuple[str, ...]] = ("input", "simulate", "example")
    _LOAD: ClassVar[tuple[str, ...]] = ("input", "keys", "pseudo_patients", "seed",
                                        "preprocess.nmads")
    STEPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "split": (*_LOAD, "folds"),
        "train": (*_LOAD, "progress", "unseen_combinations", "validation_fraction",
                  "preprocess", "model"),
        # the shipped model: training's slice plus what RATT training reads (not certify.delta)
        "final": (*_LOAD, "progress", "unseen_combinations", "validation_fraction",
                  "preprocess", "model", "certify.fold", "certify.random_fraction"),
        "certify": (*_LOAD, "unseen_combinations", "validation_fraction", "preprocess",
                    "model", "certify"),
        "evaluate": ("pseudo_patients", "unseen_combinations"),
    }

    def resolve_paths(self, resources: str = "resources") -> CellExperiment:
        """Point ``input`` at the file a ``simulate:``/``example:`` rule writes."""
        if self.simulate is not None:
            return dataclasses.replace(self, input=f"{resources}/{self.name}/cells.h5ad")
        if self.example is not None:
            return dataclasses.replace(self, input=f"{resources}/examples/{self.example}.h5ad")
        return self


@dataclass(frozen=True)
class RepertoireExperiment(_Experiment):
    """An immune-repertoire experiment (``task: repertoires``)."""

    name: str = opt("experiment", "set from the experiment's key in the config")
    task: Literal["repertoires"] = opt("repertoires", "repertoires")
    metadata: str | None = opt(None, "metadata.tsv, one row per repertoire")
    repertoires: str | None = opt(None, "folder of <repertoire_id>.tsv files (AIRR or DeepRC)")
    simulate: dict[str, Any] | None = opt(None, "options of biocls simulate repertoires")
    keys: RepertoireKeys = opt(factory=RepertoireKeys, doc="metadata columns of each role")
    positive_label: str | int | None = opt(None, "metadata label value counted as positive")
    validation_fraction: float = opt(0.15, "training subjects held back for early stopping",
                                     exclusiveMinimum=0, exclusiveMaximum=1)
    model: RepertoireModel = opt(factory=RepertoireModel, doc="the MIL model")
    baseline: KmerBaseline = opt(factory=KmerBaseline, doc="the k-mer logistic regression")

    SOURCES: ClassVar[tuple[str, ...]] = ("metadata", "simulate")
    STEPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "encode": ("metadata", "repertoires", "keys", "positive_label"),
        "split": ("metadata", "repertoires", "keys", "folds", "seed"),
        "train": ("keys", "seed", "progress", "validation_fraction", "model", "baseline"),
        "evaluate": ("model.pooling",),
    }

    def resolve_paths(self, resources: str = "resources") -> RepertoireExperiment:
        """Point ``metadata``/``repertoires`` at the folder a ``simulate:`` rule writes."""
        if self.simulate is not None:
            base = f"{resources}/{self.name}/repertoires"
            return dataclasses.replace(self, metadata=f"{base}/metadata.tsv",
                                       repertoires=f"{base}/repertoires")
        return self


@dataclass(frozen=True)
class ImageExperiment(_Experiment):
    """A cell-image experiment (``task: images``)."""

    name: str = opt("experiment", "set from the experiment's key in the config")
    task: Literal["images"] = opt("images", "images")
    manifest: str | None = opt(None, "manifest TSV, one row per image (or give input: or "
                                     "simulate:)", pattern=r"\.(tsv|txt)$")
    input: str | None = opt(None, "a MedMNIST-style .npz (train_images, train_labels, ...)",
                            pattern=r"\.npz$")
    simulate: dict[str, Any] | None = opt(None, "options of biocls simulate images")
    keys: ImageKeys = opt(factory=ImageKeys, doc="manifest columns of each role")
    pseudo_patients: int | None = opt(None, "images without patients (an .npz): split them into "
                                            "N random pseudo-patients", minimum=2)
    official_test: bool = opt(False, ".npz only: keep its test split out of cross-validation "
                                     "and of the final model, and score the final model on it "
                                     "(metrics.json: official_test)")
    unseen_combinations: tuple[tuple[str, str], ...] = opt(
        (), "[type, state] pairs withheld from every training set",
        items={"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2})
    validation_fraction: float = opt(0.2, "training patients held back for early stopping",
                                     exclusiveMinimum=0, exclusiveMaximum=1)
    model: ImageModel = opt(factory=ImageModel, doc="the image model")
    pretrain: ImagePretrain | None = opt(None, "pretrain the encoder on another image set, "
                                               "then fine-tune; every fold also trains from "
                                               "scratch for comparison (omit: no transfer)")

    SOURCES: ClassVar[tuple[str, ...]] = ("manifest", "input", "simulate")
    _LOAD: ClassVar[tuple[str, ...]] = ("manifest", "input", "keys", "pseudo_patients", "seed",
                                        "official_test", "model.size")
    STEPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "split": (*_LOAD, "folds"),
        "pretrain": (*_LOAD, "progress", "model", "pretrain"),
        "train": (*_LOAD, "progress", "unseen_combinations", "validation_fraction", "model",
                  "pretrain"),
        "final": (*_LOAD, "progress", "unseen_combinations", "validation_fraction", "model",
                  "pretrain"),
        "evaluate": ("pseudo_patients", "unseen_combinations", "keys", "model.fusion",
                     "pretrain"),
    }

    def resolve_paths(self, resources: str = "resources") -> ImageExperiment:
        """Point ``manifest`` at the folder a ``simulate:`` rule writes."""
        if self.simulate is not None:
            return dataclasses.replace(
                self, manifest=f"{resources}/{self.name}/images/manifest.tsv")
        return self


Experiment = CellExperiment | RepertoireExperiment | ImageExperiment
TASKS: dict[str, type[CellExperiment] | type[RepertoireExperiment] | type[ImageExperiment]] = {
    "cells": CellExperiment, "repertoires": RepertoireExperiment, "images": ImageExperiment}


@dataclass(frozen=True)
class WorkflowConfig:
    """A whole workflow config: experiments by name."""

    experiments: dict[str, Experiment]


# -- parsing ---------------------------------------------------------------------------------

def parse_experiment(block: Mapping[str, Any], *, name: str | None = None,
                     source: str = "config", partial: bool = False) -> Experiment:
    """Validate one experiment block and build its dataclass, defaults filled in.

    ``partial=True`` accepts a step's slice (:meth:`CellExperiment.step_spec`): the data source
    may be absent. Every mistake is a one-line :class:`BioclsError` naming the field.
    """
    if not isinstance(block, Mapping):
        raise BioclsError("an experiment must be a mapping of keys", where=source,
                          fix="see README.md, 'Your own data'")
    block = dict(block)
    name = str(block.pop("name", None) or name or "experiment")
    where = f"{source}: experiments.{name}"
    task = block.get("task")
    if task not in TASKS:
        raise BioclsError(f"task is {task!r}", where=f"{where}.task",
                          fix=f"set task to one of {sorted(TASKS)}")
    cls = TASKS[task]
    _check_block(block, cls, name=name, source=source, partial=partial)
    _check_schema(block, cls, where=where, partial=partial)
    return _build(cls, {**block, "name": name})


def _check_block(block: Mapping[str, Any], cls: type, *, name: str, source: str,
                 partial: bool) -> None:
    """What the schema cannot say in one line: unknown keys, simulator options, data source."""
    where = f"{source}: experiments.{name}"
    _check_unknown(block, cls, where=f"experiments.{name}", source=source)
    _check_simulate(block, cls.__dataclass_fields__["task"].default, where=f"{where}.simulate")
    inp = block.get("input")
    if isinstance(inp, str) and cls is CellExperiment and not inp.endswith(".h5ad"):
        suffix = Path(inp).suffix or "no suffix"
        raise BioclsError(f"input is {inp!r}: expected an AnnData .h5ad file, got '{suffix}'",
                          where=f"{where}.input",
                          fix="convert it with anndata (adata.write_h5ad) and point input at it")
    keys = block.get("keys")
    if (cls is CellExperiment and block.get("unseen_combinations") and isinstance(keys, Mapping)
            and keys.get("state_labels")):
        raise BioclsError("unseen_combinations needs one state per cell (keys.cell_state); with "
                          "keys.state_labels nothing would be withheld", where=f"{where}",
                          fix="drop unseen_combinations, or use keys.cell_state")
    if partial:
        return
    given = [s for s in cls.SOURCES if block.get(s) is not None]
    if len(given) != 1:
        raise BioclsError(f"needs exactly one of {', '.join(cls.SOURCES)} (has "
                          f"{', '.join(given) or 'none'})", where=where,
                          fix="give the data's path, or a simulate: block")
    if cls is ImageExperiment and given == ["input"] and not block.get("pseudo_patients"):
        raise BioclsError("an .npz has no patients", where=f"{where}.pseudo_patients",
                          fix="set pseudo_patients: N to split its images into N random groups")
    pre = block.get("pretrain")
    if cls is ImageExperiment and isinstance(pre, Mapping) and not pre.get("input"):
        raise BioclsError("pretrain needs `input`", where=f"{where}.pretrain.input",
                          fix="point it at a MedMNIST-style .npz, e.g. bloodmnist.npz")
    if cls is ImageExperiment and block.get("official_test") and given != ["input"]:
        raise BioclsError("official_test needs an .npz input (its test split)",
                          where=f"{where}.official_test", fix="drop official_test")
    if cls is RepertoireExperiment and given == ["metadata"] and not block.get("repertoires"):
        raise BioclsError("`metadata` needs `repertoires` beside it", where=where,
                          fix="set repertoires: to the folder of <repertoire_id>.tsv files")


def load_config(raw: Mapping[str, Any], *, source: str = "config",
                schema: str | Path | Mapping[str, Any] | None = None) -> WorkflowConfig:
    """Validate a whole workflow config (the Snakefile's ``config``) into a WorkflowConfig.

    Each experiment is parsed first (:func:`parse_experiment`: unknown keys with their nearest
    valid name, then its block's schema); then the whole config is validated against ``schema``
    (a path or a mapping; by default the one generated from these classes), as Snakemake users
    expect, which adds what no single block holds (the experiments' names).
    """
    if not isinstance(raw, Mapping):
        raise BioclsError("the config must be a mapping", where=source,
                          fix="see configs/default.yaml")
    _unknown(set(raw) - {"experiments"}, {"experiments"}, where="(top level)", source=source)
    exps = raw.get("experiments")
    if not isinstance(exps, Mapping) or not exps:
        raise BioclsError("no experiments", where=f"{source}: experiments",
                          fix="add an `experiments:` mapping with at least one experiment")
    experiments = {str(n): parse_experiment(b, name=str(n), source=source)
                   for n, b in exps.items()}
    _validate(dict(raw), _schema_from(schema), source=source)
    return WorkflowConfig(experiments)


def to_dict(obj: Any) -> Any:
    """A dataclass as plain JSON-able values (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    """Construct ``cls`` from validated plain values, converting nested blocks and lists."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            kwargs[f.name] = _convert(hints[f.name], values[f.name])
    return cls(**kwargs)


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    inner = _unwrap_optional(tp)
    if dataclasses.is_dataclass(inner):
        return _build(inner, value)
    origin = typing.get_origin(inner)
    if origin is tuple:
        args = typing.get_args(inner)
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else Any
        return tuple(_convert(item, v) for v in value)
    if inner is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _block_class(tp: Any) -> type | None:
    inner = _unwrap_optional(tp)
    return inner if dataclasses.is_dataclass(inner) else None


def _check_unknown(block: Mapping[str, Any], cls: type, *, where: str, source: str) -> None:
    """Unknown keys, at any depth, are errors with the nearest valid name."""
    hints = typing.get_type_hints(cls)
    valid = {f.name for f in dataclasses.fields(cls)}
    if cls in TASKS.values():
        valid.discard("name")
    _unknown(set(block) - valid - {"name"}, valid, where=where, source=source)
    for key, value in block.items():
        sub = _block_class(hints.get(key))
        if sub is not None and isinstance(value, Mapping):
            _check_unknown(value, sub, where=f"{where}.{key}", source=source)


def _unknown(keys: set[str], valid: set[str], *, where: str, source: str) -> None:
    if not keys:
        return
    key = sorted(map(str, keys))[0]
    near = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
    hint = f"did you mean `{near[0]}`?" if near else f"valid keys: {', '.join(sorted(valid))}"
    raise BioclsError(f"unknown key `{key}` in {where}", where=f"{source}: {where}.{key}",
                      fix=hint)


def _check_simulate(block: Mapping[str, Any], task: str, *, where: str) -> None:
    """The simulator's options are checked against its signature, as config keys are."""
    sim = block.get("simulate")
    if not isinstance(sim, Mapping):
        return
    from biocls import simulate

    src, _, path = where.partition(": ")
    extra: set[str] = set()
    if task == "cells":  # `model:` picks the generator; its signature says what else is valid
        model = sim.get("model", "biocls")
        if not isinstance(model, str) or model not in simulate.CELL_MODELS:
            raise BioclsError(f"unknown simulator model {model!r}", where=f"{where}.model",
                              fix=f"use one of {', '.join(simulate.CELL_MODELS)}")
        fn, extra = simulate.CELL_MODELS[model], {"model"}
    elif task == "images":
        fn = simulate.simulate_images
    else:
        fn = simulate.simulate_repertoires
    params = inspect.signature(fn).parameters
    valid = {k for k, p in params.items() if p.kind is p.KEYWORD_ONLY} | extra
    _unknown(set(sim) - valid, valid, where=path, source=src)


# -- schema ----------------------------------------------------------------------------------

def _type_schema(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    """JSON schema of one annotated type; dataclasses become ``$defs`` entries."""
    if tp is Any:
        return {}
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        parts = [_type_schema(a, defs) for a in typing.get_args(tp) if a is not type(None)]
        nullable = type(None) in typing.get_args(tp)
        if len(parts) == 1 and "$ref" not in parts[0] and "type" in parts[0]:
            t = parts[0]["type"]
            out = dict(parts[0], type=[*([t] if isinstance(t, str) else t),
                                       *(["null"] if nullable else [])])
            if "enum" in out and nullable:
                out["enum"] = [*out["enum"], None]
            return out
        return {"anyOf": parts + ([{"type": "null"}] if nullable else [])}
    if origin is Literal:
        values = list(typing.get_args(tp))
        return {"type": "string", "enum": values}
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _type_schema(args[0], defs)}
        return {"type": "array", "items": [_type_schema(a, defs) for a in args]}
    if origin is dict:
        return {"type": "object"}
    if dataclasses.is_dataclass(tp):
        name = _def_name(tp)
        if name not in defs:
            defs[name] = {}
            defs[name] = _class_schema(tp, defs)
        return {"$ref": f"#/$defs/{name}"}
    simple = {str: "string", int: "integer", float: "number", bool: "boolean"}
    return {"type": simple[tp]}


def _def_name(cls: type) -> str:
    import re

    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()


def _class_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name == "name" and cls in TASKS.values():
            continue
        s = _type_schema(hints[f.name], defs)
        extra = dict(f.metadata.get("schema", {}))
        if "items" in extra and "items" in s:
            s["items"] = extra.pop("items")
        if "$ref" in s and (f.metadata.get("doc") or extra):
            s = {"allOf": [s]}
        s.update(extra)
        if f.metadata.get("doc"):
            s["description"] = f.metadata["doc"]
        default = _default(f)
        if default is not dataclasses.MISSING and not dataclasses.is_dataclass(
                _unwrap_optional(hints[f.name])):
            s["default"] = to_dict(default)
        props[f.name] = s
    out: dict[str, Any] = {"type": "object", "additionalProperties": False,
                           "properties": props}
    if cls.__doc__:
        out["description"] = " ".join(cls.__doc__.split())
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def json_schema(*, partial: bool = False) -> dict[str, Any]:
    """The workflow config's JSON schema (draft 2020-12), generated from the dataclasses.

    ``partial`` leaves out the rule that a full experiment names its data (one step's slice).
    """
    defs: dict[str, Any] = {}
    branches = []
    for task, cls in TASKS.items():
        ref = _type_schema(cls, defs)
        if not partial:
            defs[_def_name(cls)]["oneOf"] = [{"required": [s]} for s in cls.SOURCES]
        branches.append({"if": {"properties": {"task": {"const": task}}, "required": ["task"]},
                         "then": ref})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": "biocls workflow config (DESIGN §4). Generated from biocls/config.py by "
                       "`biocls schema`; do not edit by hand. Each entry under "
                       "`experiments` is one experiment; its name becomes results/<name>/. An "
                       "unknown key is an error.",
        "type": "object",
        "required": ["experiments"],
        "additionalProperties": False,
        "properties": {"experiments": {
            "type": "object", "minProperties": 1,
            "propertyNames": {"pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$"},
            "additionalProperties": {"$ref": "#/$defs/experiment"}}},
        "$defs": {"experiment": {
            "type": "object", "required": ["task"],
            "properties": {"task": {"enum": sorted(TASKS)}},
            "allOf": branches}, **dict(sorted(defs.items()))},
    }


def schema_yaml() -> str:
    """The generated schema as the YAML text committed under workflows/schemas/."""
    import yaml

    head = ("# GENERATED from biocls/config.py by `biocls schema --out "
            f"{SCHEMA_FILE.as_posix()}`.\n# Edit the dataclasses, not this file; "
            "tests/test_config.py checks that the two agree.\n")
    return head + yaml.safe_dump(json_schema(), sort_keys=False, width=100, allow_unicode=True)


def _schema_from(schema: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    if schema is None:
        return json_schema()
    if isinstance(schema, Mapping):
        return dict(schema)
    import yaml

    return yaml.safe_load(Path(schema).read_text())


def _check_schema(block: Mapping[str, Any], cls: type, *, where: str, partial: bool) -> None:
    schema = json_schema(partial=partial)
    sub = {"$schema": schema["$schema"], "$defs": schema["$defs"],
           "$ref": f"#/$defs/{_def_name(cls)}"}
    src, _, path = where.partition(": ")
    _validate(dict(block), sub, source=src, prefix=path)


def _validate(instance: Any, schema: Mapping[str, Any], *, source: str,
              prefix: str = "") -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(e.path), list(e.path)))
    if not errors:
        return
    err = _deepest(errors[0])
    path = ".".join(map(str, err.absolute_path))
    fieldname = ".".join(p for p in (prefix, path) if p) or "(top level)"
    hint = err.schema.get("description") if isinstance(err.schema, dict) else None
    raise BioclsError(err.message.splitlines()[0], where=f"{source}: {fieldname}",
                      fix="see workflows/schemas/config.schema.yaml" + (f" ({hint})" if hint
                                                                         else ""))


def _deepest(err: Any) -> Any:
    """oneOf/allOf errors wrap the useful one; follow the context to the most specific."""
    while err.context:
        err = max(err.context, key=lambda e: len(e.absolute_path))
    return err


def config_hash(exp: Experiment | dict[str, Any]) -> str:
    """A short fingerprint of what trains an experiment's models: its ``train`` step's slice.

    The model folder (written by the train step, which sees only that slice) and the report
    pages (rendered with the whole config at hand) therefore print the same value, and an edit
    that does not retrain (``certify.delta``, ``folds`` aside) does not change it. A plain dict
    is hashed as it is.
    """
    import hashlib

    data = exp if isinstance(exp, dict) else exp.step_spec("train")
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def spec_json(exp: Experiment, step: str) -> str:
    """A step's slice as the compact, key-sorted JSON a rule passes to ``--spec``."""
    return json.dumps(exp.step_spec(step), sort_keys=True, separators=(",", ":"))
