"""Report figures, returned as ``data:image/png;base64`` URIs so that every page is one file.

Figures are built on :class:`matplotlib.figure.Figure` directly, never through ``pyplot``: that
renders with the Agg canvas, touches no global backend or figure registry, and so cannot clash
with a user's interactive session or leak memory across hundreds of patient pages.

Colours follow Okabe & Ito (2008), distinguishable with the common colour-vision deficiencies;
heat maps use ``viridis`` for the same reason.
"""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Iterator, Sequence
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

#: Okabe-Ito colours by role, so that the same model has the same colour on every page.
BLUE, ORANGE, GREEN, VERMILLION, SKY, PURPLE, GREY = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#56B4E9",
    "#CC79A7",
    "#777777",
)
MODEL_COLOURS = {"factored": BLUE, "joint": ORANGE, "logreg": GREEN, "model": BLUE, "k-mer": ORANGE,
                 # images: the comparisons of the clinical data and the patient probe
                 "image only": SKY, "clinical only": PURPLE, "image + clinical (fused)": VERMILLION,
                 "probe accuracy": VERMILLION, "chance": GREY, "from scratch": GREY,
                 "pretrained": BLUE}

_RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "savefig.dpi": 100,
}
_MAX_TICK_CHARS = 24


@contextlib.contextmanager
def _style() -> Iterator[None]:
    """Apply the report style locally, leaving the caller's rcParams untouched."""
    with mpl.rc_context(_RC):
        yield


