"""Seeded generators of synthetic data for the demo and the tests."""

from biocls.simulate._cells import simulate_cells
from biocls.simulate._images import simulate_images
from biocls.simulate._repertoires import (
    PHYSICOCHEMICAL_GROUPS,
    implant_motif,
    simulate_repertoires,
)
from biocls.simulate._splatter import CELL_MODELS, simulate_cells_splatter

__all__ = [
    "CELL_MODELS",
    "PHYSICOCHEMICAL_GROUPS",
    "implant_motif",
    "simulate_cells",
    "simulate_cells_splatter",
    "simulate_images",
    "simulate_repertoires",
]
