"""Estimators with scikit-learn's contract (``fit`` / ``predict`` / ``save`` / ``load``,
``get_params`` / ``set_params`` / ``clone``): those that fit the nets of :mod:`biocls.models`,
and the k-mer baseline."""

from biocls.estimators._cells import CellClassifier
from biocls.estimators._images import ImageClassifier
from biocls.estimators._kmer import KmerLogisticRegression, kmer_frequencies
from biocls.estimators._repertoires import RepertoireClassifier

__all__ = ["CellClassifier", "ImageClassifier", "KmerLogisticRegression", "RepertoireClassifier",
           "kmer_frequencies"]
