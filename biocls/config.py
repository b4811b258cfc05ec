"""Validate a workflow config against its JSON schema and fill in the schema's defaults.

Used by the Snakefile, so that a bad config stops the run before any job starts, with one line
naming the field and what it should be.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from biocls._errors import BioclsError

__all__ = ["fill_defaults", "load_schema", "validate_config"]


def load_schema(path: str | Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def validate_config(config: dict[str, Any], schema: dict[str, Any] | str | Path, *,
                    source: str = "config") -> dict[str, Any]:
    """Return a validated copy of ``config`` with defaults filled; raise a one-line error."""
    import jsonschema

    if not isinstance(schema, dict):
        schema = load_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.path), list(e.path)))
    if errors:
        err = _deepest(errors[0])
        field = ".".join(map(str, err.absolute_path)) or "(top level)"
        hint = err.schema.get("description") if isinstance(err.schema, dict) else None
        raise BioclsError(f"{err.message.splitlines()[0]}", where=f"{source}: {field}",
                          fix="see workflows/schemas/config.schema.yaml"
                              + (f" ({hint})" if hint else ""))
    out = copy.deepcopy(config)
    defs = schema.get("$defs", {})
    for name, block in out["experiments"].items():
        out["experiments"][name] = fill_defaults(block, defs["experiment"], defs)
        task_defs = {"cells": {"keys": "keys_cells", "model": "model_cells",
                               "preprocess": "preprocess_cells"},
                     "repertoires": {"keys": "keys_repertoires"}}[block["task"]]
        for key, ref in task_defs.items():
            out["experiments"][name][key] = fill_defaults(block.get(key, {}), defs[ref], defs)
        extra = {"cells": {"unseen_combinations": [], "validation_fraction": 0.2}}.get(
            block["task"], {})
        for k, v in extra.items():
            out["experiments"][name].setdefault(k, v)
    return out


def fill_defaults(value: dict[str, Any], schema: dict[str, Any],
                  defs: dict[str, Any]) -> dict[str, Any]:
    """Add the ``default`` of every missing property the schema declares (one level deep)."""
    out = dict(value)
    for key, sub in schema.get("properties", {}).items():
        if "$ref" in sub:
            sub = defs[sub["$ref"].split("/")[-1]]
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
    return out


def _deepest(err: Any) -> Any:
    """oneOf/allOf errors wrap the useful one; follow the context to the most specific."""
    while err.context:
        err = max(err.context, key=lambda e: len(e.absolute_path))
    return err
