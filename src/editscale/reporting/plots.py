"""The paper's figures from tidy data (:mod:`editscale.reporting.figure_data`): pure functions,
no model runs.

* :func:`bucket_means` / :func:`trailing_mean`: the smoothing of Figure 1 (dashed: means of
  non-overlapping buckets of 5 edits; solid: trailing mean of the last 50 edits).
* :func:`aggregate`: mean over samples with a band (min-max, or a 95% t-interval of the mean).
* :func:`figure1` / :func:`figure2`: :class:`matplotlib.figure.Figure` objects (no pyplot, no
  global state), one panel per method in the given order plus a last panel across methods.
* :func:`figure_collapse` (supplementary): the collapse measures the field uses, one panel each,
  one line per method: norm growth ||W_t||_F / ||W_0||_F over edits, held-out perplexity and
  generation entropy per evaluation checkpoint.
* :func:`save_figure`: PDF + PNG with the provenance record embedded (PDF ``Subject``, PNG text
  chunk ``editscale:provenance``).

Styling: every panel is sized like a single column of a two-column paper (3.3 in wide) with
fonts of at least 8 pt; legends sit outside the axes (figure legends above and below the
panels), so they never hide data; constrained layout keeps every label inside the figure.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from editscale.reporting.figure_data import MethodData, short_matrix_name

# The authors' colours: efficacy black, paraphrase blue, neighbourhood red.
METRICS = (
    ("es", "Efficacy", "black"),
    ("ps", "Paraphrase", "tab:blue"),
    ("ns", "Neighborhood", "tab:red"),
)
# Figure 2: SST-2 red, MRPC blue, CoLA green, RTE black.
TASKS = {
    "sst2": ("SST-2", "tab:red"),
    "mrpc": ("MRPC", "tab:blue"),
    "cola": ("CoLA", "tab:green"),
    "rte": ("RTE", "black"),
}
_EXTRA_COLOURS = (
    "tab:orange",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
    "tab:gray",
)
# twelve distinct colours: the lifelong config draws twelve methods in one panel
_METHOD_COLOURS = (
    "tab:orange",
    "tab:purple",
    "tab:green",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
    "tab:gray",
    "black",
    "gold",
    "navy",
    "teal",
)
_MATRIX_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))
PANEL_W, PANEL_H = 3.3, 2.3  # inches: one panel = one column of a two-column paper
PROVENANCE_KEY = "editscale:provenance"

STYLE = {
    "font.size": 8.5,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.titlesize": 10,
    "lines.linewidth": 1.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "pdf.fonttype": 42,  # TrueType in the PDF: editable, searchable text
    "savefig.dpi": 300,
}

# two-sided 97.5% quantiles of Student's t, df = 1..30 (larger df: the normal 1.96)
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


# --------------------------------------------------------------------------- arithmetic


def bucket_means(values, size: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Means of non-overlapping buckets of ``size`` consecutive edits.

    Returns ``(x, means)``: ``x`` is the (1-based) number of the last edit of each bucket, so
    for 12 edits and size 5 the buckets are edits 1-5, 6-10, 11-12 and ``x = [5, 10, 12]``; a
    last, shorter bucket is the mean of the edits it has. NaN values are skipped; a bucket with
    no value is NaN.
    """
    if size < 1:
        raise ValueError("bucket size must be >= 1")
    v = np.asarray(values, dtype=float)
    n = v.size
    ends = np.minimum(np.arange(size, n + size, size), n) if n else np.zeros(0, dtype=int)
    means = np.array([_nanmean(v[s:e]) for s, e in zip(range(0, n, size), ends)])
    return ends.astype(float), means


def trailing_mean(values, window: int = 50) -> np.ndarray:
    """Mean of the last ``window`` edits at every edit: ``out[t-1] = mean(values[t-window : t])``.

    While fewer than ``window`` edits exist (t < window), the mean is over all edits so far
    (1..t). NaN values are skipped; a window with no value is NaN.
    """
    if window < 1:
        raise ValueError("window must be >= 1")
    v = np.asarray(values, dtype=float)
    ok = ~np.isnan(v)
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, v, 0.0))])
    ccnt = np.concatenate([[0], np.cumsum(ok)])
    t = np.arange(1, v.size + 1)
    lo = np.maximum(t - window, 0)
    cnt = ccnt[t] - ccnt[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, (csum[t] - csum[lo]) / np.maximum(cnt, 1), np.nan)


