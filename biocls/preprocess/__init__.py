"""Preprocessing fitted on training patients and applied to held-out or new data."""

from biocls.preprocess._cdr3 import (
    ALPHABET,
    Bag,
    CDR3Store,
    build_cdr3_store,
    decode_sequences,
    encode_sequences,
)
from biocls.preprocess._cells import (
    CellPreprocessor,
    filter_outliers,
    is_raw_counts,
    qc_metrics,
)

__all__ = [
    "ALPHABET",
    "Bag",
    "CDR3Store",
    "CellPreprocessor",
    "build_cdr3_store",
    "decode_sequences",
    "encode_sequences",
    "filter_outliers",
    "is_raw_counts",
    "qc_metrics",
]
