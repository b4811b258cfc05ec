"""Repertoire readers, validation errors and the CDR3 store's round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biocls import BioclsError
from biocls.data import (
    find_repertoire_files,
    iter_repertoire_chunks,
    positive_label,
    read_repertoire,
    read_repertoire_metadata,
)
from biocls.preprocess import CDR3Store, build_cdr3_store, decode_sequences, encode_sequences

KEYS = {"repertoire": "repertoire_id", "patient": "subject_id", "label": "label"}


def write_airr(path: Path, seqs, counts=None, v=None, j=None) -> None:
    n = len(seqs)
    pd.DataFrame({"sequence_id": range(n), "junction_aa": seqs,
                  "v_call": v or ["TRBV1"] * n, "j_call": j or ["TRBJ1"] * n,
                  "duplicate_count": counts or [1] * n,
                  "productive": ["T"] * n}).to_csv(path, sep="\t", index=False)


def make_set(tmp: Path, reps: dict[str, list[str]], meta_rows=None) -> tuple[Path, Path]:
    d = tmp / "repertoires"
    d.mkdir(parents=True, exist_ok=True)
    for rid, seqs in reps.items():
        write_airr(d / f"{rid}.tsv", seqs)
    rows = meta_rows if meta_rows is not None else [
        {"repertoire_id": r, "subject_id": f"p{i}", "label": i % 2} for i, r in enumerate(reps)]
    pd.DataFrame(rows).to_csv(tmp / "metadata.tsv", sep="\t", index=False)
    return tmp / "metadata.tsv", d


def build(tmp: Path, reps, meta_rows=None) -> tuple[Path, pd.DataFrame]:
    meta_path, d = make_set(tmp, reps, meta_rows)
    files = find_repertoire_files(d)
    meta = read_repertoire_metadata(meta_path, keys=KEYS, files=files)
    info = build_cdr3_store(meta, files, tmp / "store.h5", positive="1", progress=False)
    return tmp / "store.h5", info


def test_encode_decode_and_invalid_residues():
    codes, lens, valid = encode_sequences(["CASSF", "", "CAS*F", "cassf", "CASXF", "CA SF", "W"])
    assert valid.tolist() == [True, False, False, True, False, False, True]
    assert lens.tolist() == [5, 5, 1]
    offs = np.concatenate([[0], np.cumsum(lens)])
    assert decode_sequences(codes, offs) == ["CASSF", "CASSF", "W"]


def test_airr_and_deeprc_readers(tmp_path):
    write_airr(tmp_path / "a.tsv", ["CASSLF", "CASRF"], counts=[3, 1], v=["V1", "V2"],
               j=["J1", "J2"])
    a = read_repertoire(tmp_path / "a.tsv")
    assert a["junction_aa"].tolist() == ["CASSLF", "CASRF"]
    assert a["duplicate_count"].tolist() == [3.0, 1.0]
    assert a["v_call"].tolist() == ["V1", "V2"]
    pd.DataFrame({"amino_acid": ["CASSQF", "CATF"], "templates": [7, "na"],
                  "v_gene": ["TRBV5", "TRBV6"]}).to_csv(tmp_path / "b.tsv", sep="\t",
                                                         index=False)
    b = read_repertoire(tmp_path / "b.tsv")
    assert b["junction_aa"].tolist() == ["CASSQF", "CATF"]
    assert b["duplicate_count"].tolist() == [7.0, 1.0]  # missing count -> 1
    assert b["v_call"].tolist() == ["TRBV5", "TRBV6"]
    assert b["j_call"].tolist() == ["", ""]


def test_missing_sequence_column_names_file(tmp_path):
    pd.DataFrame({"foo": ["CASSF"]}).to_csv(tmp_path / "r1.tsv", sep="\t", index=False)
    with pytest.raises(BioclsError, match=r"r1\.tsv.*junction_aa"):
        read_repertoire(tmp_path / "r1.tsv")


def test_store_round_trip_and_dropped_counts(tmp_path):
    reps = {"r1": ["CASSLGF", "CASS*F", "", "CASRGYF"], "r2": ["CATTF", "CAXF", "CASSPPF"]}
    store, info = build(tmp_path, reps)
    assert info.set_index("repertoire_id")["n_dropped"].to_dict() == {"r1": 2, "r2": 1}
    with CDR3Store(store) as st:
        assert st.repertoires["repertoire_id"].tolist() == ["r1", "r2"]
        assert st.repertoires["n_sequences"].tolist() == [2, 2]
        assert st.repertoires["y"].tolist() == [0, 1]
        assert st.bag("r1").sequences() == ["CASSLGF", "CASRGYF"]
        b = st.bag(1)
        assert b.sequences() == ["CATTF", "CASSPPF"]
        assert b.sequences([1]) == ["CASSPPF"]
        assert st.v_vocab[b.v].tolist() == ["TRBV1", "TRBV1"]
        assert b.counts.tolist() == [1.0, 1.0]


def test_store_streams_in_chunks(tmp_path):
    rng = np.random.default_rng(0)
    seqs = ["CAS" + "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 6)) + "F"
            for _ in range(50)]
    meta_path, d = make_set(tmp_path, {"r1": seqs})
    files = find_repertoire_files(d)
    meta = read_repertoire_metadata(meta_path, keys=KEYS, files=files)
    build_cdr3_store(meta, files, tmp_path / "s.h5", positive="1", progress=False, chunksize=7)
    with CDR3Store(tmp_path / "s.h5") as st:
        assert st.bag(0).sequences() == seqs


def test_duplicate_repertoire_id_is_an_error(tmp_path):
    rows = [{"repertoire_id": "r1", "subject_id": "p1", "label": 0},
            {"repertoire_id": "r1", "subject_id": "p2", "label": 1}]
    meta_path, d = make_set(tmp_path, {"r1": ["CASSF"]}, rows)
    with pytest.raises(BioclsError, match="duplicate repertoire ID 'r1'"):
        read_repertoire_metadata(meta_path, keys=KEYS, files=find_repertoire_files(d))


def test_duplicate_repertoire_file_is_an_error(tmp_path):
    write_airr(tmp_path / "r7.tsv", ["CASSF"])
    pd.read_csv(tmp_path / "r7.tsv", sep="\t").to_csv(tmp_path / "r7.tsv.gz", sep="\t",
                                                      index=False)
    with pytest.raises(BioclsError, match="duplicate repertoire ID 'r7'"):
        find_repertoire_files(tmp_path)


def test_file_without_metadata_row_is_an_error(tmp_path):
    rows = [{"repertoire_id": "r1", "subject_id": "p1", "label": 0}]
    meta_path, d = make_set(tmp_path, {"r1": ["CASSF"], "orphan": ["CASSF"]}, rows)
    with pytest.raises(BioclsError, match="'orphan'.*no metadata row"):
        read_repertoire_metadata(meta_path, keys=KEYS, files=find_repertoire_files(d))


def test_metadata_row_without_file_is_an_error(tmp_path):
    rows = [{"repertoire_id": "r1", "subject_id": "p1", "label": 0},
            {"repertoire_id": "ghost", "subject_id": "p2", "label": 1}]
    meta_path, d = make_set(tmp_path, {"r1": ["CASSF"]}, rows)
    with pytest.raises(BioclsError, match="'ghost' has no file"):
        read_repertoire_metadata(meta_path, keys=KEYS, files=find_repertoire_files(d))


def test_missing_metadata_column_names_the_key(tmp_path):
    meta_path, d = make_set(tmp_path, {"r1": ["CASSF"]})
    with pytest.raises(BioclsError, match="keys.patient"):
        read_repertoire_metadata(meta_path, keys={**KEYS, "patient": "donor"},
                                 files=find_repertoire_files(d))


@pytest.mark.parametrize("content", [[], ["", "CAS*F", "C1F"]])
def test_empty_repertoire_is_an_error_and_writes_nothing(tmp_path, content):
    with pytest.raises(BioclsError, match="repertoire 'r2' is empty"):
        build(tmp_path, {"r1": ["CASSF"], "r2": content})
    assert not (tmp_path / "store.h5").exists()


def test_positive_label_inference():
    assert positive_label(["0", "1", "1"]) == "1"
    assert positive_label(["CMV-", "CMV+"]) == "CMV+"
    assert positive_label(["False", "True"]) == "True"
    assert positive_label(["a", "b"], given="a") == "a"
    with pytest.raises(BioclsError, match="positive_label"):
        positive_label(["a", "b"])


@pytest.mark.parametrize(("column", "value", "kind"), [
    ("duplicate_count", "-3", "negative"),
    ("duplicate_count", "2.5", "not a whole number"),
    ("duplicate_count", "many", "not a number"),
    ("templates", "-1", "negative"),  # DeepRC's layout
])
def test_bad_count_is_an_error_naming_file_line_and_column(tmp_path, column, value, kind):
    """Issue 11: a negative, fractional or non-numeric count was read as 1 and used."""
    seq = "junction_aa" if column == "duplicate_count" else "amino_acid"
    d = tmp_path / "repertoires"
    d.mkdir()
    pd.DataFrame({seq: ["CASSF", "CASRF", "CATTF"], column: ["4", "", value]}).to_csv(
        d / "r1.tsv", sep="\t", index=False)
    with pytest.raises(BioclsError) as err:
        read_repertoire(d / "r1.tsv")
    msg = str(err.value)
    assert f"{d / 'r1.tsv'}: line 4, column {column}" in msg  # header = line 1
    assert f"{value!r} is {kind}" in msg and "fix:" in msg and "\n" not in msg
    pd.DataFrame({"repertoire_id": ["r1"], "subject_id": ["p1"], "label": ["1"]}).to_csv(
        tmp_path / "metadata.tsv", sep="\t", index=False)
    files = find_repertoire_files(d)
    meta = read_repertoire_metadata(tmp_path / "metadata.tsv", keys=KEYS, files=files)
    with pytest.raises(BioclsError, match="line 4"):
        build_cdr3_store(meta, files, tmp_path / "store.h5", positive="1", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metadata.tsv", "repertoires"]


def test_zero_count_rows_are_dropped_and_counted(tmp_path):
    """A count of 0 (a sequence observed no times) must not train: the row is dropped and
    counted like an invalid sequence, never kept with a made-up count."""
    d = tmp_path / "repertoires"
    d.mkdir()
    pd.DataFrame({"junction_aa": ["CASSF", "CASRF", "CATTF"],
                  "duplicate_count": ["4", "0", "2"]}).to_csv(d / "r1.tsv", sep="\t",
                                                              index=False)
    pd.DataFrame({"repertoire_id": ["r1"], "subject_id": ["p1"], "label": ["1"]}).to_csv(
        tmp_path / "metadata.tsv", sep="\t", index=False)
    files = find_repertoire_files(d)
    meta = read_repertoire_metadata(tmp_path / "metadata.tsv", keys=KEYS, files=files)
    info = build_cdr3_store(meta, files, tmp_path / "store.h5", positive="1", progress=False)
    assert int(info["n_sequences"].iat[0]) == 2 and int(info["n_dropped"].iat[0]) == 1
    with CDR3Store(tmp_path / "store.h5") as st:
        bag = st.bag(0)
        assert bag.sequences() == ["CASSF", "CATTF"] and bag.counts.tolist() == [4.0, 2.0]


def test_missing_and_whole_counts_are_read(tmp_path):
    """Empty / NA counts stay 1 (documented); 3.0 is the whole number 3."""
    pd.DataFrame({"junction_aa": ["CASSF"] * 4, "duplicate_count": ["", "NA", "3.0", " 5 "]}
                 ).to_csv(tmp_path / "r.tsv", sep="\t", index=False)
    assert read_repertoire(tmp_path / "r.tsv")["duplicate_count"].tolist() == [1, 1, 3, 5]


def _store_both_ways(tmp: Path, text: str, name: str = "r1.tsv") -> tuple[dict, dict]:
    """One file encoded by the pandas path (``calls=True``) and by the byte path
    (``calls=False``, as ``biocls predict``): residues, offsets, counts and dropped rows."""
    d = tmp / "repertoires"
    d.mkdir(exist_ok=True)
    (d / name).write_bytes(text.encode())
    meta = pd.DataFrame({"repertoire_id": [name.split(".")[0]], "patient": ["p1"],
                         "label": ["1"]})
    files = find_repertoire_files(d)
    out = []
    for calls in (True, False):
        store = tmp / f"store_{calls}.h5"
        info = build_cdr3_store(meta, files, store, positive="1", progress=False, calls=calls)
        with CDR3Store(store) as st:
            b = st.bag(0)
            out.append({"codes": b.codes.tolist(), "offsets": b.offsets.tolist(),
                        "counts": b.counts.tolist(), "dropped": int(info["n_dropped"].iat[0])})
    return out[0], out[1]


@pytest.mark.parametrize("block", [1 << 23, 40])
def test_byte_reader_reads_what_pandas_reads(tmp_path, monkeypatch, block):
    """``biocls predict`` reads plain blocks as bytes; irregular blocks (quotes, CRLF, blank
    lines, empty or NA counts) go to pandas. Either way the store holds the same sequences,
    counts and dropped rows, with one block or many (40 bytes: a few lines each)."""
    monkeypatch.setattr("biocls.data._tsv_blocks.BLOCK_BYTES", block)
    header = "sequence_id\tjunction_aa\tv_call\tduplicate_count\n"
    plain = "".join(f"{i}\t{s}\tTRBV1\t{c}\n" for i, (s, c) in enumerate(
        [("CASSF", 4), ("cassf", 1), ("CAS*F", 2), ("CASRF", 0), ("", 3), ("CATTF", 12),
         ("WWW", 1234567)]))
    irregular = ('7\t"CASQF"\tTRBV2\t2\n8\tCASKF\tTRBV2\t\n\n9\tCASMF\tTRBV2\tNA\r\n'
                 "10\tCASLF\tTRBV2\t3.0\n11\tCASPF\tTRBV2\t5")  # last line: no newline
    kinds = []
    for text in (header + plain, header + plain + irregular):
        pandas_way, byte_way = _store_both_ways(tmp_path, text)
        assert byte_way == pandas_way
        assert pandas_way["dropped"] == 3  # CAS*F, the count-0 row, the empty sequence
        kinds.append({c.raw is not None for c in iter_repertoire_chunks(
            tmp_path / "repertoires" / "r1.tsv", calls=False, raw=True)})
    assert kinds[0] == {True}  # plain: bytes only
    assert kinds[1] == {True, False}  # irregular blocks go to pandas, plain ones stay bytes
    assert byte_way["counts"][-4:] == [1.0, 1.0, 3.0, 5.0]
    assert 1234567.0 in byte_way["counts"]


def test_byte_reader_names_the_line_of_a_bad_count(tmp_path, monkeypatch):
    """A bad count in a later block is still named by its line in the file."""
    monkeypatch.setattr("biocls.data._tsv_blocks.BLOCK_BYTES", 64)
    lines = [f"CASS{'F' * (i % 5)}\t{i + 1}\n" for i in range(30)]
    lines[21] = "CASSF\t-2\n"
    d = tmp_path / "repertoires"
    d.mkdir()
    (d / "r1.tsv").write_text("junction_aa\tduplicate_count\n" + "".join(lines))
    meta = pd.DataFrame({"repertoire_id": ["r1"], "patient": ["p1"], "label": ["1"]})
    with pytest.raises(BioclsError, match=r"r1.tsv: line 23, column duplicate_count"):
        build_cdr3_store(meta, find_repertoire_files(d), tmp_path / "s.h5", positive="1",
                         progress=False, calls=False)