def _nanmean(a) -> float:
    a = np.asarray(a, dtype=float)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else float("nan")


def aggregate(
    curves: list[tuple], band: str = "minmax"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean over samples of curves ``[(x, y), ...]`` with a band: ``(x, mean, lo, hi)``.

    Curves are cut to their common length (samples of one experiment share their x). ``band``:
    ``minmax`` (lowest and highest sample) or ``ci95`` (mean +- t_{0.975, n-1} x sd / sqrt(n)).
    With one sample the band is the line itself. NaN values are ignored per point.
    """
    if not curves:
        raise ValueError("no curves")
    n = min(len(x) for x, _ in curves)
    x = np.asarray(curves[0][0], dtype=float)[:n]
    ys = np.vstack([np.asarray(y, dtype=float)[:n] for _, y in curves])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        mean = np.nanmean(ys, axis=0)
        if band == "minmax":
            lo, hi = np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)
        elif band == "ci95":
            k = np.sum(~np.isnan(ys), axis=0)
            sd = np.nanstd(ys, axis=0, ddof=1) if ys.shape[0] > 1 else np.zeros(n)
            t = (
                np.array([_T975[min(int(d), len(_T975)) - 1] if d >= 1 else 0.0 for d in k - 1])
                if n
                else np.zeros(0)
            )
            half = np.where(k > 1, t * np.nan_to_num(sd) / np.sqrt(np.maximum(k, 1)), 0.0)
            lo, hi = mean - half, mean + half
        else:
            raise ValueError(f"unknown band {band!r} (minmax or ci95)")
    return x, mean, lo, hi


def band_description(band: str, n_samples: int) -> str:
    if n_samples < 2:
        return "one sample, no band"
    return {
        "minmax": f"mean of {n_samples} samples, band = min-max over samples",
        "ci95": f"mean of {n_samples} samples, band = 95% t-interval of the mean",
    }[band]


# --------------------------------------------------------------------------- figures


def method_colours(methods: list[MethodData]) -> dict[str, str]:
    return {m.method: _METHOD_COLOURS[i % len(_METHOD_COLOURS)] for i, m in enumerate(methods)}


def _new_figure(n_panels: int) -> tuple[Figure, list]:
    """A constrained-layout figure of ``n_panels`` column-width panels (2 per row, 3 beyond 4)."""
    ncols = min(n_panels, 2) if n_panels <= 4 else 3
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(PANEL_W * ncols, PANEL_H * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        fig.delaxes(ax)
    return fig, list(axes[:n_panels])


def _letter(i: int) -> str:
    return f"({chr(ord('a') + i)})"


def _plot_band(
    ax, curves, band, colour, label, linestyle="-", linewidth=None, alpha=0.18, draw_band=True, **kw
):
    x, mean, lo, hi = aggregate(curves, band)
    (line,) = ax.plot(
        x, mean, color=colour, linestyle=linestyle, label=label, linewidth=linewidth, **kw
    )
    if draw_band and len(curves) > 1 and np.any(hi > lo):
        ax.fill_between(x, lo, hi, color=colour, alpha=alpha, linewidth=0, label=f"_band {label}")
    return line


def _empty(ax, text: str) -> None:
    ax.text(
        0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=8.5, color="0.4"
    )


def _n_edits(md: MethodData) -> int:
    return int(max(s.edits[-1] for s in md.samples))


def figure1(
    methods: list[MethodData],
    *,
    bucket: int = 5,
    window: int = 50,
    band: str = "minmax",
    title: str | None = None,
) -> Figure:
    """Figure 1: ES, PS, NS (x 100) per method; the last panel: forgetting of edited facts.

    Method panels: dashed = means of non-overlapping ``bucket``-edit buckets, solid = trailing
    mean of the last ``window`` edits, both averaged over samples; the band (around the solid
    line) spans the samples. Last panel: the paper's forgetting curve (percentage of the facts
    successfully edited so far that have been forgotten; once forgotten, always forgotten).
    """
    if not methods:
        raise ValueError("no methods to plot")
    with matplotlib.rc_context(STYLE):
        fig, axes = _new_figure(len(methods) + 1)
        n_samples = max(len(m.samples) for m in methods)
        for i, (ax, md) in enumerate(zip(axes, methods)):
            _scores_panel(
                ax, md, f"{_letter(i)} {md.label}", bucket=bucket, window=window, band=band
            )
        colours = method_colours(methods)
        _forgetting_panel(axes[-1], methods, colours, band)
        _figure1_legends(fig, methods, colours, bucket, window, band, n_samples)
        if title:
            fig.suptitle(title)
    return fig


def _scores_panel(ax, md: MethodData, panel_title: str, *, bucket: int, window: int, band: str):
    """ES, PS, NS of one method: bucket means (dashed) and trailing means (solid, with band)."""
    for key, name, colour in METRICS:
        if any(key not in s.metrics for s in md.samples):
            continue
        b = [
            (bx, 100 * by) for bx, by in (bucket_means(s.metrics[key], bucket) for s in md.samples)
        ]
        t = [(s.edits, 100 * trailing_mean(s.metrics[key], window)) for s in md.samples]
        _plot_band(
            ax,
            b,
            "minmax",
            colour,
            f"{name} ({bucket}-edit buckets)",
            linestyle="--",
            linewidth=0.9,
            draw_band=False,
        )
        _plot_band(ax, t, band, colour, f"{name} (trailing {window}-edit mean)", linestyle="-")
    _percent_axes(ax, panel_title, "Score (%)", _n_edits(md))


def _percent_axes(ax, title: str, ylabel: str, n_edits: int) -> None:
    """A panel of percentages over the edits: its title and labels, y in [-3, 103]."""
    ax.set_title(title)
    ax.set_xlabel("Number of edits")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-3, 103)
    ax.set_xlim(0, n_edits)


def _forgetting_panel(ax, methods: list[MethodData], colours: dict, band: str) -> None:
    """The paper's forgetting curve of every method."""
    drawn = False
    for md in methods:
        curves = [s.forgetting for s in md.samples if s.forgetting is not None]
        if curves:
            _plot_band(ax, curves, band, colours[md.method], md.label, marker="o", markersize=2.5)
            drawn = True
    if not drawn:
        _empty(ax, "forgetting not evaluated")
    elif not any(
        np.isfinite(c[1]).any()
        for md in methods
        for s in md.samples
        if (c := s.forgetting) is not None
    ):
        _empty(ax, "no successfully edited fact yet")
    _percent_axes(
        ax,
        f"{_letter(len(methods))} Forgetting of edited facts",
        "Edited facts forgotten (%)",
        max(_n_edits(m) for m in methods),
    )