def _to_uri(fig: Figure) -> str:
    """The figure as a ``data:`` URI of a 256-colour PNG.

    Quantised to a palette (median cut, no dithering): a third of the bytes of the RGBA PNG at
    the same resolution, which keeps ``all_pages.html`` small enough for Snakemake's report.
    """
    from PIL import Image

    buf = io.BytesIO()
    # No "Software" tag: keeps the bytes free of URLs and stable across runs.
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    buf.seek(0)
    with Image.open(buf) as image:
        palette = image.convert("RGB").quantize(
            colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    palette.save(out, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _short(label: str) -> str:
    label = str(label)
    return label if len(label) <= _MAX_TICK_CHARS else label[: _MAX_TICK_CHARS - 1] + "…"


def _heatmap(
    ax,
    values: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    fmt: str,
    vmax: float,
    annotate: bool,
) -> object:
    """Draw one heat map with readable ticks; numbers in the cells when the grid is small."""
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=vmax if vmax > 0 else 1, aspect="auto")
    ax.set_xticks(range(len(cols)), [_short(c) for c in cols], rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [_short(r) for r in rows])
    ax.spines[:].set_visible(False)
    if annotate:
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                v = values[i, j]
                # viridis is dark at the bottom: white text there, black text on the bright end.
                colour = "white" if v < 0.6 * (vmax or 1) else "black"
                ax.text(j, i, format(v, fmt), ha="center", va="center",
                        fontsize=mpl.rcParams["font.size"] - 1, color=colour)
    return image


def confusion_matrix(counts: np.ndarray, labels: Sequence[str], *, title: str) -> str:
    """Row-normalised confusion matrix: each row shows where the cells of one true label went.

    Rows are normalised so that rare labels are as visible as common ones; the row totals are
    kept in the tick labels.
    """
    counts = np.asarray(counts, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    frac = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    n = len(labels)
    size = min(2.4 + 0.4 * n, 12.0)
    # larger type than the other figures: two matrices sit side by side on the index page
    with _style(), mpl.rc_context({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10}):
        fig = Figure(figsize=(size + 1.0, size))
        ax = fig.add_subplot()
        rows = [f"{_short(lab)} (n={int(t)})" for lab, t in zip(labels, totals[:, 0], strict=True)]
        image = _heatmap(ax, frac, rows, labels, fmt=".2f", vmax=1.0, annotate=n <= 15)
        ax.set_yticks(range(n), rows)
        ax.set_xlabel("predicted")
        ax.set_ylabel("annotated")
        ax.set_title(title)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of row")
        return _to_uri(fig)


def _labelled_bars(ax: Any, positions: np.ndarray, values: Sequence[float | None], width: float,
                   name: str, colour: str, labels: Sequence[str]) -> None:
    """One series of bars with its values printed on them, so that a zero bar still reads "0"
    and a missing one "n/a"."""
    vals = np.array([np.nan if v is None else float(v) for v in values])
    bars = ax.bar(positions, np.nan_to_num(vals), width, label=name, color=colour)
    ax.bar_label(bars, list(labels), fontsize=7, padding=1)


def grouped_bars(
    groups: Sequence[str],
    series: dict[str, Sequence[float]],
    *,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None = (0.0, 1.0),
) -> str:
    """Side-by-side bars, one group per category and one colour per model."""
    n_groups, n_series = len(groups), max(len(series), 1)
    width = 0.8 / n_series
    x = np.arange(n_groups)
    with _style():
        fig = Figure(figsize=(min(2.0 + 1.1 * n_groups, 12.0), 3.4))
        ax = fig.add_subplot()
        fmt = "{:.2f}" if ylim is not None else "{:.0f}"
        for k, (name, values) in enumerate(series.items()):
            _labelled_bars(ax, x + (k - (n_series - 1) / 2) * width, values, width, name,
                           MODEL_COLOURS.get(name, GREY),
                           ["n/a" if v is None or np.isnan(v) else fmt.format(v)
                            for v in values])
        ax.set_xticks(
            x,
            [_short(g) for g in groups],
            rotation=30 if n_groups > 3 else 0,
            ha="right" if n_groups > 3 else "center",
        )
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return _to_uri(fig)


def certificate_bars(
    heads: Sequence[str],
    bounds: dict[str, Sequence[float | None]],
    measured: Sequence[float | None],
    patients: Sequence[Sequence[float]],
) -> str:
    """Per head: each bound as a bar, the measured error on held-out patients as a bar, and
    each held-out patient's own error as a dot on it, so the gap to the bound is seen."""
    series = {**bounds, "measured error, held-out patients": measured}
    colours = [SKY, PURPLE, GREY]
    n, k = len(heads), len(series)
    width = 0.8 / k
    x = np.arange(n)
    with _style():
        fig = Figure(figsize=(min(3.0 + 1.6 * n, 10.0), 3.4))
        ax = fig.add_subplot()
        for j, (name, values) in enumerate(series.items()):
            _labelled_bars(ax, x + (j - (k - 1) / 2) * width,
                           [None if v is None else min(float(v), 1.0) for v in values], width,
                           name, colours[j % len(colours)],
                           ["n/a" if v is None else (f"{v:.2f}" if v < 1 else f"≥1 ({v:.2f})")
                            for v in values])
        last = x + (k - 1) / 2 * width
        for i, errs in enumerate(patients):
            if len(errs):
                ax.plot(np.full(len(errs), last[i]), errs, "o", color="black", ms=3.5,
                        label="one held-out patient" if i == 0 else None, zorder=3)
        ax.set_xticks(x, [_short(h) for h in heads])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("error rate")
        ax.set_title("certified bounds vs measured error")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        return _to_uri(fig)


def composition(
    annotated: np.ndarray,
    predicted: np.ndarray,
    rows: Sequence[str],
    annotated_cols: Sequence[str],
    predicted_cols: Sequence[str],
) -> str:
    """Type×state cell counts, annotated next to predicted, on one shared colour scale."""
    vmax = float(max(annotated.max(initial=0), predicted.max(initial=0)))
    n_rows = len(rows)
    n_cols = max(len(annotated_cols), len(predicted_cols))
    annotate = n_rows * n_cols <= 150
    with _style():
        fig = Figure(
            figsize=(min(4.0 + 1.0 * n_cols, 14.0), min(2.2 + 0.35 * n_rows, 10.0)),
            layout="constrained",
        )
        axes = fig.subplots(1, 2, sharey=True)
        for ax, values, cols, title in (
            (axes[0], annotated, annotated_cols, "annotated"),
            (axes[1], predicted, predicted_cols, "predicted"),
        ):
            image = _heatmap(ax, values, rows, cols, fmt=".0f", vmax=vmax, annotate=annotate)
            ax.set_title(f"{title} (cells)")
            ax.set_xlabel("cell state")
        axes[0].set_ylabel("cell type")
        fig.colorbar(image, ax=list(axes), fraction=0.03, label="cells")
        return _to_uri(fig)


def count_bars(labels: Sequence[str], annotated: Sequence[int], predicted: Sequence[int]) -> str:
    """Cell-type counts, annotated vs predicted (used when the data set has no cell state)."""
    return grouped_bars(
        labels,
        {"annotated": annotated, "predicted": predicted},
        title="cell types: annotated vs predicted",
        ylabel="cells",
        ylim=None,
    )


def confidence_histograms(
    panels: Sequence[tuple[str, Sequence[float], Sequence[int], Sequence[int]]],
) -> str:
    """Histograms of model confidence, correct predictions against wrong ones, one panel per head.

    Each panel is ``(title, bin edges, correct counts, wrong counts)``, counted by
    :func:`biocls.evaluate.confidence_histogram`. A well-behaved model puts its wrong predictions
    at low confidence; overlap says the confidence cannot be used to flag errors.
    """
    with _style():
        fig = Figure(figsize=(3.6 * len(panels) + 0.6, 3.0), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(panels)))
        for ax, (title, edges, correct, wrong) in zip(axes, panels, strict=True):
            bins = np.asarray(edges, dtype=float)
            # Counts drawn as histograms (one weighted point per bin) so that they look as if
            # hist() had binned the values. Filled bars for correct, an outline for wrong: both
            # stay readable where they overlap.
            ax.hist(bins[:-1], bins=bins, weights=correct, color=SKY,
                    label=f"correct (n={int(np.sum(correct))})")
            ax.hist(
                bins[:-1],
                bins=bins,
                weights=wrong,
                color=VERMILLION,
                histtype="step",
                linewidth=2,
                label=f"wrong (n={int(np.sum(wrong))})",
            )
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlim(0, 1)
            ax.set_xlabel("confidence")
            ax.set_ylabel("cells")
            ax.set_title(title)
            ax.legend(loc="upper left")
        return _to_uri(fig)


#: line style and marker per model, so that two curves that coincide stay distinguishable
_CURVE_STYLES = {
    "model": {"linestyle": "-", "marker": "o", "linewidth": 3.0, "markersize": 6, "zorder": 2},
    "k-mer": {"linestyle": "--", "marker": "s", "linewidth": 1.6, "markersize": 3.5,
              "zorder": 3},
}


def roc_curves(curves: Sequence[tuple[str, np.ndarray, np.ndarray, float]]) -> str:
    """ROC curves of pooled out-of-fold predictions, one line per model, with the chance line.

    The first model is drawn thick and solid with circles, the next thin and dashed with small
    squares on top of it: where two curves coincide (two perfect classifiers) both stay visible.
    The legend gives each model's pooled AUC.
    """
    with _style():
        return _to_uri(_roc_figure(curves))


def _roc_figure(curves: Sequence[tuple[str, np.ndarray, np.ndarray, float]]) -> Figure:
    """The figure of :func:`roc_curves` (call inside :func:`_style`)."""
    fig = Figure(figsize=(4.6, 4.2))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color=GREY, linestyle=":", linewidth=1, label="chance (AUC 0.5)")
    for name, fpr, tpr, auc in curves:
        style = _CURVE_STYLES.get(name, {"linestyle": "-.", "marker": "^", "linewidth": 1.4})
        ax.plot(
            fpr,
            tpr,
            color=MODEL_COLOURS.get(name, GREY),
            markerfacecolor="white" if style.get("marker") == "o" else None,
            # about a dozen markers per curve, however many thresholds it has
            markevery=max(1, len(fpr) // 12),
            label=f"{name}: pooled AUC {auc:.3f}",
            clip_on=False,
            **style,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.0)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC, out-of-fold repertoires")
    ax.legend(loc="lower right", frameon=True, framealpha=0.9, edgecolor="none")
    return fig


def fold_auc_dots(folds: Sequence[str], series: dict[str, Sequence[float | None]]) -> str:
    """ROC AUC per fold as dots, one colour per model, so that fold-to-fold spread is visible."""
    with _style():
        fig = Figure(figsize=(min(2.5 + 0.6 * len(folds), 10.0), 3.0))
        ax = fig.add_subplot()
        x = np.arange(len(folds))
        offsets = np.linspace(-0.12, 0.12, max(len(series), 1))
        markers = ["o", "s", "^", "D"]
        for k, (off, (name, values)) in enumerate(zip(offsets, series.items(), strict=True)):
            vals = np.array([np.nan if v is None else float(v) for v in values])
            ax.plot(x + off, vals, markers[k % len(markers)], color=MODEL_COLOURS.get(name, GREY),
                    label=name, clip_on=False)
        ax.axhline(0.5, color=GREY, linestyle=":", linewidth=1)
        ax.set_xticks(x, folds)
        ax.set_xlim(-0.5, len(folds) - 0.5)
        ax.set_ylim(0, 1.0)
        ax.set_xlabel("fold")
        ax.set_ylabel("ROC AUC")
        ax.set_title("ROC AUC per fold")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return _to_uri(fig)


def probability_strip(
    probability: np.ndarray,
    label: np.ndarray,
    highlight: np.ndarray,
    *,
    names: tuple[str, str] = ("negative", "positive"),
    threshold: float | None = None,
) -> str:
    """All out-of-fold probabilities by annotated class, with this patient's repertoires marked.

    Puts one patient's score in the context of the whole cohort; ``names`` are the classes of
    label 0 and 1, and ``threshold`` (dashed) is where a repertoire is called positive.
    """
    rng = np.random.default_rng(0)  # fixed jitter: the same picture on every run
    with _style():
        fig = Figure(figsize=(6.0, 2.3))
        ax = fig.add_subplot()
        # One jittered height per point, shared by the cohort dots and this patient's markers.
        height = label.astype(float) + rng.uniform(-0.15, 0.15, len(label))
        for value, colour in ((0, BLUE), (1, VERMILLION)):
            sel = label == value
            ax.plot(
                probability[sel],
                height[sel],
                "o",
                color=colour,
                alpha=0.35,
                markersize=4,
                label=f"annotated {names[value]} (n={int(sel.sum())})",
            )
        if threshold is not None:
            ax.axvline(float(threshold), color=GREY, linestyle="--", linewidth=1,
                       label=f"threshold {float(threshold):g}")
        hl = highlight.astype(bool)
        ax.plot(
            probability[hl],
            height[hl],
            "D",
            markersize=9,
            markerfacecolor="none",
            markeredgecolor="black",
            markeredgewidth=1.6,
            label="this patient",
        )
        ax.set_yticks([0, 1], [f"annotated\n{names[0]}", f"annotated\n{names[1]}"])
        ax.set_ylim(-0.5, 1.5)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("model probability of the positive class (out of fold)")
        ax.set_title("this patient among all repertoires")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return _to_uri(fig)
