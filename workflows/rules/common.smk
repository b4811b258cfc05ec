# Config validation and input functions. No rule here does work: rules call the biocls CLI.
import json
import sys
from pathlib import Path

from biocls._errors import BioclsError
from biocls.config import validate_config


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
    config.update(
        validate_config(
            _checked,
            Path(workflow.basedir) / "workflows" / "schemas" / "config.schema.yaml",
            source=_source,
        )
    )
except BioclsError as e:
    sys.exit(f"biocls: config error: {e}")

EXPS = config["experiments"]
CELLS = sorted(k for k, v in EXPS.items() if v["task"] == "cells")
REPS = sorted(k for k, v in EXPS.items() if v["task"] == "repertoires")
CERTIFIED = sorted(k for k in CELLS if EXPS[k].get("certify") is not None)


def _alt(names):
    """A wildcard pattern matching exactly these experiment names (or nothing)."""
    import re

    return "|".join(re.escape(n) for n in names) or "(?!x)x"


def spec(exp):
    """The experiment block with its name and resolved data paths: what every verb receives."""
    block = dict(EXPS[exp], name=exp)
    if block["task"] == "cells":
        if "simulate" in block:
            block["input"] = f"resources/{exp}/cells.h5ad"
        elif "example" in block:
            block["input"] = f"resources/examples/{block['example']}.h5ad"
    elif "simulate" in block:
        block["metadata"] = f"resources/{exp}/repertoires/metadata.tsv"
        block["repertoires"] = f"resources/{exp}/repertoires/repertoires"
        block["truth"] = f"resources/{exp}/repertoires/truth.tsv"
    return block


def spec_json(wildcards):
    return json.dumps(spec(wildcards.exp), sort_keys=True)


def certificate_input(exp):
    """certificate.json for experiments with a `certify:` block; nothing otherwise."""
    return {"certificate": f"results/{exp}/certificate.json"} if exp in CERTIFIED else {}


def fold_ids(exp):
    return [str(k) for k in range(int(EXPS[exp]["folds"]))]


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
