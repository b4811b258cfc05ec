"""A second, independently written cell simulator in the style of Splatter.

A classifier that only does well on the data of the simulator it was developed against has
learned that simulator. This generator shares the task's structure with
:func:`~biocls.simulate.simulate_cells` (patients, related types, a state that cuts across types,
held-out combinations) but not its assumptions: gene means are gamma-distributed with outlier
genes, differential expression hits random genes whatever their expression, library sizes are
log-normal, the noise is a gamma-Poisson mixture whose variation falls with the mean, and low
counts drop out. The model follows Splatter (Zappia, Phipson & Oshlack, Genome Biology 2017,
doi:10.1186/s13059-017-1305-0); the code is written from the paper's description.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anndata as ad
import numpy as np
import pandas as pd

from biocls.simulate._cells import (
    _CHUNK_CELLS,
    DEFAULT_STATES,
    _allowed_combinations,
    _check,
    _check_cohort,
    _CountRows,
    _gene_names,
    _type_names,
    simulate_cells,
)

_MT_SHARE = 0.04  # expected fraction of a cell's counts on MT- genes (QC sees a normal cell)
_RIBO_SHARE = 0.12  # ... and on RPS/RPL genes
_INTENSITY_SHAPE = 4.0  # per-cell state intensity ~ Gamma(4, 1/4): mean 1, sd 0.5


def _log_factors(rng: np.random.Generator, n: int, loc: float, scale: float,
                 down_prob: float) -> np.ndarray:
    """Log fold changes of a DE programme: log-normal factors, a fraction of them inverted."""
    lfc = rng.normal(loc, scale, n)
    return np.where(rng.random(n) < down_prob, -lfc, lfc)


def simulate_cells_splatter(
    *,
    n_patients: int = 12,
    cells_per_patient: int = 400,
    n_genes: int = 2000,
    n_types: int = 6,
    states: Sequence[str] = DEFAULT_STATES,
    absent_combinations: Sequence[tuple[str, str]] = (),
    absent_in_patients: Sequence[str] | None = None,
    n_hard_pairs: int | None = None,
    hard_pair_genes: int = 12,
    mean_shape: float = 0.6,
    mean_rate: float = 0.3,
    outlier_prob: float = 0.05,
    outlier_loc: float = 4.0,
    outlier_scale: float = 0.5,
    de_prob: float = 0.08,
    de_down_prob: float = 0.3,
    de_loc: float = 0.5,
    de_scale: float = 0.6,
    state_genes: int | None = None,
    state_specific_fraction: float = 0.25,
    state_loc: float = 0.7,
    state_scale: float = 0.4,
    state_prevalence: Sequence[float] | None = None,
    state_concentration: float = 5.0,
    type_concentration: float = 4.0,
    donor_sd: float = 0.25,
    donor_lib_sd: float = 0.2,
    missing_type_prob: float = 0.0,
    lib_loc: float = 8.0,
    lib_scale: float = 0.3,
    bcv_common: float = 0.1,
    bcv_df: float = 60.0,
    dropout_mid: float | None = 0.0,
    dropout_shape: float = 1.0,
    seed: int = 0,
) -> ad.AnnData:
    """Simulate Splatter-style gamma-Poisson counts with dropout for several patients.

    Per gene ``g``, cell ``c`` of type ``t``, state ``s`` and intensity ``u`` in patient ``p``::

        w[g, c]  = mean[g] * donor[p, g] * DE[t, g] * state[t, s, g] ** u
        mu[g, c] = L[c] * w[g, c] / sum_g w[g, c],   L[c] ~ LogNormal(lib_loc + shift[p], lib_scale)
        bcv      = (bcv_common + 1 / sqrt(mu)) * sqrt(bcv_df / chi2[g]),   chi2[g] ~ chi2(bcv_df)
        lam      ~ Gamma(mean mu, coefficient of variation bcv)
        count    ~ Poisson(lam), then 0 with probability
                   1 / (1 + exp(dropout_shape * (log lam - dropout_mid)))

    - Genes: ``mean ~ Gamma(mean_shape, rate=mean_rate)``; a fraction ``outlier_prob`` are
      outliers, set to the median times ``LogNormal(outlier_loc, outlier_scale)``. A few ``MT-``
      and RPS/RPL genes come first so that QC works; programmes never touch them.
    - Cell types: each gene is differentially expressed in a type with probability ``de_prob``,
      by a factor ``LogNormal(de_loc, de_scale)``, inverted with probability ``de_down_prob``.
      The first ``n_hard_pairs`` pairs of types (0, 1), (2, 3), ... share one set of factors and
      differ only in ``hard_pair_genes`` genes each (default: ``min(2, n_types // 2)`` pairs).
    - States: the first state is the baseline. Every other state multiplies ``state_genes``
      genes shared by all types (``LogNormal(state_loc, state_scale)`` factors, default 4% of the
      genes) plus ``state_specific_fraction`` as many type-specific ones; ``u ~ Gamma(4, 1/4)``
      per cell scales the log factors, so some cells barely show their state.
    - Donors: gene-wise factors ``LogNormal(0, donor_sd)``, a library-size shift
      ``Normal(0, donor_lib_sd)``, type proportions ``Dirichlet(type_concentration)``, state
      prevalence ``Dirichlet(state_concentration * state_prevalence)`` (default prevalence: 0.4
      baseline, the rest shared equally), and each type missing with probability
      ``missing_type_prob`` (at least one type stays).
    - ``dropout_mid=None`` turns dropout off.

    Parameters
    ----------
    absent_combinations
        ``(cell_type, state)`` pairs never generated in ``absent_in_patients`` (``None``: in any
        patient); cells of that type get one of the remaining states instead.

    Returns
    -------
    AnnData with integer counts in ``X`` (CSR, float32) and

    - ``obs``: ``cell_type``, ``cell_state``, ``patient`` (categoricals; patients ``P01``...);
    - ``var``: ``mt``, ``ribo`` (bool); gene names in ``var_names``;
    - ``uns["biocls_simulate"]``: ``model`` (``"splatter"``), ``params`` (every argument),
      ``hard_pairs``, and the truth by gene name: ``de_genes`` (type → genes),
      ``hard_pair_genes`` (type → the genes that separate it from its pair), ``state_genes``
      (state → shared genes), ``state_specific_genes`` (state → type → genes),
      ``missing_types`` (patient → types it lacks).
    """
    states, n_hard_pairs = _check_cohort(n_patients, cells_per_patient, n_genes, n_types, states,
                                         n_hard_pairs)
    _check(hard_pair_genes >= 1, f"hard_pair_genes must be >= 1, got {hard_pair_genes}",
           "hard_pair_genes", "use a few genes, e.g. 12")  # fmt: skip
    _check(mean_shape > 0 and mean_rate > 0,
           f"mean_shape and mean_rate must be > 0, got {mean_shape}, {mean_rate}", "mean_shape",
           "use Splatter's 0.6 and 0.3")  # fmt: skip
    for name, value in (("outlier_prob", outlier_prob), ("de_prob", de_prob),
                        ("de_down_prob", de_down_prob), ("missing_type_prob", missing_type_prob)):
        _check(0.0 <= value < 1.0, f"{name} must be in [0, 1), got {value}", name,
               "use a probability such as 0.05")  # fmt: skip
    for name, value in (("outlier_scale", outlier_scale), ("de_scale", de_scale),
                        ("state_scale", state_scale), ("donor_sd", donor_sd),
                        ("donor_lib_sd", donor_lib_sd), ("lib_scale", lib_scale),
                        ("bcv_common", bcv_common), ("state_specific_fraction",
                                                     state_specific_fraction)):
        _check(value >= 0, f"{name} must be >= 0, got {value}", name, "use 0 or a positive value")
    for name, value in (("state_concentration", state_concentration),
                        ("type_concentration", type_concentration), ("bcv_df", bcv_df),
                        ("dropout_shape", dropout_shape)):
        _check(value > 0, f"{name} must be > 0, got {value}", name, "use a positive value")
    types = _type_names(n_types)
    pwidth = max(2, len(str(n_patients)))
    patients = [f"P{i + 1:0{pwidth}d}" for i in range(n_patients)]
    genes, n_mt, n_ribo = _gene_names(n_genes)
    rest = np.arange(n_mt + n_ribo, n_genes)
    if state_genes is None:
        state_genes = max(3, round(0.04 * n_genes))
    n_specific = round(state_specific_fraction * state_genes)
    _check(1 <= state_genes and state_genes + n_specific <= len(rest),
           f"state_genes must be in [1, {int(len(rest) / (1 + state_specific_fraction))}], "
           f"got {state_genes}", "state_genes", "use a few percent of n_genes")  # fmt: skip
    _check(2 * hard_pair_genes <= len(rest),
           f"hard_pair_genes must be <= {len(rest) // 2}, got {hard_pair_genes}",
           "hard_pair_genes", "use a few genes, e.g. 12")  # fmt: skip
    if state_prevalence is None:
        prevalence = np.full(len(states), 0.6 / max(1, len(states) - 1))
        prevalence[0] = 0.4 if len(states) > 1 else 1.0
    else:
        prevalence = np.asarray(state_prevalence, dtype=float)
        _check(prevalence.shape == (len(states),) and bool(np.all(prevalence > 0)),
               f"state_prevalence needs {len(states)} positive values, got {list(prevalence)}",
               "state_prevalence", "give one mean prevalence per state")  # fmt: skip
        prevalence = prevalence / prevalence.sum()

    allowed, absent, absent_patients = _allowed_combinations(
        patients, types, states, absent_combinations, absent_in_patients)

    # -- what every patient shares: genes, type and state programmes -----------------------------
    rng = np.random.default_rng([seed, 0])
    mean = rng.gamma(mean_shape, 1.0 / mean_rate, n_genes)
    outlier = rng.random(n_genes) < outlier_prob
    outlier[: n_mt + n_ribo] = False
    mean[outlier] = np.median(mean) * rng.lognormal(outlier_loc, outlier_scale, outlier.sum())
    w_rest = mean[rest].sum()
    share = 1.0 - _MT_SHARE - _RIBO_SHARE
    mean[:n_mt] = _MT_SHARE / share * w_rest / n_mt * rng.lognormal(0.0, 0.3, n_mt)
    mean[n_mt:n_mt + n_ribo] = (_RIBO_SHARE / share * w_rest / n_ribo
                                * rng.lognormal(0.0, 0.3, n_ribo))
    chi2 = rng.chisquare(bcv_df, n_genes)  # one BCV draw per gene, as in Splatter

    hard_pairs = [(types[2 * k], types[2 * k + 1]) for k in range(n_hard_pairs)]
    lineage_of = list(range(n_types))
    for k in range(n_hard_pairs):
        lineage_of[2 * k + 1] = 2 * k
    type_lfc = np.zeros((n_types, n_genes))
    for lineage in sorted(set(lineage_of)):
        hit = rest[rng.random(len(rest)) < de_prob]
        lfc = _log_factors(rng, len(hit), de_loc, de_scale, de_down_prob)
        for t in range(n_types):
            if lineage_of[t] == lineage:
                type_lfc[t, hit] = lfc
    pair_idx: dict[str, np.ndarray] = {}
    for t in range(2 * n_hard_pairs):  # the few genes that separate a hard pair
        pair_idx[types[t]] = np.sort(rng.choice(rest, hard_pair_genes, replace=False))
        type_lfc[t, pair_idx[types[t]]] = _log_factors(rng, hard_pair_genes, de_loc, de_scale,
                                                       de_down_prob)

    state_lfc = np.zeros((n_types, len(states), n_genes))
    shared_idx: dict[str, np.ndarray] = {}
    specific_idx: dict[str, dict[str, np.ndarray]] = {}
    for s in range(1, len(states)):
        idx = np.sort(rng.choice(rest, state_genes, replace=False))
        shared_idx[states[s]] = idx
        state_lfc[:, s, idx] = _log_factors(rng, state_genes, state_loc, state_scale,
                                            de_down_prob)[None, :]
        others = np.setdiff1d(rest, idx)
        specific_idx[states[s]] = {}
        for t in range(n_types):
            own = np.sort(rng.choice(others, n_specific, replace=False))
            specific_idx[states[s]][types[t]] = own
            state_lfc[t, s, own] = _log_factors(rng, n_specific, state_loc, state_scale,
                                                de_down_prob)

    # -- each patient on its own stream ----------------------------------------------------------
    out = _CountRows()
    missing: dict[str, list[str]] = {}
    for p, pid in enumerate(patients):
        prng = np.random.default_rng([seed, 1, p])
        drop_rng = np.random.default_rng([seed, 2, p])  # so dropout only ever zeroes counts
        donor_lfc = prng.normal(0.0, donor_sd, n_genes)
        lib_shift = prng.normal(0.0, donor_lib_sd)
        type_prop = prng.dirichlet(np.full(n_types, type_concentration))
        lacks = prng.random(n_types) < missing_type_prob
        if lacks.all():
            lacks[prng.integers(n_types)] = False
        type_prop[lacks] = 0.0
        type_prop /= type_prop.sum()
        missing[pid] = [types[t] for t in np.flatnonzero(lacks)]
        state_prev = prng.dirichlet(state_concentration * prevalence)
        n = cells_per_patient
        t_idx = prng.choice(n_types, size=n, p=type_prop)
        probs = state_prev[None, :] * allowed[p, t_idx]
        probs /= probs.sum(axis=1, keepdims=True)
        s_idx = (probs.cumsum(axis=1) > prng.random(n)[:, None]).argmax(axis=1)
        intensity = prng.gamma(_INTENSITY_SHAPE, 1.0 / _INTENSITY_SHAPE, n)
        lib = prng.lognormal(lib_loc + lib_shift, lib_scale, n)
        log_base = np.log(mean) + donor_lfc
        for start in range(0, n, _CHUNK_CELLS):
            sl = slice(start, min(n, start + _CHUNK_CELLS))
            t, s = t_idx[sl], s_idx[sl]
            logw = log_base[None, :] + type_lfc[t] + intensity[sl, None] * state_lfc[t, s]
            logw -= logw.max(axis=1, keepdims=True)
            mu = np.exp(logw)
            mu *= (lib[sl] / mu.sum(axis=1))[:, None]
            np.maximum(mu, 1e-12, out=mu)
            bcv = (bcv_common + 1.0 / np.sqrt(mu)) * np.sqrt(bcv_df / chi2)[None, :]
            shape = 1.0 / bcv**2
            lam = prng.standard_gamma(shape) * (mu / shape)
            counts = prng.poisson(lam)
            if dropout_mid is not None:
                with np.errstate(divide="ignore", over="ignore"):
                    p_zero = 1.0 / (1.0 + np.exp(dropout_shape * (np.log(lam) - dropout_mid)))
                counts[drop_rng.random(counts.shape) < p_zero] = 0
            out.add(counts)
        width = len(str(n))
        out.obs.append(
            pd.DataFrame(
                {
                    "cell_type": np.asarray(types)[t_idx],
                    "cell_state": np.asarray(states)[s_idx],
                    "patient": pid,
                },
                index=[f"{pid}_c{j:0{width}d}" for j in range(n)],
            )
        )

    adata = out.anndata(n_genes=n_genes, genes=genes, n_mt=n_mt, n_ribo=n_ribo, types=types,
                        states=states, patients=patients)
    names = np.asarray(genes)
    adata.uns["biocls_simulate"] = {
        "model": "splatter",
        "params": {
            "n_patients": n_patients,
            "cells_per_patient": cells_per_patient,
            "n_genes": n_genes,
            "n_types": n_types,
            "states": list(states),
            "absent_combinations": [[t, s] for t, s in absent],
            "absent_in_patients": absent_patients if absent else [],
            "n_hard_pairs": n_hard_pairs,
            "hard_pair_genes": int(hard_pair_genes),
            "mean_shape": float(mean_shape),
            "mean_rate": float(mean_rate),
            "outlier_prob": float(outlier_prob),
            "outlier_loc": float(outlier_loc),
            "outlier_scale": float(outlier_scale),
            "de_prob": float(de_prob),
            "de_down_prob": float(de_down_prob),
            "de_loc": float(de_loc),
            "de_scale": float(de_scale),
            "state_genes": int(state_genes),
            "state_specific_fraction": float(state_specific_fraction),
            "state_loc": float(state_loc),
            "state_scale": float(state_scale),
            "state_prevalence": [float(v) for v in prevalence],
            "state_concentration": float(state_concentration),
            "type_concentration": float(type_concentration),
            "donor_sd": float(donor_sd),
            "donor_lib_sd": float(donor_lib_sd),
            "missing_type_prob": float(missing_type_prob),
            "lib_loc": float(lib_loc),
            "lib_scale": float(lib_scale),
            "bcv_common": float(bcv_common),
            "bcv_df": float(bcv_df),
            "dropout_mid": None if dropout_mid is None else float(dropout_mid),
            "dropout_shape": float(dropout_shape),
            "seed": int(seed),
        },
        "hard_pairs": [list(pair) for pair in hard_pairs],
        "de_genes": {ty: list(names[type_lfc[t] != 0]) for t, ty in enumerate(types)},
        "hard_pair_genes": {ty: list(names[idx]) for ty, idx in pair_idx.items()},
        "state_genes": {st: list(names[idx]) for st, idx in shared_idx.items()},
        "state_specific_genes": {st: {ty: list(names[idx]) for ty, idx in by_type.items()}
                                 for st, by_type in specific_idx.items()},
        "missing_types": missing,
    }
    return adata


# The `model:` choices of `biocls simulate cells` (and of a config's `simulate:` block).
CELL_MODELS: dict[str, Callable[..., ad.AnnData]] = {
    "biocls": simulate_cells,
    "splatter": simulate_cells_splatter,
}
