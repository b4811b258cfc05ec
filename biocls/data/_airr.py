"""Readers and validation for immune-repertoire inputs.

Two file layouts are accepted, one file per repertoire (``<repertoire_id>.tsv`` or ``.tsv.gz``):

* AIRR rearrangement TSVs: ``junction_aa`` (or ``cdr3_aa``), ``v_call``, ``j_call``,
  ``duplicate_count``; other columns are ignored;
* DeepRC's layout: ``amino_acid``, ``templates`` (and ``v_gene``/``j_gene`` when present).

Plus one ``metadata.tsv`` with one row per repertoire; its repertoire, patient and label columns are
named by the experiment's ``keys`` (DESIGN §4). Every problem a user can fix is a one-line
:class:`~biocls.BioclsError` naming the file and the repertoire ID, raised before anything is
written.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from biocls._errors import BioclsError
from biocls.data._tsv_blocks import RawBlock, iter_blocks, parse_block, read_header

__all__ = [
    "RepertoireChunk",
    "find_repertoire_files",
    "is_repertoire_file",
    "iter_repertoire_chunks",
    "positive_label",
    "read_repertoire",
    "read_repertoire_metadata",
    "scan_repertoire_folder",
]

log = logging.getLogger(__name__)

#: Column names tried, in order, for each field.
SEQUENCE_COLUMNS = ("junction_aa", "cdr3_aa", "amino_acid")
COUNT_COLUMNS = ("duplicate_count", "templates", "consensus_count")
V_COLUMNS = ("v_call", "v_gene")
J_COLUMNS = ("j_call", "j_gene")
SUFFIXES = (".tsv", ".tsv.gz")
DEFAULT_KEYS = {"repertoire": "repertoire_id", "patient": "subject_id", "label": "label"}


@dataclass
class RepertoireChunk:
    """A block of rows of one repertoire file, as plain arrays (``count`` is float64).

    With ``iter_repertoire_chunks(..., raw=True)``, a plain block comes as bytes instead:
    ``sequence`` is ``None`` and ``raw`` holds the sequences' bytes and lengths (a row whose
    count is 0 keeps count 0 there: the store drops it)."""

    sequence: np.ndarray | None
    count: np.ndarray
    v: np.ndarray
    j: np.ndarray
    raw: RawBlock | None = None


def _stem(path: Path) -> str:
    name = path.name
    for s in SUFFIXES[::-1]:
        if name.endswith(s):
            return name[: -len(s)]
    return path.stem


def find_repertoire_files(directory: str | Path, *, exclude: tuple[str, ...] = ("metadata",)
                          ) -> dict[str, Path]:
    """Map repertoire ID (file name without ``.tsv``/``.tsv.gz``) to path, for one folder.

    Two files with the same ID (``a.tsv`` and ``a.tsv.gz``) are an error naming the ID.
    """
    d = Path(directory)
    if not d.is_dir():
        raise BioclsError("repertoire folder not found", where=str(d),
                          fix="set `repertoires:` to the folder holding <repertoire_id>.tsv files")
    out: dict[str, Path] = {}
    for p in sorted(d.iterdir()):
        if not p.is_file() or not p.name.endswith(SUFFIXES):
            continue
        rid = _stem(p)
        if rid in exclude:
            continue
        if rid in out:
            raise BioclsError(f"duplicate repertoire ID {rid!r} ({out[rid].name} and {p.name})",
                              where=str(d), fix="keep one file per repertoire ID")
        out[rid] = p
    return out


def is_repertoire_file(path: str | Path) -> bool:
    """Whether ``path`` is one repertoire: a ``.tsv``/``.tsv.gz`` whose header has a CDR3
    column (``junction_aa``, ``cdr3_aa`` or DeepRC's ``amino_acid``), as training requires, and
    that does not span several repertoires.

    The second condition tells a repertoire from a table *about* sequences of many repertoires,
    such as the simulator's ``truth.tsv``: a file with a ``repertoire_id`` column (AIRR allows
    one) must hold a single ID. Otherwise only the header is read; an empty file is not a
    repertoire, an unreadable one is an error naming it.
    """
    path = Path(path)
    if not path.is_file() or not path.name.endswith(SUFFIXES):
        return False
    try:
        header = pd.read_csv(path, sep="\t", nrows=0).columns.tolist()
    except pd.errors.EmptyDataError:
        return False
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as e:
        raise BioclsError(f"cannot read the header ({type(e).__name__}: {e})", where=str(path),
                          fix="check the file is a (gzipped) tab-separated table") from None
    if _pick(header, SEQUENCE_COLUMNS) is None:
        return False
    rid = _pick(header, ("repertoire_id",))
    if rid is None:
        return True
    seen: set[str] = set()
    for block in pd.read_csv(path, sep="\t", usecols=[rid], dtype=str, keep_default_na=False,
                             chunksize=100_000):
        seen.update(block[rid].unique())
        if len(seen) > 1:
            return False
    return True


def scan_repertoire_folder(directory: str | Path) -> tuple[dict[str, Path], list[Path]]:
    """The repertoire files of a folder given to ``biocls predict``, and the TSVs skipped.

    Returns ``(files, skipped)``: ``files`` maps repertoire ID to path for every file that
    :func:`is_repertoire_file` accepts; ``skipped`` lists the other ``.tsv``/``.tsv.gz`` files
    (``metadata.tsv``, ``truth.tsv``, ...). When no file is left, the error says what the folder
    holds and names a subfolder that does hold repertoire files, if one does.
    """
    d = Path(directory)
    if not d.is_dir():
        raise BioclsError("not a folder" if d.exists() else "folder not found", where=str(d),
                          fix="pass --input the folder that holds the <repertoire_id>.tsv files")
    everything = find_repertoire_files(d, exclude=())
    files = {rid: p for rid, p in everything.items() if is_repertoire_file(p)}
    skipped = [p for rid, p in everything.items() if rid not in files]
    if files:
        return files, skipped
    found = [f"{len(skipped)} TSV(s) that are not one repertoire "
             f"({_names(skipped)})"] if skipped else []
    subdirs = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        found.append(f"subfolder(s) {_names(subdirs, slash=True)}")
    fix = ("point --input at a folder of <repertoire_id>.tsv files with a junction_aa (or "
           "cdr3_aa, amino_acid) column and a duplicate_count, v_call or j_call column")
    for sub in subdirs:
        n = sum(_quietly_repertoire(p) for p in sorted(sub.iterdir()))
        if n:
            fix = f"the repertoire files are probably in {sub} ({n} there): pass --input {sub}"
            break
    raise BioclsError(f"no repertoire files; found {', '.join(found) or 'nothing'}",
                      where=str(d), fix=fix)


def _quietly_repertoire(path: Path) -> bool:
    try:
        return is_repertoire_file(path)
    except BioclsError:
        return False


def _names(paths: list[Path], *, slash: bool = False, limit: int = 5) -> str:
    names = [p.name + ("/" if slash else "") for p in paths]
    more = f", and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def read_repertoire_metadata(path: str | Path, *, keys: Mapping[str, str] | None = None,
                             files: Mapping[str, Path] | None = None) -> pd.DataFrame:
    """Read ``metadata.tsv`` and check it against the repertoire files.

    Returns one row per repertoire, in file order, with columns ``repertoire_id``, ``patient``
    and ``label`` (strings), whatever the columns are called in the file (``keys`` maps the
    roles ``repertoire``, ``patient``, ``label`` to column names). With ``files`` (from
    :func:`find_repertoire_files`), a metadata row without a file and a file without a metadata
    row are errors naming the ID.
    """
    path = Path(path)
    k = {**DEFAULT_KEYS, **(keys or {})}
    if not path.exists():
        raise BioclsError("metadata file not found", where=str(path),
                          fix="set `metadata:` to a TSV with one row per repertoire")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise BioclsError(f"cannot parse as TSV ({e})", where=str(path),
                          fix="write a tab-separated file with a header row") from None
    for role in ("repertoire", "patient", "label"):
        if k[role] not in df.columns:
            raise BioclsError(
                f"column {k[role]!r} (keys.{role}) not found; columns are {list(df.columns)}",
                where=str(path), fix=f"set keys.{role} to the column holding the {role}")
    out = pd.DataFrame({"repertoire_id": df[k["repertoire"]].str.strip(),
                        "patient": df[k["patient"]].str.strip(),
                        "label": df[k["label"]].str.strip()})
    for col, role in (("repertoire_id", "repertoire"), ("patient", "patient"),
                      ("label", "label")):
        empty = out.index[out[col] == ""]
        if len(empty):
            row = int(empty[0])
            rid = out["repertoire_id"].iat[row] or f"row {row + 2}"
            raise BioclsError(f"empty {k[role]!r} for repertoire {rid}",
                              where=f"{path}: line {row + 2}", fix=f"fill in the {role}")
    dup = out["repertoire_id"][out["repertoire_id"].duplicated()]
    if len(dup):
        raise BioclsError(f"duplicate repertoire ID {dup.iat[0]!r}", where=str(path),
                          fix="give every repertoire one row with a unique ID")
    if files is not None:
        have = set(files)
        missing = [r for r in out["repertoire_id"] if r not in have]
        if missing:
            raise BioclsError(f"metadata row for repertoire {missing[0]!r} has no file"
                              f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}",
                              where=str(path),
                              fix=f"add {missing[0]}.tsv to the repertoire folder or drop the row")
        extra = sorted(have - set(out["repertoire_id"]))
        if extra:
            raise BioclsError(f"repertoire file {files[extra[0]].name} (ID {extra[0]!r}) has no "
                              f"metadata row"
                              f"{f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''}",
                              where=str(path), fix="add a metadata row or remove the file")
    classes = sorted(out["label"].unique())
    if len(classes) > 2:
        raise BioclsError(f"{len(classes)} label values {classes[:5]}; repertoire "
                          "classification is binary", where=f"{path}: {k['label']}",
                          fix="map the labels to two values")
    return out


_POS = [("0", "1"), ("false", "true"), ("-", "+"), ("neg", "pos"), ("negative", "positive"),
        ("no", "yes")]


def positive_label(labels: pd.Series | np.ndarray | list[str], *, given: str | None = None,
                   where: str = "metadata") -> str:
    """Which label value is the positive class.

    ``given`` wins when set; otherwise a conventional pair (0/1, false/true, -/+, neg/pos, no/yes,
    or values ending in ``+``/``-`` such as ``CMV+``) decides.
    """
    values = sorted(set(map(str, labels)))
    if given is not None:
        if str(given) not in values:
            raise BioclsError(f"positive_label {given!r} is not one of the labels {values}",
                              where=where, fix="set positive_label to one of the label values")
        return str(given)
    if len(values) == 1:
        v = values[0].lower()
        for neg, pos in _POS:
            if v in (neg, pos):
                return values[0] if v == pos else pos
        raise BioclsError(f"only one label value {values[0]!r}", where=where,
                          fix="set positive_label so that biocls knows which class it is")
    low = [v.lower() for v in values]
    for neg, pos in _POS:
        if sorted(low) == sorted([neg, pos]):
            return values[low.index(pos)]
    ends = [v[-1:] for v in values]
    if sorted(ends) == ["+", "-"]:
        return values[ends.index("+")]
    raise BioclsError(f"cannot tell which of the labels {values} is positive", where=where,
                      fix="add `positive_label: <value>` to the experiment")


def _pick(columns: list[str], names: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in columns}
    for n in names:
        if n in lower:
            return lower[n]
    return None


def iter_repertoire_chunks(path: str | Path, *, chunksize: int = 262_144, calls: bool = True,
                           raw: bool = False) -> Iterator[RepertoireChunk]:
    """Stream one repertoire file (AIRR or DeepRC columns) in blocks of ``chunksize`` rows.

    An empty count (or ``NA``, ``NaN``, ``None``, ``null``) becomes 1; a row whose count is 0 (a
    sequence observed no times, as some exports list) is dropped and counted like an invalid
    sequence; a count that is negative, fractional or non-numeric is a one-line error naming the
    file, the line and the column. Missing V/J calls become ``""``, as do all of them with
    ``calls=False`` (scoring needs none: their columns are not parsed). Only the needed columns
    are parsed, so a 10^6-row file never sits in memory as text.

    ``raw=True`` (with ``calls=False``) reads plain blocks as bytes (``chunk.raw``; see
    :mod:`biocls.data._tsv_blocks`), several times faster; other blocks come as above.
    """
    path = Path(path)
    try:
        header = pd.read_csv(path, sep="\t", nrows=0).columns.tolist()
    except pd.errors.EmptyDataError:
        raise BioclsError("empty repertoire file (no header)", where=str(path),
                          fix="remove the file and its metadata row, or fill it") from None
    seq_col = _pick(header, SEQUENCE_COLUMNS)
    if seq_col is None:
        raise BioclsError(f"no sequence column; expected one of {list(SEQUENCE_COLUMNS)}, "
                          f"found {header[:8]}", where=str(path),
                          fix="name the CDR3 amino-acid column junction_aa (AIRR) or amino_acid")
    cnt_col = _pick(header, COUNT_COLUMNS)
    v_col = _pick(header, V_COLUMNS) if calls else None
    j_col = _pick(header, J_COLUMNS) if calls else None
    use = [c for c in (seq_col, cnt_col, v_col, j_col) if c is not None]
    # the count column is left to the C parser: a block of plain numbers arrives numeric (fast);
    # anything else (empty, NA, text) arrives as text and takes the checked path in _counts
    options = dict(sep="\t", usecols=use, dtype={c: str for c in use if c != cnt_col},
                   keep_default_na=False, na_filter=False)
    cols = (seq_col, cnt_col, v_col, j_col)
    if raw and not calls and read_header(path) == header:
        yield from _raw_chunks(path, header, cols, options)
        return
    start = 0  # data rows read so far: the file's line number is start + row + 2
    for df in pd.read_csv(path, chunksize=chunksize, **options):
        yield _frame_chunk(df, path, cols, start)
        start += len(df)


def _raw_chunks(path: Path, header: list[str], cols: tuple[str | None, ...],
                options: dict) -> Iterator[RepertoireChunk]:
    seq_col, cnt_col = cols[0], cols[1]
    seq_i = header.index(seq_col)
    cnt_i = header.index(cnt_col) if cnt_col is not None else None
    start = 0
    for head, block in iter_blocks(path):
        rb = parse_block(block, len(header), seq_i, cnt_i)
        if rb is None:  # not plain: pandas parses this block, with the usual checks
            df = pd.read_csv(io.BytesIO(head + block), **options)
            yield _frame_chunk(df, path, cols, start)
            start += len(df)
            continue
        n = len(rb.lengths)
        empty = np.full(n, "", dtype=object)
        yield RepertoireChunk(sequence=None, count=rb.counts, v=empty, j=empty, raw=rb)
        start += n


def _frame_chunk(df: pd.DataFrame, path: Path, cols: tuple[str | None, ...], start: int
                 ) -> RepertoireChunk:
    """One parsed block → :class:`RepertoireChunk`; ``start``: data rows before it."""
    seq_col, cnt_col, v_col, j_col = cols
    n = len(df)
    c = _counts(df[cnt_col], path, cnt_col, start) if cnt_col is not None else np.ones(n)
    empty = np.full(n, "", dtype=object)
    seq = df[seq_col].to_numpy(dtype=object)
    if (c == 0).any():  # an empty sequence is what the store drops and counts
        seq = np.where(c == 0, "", seq).astype(object)
        c = np.where(c == 0, 1.0, c)
    return RepertoireChunk(
        sequence=seq,
        count=c,
        v=df[v_col].to_numpy(dtype=object) if v_col else empty,
        j=df[j_col].to_numpy(dtype=object) if j_col else empty,
    )


#: Count fields read as "not given" (then 1), compared case-insensitively after stripping.
MISSING_COUNTS = frozenset({"", "na", "nan", "n/a", "none", "null", "<na>"})


def _counts(col: pd.Series, path: Path, name: str, start: int) -> np.ndarray:
    """Duplicate counts of one block as float64: missing → 1, 0 stays 0 (the caller drops the
    row); anything but a whole number ≥ 0 is an error naming the file, the line (header = line 1)
    and the column."""
    if col.dtype.kind in "iuf":  # parsed as numbers already: only the range needs checking
        c = col.to_numpy(dtype=np.float64)
        if (np.isfinite(c) & (c >= 0) & (c == np.round(c))).all():
            return c
    text = col.astype(str).str.strip()
    missing = text.str.lower().isin(MISSING_COUNTS).to_numpy()
    c = pd.to_numeric(text.where(~missing, "1"), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(c) & (c >= 0) & (c == np.round(c)))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        value = col.iat[i]
        kind = ("not a number" if np.isnan(c[i]) else "negative" if c[i] < 0
                else "not a whole number" if np.isfinite(c[i]) else "not finite")
        more = int(bad.sum()) - 1
        raise BioclsError(
            f"{name} {value!r} is {kind}{f' (and at least {more} more)' if more else ''}",
            where=f"{path}: line {start + i + 2}, column {name}",
            fix=f"{name} must be a whole number (the sequence's copy number; 0 drops the row); "
                "leave it empty where unknown (read as 1)")
    return c


def read_repertoire(path: str | Path) -> pd.DataFrame:
    """Read a whole repertoire file into ``junction_aa, v_call, j_call, duplicate_count``.

    Convenience for small files; the store builder streams with :func:`iter_repertoire_chunks`.
    No sequence is validated or dropped here.
    """
    parts = [pd.DataFrame({"junction_aa": c.sequence, "v_call": c.v, "j_call": c.j,
                           "duplicate_count": c.count}) for c in iter_repertoire_chunks(path)]
    if not parts:
        return pd.DataFrame(columns=["junction_aa", "v_call", "j_call", "duplicate_count"])
    return pd.concat(parts, ignore_index=True)
