"""The Python API, in scanpy's style: what a notebook user calls, and what the CLI verbs wrap.

>>> import biocls
>>> cv = biocls.tl.cross_validate(adata, keys={"cell_type": "cell_type",
...                               "cell_state": "cell_state", "patient": "donor"}, folds=4)
>>> cv.metrics["cell_type"]["macro_f1"], cv.predictions.head()
>>> model = biocls.tl.train(adata, keys=...)          # or "results/my_cells/model" from snakemake
>>> biocls.tl.annotate(new_adata, model)              # adds obs["biocls_cell_type"], ...

Every option is a key of the experiment config (README, "Your own data"; defaults in
:mod:`biocls.config`), checked by the same loader as the workflow's, so a typo is an error naming
the nearest valid key and an experiment trains alike from Python and from Snakemake.
"""

from biocls.tl._api import (
    annotate,
    cross_validate,
    cross_validate_repertoires,
    score_repertoires,
    train,
)

__all__ = ["annotate", "cross_validate", "cross_validate_repertoires", "score_repertoires",
           "train"]
