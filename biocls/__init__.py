"""biocls: patient-grouped multi-task classification for single cells and immune repertoires."""

from biocls._errors import BioclsError

__all__ = ["BioclsError", "__version__"]
__version__ = "0.1.0"
