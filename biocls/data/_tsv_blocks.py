"""Byte-level reading of plain tab-separated repertoire files, for scoring.

Parsing a CDR3 column with pandas makes one Python string per row, which is most of the time that
``biocls predict`` spends on a 10^6-sequence file. Files as AIRR tools write them (no quotes, no
carriage returns, the same number of fields on every line, plain whole-number counts) are read here
as bytes instead: each block's field boundaries come from the positions of tabs and newlines, and
the sequence bytes go straight to the residue lookup. A block with anything else returns ``None``
and its caller parses that block with pandas, so every irregular case keeps pandas' meaning and the
reader's one-line errors.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np

__all__ = ["RawBlock", "iter_blocks", "parse_block", "read_header"]

_TAB, _NEWLINE, _CR, _QUOTE, _ZERO = 9, 10, 13, 34, 48
#: bytes read per block (whole lines are kept together)
BLOCK_BYTES = 1 << 23
#: longest count field read here (more digits could lose precision in float64)
_MAX_COUNT_DIGITS = 15


class RawBlock(NamedTuple):
    """Rows of one block: ``residues`` (uint8 ASCII bytes of every sequence, concatenated),
    ``lengths`` (int64, bytes per sequence), ``counts`` (float64; 0 kept as 0)."""

    residues: np.ndarray
    lengths: np.ndarray
    counts: np.ndarray


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def read_header(path: Path) -> list[str] | None:
    """The header line split at tabs, as bytes decoded (``None`` if not UTF-8). It equals
    pandas' header only when nothing in it needed parsing (quotes, BOM, duplicate names)."""
    with _open(path) as f:
        line = f.readline()
    try:
        return line.rstrip(b"\n").decode("utf-8").split("\t")
    except UnicodeDecodeError:
        return None


def iter_blocks(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """``(header_line, block)`` pairs: each block holds whole lines (newline-terminated) of the
    file after its header, about :data:`BLOCK_BYTES` at a time."""
    with _open(path) as f:
        header = f.readline()
        rest = b""
        while True:
            data = f.read(BLOCK_BYTES)
            if not data:
                break
            data = rest + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                rest = data
                continue
            rest = data[cut:]
            yield header, data[:cut]
        if rest:
            yield header, rest + b"\n"


def _field(line_start: np.ndarray, tabs: np.ndarray, ends: np.ndarray, k: int, n: int
           ) -> tuple[np.ndarray, np.ndarray]:
    start = line_start if k == 0 else tabs[:, k - 1] + 1
    end = ends if k == n - 1 else tabs[:, k]
    return start, end


def _gather(a: np.ndarray, start: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The bytes ``a[start[i]:start[i] + lengths[i]]`` of every row, concatenated."""
    total = int(lengths.sum())
    before = np.cumsum(lengths) - lengths
    return a[np.repeat(start - before, lengths) + np.arange(total)]


def parse_block(block: bytes, n_columns: int, sequence: int, count: int | None
                ) -> RawBlock | None:
    """Columns ``sequence`` and ``count`` (indices; ``None``: every count is 1) of a block of
    whole lines, or ``None`` when the block is not plain: a quote or carriage return anywhere, a
    line with another number of fields (a blank line too), or a count that is not 1 to 15
    digits."""
    a = np.frombuffer(block, dtype=np.uint8)
    if (a == _QUOTE).any() or (a == _CR).any():
        return None
    ends = np.flatnonzero(a == _NEWLINE)
    rows = len(ends)
    tabs = np.flatnonzero(a == _TAB)
    if rows == 0 or len(tabs) != rows * (n_columns - 1):
        return None
    line_start = np.concatenate([[0], ends[:-1] + 1])
    tabs = tabs.reshape(rows, n_columns - 1)
    # tabs are sorted, so with the total right, every line's group of tabs lying inside that
    # line means every line has exactly n_columns - 1 of them
    if n_columns > 1 and not ((tabs[:, 0] >= line_start) & (tabs[:, -1] < ends)).all():
        return None
    s, e = _field(line_start, tabs, ends, sequence, n_columns)
    lengths = e - s
    residues = _gather(a, s, lengths)
    if count is None:
        return RawBlock(residues, lengths, np.ones(rows))
    s, e = _field(line_start, tabs, ends, count, n_columns)
    width = e - s
    if (width < 1).any() or (width > _MAX_COUNT_DIGITS).any():
        return None
    digits = _gather(a, s, width) - np.uint8(_ZERO)  # wraps above 9 for anything but 0-9
    if (digits > 9).any():
        return None
    place = np.repeat(np.cumsum(width), width) - np.arange(int(width.sum())) - 1
    values = digits.astype(np.float64) * 10.0 ** place
    counts = np.add.reduceat(values, np.cumsum(width) - width)
    return RawBlock(residues, lengths, counts)