def _figure1_legends(
    fig: Figure,
    methods: list[MethodData],
    colours: dict,
    bucket: int,
    window: int,
    band: str,
    n_samples: int,
) -> None:
    """Above: the scores and the two means (and the band); below: the methods' forgetting."""
    handles = [Line2D([], [], color=c, label=n) for _, n, c in METRICS]
    handles += [
        Line2D(
            [],
            [],
            color="0.3",
            linestyle="--",
            linewidth=0.9,
            label=f"mean of {bucket}-edit buckets",
        ),
        Line2D([], [], color="0.3", linestyle="-", label=f"trailing mean, last {window} edits"),
    ]
    if n_samples > 1:
        handles.append(Patch(color="0.3", alpha=0.18, label=_band_label(band)))
    fig.legend(handles=_row_major(handles, 3), loc="outside upper center", ncol=3, frameon=False)
    fig.legend(
        handles=[
            Line2D([], [], color=colours[m.method], marker="o", markersize=2.5, label=m.label)
            for m in methods
        ],
        loc="outside lower center",
        ncol=min(len(methods), 4),
        frameon=False,
        title=f"{_letter(len(methods))} forgetting, by method",
        title_fontsize=8,
    )


def _row_major(handles: list, ncol: int) -> list:
    """Reorder legend handles so that a legend with ``ncol`` columns reads row by row."""
    nrow = math.ceil(len(handles) / ncol)
    grid = [handles[r * ncol : (r + 1) * ncol] for r in range(nrow)]
    return [row[c] for c in range(ncol) for row in grid if c < len(row)]


def _band_label(band: str) -> str:
    return {"minmax": "min-max over samples", "ci95": "95% interval of the mean"}[band]


