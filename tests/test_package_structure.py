"""Conventions that a test keeps true (STYLE.md, scanpy and rna-seq-star-deseq2 sections)."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
from snakemake_run import run_snakemake

REPO = Path(__file__).resolve().parents[1]
NAMESPACES = ["biocls.data", "biocls.preprocess", "biocls.simulate", "biocls.models",
              "biocls.estimators", "biocls.report", "biocls.tl", "biocls.tasks"]
# scikit-learn's estimator contract: fit(X, y=None) keeps `y` positional so pipelines work
SKLEARN_Y = {"fit", "fit_transform", "partial_fit"}


def _public(ns: str):
    mod = importlib.import_module(ns)
    return mod, list(getattr(mod, "__all__", []))


@pytest.mark.parametrize("ns", NAMESPACES)
def test_namespace_has_sorted_all_that_resolves(ns: str) -> None:
    mod, names = _public(ns)
    assert names, f"{ns} has no __all__"
    assert names == sorted(names), f"{ns}.__all__ is not sorted"
    assert len(names) == len(set(names)), f"{ns}.__all__ lists a name twice"
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"{ns}.__all__ names {missing}, which do not resolve"


@pytest.mark.parametrize("ns", NAMESPACES)
def test_namespace_only_reexports(ns: str) -> None:
    """Code lives in private modules (``_cells.py``); the public ``__init__`` defines nothing."""
    mod, names = _public(ns)
    for n in names:
        obj = getattr(mod, n)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert obj.__module__ != ns, f"{ns}.{n} is defined in the __init__"


def _callables(ns: str):
    mod, names = _public(ns)
    for n in names:
        obj = getattr(mod, n)
        if inspect.isfunction(obj):
            yield f"{ns}.{n}", n, obj
        elif inspect.isclass(obj):
            for attr, fn in vars(obj).items():
                if isinstance(fn, (staticmethod, classmethod)):
                    fn = fn.__func__
                if inspect.isfunction(fn) and not attr.startswith("_"):
                    yield f"{ns}.{n}.{attr}", attr, fn


def _adata_violations() -> list[str]:
    bad = []
    for ns in NAMESPACES:
        for qual, name, fn in _callables(ns):
            params = [p for p in inspect.signature(fn).parameters.values()
                      if p.name not in ("self", "cls")]
            if not any(p.name == "adata" for p in params):
                continue
            if params[0].name != "adata":
                bad.append(f"{qual}: adata is not the first parameter")
                continue
            rest = params[1:]
            if name in SKLEARN_Y and rest and rest[0].name == "y":
                rest = rest[1:]
            # as scanpy's ingest(adata, adata_ref): the one required object the verb applies
            # (a model) may follow adata positionally; every option stays keyword-only
            if rest and rest[0].kind == rest[0].POSITIONAL_OR_KEYWORD \
                    and rest[0].default is rest[0].empty and rest[0].name == "model":
                rest = rest[1:]
            loose = [p.name for p in rest
                     if p.kind not in (p.KEYWORD_ONLY, p.VAR_KEYWORD)]
            if loose:
                bad.append(f"{qual}: {loose} after adata are not keyword-only")
    return bad


def test_adata_first_then_keyword_only() -> None:
    assert _adata_violations() == []


def test_adata_convention_check_is_not_vacuous() -> None:
    """The scan above does find the AnnData functions (so an empty result means something)."""
    found = {q for ns in NAMESPACES for q, _, fn in _callables(ns)
             if "adata" in inspect.signature(fn).parameters}
    assert {"biocls.preprocess.filter_outliers", "biocls.preprocess.qc_metrics",
            "biocls.tl.cross_validate", "biocls.tl.annotate"} <= found


def test_help_lists_every_verb() -> None:
    from biocls.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    verbs = set(sub.choices)
    # DESIGN §1–§3: the verbs the workflow and the user call
    assert {"simulate", "split", "train", "evaluate", "report", "predict"} <= verbs
    proc = subprocess.run([sys.executable, "-m", "biocls", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    listed = set(re.findall(r"^\s{4}(\w+)\s", proc.stdout, flags=re.M))
    assert verbs <= listed, f"missing from --help: {sorted(verbs - listed)}"


# -- Snakemake rules -----------------------------------------------------------------------------
RULE_FILES = sorted((REPO / "workflows" / "rules").glob("*.smk"))


def _rules() -> dict[str, tuple[Path, str]]:
    """rule name → (file, body text up to the next top-level statement)."""
    out = {}
    for f in RULE_FILES:
        text = f.read_text()
        for m in re.finditer(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", text, flags=re.M):
            out[m.group(1)] = (f, m.group(2))
    return out


def test_rule_files_parsed() -> None:
    names = set(_rules())
    assert RULE_FILES and {"split_cells", "train_cells", "evaluate_cells", "report"} <= names


@pytest.mark.parametrize("rule", sorted(_rules()))
def test_rule_declares_log_threads_resources(rule: str) -> None:
    f, body = _rules()[rule]
    directives = set(re.findall(r"^    (\w+):", body, flags=re.M))
    missing = {"input", "output", "log", "threads", "resources"} - directives - (
        {"input"} if rule.startswith(("simulate_", "example_")) else set())
    assert not missing, f"{f.name}: rule {rule} lacks {sorted(missing)}"
    assert re.search(r"^    log:\n\s+\"logs/", body, flags=re.M), f"{rule}: log not under logs/"
    if "shell:" in body:
        assert "{log}" in body, f"{rule}: the shell command does not write to its log"
    resources = re.search(r"^    resources:\n((?:        .*\n)+)", body, flags=re.M)
    assert resources and "mem_mb" in resources.group(1) and "runtime" in resources.group(1)


def test_snakemake_lint_finds_no_missing_log() -> None:
    proc = run_snakemake("--lint", "--directory", str(REPO))
    text = proc.stdout + proc.stderr
    assert "Lints for rule" in text or proc.returncode == 0, text[-2000:]  # the linter ran
    assert "No log directive" not in text
    assert "Traceback" not in text
