"""Seeded immune-repertoire simulator: OLGA background CDR3s plus implanted motifs.

Background sequences come from an OLGA default model (human TRB by default). Positive subjects get
motif-bearing *witness* sequences at a given rate, implanted in place of the middle residues of
background CDR3s, following the design of DeepRC's simulated sets (Widrich et al. 2020). Which
sequences are witnesses is written to a separate ``truth.tsv``, never into the repertoire files.

OLGA (GPL-3.0) is imported only inside :func:`simulate_repertoires`
(``pip install biocls[simulate]``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from biocls._errors import BioclsError
from biocls._io import atomic_path
from biocls._progress import progress_bar

__all__ = ["PHYSICOCHEMICAL_GROUPS", "implant_motif", "simulate_repertoires"]

log = logging.getLogger(__name__)

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
#: Residue groups used for within-group swaps (a motif *family* rather than one exact string).
PHYSICOCHEMICAL_GROUPS = ("AVLIM", "FWY", "ST", "DE", "KRH", "NQ", "GP", "C")
WILDCARD = "X"
OLGA_MODELS = ("human_T_beta", "human_T_alpha", "human_B_heavy", "human_B_kappa",
               "human_B_lambda", "mouse_T_beta", "mouse_T_alpha")
_GROUP_OF = {a: g for g in PHYSICOCHEMICAL_GROUPS for a in g}


def _check_motif(m: str) -> str:
    m = m.upper()
    if not m or m.strip(WILDCARD) != m or any(c not in AMINO_ACIDS + WILDCARD for c in m):
        raise BioclsError(f"motif {m!r} must use the 20 amino acids, with {WILDCARD!r} for a "
                          "wildcard inside it (not at either end)", where="simulate: motifs",
                          fix='write motifs such as "SAKL" or "SAXKL"')
    return m


def implant_motif(sequence: str, motif: str, *, rng: np.random.Generator, swap_p: float = 0.0,
                  margin: int = 2) -> tuple[str, str]:
    """Write ``motif`` over ``sequence`` at a random position at least ``margin`` residues from
    either end; ``X`` positions keep the background residue. Each implanted residue is swapped for
    another of its physico-chemical group with probability ``swap_p``. Returns
    ``(new_sequence, implanted_substring)``.
    """
    span = len(motif)
    hi = len(sequence) - margin - span
    if hi < margin:
        raise ValueError(f"sequence {sequence!r} too short for motif {motif!r}")
    start = int(rng.integers(margin, hi + 1))
    out = list(sequence)
    for k, c in enumerate(motif):
        if c == WILDCARD:
            continue
        if swap_p > 0 and rng.random() < swap_p and len(_GROUP_OF[c]) > 1:
            c = str(rng.choice([a for a in _GROUP_OF[c] if a != c]))
        out[start + k] = c
    new = "".join(out)
    return new, new[start:start + span]


def _olga_generator(model: str, seed: int):
    try:
        import olga.load_model as load_model
        import olga.sequence_generation as seq_gen
    except ImportError:
        raise BioclsError("OLGA is not installed", where="simulate repertoires",
                          fix="pip install 'biocls[simulate]'") from None
    import os

    import olga

    if model not in OLGA_MODELS:
        raise BioclsError(f"unknown OLGA model {model!r}", where="simulate: model",
                          fix=f"use one of {list(OLGA_MODELS)}")
    d = os.path.join(os.path.dirname(olga.__file__), "default_models", model)
    params, marg = os.path.join(d, "model_params.txt"), os.path.join(d, "model_marginals.txt")
    vf, jf = os.path.join(d, "V_gene_CDR3_anchors.csv"), os.path.join(d, "J_gene_CDR3_anchors.csv")
    if "alpha" in model or "kappa" in model or "lambda" in model:
        gd, gm = load_model.GenomicDataVJ(), load_model.GenerativeModelVJ()
        gd.load_igor_genomic_data(params, vf, jf)
        gm.load_and_process_igor_model(marg)
        gen = seq_gen.SequenceGenerationVJ(gm, gd)
    else:
        gd, gm = load_model.GenomicDataVDJ(), load_model.GenerativeModelVDJ()
        gd.load_igor_genomic_data(params, vf, jf)
        gm.load_and_process_igor_model(marg)
        gen = seq_gen.SequenceGenerationVDJ(gm, gd)
    np.random.seed(seed % 2**32)  # OLGA draws from numpy's global generator
    vnames = [g[0] for g in gd.genV]
    jnames = [g[0] for g in gd.genJ]

    def draw(n: int) -> tuple[list[str], list[str], list[str]]:
        s, v, j = [], [], []
        for _ in range(n):
            _, aa, vi, ji = gen.gen_rnd_prod_CDR3()
            s.append(aa)
            v.append(vnames[vi])
            j.append(jnames[ji])
        return s, v, j

    return draw


def simulate_repertoires(
    out: str | Path,
    *,
    n_subjects: int = 40,
    n_sequences: int = 1000,
    witness_rate: float = 0.005,
    negative_witness_rate: float = 0.0,
    motifs: Sequence[str] = ("SAKL",),
    swap_p: float = 0.0,
    positive_fraction: float = 0.5,
    two_repertoire_fraction: float = 0.2,
    shared_fraction: float = 0.2,
    model: str = "human_T_beta",
    count_tail: float = 2.0,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Simulate a labelled repertoire data set into the folder ``out``.

    Writes, atomically (the folder appears complete or not at all):

    * ``repertoires/<repertoire_id>.tsv``: AIRR columns ``sequence_id, junction_aa, v_call,
      j_call, duplicate_count``;
    * ``metadata.tsv``: ``repertoire_id, subject_id, label`` (1 positive, 0 negative),
      ``timepoint``;
    * ``truth.tsv``: ``repertoire_id, sequence_id, row, junction_aa, motif, implanted`` for every
      witness (``row`` is the 0-based data row in the repertoire file);
    * ``params.json``: the arguments.

    ``motifs`` use ``X`` for a wildcard position (the background residue is kept: a gapped motif).
    Each witness carries one motif chosen uniformly. ``negative_witness_rate`` implants the motifs
    in negative repertoires too, a binomial number per repertoire at that rate (so that a few
    negatives hold copies, as real unexposed donors hold public sequences); they are in
    ``truth.tsv`` as well. ``swap_p`` swaps each implanted residue within
    its physico-chemical group (:data:`PHYSICOCHEMICAL_GROUPS`). Counts are heavy-tailed (Zipf with
    exponent ``count_tail``). ``two_repertoire_fraction`` of subjects get a second repertoire (a
    second time point) sharing ``shared_fraction`` of the first one's sequences. Returns the
    metadata.
    """
    import json

    motifs = [_check_motif(m) for m in motifs]
    if not motifs:
        raise BioclsError("no motifs given", where="simulate: motifs", fix="give one or more")
    for name, v in (("witness_rate", witness_rate),
                    ("negative_witness_rate", negative_witness_rate), ("swap_p", swap_p),
                    ("positive_fraction", positive_fraction),
                    ("two_repertoire_fraction", two_repertoire_fraction),
                    ("shared_fraction", shared_fraction)):
        if not 0 <= v <= 1:
            raise BioclsError(f"{name} is {v}", where=f"simulate: {name}",
                              fix="use a value between 0 and 1")
    if n_subjects < 2 or n_sequences < 1:
        raise BioclsError("need at least 2 subjects and 1 sequence each",
                          where="simulate: n_subjects/n_sequences", fix="raise them")
    params = {k: v for k, v in locals().items() if k not in ("out", "progress", "json")}
    params["out"] = str(out)
    rng = np.random.default_rng(seed)
    draw = _olga_generator(model, seed)
    n_pos = int(round(positive_fraction * n_subjects))
    labels = np.array([1] * n_pos + [0] * (n_subjects - n_pos))
    rng.shuffle(labels)
    two = rng.random(n_subjects) < two_repertoire_fraction
    span = max(len(m) for m in motifs)
    meta, truth = [], []
    with atomic_path(out) as tmp:
        (tmp / "repertoires").mkdir(parents=True)
        total = int(n_subjects + two.sum())
        bar = progress_bar(total=total, desc="simulate", unit="repertoire", disable=not progress)
        for s in range(n_subjects):
            subject = f"S{s:04d}"
            prev = None
            for t in range(2 if two[s] else 1):
                rid = f"{subject}_T{t}"
                if prev is not None and shared_fraction > 0:
                    k = int(round(shared_fraction * n_sequences))
                    keep = rng.choice(len(prev[0]), size=min(k, len(prev[0])), replace=False)
                    seqs, vs, js = ([prev[i][x] for x in keep] for i in range(3))
                    more = draw(n_sequences - len(seqs))
                    seqs, vs, js = seqs + more[0], vs + more[1], js + more[2]
                else:
                    seqs, vs, js = draw(n_sequences)
                prev = (list(seqs), list(vs), list(js))
                witness_rows: list[int] = []
                n_w = 0
                if labels[s] == 1 and witness_rate > 0:
                    n_w = max(1, int(round(witness_rate * n_sequences)))
                elif labels[s] == 0 and negative_witness_rate > 0:
                    n_w = int(rng.binomial(len(seqs), negative_witness_rate))
                if n_w:
                    ok = np.flatnonzero(np.array([len(x) for x in seqs]) >= span + 4)
                    rows = rng.choice(ok, size=min(n_w, len(ok)), replace=False)
                    for row in sorted(rows.tolist()):
                        motif = motifs[int(rng.integers(len(motifs)))]
                        seqs[row], implanted = implant_motif(seqs[row], motif, rng=rng,
                                                             swap_p=swap_p)
                        truth.append({"repertoire_id": rid, "sequence_id": f"{rid}_{row}",
                                      "row": row, "junction_aa": seqs[row], "motif": motif,
                                      "implanted": implanted})
                        witness_rows.append(row)
                counts = np.minimum(rng.zipf(count_tail, size=len(seqs)), 100_000)
                pd.DataFrame({"sequence_id": [f"{rid}_{i}" for i in range(len(seqs))],
                              "junction_aa": seqs, "v_call": vs, "j_call": js,
                              "duplicate_count": counts}).to_csv(
                    tmp / "repertoires" / f"{rid}.tsv", sep="\t", index=False)
                meta.append({"repertoire_id": rid, "subject_id": subject,
                             "label": int(labels[s]), "timepoint": t})
                bar.update(1)
        bar.close()
        meta_df = pd.DataFrame(meta)
        meta_df.to_csv(tmp / "metadata.tsv", sep="\t", index=False)
        pd.DataFrame(truth, columns=["repertoire_id", "sequence_id", "row", "junction_aa",
                                     "motif", "implanted"]).to_csv(tmp / "truth.tsv", sep="\t",
                                                                   index=False)
        (tmp / "params.json").write_text(json.dumps(params, indent=2, default=list) + "\n")
    log.info("simulated %d subjects, %d repertoires, %d witnesses into %s", n_subjects,
             len(meta_df), len(truth), out)
    return meta_df