def _use_log(values: list[np.ndarray]) -> bool:
    """Log scale when the positive values span more than two orders of magnitude."""
    v = (
        np.concatenate([np.asarray(a, dtype=float).ravel() for a in values])
        if values
        else np.zeros(0)
    )
    v = v[np.isfinite(v) & (v > 0)]
    return bool(v.size) and v.max() / v.min() > 100


def figure2(methods: list[MethodData], *, band: str = "minmax", title: str | None = None) -> Figure:
    """Figure 2: downstream F1 (x 100) per task, one panel per method; the last panel: the
    normalised distance ||W_t - W_0||_F / numel of every edited matrix (log scale when its
    positive values span more than two orders of magnitude)."""
    if not methods:
        raise ValueError("no methods to plot")
    with matplotlib.rc_context(STYLE):
        fig, axes = _new_figure(len(methods) + 1)
        n_samples = max(len(m.samples) for m in methods)
        task_style = _task_styles(methods)
        for i, (ax, md) in enumerate(zip(axes, methods)):
            _downstream_panel(ax, md, f"{_letter(i)} {md.label}", task_style, band)
        colours = method_colours(methods)
        dist_handles = _distance_panel(axes[-1], methods, colours, band)
        handles = [
            Line2D([], [], color=colour, marker="o", markersize=2.5, label=name)
            for name, colour in task_style.values()
        ]
        if n_samples > 1:
            handles.append(Patch(color="0.3", alpha=0.18, label=_band_label(band)))
        _two_legends(
            fig,
            handles,
            dist_handles,
            f"{_letter(len(methods))} distance, by method and matrix",
        )
        if title:
            fig.suptitle(title)
    return fig


def _task_styles(methods: list[MethodData]) -> dict[str, tuple[str, str]]:
    """task -> (name, colour) of every downstream task of the methods: the paper's first."""
    tasks: list[str] = []
    for md in methods:
        for s in md.samples:
            tasks += [t for t in s.downstream if t not in tasks]
    tasks = [t for t in TASKS if t in tasks] + [t for t in tasks if t not in TASKS]
    return {
        t: TASKS.get(t, (t, _EXTRA_COLOURS[i % len(_EXTRA_COLOURS)])) for i, t in enumerate(tasks)
    }


def _downstream_panel(ax, md: MethodData, panel_title: str, task_style: dict, band: str) -> None:
    """Downstream F1 of every task, for one method."""
    drawn = False
    for task, (name, colour) in task_style.items():
        curves = [
            (s.downstream[task][0], 100 * s.downstream[task][1])
            for s in md.samples
            if task in s.downstream
        ]
        if curves:
            _plot_band(ax, curves, band, colour, name, marker="o", markersize=2.5)
            drawn = True
    if not drawn:
        _empty(ax, "downstream tasks not evaluated")
    _percent_axes(ax, panel_title, "F1 (%)", _n_edits(md))


def _distance_panel(ax, methods: list[MethodData], colours: dict, band: str) -> list:
    """The normalised distance of every edited matrix of every method; its legend handles."""
    dist_handles, all_values = [], []
    for md in methods:
        s0 = md.samples[0]
        for j, (matrix, _) in enumerate(zip(s0.matrices, s0.distances())):
            curves = [(s.edits, s.distances()[j]) for s in md.samples if len(s.distances()) > j]
            all_values += [c[1] for c in curves]
            label = f"{md.label}: {short_matrix_name(matrix)}"
            style = _MATRIX_STYLES[j % len(_MATRIX_STYLES)]
            _plot_band(ax, curves, band, colours[md.method], label, linestyle=style)
            dist_handles.append(
                Line2D([], [], color=colours[md.method], linestyle=style, label=label)
            )
    if _use_log(all_values):
        ax.set_yscale("log")
    elif dist_handles:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if not dist_handles:
        _empty(ax, "no edited matrices")
    ax.set_title(f"{_letter(len(methods))} Distance from the original weights")
    ax.set_xlabel("Number of edits")
    ax.set_ylabel(r"$\|W_t - W_0\|_F$ / #elements")
    ax.set_xlim(0, max(_n_edits(m) for m in methods))
    return dist_handles


