"""Seeded generators of synthetic data for the demo and the tests."""

from biocls.simulate._cells import simulate_cells
from biocls.simulate._repertoires import (
    PHYSICOCHEMICAL_GROUPS,
    implant_motif,
    simulate_repertoires,
)

__all__ = ["PHYSICOCHEMICAL_GROUPS", "implant_motif", "simulate_cells", "simulate_repertoires"]
