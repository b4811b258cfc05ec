"""The typed config: one set of defaults, a schema generated from it, unknown keys refused with
the nearest valid name, and each workflow step given only the slice it reads."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest
import yaml

from biocls import BioclsError
from biocls.config import (
    CellExperiment,
    CellModel,
    RepertoireExperiment,
    RepertoireModel,
    config_hash,
    json_schema,
    load_config,
    parse_experiment,
    schema_yaml,
    to_dict,
)

REPO = Path(__file__).resolve().parents[1]
CELLS = {"task": "cells", "input": "data/x.h5ad", "keys": {"cell_type": "ct", "patient": "donor"}}
REPS = {"task": "repertoires", "metadata": "m.tsv", "repertoires": "reps"}


def test_committed_schema_is_the_generated_one() -> None:
    committed = (REPO / "workflows" / "schemas" / "config.schema.yaml").read_text()
    assert committed == schema_yaml(), "run `biocls schema --out " \
                                       "workflows/schemas/config.schema.yaml`"


def _init_defaults(cls: type) -> dict:
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize(("block", "estimator", "extra"), [
    (CellModel, "CellClassifier", ()),
    (RepertoireModel, "RepertoireClassifier", RepertoireModel.PIPELINE_KEYS),
])
def test_estimator_defaults_are_the_config_defaults(block: type, estimator: str,
                                                    extra: tuple[str, ...]) -> None:
    """Python callers and Snakemake train the same model from the same (empty) config."""
    import biocls.estimators

    est = _init_defaults(getattr(biocls.estimators, estimator))
    cfg = to_dict(block())
    for key, value in cfg.items():
        if key in extra:
            continue
        assert key in est, f"{block.__name__}.{key} is not an option of {estimator}"
        want = list(est[key]) if isinstance(est[key], tuple) else est[key]
        assert value == want, f"{key}: config {value!r} != {estimator} {est[key]!r}"


def test_schema_has_every_field_with_its_default() -> None:
    defs = json_schema()["$defs"]
    for cls, name in ((CellModel, "cell_model"), (RepertoireModel, "repertoire_model")):
        props = defs[name]["properties"]
        assert set(props) == {f.name for f in dataclasses.fields(cls)}
        for key, value in to_dict(cls()).items():
            assert props[key]["default"] == value, key
    assert set(defs["cell_experiment"]["properties"]) == \
        {f.name for f in dataclasses.fields(CellExperiment)} - {"name"}


def test_defaults_fill_in_and_lists_become_tuples() -> None:
    exp = parse_experiment({**CELLS, "model": {"hidden": [16, 8], "lr": 1}}, name="e")
    assert isinstance(exp, CellExperiment) and exp.name == "e"
    assert exp.model.hidden == (16, 8) and exp.model.lr == 1.0 and isinstance(exp.model.lr, float)
    assert exp.model.input_dropout == 0.5 and exp.folds == 5 and exp.certify is None
    assert exp.preprocess.n_top_genes == 2000 and exp.keys.patient == "donor"
    rep = parse_experiment(REPS, name="r")
    assert isinstance(rep, RepertoireExperiment) and rep.validation_fraction == 0.15
    assert rep.baseline.kmers == (3, 4) and rep.model.top_n == 20


@pytest.mark.parametrize(("change", "field", "suggestion"), [
    ({"fold": 3}, "experiments.e.fold", "folds"),
    ({"preprocess": {"nmad": 5}}, "experiments.e.preprocess.nmad", "nmads"),
    ({"model": {"hiden": [8]}}, "experiments.e.model.hiden", "hidden"),
    ({"keys": {"cell_typ": "ct"}}, "experiments.e.keys.cell_typ", "cell_type"),
    ({"certify": {"detla": 0.1}}, "experiments.e.certify.detla", "delta"),
    ({"simulate": {"n_patient": 4}, "input": None}, "experiments.e.simulate.n_patient",
     "n_patients"),
])
def test_unknown_keys_name_the_nearest_valid_one(change: dict, field: str,
                                                 suggestion: str) -> None:
    block = {k: v for k, v in {**CELLS, **change}.items() if v is not None}
    with pytest.raises(BioclsError) as err:
        load_config({"experiments": {"e": block}}, source="my.yaml")
    msg = str(err.value)
    assert f"my.yaml: {field}" in msg and f"did you mean `{suggestion}`?" in msg, msg


def test_unknown_keys_in_repertoire_blocks_too() -> None:
    with pytest.raises(BioclsError, match="did you mean `pooling`"):
        parse_experiment({**REPS, "model": {"poling": "patterns"}}, name="r")
    with pytest.raises(BioclsError, match="did you mean `kmers`"):
        parse_experiment({**REPS, "baseline": {"kmer": [3]}}, name="r")
    with pytest.raises(BioclsError, match="did you mean `experiments`"):
        load_config({"experiment": {"e": CELLS}})


@pytest.mark.parametrize(("block", "field"), [
    ({**CELLS, "folds": 1}, "experiments.e.folds"),
    ({**CELLS, "model": {"encoder": "transformer"}}, "experiments.e.model.encoder"),
    ({**CELLS, "certify": {"delta": 1.5}}, "experiments.e.certify.delta"),
    ({**CELLS, "keys": {"cell_type": "ct", "state_labels": ["a", "a"]}},
     "experiments.e.keys.state_labels"),
    ({**CELLS, "model": {"partial_loss": "guess"}}, "experiments.e.model.partial_loss"),
])
def test_bad_values_are_one_line_errors_naming_the_field(block: dict, field: str) -> None:
    with pytest.raises(BioclsError) as err:
        load_config({"experiments": {"e": block}}, source="my.yaml")
    assert f"my.yaml: {field}" in str(err.value) and "\n" not in str(err.value)


def test_a_full_experiment_names_exactly_one_data_source() -> None:
    with pytest.raises(BioclsError, match="exactly one of input, simulate, example"):
        load_config({"experiments": {"e": {**CELLS, "simulate": {"n_patients": 4}}}})
    with pytest.raises(BioclsError, match="exactly one of"):
        load_config({"experiments": {"e": {k: v for k, v in CELLS.items() if k != "input"}}})
    # one step's slice need not (the evaluate step never reads the data)
    parse_experiment({"task": "cells", "unseen_combinations": []}, partial=True)


def _steps(block: dict) -> dict[str, dict]:
    exp = parse_experiment(block, name="e").resolve_paths()
    return {step: exp.step_spec(step) for step in exp.STEPS}


def test_each_step_reads_only_its_slice() -> None:
    """Editing certify.delta changes the certificate's params and nobody else's; editing the
    model changes training's (folds and final) and the certificate's, never the split's; what
    RATT training reads (certify.random_fraction) retrains the final model only."""
    base = {**CELLS, "certify": {"delta": 0.05}}
    before = _steps(base)
    after = _steps({**base, "certify": {"delta": 0.1}})
    assert [s for s in before if before[s] != after[s]] == ["certify"]
    after = _steps({**base, "model": {"lr": 0.01}})
    assert sorted(s for s in before if before[s] != after[s]) == ["certify", "final", "train"]
    after = _steps({**base, "certify": {"delta": 0.05, "random_fraction": 0.3}})
    assert sorted(s for s in before if before[s] != after[s]) == ["certify", "final"]
    after = _steps({**base, "unseen_combinations": [["T", "activated"]]})
    assert sorted(s for s in before if before[s] != after[s]) == ["certify", "evaluate", "final",
                                                                  "train"]
    rep = _steps(REPS)
    assert "model" not in rep["split"] and "baseline" not in rep["encode"]
    assert rep["evaluate"] == {"name": "e", "task": "repertoires",
                               "model": {"pooling": "attention"}}


def test_a_slice_parses_back_to_the_same_values_it_carries() -> None:
    exp = parse_experiment({**CELLS, "model": {"hidden": [8]}, "certify": {"delta": 0.2}},
                           name="e")
    for step in exp.STEPS:
        text = json.dumps(exp.step_spec(step))
        back = parse_experiment(json.loads(text), partial=True)
        for key in exp.step_spec(step):
            if key in ("name", "task"):
                continue
            got, want = to_dict(getattr(back, key)), to_dict(getattr(exp, key))
            if isinstance(want, dict) and isinstance(got, dict):
                got = {k: v for k, v in got.items() if k in exp.step_spec(step)[key]}
                want = {k: v for k, v in want.items() if k in exp.step_spec(step)[key]}
            assert got == want, (step, key)


def test_demo_and_example_configs_load() -> None:
    for name in ("default.yaml", "pbmc68k.yaml"):
        cfg = load_config(yaml.safe_load((REPO / "configs" / name).read_text()), source=name)
        assert cfg.experiments


def test_config_hash_is_the_same_for_the_model_and_the_report() -> None:
    """The train step sees only its slice; the report rule hashes the whole experiment. Both
    must print the same fingerprint, and it moves with what trains, not with the rest."""
    full = parse_experiment({**CELLS, "certify": {"delta": 0.05}}, name="e")
    seen_by_train = parse_experiment(json.loads(json.dumps(full.step_spec("train"))),
                                     partial=True)
    assert config_hash(seen_by_train) == config_hash(full)
    assert config_hash(dataclasses.replace(full, folds=3)) == config_hash(full)
    assert config_hash(parse_experiment({**CELLS, "model": {"lr": 0.01}}, name="e")) \
        != config_hash(full)
    rep = parse_experiment({**REPS, "keys": {"patient": "donor"}}, name="r")
    train = parse_experiment(json.loads(json.dumps(rep.step_spec("train"))), partial=True)
    assert train.keys.patient == "donor"  # the model records the user's keys, not defaults
    assert config_hash(train) == config_hash(rep)


def test_unseen_combinations_with_multilabel_states_is_refused() -> None:
    """Multi-label states have no single state per cell, so no pair could be withheld: the
    experiment would silently train on the combination it claims to hold out."""
    block = {**CELLS, "keys": {"cell_type": "ct", "state_labels": ["act"]},
             "unseen_combinations": [["T", "act"]]}
    with pytest.raises(BioclsError, match="unseen_combinations needs one state per cell"):
        load_config({"experiments": {"e": block}})