def _two_legends(fig: Figure, upper: list, lower: list, lower_title: str) -> None:
    """A legend above the panels (up to 5 columns) and one below (3 columns, titled)."""
    if upper:
        fig.legend(
            handles=upper,
            loc="outside upper center",
            ncol=min(len(upper), 5),
            frameon=False,
        )
    if lower:
        fig.legend(
            handles=_row_major(lower, 3),
            loc="outside lower center",
            ncol=min(len(lower), 3),
            frameon=False,
            title_fontsize=8,
            title=lower_title,
        )


COLLAPSE_PANELS = ("Norm growth of the edited weights", "Held-out perplexity", "Generation entropy")


def figure_collapse(
    methods: list[MethodData], *, band: str = "minmax", title: str | None = None
) -> Figure:
    """Supplementary figure: collapse measures, one panel each, one colour per method.

    (a) ||W_t||_F / ||W_0||_F of every edited matrix after each edit (line style = matrix; 1 at
    t = 0); (b) perplexity of the fixed held-out sample and (c) the weighted 2-/3-gram entropy of
    greedy generations of the fixed prompts, at every evaluation checkpoint. Panels (a) and (b) use
    a log scale when their positive values span more than two orders of magnitude.
    """
    if not methods:
        raise ValueError("no methods to plot")
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(PANEL_W * 3, PANEL_H + 1.2), layout="constrained")
        axes = list(fig.subplots(1, 3, squeeze=False).ravel())
        colours = method_colours(methods)
        n_samples = max(len(m.samples) for m in methods)
        x_max = max(_n_edits(m) for m in methods)

        norm_handles = _norm_growth_panel(axes[0], methods, colours, band)
        drawn = {}
        for ax, key, ylabel in (
            (axes[1], "perplexity", "Perplexity (held-out text)"),
            (axes[2], "generation_entropy", "n-gram entropy (bits)"),
        ):
            _collapse_measure_panel(ax, methods, colours, band, key, drawn)
            ax.set_ylabel(ylabel)
        for i, (ax, name) in enumerate(zip(axes, COLLAPSE_PANELS)):
            ax.set_title(f"{_letter(i)} {name}")
            ax.set_xlabel("Number of edits")
            ax.set_xlim(0, x_max)

        handles = [
            Line2D([], [], color=colours[m.method], marker="o", markersize=2.5, label=m.label)
            for m in methods
            if m.method in drawn
        ]
        if n_samples > 1:
            handles.append(Patch(color="0.3", alpha=0.18, label=_band_label(band)))
        _two_legends(fig, handles, norm_handles, "(a) norm growth, by method and matrix")
        if title:
            fig.suptitle(title)
    return fig


def _norm_growth_panel(ax, methods: list[MethodData], colours: dict, band: str) -> list:
    """||W_t||_F / ||W_0||_F of every edited matrix of every method; its legend handles."""
    norm_handles, values = [], []
    for md in methods:
        samples = [s for s in md.samples if s.norm_growth()]
        if not samples:
            continue
        for j, matrix in enumerate(samples[0].matrices):
            curves = [(np.r_[0.0, s.edits], np.r_[1.0, s.norm_growth()[j]]) for s in samples]
            values += [c[1] for c in curves]
            label = f"{md.label}: {short_matrix_name(matrix)}"
            style = _MATRIX_STYLES[j % len(_MATRIX_STYLES)]
            _plot_band(ax, curves, band, colours[md.method], label, linestyle=style)
            norm_handles.append(
                Line2D([], [], color=colours[md.method], linestyle=style, label=label)
            )
    if norm_handles:
        ax.axhline(1.0, color="0.5", linewidth=0.6, linestyle=":")
        if _use_log(values):
            ax.set_yscale("log")
    else:
        _empty(ax, "weight norms not recorded")
    ax.set_ylabel(r"$\|W_t\|_F\ /\ \|W_0\|_F$")
    return norm_handles


def _collapse_measure_panel(
    ax, methods: list[MethodData], colours: dict, band: str, key: str, drawn: dict
) -> None:
    """One collapse measure at the checkpoints, every method (those drawn go into ``drawn``)."""
    values = []
    for md in methods:
        curves = [
            s.collapse[key] for s in md.samples if key in s.collapse and len(s.collapse[key][0])
        ]
        if curves:
            _plot_band(ax, curves, band, colours[md.method], md.label, marker="o", markersize=2.5)
            values += [c[1] for c in curves]
            drawn[md.method] = md
    if not values:
        _empty(ax, "not evaluated")
    elif key == "perplexity" and _use_log(values):
        ax.set_yscale("log")


