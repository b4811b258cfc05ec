"""Readers and validation for biocls inputs (re-exports only; code lives in private modules)."""

from biocls.data._airr import (
    RepertoireChunk,
    find_repertoire_files,
    is_repertoire_file,
    iter_repertoire_chunks,
    positive_label,
    read_repertoire,
    read_repertoire_metadata,
    scan_repertoire_folder,
)
from biocls.data._anndata import check_values, read_cells, validate_cells
from biocls.data._examples import example_dataset

__all__ = [
    "RepertoireChunk",
    "check_values",
    "example_dataset",
    "find_repertoire_files",
    "is_repertoire_file",
    "iter_repertoire_chunks",
    "positive_label",
    "read_cells",
    "read_repertoire",
    "read_repertoire_metadata",
    "scan_repertoire_folder",
    "validate_cells",
]
