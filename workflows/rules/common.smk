# Config validation and input functions. No rule here does work: rules call the biocls CLI.
import json
import sys
from pathlib import Path

from biocls._errors import BioclsError
from biocls.config import load_config, spec_json


def _config_to_validate():
    """The merged config, or only the user's when their --configfile lacks `experiments`.

    The Snakefile falls back to the demo config when `experiments` is missing; that is right when
    the user gives no config file, but a user file without it (e.g. a misspelt `experiment:`)
    must fail validation rather than silently run the demo.
    """
    from snakemake.common.configfile import load_configfile

    files = [str(f) for f in workflow.overwrite_configfiles or []]
    if files:
        user = {}
        for f in files:
            user.update(load_configfile(f) or {})
        user.update(workflow.config_settings.overwrite_config or {})
        if "experiments" not in user:
            return user, ", ".join(files)
    return config, ", ".join(map(str, workflow.configfiles)) or "config"


try:
    _checked, _source = _config_to_validate()
    # the typed config (biocls/config.py), validated against the schema generated from it
    EXPS = {
        name: exp.resolve_paths()
        for name, exp in load_config(
            _checked,
            source=_source,
            schema=Path(workflow.basedir) / "workflows" / "schemas" / "config.schema.yaml",
        ).experiments.items()
    }
except BioclsError as e:
    sys.exit(f"biocls: config error: {e}")

CELLS = sorted(k for k, v in EXPS.items() if v.task == "cells")
REPS = sorted(k for k, v in EXPS.items() if v.task == "repertoires")
IMAGES = sorted(k for k, v in EXPS.items() if v.task == "images")
CERTIFIED = sorted(k for k in CELLS if EXPS[k].certify is not None)


def _alt(names):
    """A wildcard pattern matching exactly these experiment names (or nothing)."""
    import re

    return "|".join(re.escape(n) for n in names) or "(?!x)x"


def step_spec(step):
    """Params function: only the slice of the experiment that `step` reads (biocls/config.py),
    so that editing a key reruns only the steps that read it."""
    return lambda wildcards: spec_json(EXPS[wildcards.exp], step)


def simulate_params(wildcards):
    return json.dumps(EXPS[wildcards.exp].simulate, sort_keys=True)


def cells_input(wildcards):
    """The data a cells or images experiment reads: its .h5ad, manifest or .npz."""
    exp = EXPS[wildcards.exp]
    return exp.input if exp.task == "cells" else (exp.manifest or exp.input)


def pretrained_input(wildcards):
    """An images experiment with a pretrain: block trains from `biocls pretrain`'s encoder."""
    exp = EXPS[wildcards.exp]
    if exp.task == "images" and exp.pretrain is not None:
        return {"store": f"results/{wildcards.exp}/pretrained"}
    return {}


def store_arg(wildcards, input):
    return f"--store {input.store}" if "store" in input.keys() else ""


def official_test_input(exp):
    """An images experiment scored on an .npz's official test split reads the final model."""
    if EXPS[exp].task == "images" and EXPS[exp].official_test:
        return {"model": f"results/{exp}/model"}
    return {}


def repertoire_inputs(exp):
    """The simulated folder, or the user's metadata.tsv and repertoire folder."""
    if EXPS[exp].simulate is not None:
        return {"data": f"resources/{exp}/repertoires"}
    return {"metadata": EXPS[exp].metadata, "repertoires": EXPS[exp].repertoires}


def certificate_input(exp):
    """certificate.json for experiments with a `certify:` block; nothing otherwise."""
    return {"certificate": f"results/{exp}/certificate.json"} if exp in CERTIFIED else {}


def fold_ids(exp):
    return [str(k) for k in range(EXPS[exp].folds)]


def all_outputs():
    out = []
    for exp in EXPS:
        out += [
            f"results/{exp}/metrics.json",
            f"results/{exp}/predictions.tsv",
            f"results/{exp}/model",
            f"results/{exp}/reports/index.html",
        ]
    return out