# --------------------------------------------------------------------------- saving


def figure_metadata(provenance: dict, title: str) -> tuple[dict, dict]:
    """(PDF info dict, PNG text chunks) carrying the provenance record as compact JSON."""
    blob = json.dumps(
        provenance, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str
    )
    git = provenance.get("git", {})
    keywords = (
        f"editscale; rule {provenance.get('rule')}; git {git.get('commit')} "
        f"dirty={git.get('dirty')}; config {provenance.get('config_hash')}; digest "
        f"{provenance.get('digest')}"
    )
    pdf = {
        "Title": title,
        "Subject": blob,
        "Keywords": keywords,
        "Creator": "editscale (matplotlib)",
    }
    png = {"Title": title, "Description": keywords, PROVENANCE_KEY: blob}
    return pdf, png


def save_figure(
    fig: Figure, pdf_path, png_path, provenance: dict, *, title: str, dpi: int = 300
) -> None:
    """Write the figure as PDF and PNG with ``provenance`` embedded in both."""
    pdf_meta, png_meta = figure_metadata(provenance, title)
    logging.getLogger("fontTools").setLevel(
        logging.WARNING
    )  # font subsetting chatter in the rule logs
    for path, meta in ((pdf_path, pdf_meta), (png_path, png_meta)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with matplotlib.rc_context(STYLE):
            fig.savefig(path, metadata=meta, dpi=dpi)


# --------------------------------------------------------------------------- a figure job

FIGURES = {
    "figure1": "Figure 1: editing scores and forgetting",
    "figure2": "Figure 2: downstream F1 and distance",
    "collapse": (
        "Supplementary figure: collapse measures (norm growth, perplexity, generation entropy)"
    ),
}


def render_figure(
    kind: str,
    layout: list[dict],
    *,
    pdf,
    png,
    sidecar,
    config: dict,
    rule: str,
    inputs: list[str],
    manifests: dict[str, str],
    data: list[str],
    sample: int | None = None,
) -> dict:
    """Draw ``kind`` (figure1 / figure2 / collapse) from the tidy files of ``layout`` (one sample
    when ``sample`` is given), write PDF + PNG with the provenance embedded, and the JSON sidecar.
    Returns the provenance record."""
    from editscale.io.provenance import artifact_provenance, write_sidecar
    from editscale.reporting.figure_data import load_methods

    if kind not in FIGURES:
        raise ValueError(f"unknown figure {kind!r}")
    if sample is not None:
        layout = [e for e in layout if int(e["sample"]) == int(sample)]
    # each figure reads only its declared inputs
    if kind == "figure1":
        layout = [{**e, "downstream": None, "collapse": None} for e in layout]
    elif kind == "figure2":
        layout = [{**e, "collapse": None} for e in layout]
    else:
        layout = [{**e, "downstream": None} for e in layout]
    methods = load_methods(layout)
    fc = config.get("figures", {})
    band = fc.get("band", "minmax")
    title = None if sample is None else f"Sample {sample}"
    if kind == "figure1":
        fig = figure1(
            methods,
            bucket=int(fc.get("bucket", 5)),
            window=int(fc.get("window", 50)),
            band=band,
            title=title,
        )
    elif kind == "figure2":
        fig = figure2(methods, band=band, title=title)
    else:
        fig = figure_collapse(methods, band=band, title=title)
    n_samples = max(len(m.samples) for m in methods)
    record = artifact_provenance(
        outputs=[str(pdf), str(png)],
        inputs=inputs,
        config=config,
        rule=rule,
        models=manifests,
        data=data,
        extra={
            "figure": kind,
            "sample": sample,
            "methods": [m.method for m in methods],
            "labels": [m.label for m in methods],
            "samples": n_samples,
            "aggregation": band_description(band, n_samples),
        },
    )
    save_figure(
        fig,
        pdf,
        png,
        record,
        title=f"{FIGURES[kind]}" + (f" ({title})" if title else ""),
        dpi=int(fc.get("dpi", 300)),
    )
    write_sidecar(record, sidecar)
    return record
