"""CDR3 residue encoding and the compact on-disk repertoire store (HDF5).

A dataset is encoded once, streaming file by file and block by block, so that training and
prediction never parse text and a 10^6-sequence repertoire never sits in memory as strings.

Store layout (``format = "biocls-cdr3-store"``, ``version = 1``)::

    residues      uint8  [R]       residue codes 1..20 (ALPHABET order), all sequences concatenated
    seq_offsets   int64  [S + 1]   sequence s is residues[seq_offsets[s]:seq_offsets[s + 1]]
    counts        float64 [S]      duplicate counts (1 where missing)
    v, j          int32  [S]       codes into v_vocab / j_vocab ("" = not given)
    v_vocab, j_vocab  str [*]
    rep_offsets   int64  [B + 1]   repertoire b is sequences rep_offsets[b]:rep_offsets[b + 1]
    repertoire_id, patient, label  str [B]
    y             int8   [B]       1 for the positive label
    n_dropped     int64  [B]       sequences dropped (empty, or residues outside the 20 amino acids)
    attrs: format, version, alphabet, positive_label
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from biocls._errors import BioclsError
from biocls._io import atomic_path
from biocls._progress import progress_bar
from biocls.data._airr import iter_repertoire_chunks

__all__ = ["ALPHABET", "Bag", "CDR3Store", "build_cdr3_store", "decode_sequences",
           "encode_bytes", "encode_sequences"]

log = logging.getLogger(__name__)

ALPHABET = "ACDEFGHIKLMNPQRSTVWY"
FORMAT = "biocls-cdr3-store"
VERSION = 1

_LUT = np.zeros(256, dtype=np.uint8)
for _i, _c in enumerate(ALPHABET):
    _LUT[ord(_c)] = _i + 1
    _LUT[ord(_c.lower())] = _i + 1
_DECODE = np.frombuffer(("?" + ALPHABET).encode(), dtype=np.uint8)


def encode_sequences(sequences) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode amino-acid strings into residue codes 1..20 (upper or lower case).

    Returns ``(codes, lengths, valid)``: ``codes`` (uint8) holds the residues of the *valid*
    sequences only, concatenated; ``lengths`` (int64) their lengths; ``valid`` (bool, one per input)
    is False for an empty sequence or one with any residue outside the 20 amino acids.
    """
    if not hasattr(sequences, "__len__"):
        sequences = list(sequences)
    try:  # all strings, as the file reader gives: no per-item check (a third of the time)
        text = "".join(sequences)
        seqs = sequences
    except TypeError:
        seqs = ["" if not isinstance(s, str) else s for s in sequences]
        text = "".join(seqs)
    lens = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    raw = np.frombuffer(text.encode("latin-1", errors="replace"), dtype=np.uint8)
    return encode_bytes(raw, lens)


