"""Torch models: encoders, heads, and the estimators built from them."""

from biocls.models._cells import CellClassifier, CellNet
from biocls.models._encoders import MixerBlock, MixerEncoder, MLPEncoder, gene_modules
from biocls.models._heads import FactoredHeads, JointHead
from biocls.models._io import load_model_files, save_model_files

__all__ = [
    "CellClassifier",
    "CellNet",
    "FactoredHeads",
    "JointHead",
    "MLPEncoder",
    "MixerBlock",
    "MixerEncoder",
    "gene_modules",
    "load_model_files",
    "save_model_files",
]
