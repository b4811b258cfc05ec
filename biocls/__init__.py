"""biocls: patient-grouped multi-task classification for single cells and immune repertoires.

``biocls.tl`` is the Python API (cross-validation and annotation in memory); the ``biocls``
command and the Snakemake workflow are built on it.
"""

from __future__ import annotations

import importlib
from typing import Any

from biocls._errors import BioclsError

__all__ = ["BioclsError", "__version__", "tl"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import ``biocls.tl`` on first use, so that ``biocls --help`` stays fast."""
    if name == "tl":
        return importlib.import_module("biocls.tl")
    raise AttributeError(f"module 'biocls' has no attribute {name!r}")
