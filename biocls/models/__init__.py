"""Torch models: encoders, heads, and the estimators built from them."""

from biocls.models._cells import CellClassifier, CellNet
from biocls.models._encoders import MixerBlock, MixerEncoder, MLPEncoder, gene_modules
from biocls.models._heads import FactoredHeads, JointHead
from biocls.models._io import load_model_files, save_model_files
from biocls.models._mil import (
    AttentionPooling,
    CDR3Encoder,
    PackedBag,
    PatternPooling,
    PoolOutput,
    RepertoireClassifier,
    RepertoireNet,
    pack_bag,
    position_features,
)

__all__ = [
    "AttentionPooling",
    "CDR3Encoder",
    "CellClassifier",
    "CellNet",
    "FactoredHeads",
    "JointHead",
    "MLPEncoder",
    "MixerBlock",
    "MixerEncoder",
    "PackedBag",
    "PatternPooling",
    "PoolOutput",
    "RepertoireClassifier",
    "RepertoireNet",
    "gene_modules",
    "load_model_files",
    "pack_bag",
    "position_features",
    "save_model_files",
]
