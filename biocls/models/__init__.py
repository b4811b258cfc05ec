"""Torch nets and the blocks they are built from (MONAI-style); the estimators that fit them live
in :mod:`biocls.estimators`."""

from biocls.models._cdr3 import CDR3Encoder, position_features
from biocls.models._cells import PATHS, CellEnsemble, CellNet
from biocls.models._encoders import MixerBlock, MixerEncoder, MLPEncoder, gene_modules
from biocls.models._filter_seeding import enriched_patterns, seed_encoder, seed_pooling
from biocls.models._heads import FactoredHeads, JointHead
from biocls.models._io import load_model_files, save_model_files
from biocls.models._pooling import AttentionPooling, PatternPooling, PoolOutput
from biocls.models._repertoire_net import PackedBag, RepertoireNet, pack_bag

__all__ = [
    "AttentionPooling",
    "CDR3Encoder",
    "CellEnsemble",
    "CellNet",
    "FactoredHeads",
    "JointHead",
    "MLPEncoder",
    "MixerBlock",
    "MixerEncoder",
    "PATHS",
    "PackedBag",
    "PatternPooling",
    "PoolOutput",
    "RepertoireNet",
    "enriched_patterns",
    "gene_modules",
    "load_model_files",
    "pack_bag",
    "position_features",
    "save_model_files",
    "seed_encoder",
    "seed_pooling",
]