def encode_bytes(raw: np.ndarray, lens: np.ndarray, drop: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`encode_sequences` on sequences given as their bytes (uint8, concatenated) and
    lengths; rows where ``drop`` is True are invalid too (a count of 0)."""
    lens = np.asarray(lens, dtype=np.int64)
    codes = _LUT[raw]
    bad = np.concatenate([[0], np.cumsum(codes == 0)])
    ends = np.cumsum(lens)
    nbad = bad[ends] - bad[ends - lens]
    valid = (lens > 0) & (nbad == 0)
    if drop is not None:
        valid &= ~drop
    if not valid.all():
        codes = codes[np.repeat(valid, lens)]
    return codes, lens[valid], valid


def decode_sequences(codes: np.ndarray, offsets: np.ndarray) -> list[str]:
    """Inverse of :func:`encode_sequences`: ``offsets`` has one more entry than sequences."""
    text = _DECODE[np.asarray(codes, dtype=np.int64)].tobytes().decode("ascii")
    o = np.asarray(offsets, dtype=np.int64) - int(offsets[0])
    return [text[o[i]:o[i + 1]] for i in range(len(o) - 1)]


class _Appender:
    def __init__(self, h5: h5py.File, name: str, dtype, chunk: int = 1 << 16) -> None:
        self.ds = h5.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype,
                                    chunks=(chunk,))
        self.n = 0

    def add(self, arr: np.ndarray) -> None:
        if len(arr) == 0:
            return
        self.ds.resize((self.n + len(arr),))
        self.ds[self.n:self.n + len(arr)] = arr
        self.n += len(arr)


class _Vocab:
    def __init__(self) -> None:
        self.index: dict[str, int] = {"": 0}

    def codes(self, values: np.ndarray) -> np.ndarray:
        # hashing (factorize) rather than sorting every string of the block (np.unique)
        inv, uniq = pd.factorize(np.asarray(values, dtype=object), sort=True)
        ids = np.array([self.index.setdefault(u, len(self.index)) for u in uniq], dtype=np.int32)
        return ids[inv] if len(inv) else np.zeros(0, np.int32)

    def names(self) -> list[str]:
        return sorted(self.index, key=self.index.__getitem__)


def build_cdr3_store(
    metadata: pd.DataFrame,
    files: Mapping[str, Path],
    out: str | Path,
    *,
    positive: str,
    progress: bool = True,
    chunksize: int = 262_144,
    calls: bool = True,
) -> pd.DataFrame:
    """Encode every repertoire of ``metadata`` (from
    :func:`~biocls.data.read_repertoire_metadata`) into the store at ``out``, atomically.

    Invalid and empty sequences are dropped and counted (logged, and kept in ``n_dropped``). A
    repertoire left with no sequence is an error naming it; nothing is written then. Returns one
    row per repertoire: ``repertoire_id, patient, label, n_sequences, n_dropped``.
    ``calls=False`` leaves the V/J calls out (all ``""``): scoring new repertoires needs none.
    """
    rows = []
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as h5:
        res = _Appender(h5, "residues", np.uint8, 1 << 20)
        offs = _Appender(h5, "seq_offsets", np.int64)
        cnt = _Appender(h5, "counts", np.float64)
        va, ja = _Appender(h5, "v", np.int32), _Appender(h5, "j", np.int32)
        vv, jv = _Vocab(), _Vocab()
        offs.add(np.zeros(1, np.int64))
        rep_off = [0]
        n_res = 0
        bar = progress_bar(metadata.itertuples(index=False), total=len(metadata),
                           desc="encode", unit="repertoire", disable=not progress)
        for r in bar:
            rid = r.repertoire_id
            n_ok = n_drop = 0
            for chunk in iter_repertoire_chunks(files[rid], chunksize=chunksize, calls=calls,
                                                raw=not calls):
                if chunk.raw is not None:
                    codes, lens, valid = encode_bytes(chunk.raw.residues, chunk.raw.lengths,
                                                      drop=chunk.count == 0)
                else:
                    codes, lens, valid = encode_sequences(chunk.sequence)
                res.add(codes)
                offs.add(n_res + np.cumsum(lens))
                n_res += int(lens.sum())
                cnt.add(chunk.count[valid])
                va.add(vv.codes(chunk.v[valid]))
                ja.add(jv.codes(chunk.j[valid]))
                n_ok += int(valid.sum())
                n_drop += int((~valid).sum())
            if n_ok == 0:
                raise BioclsError(
                    f"repertoire {rid!r} is empty"
                    f"{f' ({n_drop} sequence(s), all invalid)' if n_drop else ''}",
                    where=str(files[rid]),
                    fix="remove the file and its metadata row, or check its sequence column")
            if n_drop:
                log.warning("repertoire %s: dropped %d of %d sequences (empty or residues outside "
                            "the 20 amino acids)", rid, n_drop, n_ok + n_drop)
            rep_off.append(rep_off[-1] + n_ok)
            rows.append({"repertoire_id": rid, "patient": r.patient, "label": r.label,
                         "n_sequences": n_ok, "n_dropped": n_drop})
        info = pd.DataFrame(rows, columns=["repertoire_id", "patient", "label", "n_sequences",
                                           "n_dropped"])
        s = h5py.string_dtype()
        h5.create_dataset("rep_offsets", data=np.asarray(rep_off, np.int64))
        for col in ("repertoire_id", "patient", "label"):
            h5.create_dataset(col, data=info[col].astype(str).to_numpy(dtype=object), dtype=s)
        h5.create_dataset("y", data=(info["label"].astype(str) == str(positive)).to_numpy(np.int8))
        h5.create_dataset("n_dropped", data=info["n_dropped"].to_numpy(np.int64))
        h5.create_dataset("v_vocab", data=np.array(vv.names(), dtype=object), dtype=s)
        h5.create_dataset("j_vocab", data=np.array(jv.names(), dtype=object), dtype=s)
        h5.attrs.update({"format": FORMAT, "version": VERSION, "alphabet": ALPHABET,
                         "positive_label": str(positive)})
    log.info("store %s: %d repertoires, %d sequences, %d dropped", out, len(info),
             int(info["n_sequences"].sum()), int(info["n_dropped"].sum()))
    return info


@dataclass
class Bag:
    """One repertoire from the store: ``codes`` (uint8, concatenated), ``offsets`` (int64, starting
    at 0, one more than sequences), ``counts`` (float64), ``v``/``j`` (int32 vocab codes)."""

    codes: np.ndarray
    offsets: np.ndarray
    counts: np.ndarray
    v: np.ndarray
    j: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequences(self, index: np.ndarray | None = None) -> list[str]:
        """Decode all sequences, or those at ``index``."""
        if index is None:
            return decode_sequences(self.codes, self.offsets)
        return ["".join(ALPHABET[c - 1] for c in self.codes[self.offsets[i]:self.offsets[i + 1]])
                for i in np.asarray(index, dtype=np.int64)]


class CDR3Store:
    """Read a store written by :func:`build_cdr3_store`.

    ``repertoires`` is a DataFrame (``repertoire_id, patient, label, y, n_sequences, n_dropped``);
    :meth:`bag` reads one repertoire's arrays. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BioclsError("store not found", where=str(self.path),
                              fix="build it with `biocls encode`")
        self._h5 = h5py.File(self.path, "r")
        if self._h5.attrs.get("format") != FORMAT:
            self._h5.close()
            raise BioclsError("not a biocls CDR3 store", where=str(self.path),
                              fix="rebuild it with `biocls encode`")
        h = self._h5
        self.rep_offsets = h["rep_offsets"][:]
        self.positive_label = str(h.attrs["positive_label"])
        self.repertoires = pd.DataFrame({
            "repertoire_id": h["repertoire_id"].asstr()[:],
            "patient": h["patient"].asstr()[:],
            "label": h["label"].asstr()[:],
            "y": h["y"][:].astype(int),
            "n_sequences": np.diff(self.rep_offsets),
            "n_dropped": h["n_dropped"][:],
        })
        self.v_vocab = np.array(h["v_vocab"].asstr()[:], dtype=object)
        self.j_vocab = np.array(h["j_vocab"].asstr()[:], dtype=object)
        self._row = {r: i for i, r in enumerate(self.repertoires["repertoire_id"])}

    def __enter__(self) -> CDR3Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._h5.close()

    def __len__(self) -> int:
        return len(self.repertoires)

    def index_of(self, repertoire_id: str) -> int:
        return self._row[repertoire_id]

    def bag(self, i: int | str) -> Bag:
        """Read repertoire ``i`` (row number or repertoire ID)."""
        if isinstance(i, str):
            i = self._row[i]
        h = self._h5
        a, b = int(self.rep_offsets[i]), int(self.rep_offsets[i + 1])
        offs = h["seq_offsets"][a:b + 1]
        codes = h["residues"][int(offs[0]):int(offs[-1])]
        return Bag(codes=codes, offsets=offs - offs[0], counts=h["counts"][a:b],
                   v=h["v"][a:b], j=h["j"][a:b])
