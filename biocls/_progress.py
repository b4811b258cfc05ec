"""Progress bars that read well both in a terminal and in a log file."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm

#: Seconds between redraws when stderr is a file (Snakemake's `2> {log}`, a SLURM job's output):
#: a bar redrawn every epoch would fill the log with thousands of carriage-return updates.
LOG_INTERVAL_S = 30.0


def progress_bar(*args: Any, **kwargs: Any) -> tqdm:
    """:class:`tqdm.tqdm`, redrawn at most every ``LOG_INTERVAL_S`` when not on a terminal."""
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    return tqdm(*args, **kwargs)
