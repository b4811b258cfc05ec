"""Seeded multi-patient single-cell count simulator.

Real labelled multi-patient data is scarce offline, so the demo and the tests run on counts drawn
from a model with the structure that makes cell classification hard in practice: related cell
types, a cell state that cuts across types, patient batch effects, uneven state prevalence between
patients and a few low-quality cells. Every draw comes from one seed; each patient has its own
random stream, so a patient's cells do not depend on how many patients follow it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from biocls._errors import BioclsError

DEFAULT_STATES = ("healthy", "activated", "damaged", "malignant")
# Ordered so that each consecutive pair (0, 1), (2, 3), ... can be made a "hard pair".
_TYPE_NAMES = (
    "T_CD4",
    "T_CD8",
    "monocyte_classical",
    "monocyte_nonclassical",
    "B",
    "NK",
    "dendritic",
    "plasma",
)
_MT_GENES = (
    "MT-ND1", "MT-ND2", "MT-CO1", "MT-CO2", "MT-ATP8", "MT-ATP6", "MT-CO3",
    "MT-ND3", "MT-ND4L", "MT-ND4", "MT-ND5", "MT-ND6", "MT-CYB",
)  # fmt: skip
_RIBO_GENES = (
    "RPS2", "RPS3", "RPS6", "RPS8", "RPS12", "RPS18", "RPS27", "RPS27A",
    "RPL3", "RPL4", "RPL10", "RPL13", "RPL13A", "RPL21", "RPL32", "RPL41",
)  # fmt: skip
_CHUNK_CELLS = 4096  # bounds the dense working set to ~chunk × n_genes floats


def _type_names(n_types: int) -> list[str]:
    if n_types <= len(_TYPE_NAMES):
        return list(_TYPE_NAMES[:n_types])
    width = len(str(n_types))
    return [f"type_{i + 1:0{width}d}" for i in range(n_types)]


def _gene_names(n_genes: int) -> tuple[list[str], int, int]:
    """Names for ``n_genes`` genes: a few MT- and RPS/RPL genes first, then GENE0001, ..."""
    n_mt = min(len(_MT_GENES), max(1, n_genes // 100))
    n_ribo = min(len(_RIBO_GENES), max(1, n_genes // 100))
    n_rest = n_genes - n_mt - n_ribo
    width = max(4, len(str(n_rest)))
    names = list(_MT_GENES[:n_mt]) + list(_RIBO_GENES[:n_ribo])
    names += [f"GENE{i + 1:0{width}d}" for i in range(n_rest)]
    return names, n_mt, n_ribo


def _check(ok: bool, what: str, field: str, fix: str) -> None:
    if not ok:
        raise BioclsError(what, where=f"simulate.{field}", fix=fix)


def _check_cohort(n_patients: int, cells_per_patient: int, n_genes: int, n_types: int,
                  states: Sequence[str], n_hard_pairs: int | None) -> tuple[list[str], int]:
    """The checks both generators make on a cohort's shape; the states as strings and the
    number of hard pairs (``None``: ``min(2, n_types // 2)``)."""
    states = [str(s) for s in states]
    _check(n_patients >= 1, f"n_patients must be >= 1, got {n_patients}", "n_patients",
           "use at least one patient")  # fmt: skip
    _check(cells_per_patient >= 1, f"cells_per_patient must be >= 1, got {cells_per_patient}",
           "cells_per_patient", "use at least one cell per patient")  # fmt: skip
    _check(n_genes >= 50, f"n_genes must be >= 50, got {n_genes}", "n_genes",
           "use at least 50 genes")  # fmt: skip
    _check(n_types >= 2, f"n_types must be >= 2, got {n_types}", "n_types", "use at least 2 types")
    _check(len(states) >= 1 and len(set(states)) == len(states),
           f"states must be unique and non-empty, got {states}", "states",
           "list each state name once")  # fmt: skip
    if n_hard_pairs is None:
        n_hard_pairs = min(2, n_types // 2)
    _check(0 <= n_hard_pairs <= n_types // 2,
           f"n_hard_pairs must be in [0, {n_types // 2}], got {n_hard_pairs}", "n_hard_pairs",
           "use at most n_types // 2 hard pairs")  # fmt: skip
    return states, n_hard_pairs


def _allowed_combinations(patients: list[str], types: list[str], states: Sequence[str],
                          absent_combinations: Sequence[tuple[str, str]],
                          absent_in_patients: Sequence[str] | None
                          ) -> tuple[np.ndarray, list[tuple[str, str]], list[str]]:
    """``[patient, type, state]`` booleans: which combinations may be drawn (both generators);
    with the checked absent pairs and the patients they are absent in."""
    allowed = np.ones((len(patients), len(types), len(states)), dtype=bool)
    if absent_in_patients is None:
        absent_patients = list(patients)
    else:
        absent_patients = [str(p) for p in absent_in_patients]
        unknown = sorted(set(absent_patients) - set(patients))
        _check(not unknown, f"unknown patient IDs {unknown}", "absent_in_patients",
               f"use IDs among {patients[0]}..{patients[-1]}")  # fmt: skip
    states = list(states)
    absent = [(str(t), str(s)) for t, s in absent_combinations]
    for t, s in absent:
        _check(t in types, f"unknown cell type {t!r}", "absent_combinations",
               f"use one of {types}")  # fmt: skip
        _check(s in states, f"unknown state {s!r}", "absent_combinations",
               f"use one of {states}")  # fmt: skip
        for p in absent_patients:
            allowed[patients.index(p), types.index(t), states.index(s)] = False
    empty = np.argwhere(~allowed.any(axis=2))
    if len(empty):
        p, t = empty[0]
        raise BioclsError(
            f"every state of type {types[t]!r} is absent in patient {patients[p]}",
            where="simulate.absent_combinations",
            fix="leave at least one state per type",
        )
    return allowed, absent, absent_patients


class _CountRows:
    """Per-chunk count blocks gathered into one CSR matrix, and per-patient ``obs`` frames into
    the AnnData both generators return (same layout: categoricals, ``var`` MT/ribo flags)."""

    def __init__(self) -> None:
        self.indptrs: list[np.ndarray] = []
        self.indices: list[np.ndarray] = []
        self.data: list[np.ndarray] = []
        self.obs: list[pd.DataFrame] = []
        self.nnz = 0

    def add(self, counts: np.ndarray) -> None:
        rows, cols = np.nonzero(counts)
        self.indices.append(cols.astype(np.int32))
        self.data.append(counts[rows, cols].astype(np.float32))
        self.indptrs.append(np.bincount(rows, minlength=counts.shape[0]).cumsum() + self.nnz)
        self.nnz += len(rows)

    def anndata(self, *, n_genes: int, genes: list[str], n_mt: int, n_ribo: int,
                types: Sequence[str], states: Sequence[str],
                patients: Sequence[str]) -> ad.AnnData:
        dtype = np.int64 if self.nnz > 2**31 - 1 else np.int32
        indptr = np.concatenate([[0], *self.indptrs]).astype(dtype)
        obs = pd.concat(self.obs)
        X = sp.csr_matrix((np.concatenate(self.data), np.concatenate(self.indices), indptr),
                          shape=(len(obs), n_genes))
        obs["cell_type"] = pd.Categorical(obs["cell_type"], categories=types)
        obs["cell_state"] = pd.Categorical(obs["cell_state"], categories=states)
        obs["patient"] = pd.Categorical(obs["patient"], categories=patients)
        var = pd.DataFrame(index=pd.Index(genes, name=None))
        var["mt"] = np.arange(n_genes) < n_mt
        var["ribo"] = (np.arange(n_genes) >= n_mt) & (np.arange(n_genes) < n_mt + n_ribo)
        return ad.AnnData(X=X, obs=obs, var=var)


def simulate_cells(
    *,
    n_patients: int = 12,
    cells_per_patient: int = 400,
    n_genes: int = 2000,
    n_types: int = 6,
    states: Sequence[str] = DEFAULT_STATES,
    absent_combinations: Sequence[tuple[str, str]] = (),
    absent_in_patients: Sequence[str] | None = None,
    n_hard_pairs: int | None = None,
    type_effect: float = 1.0,
    state_effect: float = 1.0,
    batch_sd: float = 0.3,
    dispersion: float = 0.2,
    library_size: float = 2500.0,
    low_quality_fraction: float = 0.02,
    seed: int = 0,
    independent_states: Mapping[str, float] | None = None,
) -> ad.AnnData:
    """Simulate negative-binomial raw counts for several patients.

    The generative model, per cell of type ``t`` and state ``s`` in patient ``p``::

        log rate = base + type program(t) + u * (state program(s) + type-specific part(t, s))
                   + batch(p)
        counts   ~ NB(library size * softmax(log rate), dispersion)

    - Type programs: each lineage up-regulates its own marker genes. The first ``n_hard_pairs``
      pairs of types (0, 1), (2, 3), ... share one lineage program and differ only by a few
      genes each, so they are hard to tell apart (default: ``min(2, n_types // 2)`` pairs).
    - State programs: the first state is the baseline (no program); every other state
      up-regulates a set of genes shared by all types, plus a small type-specific part. The
      shared part dominates, so a state can be recognised in a type never seen with it. ``u`` is
      a per-cell intensity, so some cells sit close to the baseline.
    - Patients: gene-wise log-normal batch factors (sd ``batch_sd``), their own median library
      size, their own type proportions and a Dirichlet draw of state prevalence.
    - Low-quality cells (``low_quality_fraction``): a small library and a high mitochondrial
      fraction, for QC to remove.

    Parameters
    ----------
    absent_combinations
        ``(cell_type, state)`` pairs never generated in ``absent_in_patients`` (``None``: in any
        patient); cells of that type get one of the remaining states instead.
    independent_states
        Extra yes/no states that a cell carries independently of its type and of ``cell_state``
        (e.g. ``{"cycling": 0.2}``: name → mean prevalence), so one cell can be, say, activated
        *and* cycling. Each gets its own shared gene program; each patient draws its prevalence
        from a Beta distribution around the given mean. Written to ``obs[name]`` as 1.0/0.0. Drawn
        from separate random streams: without this option the output is unchanged.
    type_effect, state_effect
        Multipliers on the type and state log fold changes: below 1 makes the task harder.

    Returns
    -------
    AnnData with integer counts in ``X`` (CSR, float32) and

    - ``obs``: ``cell_type``, ``cell_state``, ``patient`` (categoricals; patients ``P01``...),
      ``low_quality`` (bool, the simulated truth for QC);
    - ``var``: ``mt``, ``ribo`` (bool); gene names in ``var_names``;
    - ``uns["biocls_simulate"]``: ``params`` (every argument), ``hard_pairs``.
    """
    states, n_hard_pairs = _check_cohort(n_patients, cells_per_patient, n_genes, n_types, states,
                                         n_hard_pairs)
    _check(0.0 <= low_quality_fraction < 0.5,
           f"low_quality_fraction must be in [0, 0.5), got {low_quality_fraction}",
           "low_quality_fraction", "use a small fraction such as 0.02")  # fmt: skip
    _check(dispersion > 0 and library_size > 0 and batch_sd >= 0,
           "dispersion and library_size must be > 0 and batch_sd >= 0", "dispersion",
           "use positive values")  # fmt: skip

    types = _type_names(n_types)
    pwidth = max(2, len(str(n_patients)))
    patients = [f"P{i + 1:0{pwidth}d}" for i in range(n_patients)]
    genes, n_mt, n_ribo = _gene_names(n_genes)

    allowed, absent, absent_patients = _allowed_combinations(
        patients, types, states, absent_combinations, absent_in_patients)

    root = np.random.SeedSequence(seed)
    global_rng = np.random.default_rng(root.spawn(1)[0])
    patient_seeds = np.random.SeedSequence([seed, 1]).spawn(n_patients)

    # Gene baseline: log-normal weights; MT (~4% of counts) and ribosomal (~15%) genes are high.
    base = global_rng.normal(0.0, 1.3, n_genes)
    mt = np.arange(n_mt)
    ribo = np.arange(n_mt, n_mt + n_ribo)
    rest = np.arange(n_mt + n_ribo, n_genes)
    w_rest = np.exp(base[rest]).sum()
    base[mt] = np.log(0.04 / 0.81 * w_rest / n_mt) + global_rng.normal(0, 0.3, n_mt)
    base[ribo] = np.log(0.15 / 0.81 * w_rest / n_ribo) + global_rng.normal(0, 0.3, n_ribo)
    # Programs act on genes that are expressed at all (above the 30th percentile of the rest).
    eligible = rest[base[rest] > np.quantile(base[rest], 0.3)]

    def program(n: int, mean: float) -> tuple[np.ndarray, np.ndarray]:
        idx = global_rng.choice(eligible, size=min(n, len(eligible)), replace=False)
        lfc = np.abs(global_rng.normal(mean, 0.3 * mean, len(idx)))
        return idx, lfc

    m_type = max(3, round(0.015 * n_genes))
    m_pair = max(2, round(0.004 * n_genes))
    m_state = max(3, round(0.015 * n_genes))
    m_ts = max(1, round(0.002 * n_genes))

    type_lfc = np.zeros((n_types, n_genes))
    hard_pairs = [(types[2 * k], types[2 * k + 1]) for k in range(n_hard_pairs)]
    lineage_of = list(range(n_types))
    for k in range(n_hard_pairs):
        lineage_of[2 * k + 1] = 2 * k
    for lineage in sorted(set(lineage_of)):
        idx, lfc = program(m_type, 1.6 * type_effect)
        for t in range(n_types):
            if lineage_of[t] == lineage:
                type_lfc[t, idx] += lfc
    for t in range(2 * n_hard_pairs):  # the few genes that separate a hard pair
        idx, lfc = program(m_pair, 1.0 * type_effect)
        type_lfc[t, idx] += lfc

    state_lfc = np.zeros((n_types, len(states), n_genes))
    for s in range(1, len(states)):
        idx, lfc = program(m_state, 0.9 * state_effect)
        state_lfc[:, s, idx] += lfc
        for t in range(n_types):
            idx, lfc = program(m_ts, 0.6 * state_effect)
            state_lfc[t, s, idx] += lfc

    extra = {str(k): float(v) for k, v in (independent_states or {}).items()}
    for name, prev in extra.items():
        _check(0.0 < prev < 1.0, f"prevalence of {name!r} must be in (0, 1), got {prev}",
               "independent_states", "use a fraction such as 0.2")  # fmt: skip
        _check(name not in ("cell_type", "cell_state", "patient", "low_quality"),
               f"{name!r} clashes with an obs column", "independent_states",
               "choose another name")  # fmt: skip
    extra_rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    extra_lfc = np.zeros((len(extra), n_genes))
    for j in range(len(extra)):
        idx = extra_rng.choice(eligible, size=min(m_state, len(eligible)), replace=False)
        extra_lfc[j, idx] = np.abs(extra_rng.normal(0.9 * state_effect, 0.27 * state_effect,
                                                    len(idx)))
    extra_seeds = np.random.SeedSequence([seed, 3]).spawn(n_patients)

    base_prev = np.full(len(states), 0.6 / max(1, len(states) - 1))
    base_prev[0] = 0.4 if len(states) > 1 else 1.0
    theta = 1.0 / dispersion

    out = _CountRows()
    for p, pid in enumerate(patients):
        rng = np.random.default_rng(patient_seeds[p])
        batch = rng.normal(0.0, batch_sd, n_genes)
        lib_p = library_size * np.exp(rng.normal(0.0, 0.3))
        type_prop = rng.dirichlet(np.full(n_types, 8.0))
        state_prev = rng.dirichlet(5.0 * base_prev)
        n = cells_per_patient
        t_idx = rng.choice(n_types, size=n, p=type_prop)
        probs = state_prev[None, :] * allowed[p, t_idx]
        probs /= probs.sum(axis=1, keepdims=True)
        s_idx = (probs.cumsum(axis=1) > rng.random(n)[:, None]).argmax(axis=1)
        intensity = rng.uniform(0.35, 1.3, n)
        carries = np.zeros((n, len(extra)))
        if extra:
            xrng = np.random.default_rng(extra_seeds[p])
            for j, prev in enumerate(extra.values()):
                prev_p = xrng.beta(10 * prev, 10 * (1 - prev))
                carries[:, j] = (xrng.random(n) < prev_p) * xrng.uniform(0.35, 1.3, n)
        lib = lib_p * np.exp(rng.normal(0.0, 0.35, n))
        low_q = rng.random(n) < low_quality_fraction
        lib[low_q] *= rng.uniform(0.04, 0.15, low_q.sum())
        mt_boost = np.where(low_q, np.log(rng.uniform(10.0, 25.0, n)), 0.0)
        for start in range(0, n, _CHUNK_CELLS):
            sl = slice(start, min(n, start + _CHUNK_CELLS))
            t, s = t_idx[sl], s_idx[sl]
            logw = (base + batch)[None, :] + type_lfc[t]
            logw += intensity[sl, None] * state_lfc[t, s]
            if extra:
                logw += carries[sl] @ extra_lfc
            logw[:, mt] += mt_boost[sl, None]
            logw -= logw.max(axis=1, keepdims=True)
            rate = np.exp(logw, dtype=np.float32)
            rate *= (lib[sl] / rate.sum(axis=1, dtype=np.float64))[:, None].astype(np.float32)
            rate *= rng.standard_gamma(theta, size=rate.shape, dtype=np.float32)
            rate /= theta
            counts = rng.poisson(rate)
            out.add(counts)
        width = len(str(n))
        out.obs.append(
            pd.DataFrame(
                {
                    "cell_type": np.asarray(types)[t_idx],
                    "cell_state": np.asarray(states)[s_idx],
                    "patient": pid,
                    "low_quality": low_q,
                    **{name: (carries[:, j] > 0).astype(float) for j, name in enumerate(extra)},
                },
                index=[f"{pid}_c{j:0{width}d}" for j in range(n)],
            )
        )

    adata = out.anndata(n_genes=n_genes, genes=genes, n_mt=n_mt, n_ribo=n_ribo, types=types,
                        states=states, patients=patients)
    adata.uns["biocls_simulate"] = {
        "params": {
            "n_patients": n_patients,
            "cells_per_patient": cells_per_patient,
            "n_genes": n_genes,
            "n_types": n_types,
            "states": list(states),
            "absent_combinations": [[t, s] for t, s in absent],
            "absent_in_patients": absent_patients if absent else [],
            "n_hard_pairs": n_hard_pairs,
            "type_effect": float(type_effect),
            "state_effect": float(state_effect),
            "batch_sd": float(batch_sd),
            "dispersion": float(dispersion),
            "library_size": float(library_size),
            "low_quality_fraction": float(low_quality_fraction),
            "seed": int(seed),
            "independent_states": extra,
        },
        "hard_pairs": [list(pair) for pair in hard_pairs],
    }
    return adata
