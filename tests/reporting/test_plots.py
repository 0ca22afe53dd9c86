"""Figures and tables from small tidy fixture files written here (no model is run): the smoothing
arithmetic on hand-computed examples, the panels / lines / labels of Figures 1 and 2 through
matplotlib's objects, Table 2, the runtime table, and the provenance sidecars and metadata."""

from __future__ import annotations

import csv
import json
import re

import h5py
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from PIL import Image

from editscale.io.provenance import config_hash
from editscale.reporting import figure_data, plots, tables

# --------------------------------------------------------------------------- fixtures

MATRICES = {
    "rome": ["transformer.h.1.mlp.c_proj.weight"],
    "ftc": ["transformer.h.0.mlp.c_proj.weight"],
    "mend": ["transformer.h.2.mlp.c_fc.weight", "transformer.h.2.mlp.c_proj.weight"],
    "rrome": ["transformer.h.1.mlp.c_proj.weight"],
}
EDITORS = {"rome": "rome", "ftc": "ftc", "mend": "mend", "rrome": "rome"}


def make_cfg(methods, samples=2, **figures):
    return {
        "experiments": [{"model": "m", "method": m} for m in methods],
        "methods": {m: {"editor": EDITORS[m]} for m in methods},
        "samples": samples,
        "seed": 37,
        "ordering_seed": 37,
        "figures": {
            "bucket": 5,
            "window": 50,
            "band": "minmax",
            "dpi": 60,
            "labels": {},
            **figures,
        },
    }


def es_values(method: str, sample: int, n: int) -> np.ndarray:
    """Deterministic per-edit 0/1 efficacy: every third edit fails (sample 1: shifted by one)."""
    return np.array([0.0 if (t + sample) % 3 == 0 else 1.0 for t in range(1, n + 1)])


def write_fixture(
    root,
    cfg,
    n_edits=12,
    downstream_every=5,
    forgetting_every=4,
    distance_scale=None,
    with_generations=True,
):
    """Tidy files of every (method, sample) of ``cfg`` under ``root`` (the workflow's layout)."""
    layout = figure_data.figure_layout(cfg, "m")
    for e in layout:
        m, s = e["method"], e["sample"]
        for key in ("metrics", "evaluation", "downstream", "disabling"):
            (root / e[key]).parent.mkdir(parents=True, exist_ok=True)
        nmat = len(MATRICES[m])
        scale = (distance_scale or {}).get(m, 1e-4)
        with open(root / e["metrics"], "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(
                ["edit", "case_id", "es", "ps", "ns"]
                + [f"distance_{i}" for i in range(nmat)]
                + [f"update_norm_{i}" for i in range(nmat)]
            )
            es = es_values(m, s, n_edits)
            for t in range(1, n_edits + 1):
                w.writerow(
                    [t, 1000 + t, es[t - 1], 0.5 + 0.1 * s, 1.0 - t / (2 * n_edits) - 0.05 * s]
                    + [scale * t * (i + 1) * (1 + s) for i in range(nmat)]
                    + [1.0] * nmat
                )
        ck = np.arange(forgetting_every, n_edits + 1, forgetting_every)
        with h5py.File(root / e["evaluation"], "w") as f:
            f.attrs["params"] = json.dumps(MATRICES[m])
            f.attrs["trajectory"] = f"results/trajectories/m/{m}/sample{s}.h5"
            f.attrs["trajectory_sha256"] = "ab" * 32
            f.attrs["trajectory_environment"] = json.dumps(
                {"hostname": "node", "cpu": "x", "gpus": ["NVIDIA H100"]}
            )
            f["forgetting/checkpoints"] = ck
            f["forgetting/curve_paper"] = 10.0 * np.arange(1, len(ck) + 1) + s
        with open(root / e["downstream"], "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["checkpoint", "task", "metric", "value"])
            for t in range(0, n_edits + 1, downstream_every):
                for task, base in (("sst2", 0.9), ("mrpc", 0.6), ("cola", 0.5), ("rte", 0.55)):
                    w.writerow([t, task, "f1", base - 0.01 * t - 0.02 * s])
                    w.writerow([t, task, "accuracy", 0.5])
        edits = [
            {
                "edit": 4,
                "case_id": 1004,
                "kind": "disabling",
                "standalone_distance": 3e-4 * (1 + s),
            },
            {"edit": 1, "case_id": 1001, "kind": "normal", "standalone_distance": 1e-6},
            {"edit": 2, "case_id": 1002, "kind": "normal", "standalone_distance": 3e-6},
        ]
        gens = (
            {
                "edit": 4,
                "case_id": 1004,
                "prompts": ["The capital of France is", "A | pipe & 50%"],
                "before": [" Paris.", " fine"],
                "after": [" the the the", " $x_1$"],
            }
            if with_generations
            else None
        )
        (root / e["disabling"]).write_text(
            json.dumps({"n_edits": n_edits, "edits": edits, "generations": gens})
        )
    return layout


@pytest.fixture
def three_methods(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(["rome", "mend", "ftc", "rrome"])  # config order differs from the paper's
    layout = write_fixture(tmp_path, cfg, distance_scale={"ftc": 1e-7, "rome": 1e-4})
    return cfg, layout


# --------------------------------------------------------------------------- arithmetic


def test_bucket_means_hand_computed():
    x, m = plots.bucket_means([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 5)
    assert x.tolist() == [5, 10, 12]  # the last edit of each bucket; the last bucket is short
    assert m.tolist() == [3.0, 8.0, 11.5]  # (1+..+5)/5, (6+..+10)/5, (11+12)/2
    x, m = plots.bucket_means([1, 0, 1, 1], 2)
    assert x.tolist() == [2, 4] and m.tolist() == [0.5, 1.0]
    x, m = plots.bucket_means([np.nan, 1.0, 0.0, np.nan], 2)  # NaN skipped
    assert m.tolist() == [1.0, 0.0]
    assert np.isnan(plots.bucket_means([np.nan, np.nan], 2)[1][0])
    assert plots.bucket_means([4, 5, 6], 1)[1].tolist() == [4, 5, 6]
    assert plots.bucket_means([], 5)[0].size == 0
    with pytest.raises(ValueError):
        plots.bucket_means([1], 0)


def test_trailing_mean_hand_computed():
    # window 3: edits 1, 2 average what exists (1, (1+2)/2); then the last three
    assert plots.trailing_mean([1, 2, 3, 4, 5, 6], 3).tolist() == [1.0, 1.5, 2.0, 3.0, 4.0, 5.0]
    # a window longer than the trajectory is the running mean
    assert plots.trailing_mean([0, 1, 1, 0], 50).tolist() == [0.0, 0.5, 2 / 3, 0.5]
    assert plots.trailing_mean([1, 0, 1, 0], 1).tolist() == [1, 0, 1, 0]
    out = plots.trailing_mean([1.0, np.nan, 3.0, np.nan, np.nan], 2)
    assert out[:3].tolist() == [1.0, 1.0, 3.0] and out[3] == 3.0 and np.isnan(out[4])
    # 50-edit window over 60 edits of 1, 0, 1, 0 ...: edits 51..60 see 25 ones of 50
    v = np.arange(60) % 2 == 0
    t = plots.trailing_mean(v.astype(float), 50)
    assert t[49] == 0.5 and t[59] == 0.5 and t[0] == 1.0 and t[2] == pytest.approx(2 / 3)


def test_aggregate_bands():
    curves = [([1, 2, 3], [1.0, 2.0, 3.0]), ([1, 2, 3], [3.0, 2.0, np.nan]), ([1, 2], [5.0, 2.0])]
    x, mean, lo, hi = plots.aggregate(curves, "minmax")
    assert x.tolist() == [1, 2] and mean.tolist() == [3.0, 2.0]  # cut to the common length
    assert lo.tolist() == [1.0, 2.0] and hi.tolist() == [5.0, 2.0]
    x, mean, lo, hi = plots.aggregate([([0, 1], [1.0, 1.0]), ([0, 1], [3.0, 1.0])], "ci95")
    # n = 2: sd = sqrt(2), t(0.975, 1) = 12.706, half width = 12.706 * sqrt(2) / sqrt(2)
    assert mean.tolist() == [2.0, 1.0]
    assert lo[0] == pytest.approx(2 - 12.706) and hi[0] == pytest.approx(2 + 12.706)
    assert lo[1] == hi[1] == 1.0
    _, mean, lo, hi = plots.aggregate([([0], [7.0])], "ci95")
    assert lo[0] == hi[0] == 7.0
    with pytest.raises(ValueError):
        plots.aggregate(curves, "iqr")


# --------------------------------------------------------------------------- methods and layout


def test_method_order_and_labels():
    cfg = make_cfg(["rrome", "rome", "mend", "ftc"])
    assert figure_data.figure_methods(cfg, "m") == ["ftc", "mend", "rome", "rrome"]
    assert [figure_data.method_label(cfg, m) for m in ("ftc", "mend", "rome", "rrome")] == [
        "FT-C",
        "MEND",
        "ROME",
        "r-ROME",
    ]
    cfg["figures"]["labels"] = {"rome": "ROME (k)"}
    assert figure_data.method_label(cfg, "rome") == "ROME (k)"
    cfg = make_cfg(["rome"])
    cfg["methods"]["custom"] = {"editor": "rome"}
    cfg["experiments"].insert(0, {"model": "m", "method": "custom"})
    assert figure_data.figure_methods(cfg, "m") == [
        "rome",
        "custom",
    ]  # both edit with ROME: "rome" first
    assert figure_data.method_label(cfg, "custom") == "custom"
    assert figure_data.figure_methods(cfg, "other") == []
    lay = figure_data.figure_layout(make_cfg(["rome"], samples=2), "m", evaluated=False)
    assert [e["sample"] for e in lay] == [0, 1] and lay[0]["evaluation"] is None
    assert lay[1]["metrics"] == "results/trajectories/m/rome/sample1.csv"
    assert figure_data.short_matrix_name("transformer.h.5.mlp.fc_out.weight") == "h.5.mlp.fc_out"


# --------------------------------------------------------------------------- figures


def _lines(ax):
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def _rgba(c):
    return to_rgba(c)


def test_figure1_panels_lines_and_labels(three_methods):
    cfg, layout = three_methods
    methods = figure_data.load_methods(layout)
    fig = plots.figure1(methods, bucket=5, window=50)
    axes = fig.get_axes()
    assert len(axes) == 5  # FT-C, MEND, ROME, r-ROME, forgetting
    assert [ax.get_title() for ax in axes] == [
        "(a) FT-C",
        "(b) MEND",
        "(c) ROME",
        "(d) r-ROME",
        "(e) Forgetting of edited facts",
    ]
    for ax in axes[:4]:
        assert ax.get_xlabel() == "Number of edits" and ax.get_ylabel() == "Score (%)"
        lines = _lines(ax)
        assert len(lines) == 6
        colours = {ln.get_label().split(" (")[0]: _rgba(ln.get_color()) for ln in lines}
        assert colours == {
            "Efficacy": _rgba("black"),
            "Paraphrase": _rgba("tab:blue"),
            "Neighborhood": _rgba("tab:red"),
        }
        assert sorted(ln.get_linestyle() for ln in lines) == ["-", "-", "-", "--", "--", "--"]
        assert len(ax.collections) == 3  # a min-max band around each solid line (2 samples)
    # values: ROME's dashed efficacy = mean over samples of 5-edit bucket means x 100
    rome = axes[2]
    dashed = next(ln for ln in _lines(rome) if ln.get_label() == "Efficacy (5-edit buckets)")
    expect = (
        np.mean([plots.bucket_means(es_values("rome", s, 12), 5)[1] for s in (0, 1)], axis=0) * 100
    )
    assert dashed.get_xdata().tolist() == [5, 10, 12]
    np.testing.assert_allclose(dashed.get_ydata(), expect)
    solid = next(ln for ln in _lines(rome) if ln.get_label() == "Efficacy (trailing 50-edit mean)")
    expect = (
        np.mean([plots.trailing_mean(es_values("rome", s, 12), 50) for s in (0, 1)], axis=0) * 100
    )
    np.testing.assert_allclose(solid.get_ydata(), expect)
    assert solid.get_xdata().tolist() == list(range(1, 13))
    # forgetting: one line per method, mean of the samples' curves
    forget = axes[4]
    assert forget.get_ylabel() == "Edited facts forgotten (%)"
    assert [ln.get_label() for ln in _lines(forget)] == ["FT-C", "MEND", "ROME", "r-ROME"]
    np.testing.assert_allclose(_lines(forget)[0].get_ydata(), [10.5, 20.5, 30.5])
    # legends sit outside the panels: one above (metrics, styles, band), one below (methods)
    texts = [[t.get_text() for t in lg.get_texts()] for lg in fig.legends]
    assert texts[0] == [
        "Efficacy",
        "mean of 5-edit buckets",
        "Paraphrase",
        "trailing mean, last 50 edits",
        "Neighborhood",
        "min-max over samples",
    ]
    assert texts[1] == ["FT-C", "MEND", "ROME", "r-ROME"]
    _assert_readable(fig)


def test_figure1_rome_alone_one_sample(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(["rome"], samples=1)
    methods = figure_data.load_methods(write_fixture(tmp_path, cfg, n_edits=7))
    fig = plots.figure1(methods, bucket=5, window=3, title="Sample 0")
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["(a) ROME", "(b) Forgetting of edited facts"]
    assert not axes[0].collections  # one sample: no band
    assert fig.get_suptitle() == "Sample 0"
    assert "min-max over samples" not in [t.get_text() for t in fig.legends[0].get_texts()]
    _assert_readable(fig)


def test_figure1_without_evaluations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(["rome"], samples=1)
    layout = write_fixture(tmp_path, cfg, n_edits=5)
    for e in layout:
        e["evaluation"] = e["downstream"] = None
    methods = figure_data.load_methods(layout)
    assert methods[0].samples[0].matrices == ["matrix 0"]  # no names without the evaluation file
    fig = plots.figure1(methods)
    assert any(t.get_text() == "forgetting not evaluated" for t in fig.get_axes()[1].texts)
    fig = plots.figure2(methods)
    assert any(t.get_text() == "downstream tasks not evaluated" for t in fig.get_axes()[0].texts)


def test_figure2_panels_lines_and_labels(three_methods):
    cfg, layout = three_methods
    fig = plots.figure2(figure_data.load_methods(layout), band="ci95")
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == [
        "(a) FT-C",
        "(b) MEND",
        "(c) ROME",
        "(d) r-ROME",
        "(e) Distance from the original weights",
    ]
    for ax in axes[:4]:
        assert ax.get_ylabel() == "F1 (%)" and ax.get_xlabel() == "Number of edits"
        got = {ln.get_label(): _rgba(ln.get_color()) for ln in _lines(ax)}
        assert got == {
            "SST-2": _rgba("tab:red"),
            "MRPC": _rgba("tab:blue"),
            "CoLA": _rgba("tab:green"),
            "RTE": _rgba("black"),
        }
    sst2 = next(ln for ln in _lines(axes[0]) if ln.get_label() == "SST-2")
    assert sst2.get_xdata().tolist() == [0, 5, 10]
    np.testing.assert_allclose(sst2.get_ydata(), [89.0, 84.0, 79.0])  # mean of samples x 100
    dist = axes[4]
    labels = [ln.get_label() for ln in _lines(dist)]
    assert labels == [
        "FT-C: h.0.mlp.c_proj",
        "MEND: h.2.mlp.c_fc",
        "MEND: h.2.mlp.c_proj",
        "ROME: h.1.mlp.c_proj",
        "r-ROME: h.1.mlp.c_proj",
    ]
    mend = [ln for ln in _lines(dist) if ln.get_label().startswith("MEND")]
    assert (
        mend[0].get_color() == mend[1].get_color()
        and mend[0].get_linestyle() != mend[1].get_linestyle()
    )
    assert dist.get_yscale() == "log"  # FT-C 1e-7 .. ROME 1e-3: the range asks for it
    assert "#elements" in dist.get_ylabel()
    rome = next(ln for ln in _lines(dist) if ln.get_label() == "ROME: h.1.mlp.c_proj")
    np.testing.assert_allclose(
        rome.get_ydata(), 1e-4 * np.arange(1, 13) * 1.5
    )  # mean of (1+s), s = 0, 1
    texts = [[t.get_text() for t in lg.get_texts()] for lg in fig.legends]
    assert texts[0] == ["SST-2", "MRPC", "CoLA", "RTE", "95% interval of the mean"]
    assert sorted(texts[1]) == sorted(labels)  # read row by row in three columns
    _assert_readable(fig)


def test_figure2_linear_distance_when_range_is_small(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(["rome"], samples=1)
    fig = plots.figure2(figure_data.load_methods(write_fixture(tmp_path, cfg, n_edits=10)))
    assert fig.get_axes()[1].get_yscale() == "linear"


def add_collapse_fixture(root, layout, n_edits=12, checkpoints=(0, 4, 8, 12)):
    """Weight norms in the metrics CSVs, initial norms in the evaluation files, collapse CSVs."""
    for e in layout:
        m, s = e["method"], e["sample"]
        nmat = len(MATRICES[m])
        with open(root / e["metrics"], newline="") as fh:
            rows = list(csv.reader(fh))
        rows[0] += [f"weight_norm_{i}" for i in range(nmat)]
        for t in range(
            1, n_edits + 1
        ):  # ||W_t|| = ||W_0|| (1 + 0.1 t (i + 1) (1 + s)), ||W_0|| = 2 (i + 1)
            rows[t] += [2.0 * (i + 1) * (1 + 0.1 * t * (i + 1) * (1 + s)) for i in range(nmat)]
        with open(root / e["metrics"], "w", newline="") as fh:
            csv.writer(fh).writerows(rows)
        with h5py.File(root / e["evaluation"], "r+") as f:
            f["trajectory/weight_norm_initial"] = [2.0 * (i + 1) for i in range(nmat)]
        rank = sorted(MATRICES).index(m)
        with open(root / e["collapse"], "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["checkpoint", "metric", "value"])
            for t in checkpoints:
                w.writerows(
                    [
                        (t, "perplexity", 20.0 + t * (rank + 1) + s),
                        (t, "mean_nll", 3.0),
                        (t, "n_tokens", 500),
                        (t, "generation_entropy", 4.0 - 0.1 * t - 0.2 * s),
                    ]
                )


def test_collapse_figure_panels_lines_and_labels(three_methods, tmp_path):
    cfg, layout = three_methods
    add_collapse_fixture(tmp_path, layout)
    methods = figure_data.load_methods(layout)
    fig = plots.figure_collapse(methods)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == [
        "(a) Norm growth of the edited weights",
        "(b) Held-out perplexity",
        "(c) Generation entropy",
    ]
    norm, ppl, ent = axes
    labels = [ln.get_label() for ln in _lines(norm)]
    assert labels == [
        "FT-C: h.0.mlp.c_proj",
        "MEND: h.2.mlp.c_fc",
        "MEND: h.2.mlp.c_proj",
        "ROME: h.1.mlp.c_proj",
        "r-ROME: h.1.mlp.c_proj",
    ]
    mend = [ln for ln in _lines(norm) if ln.get_label().startswith("MEND")]
    # matrix 1 of MEND: 1 + 0.1 t x 2 x (1 + s), mean over s = 0, 1; 1 before the first edit
    assert mend[1].get_xdata().tolist() == list(range(13))
    np.testing.assert_allclose(mend[1].get_ydata(), 1 + 0.1 * np.arange(13) * 2 * 1.5)
    assert (
        mend[0].get_linestyle() != mend[1].get_linestyle()
        and mend[0].get_color() == mend[1].get_color()
    )
    assert "W_0" in norm.get_ylabel()
    got = {ln.get_label(): ln for ln in _lines(ppl)}
    assert list(got) == ["FT-C", "MEND", "ROME", "r-ROME"]  # the paper's order, then the rest
    assert got["ROME"].get_xdata().tolist() == [0, 4, 8, 12]
    np.testing.assert_allclose(
        got["ROME"].get_ydata(), 20.5 + np.array([0, 4, 8, 12]) * 3
    )  # rome ranks 3rd
    assert (
        got["ROME"].get_color()
        == next(ln for ln in _lines(norm) if ln.get_label().startswith("ROME")).get_color()
    )
    assert ppl.get_yscale() == "linear"
    np.testing.assert_allclose(
        next(ln for ln in _lines(ent) if ln.get_label() == "FT-C").get_ydata(),
        3.9 - 0.1 * np.array([0, 4, 8, 12]),
    )
    assert "entropy" in ent.get_ylabel()
    texts = [[t.get_text() for t in lg.get_texts()] for lg in fig.legends]
    assert texts[0] == ["FT-C", "MEND", "ROME", "r-ROME", "min-max over samples"]
    assert sorted(texts[1]) == sorted(labels)
    _assert_readable(fig)


def test_collapse_figure_without_measures(tmp_path, monkeypatch):
    """Files from before the collapse measures: the panels say so instead of failing."""
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(["rome"], samples=1)
    layout = write_fixture(tmp_path, cfg, n_edits=5)
    methods = figure_data.load_methods(layout)
    assert methods[0].samples[0].norm_growth() == [] and methods[0].samples[0].collapse == {}
    fig = plots.figure_collapse(methods)
    assert [t.get_text() for ax in fig.get_axes() for t in ax.texts] == [
        "weight norms not recorded",
        "not evaluated",
        "not evaluated",
    ]


def test_render_collapse_figure_reads_its_inputs(three_methods, tmp_path):
    cfg, layout = three_methods
    add_collapse_fixture(tmp_path, layout)
    record, stem = _render(tmp_path, cfg, layout, "collapse")
    assert stem.with_suffix(".pdf").exists() and stem.with_suffix(".png").exists()
    side = json.loads(stem.with_suffix(".json").read_text())
    assert side["digest"] == record["digest"] and side["extra"]["figure"] == "collapse"


def _assert_readable(fig):
    """Nothing drawn outside the figure (no clipped label), fonts >= 8 pt,
    legends off the panels."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    r = canvas.get_renderer()
    box = fig.bbox

    def inside(bb, what):
        assert (
            bb.x0 >= box.x0 - 1
            and bb.x1 <= box.x1 + 1
            and bb.y0 >= box.y0 - 1
            and bb.y1 <= box.y1 + 1
        ), f"{what} is clipped: {bb} outside {box}"

    texts = []
    for ax in fig.get_axes():
        inside(ax.get_tightbbox(r), f"panel {ax.get_title()!r} (with its labels)")
        texts += [
            ax.title,
            ax.xaxis.label,
            ax.yaxis.label,
            *ax.get_xticklabels(),
            *ax.get_yticklabels(),
        ]
    for legend in fig.legends:
        inside(legend.get_window_extent(r), "a legend")
        texts += legend.get_texts()
        for ax in fig.get_axes():
            assert not legend.get_window_extent(r).overlaps(ax.get_window_extent(r)), (
                "a legend covers a panel"
            )
    if fig.get_suptitle():
        inside(fig._suptitle.get_window_extent(r), "the title")
    for t in texts:
        if t.get_text().strip():
            assert t.get_fontsize() >= 8, f"{t.get_text()!r} is set in {t.get_fontsize()} pt"


# --------------------------------------------------------------------------- rendering + provenance


def _render(tmp_path, cfg, layout, kind="figure1", sample=None):
    out = tmp_path / "figures"
    inputs = [
        p
        for e in layout
        if sample is None or e["sample"] == sample
        for p in (e["metrics"], e["evaluation"], e["downstream"])
    ]
    manifest = tmp_path / "model" / "editscale_manifest.json"
    if not manifest.exists():
        manifest.parent.mkdir()
        manifest.write_text(
            json.dumps(
                {
                    "source": "hub",
                    "repo_id": "org/model",
                    "revision": "c" * 40,
                    "files": {"model.safetensors": "d" * 64},
                }
            )
        )
    data = tmp_path / "counterfact.json"
    if not data.exists():
        data.write_text("[]")
    stem = kind if sample is None else f"samples/{kind}_sample{sample}"
    return plots.render_figure(
        kind,
        layout,
        pdf=out / f"{stem}.pdf",
        png=out / f"{stem}.png",
        sidecar=out / f"{stem}.json",
        config=cfg,
        rule=kind,
        inputs=inputs + [str(data)],
        manifests={"m": str(manifest)},
        data=[str(data)],
        sample=sample,
    ), out / stem


def test_render_writes_pdf_png_sidecar_with_provenance(three_methods, tmp_path):
    cfg, layout = three_methods
    record, stem = _render(tmp_path, cfg, layout, "figure2")
    side = json.loads(stem.with_suffix(".json").read_text())
    assert side["digest"] == record["digest"] and side["rule"] == "figure2" and side["created"]
    assert side["config_hash"] == config_hash(cfg) and side["config"] == cfg
    assert set(side["git"]) == {"commit", "dirty"}
    for pkg in ("python",):
        assert side["environment"][pkg]
    for pkg in ("matplotlib", "numpy", "h5py"):
        assert side["environment"]["packages"][pkg]
    assert "cpu" in side["hardware"] and "gpus" in side["hardware"]  # this job's
    assert (
        len(side["hardware"]["trajectories"]) == 8
    )  # where each trajectory behind an HDF5 input ran
    assert next(iter(side["hardware"]["trajectories"].values()))["gpus"] == ["NVIDIA H100"]
    assert (
        side["models"]["m"]["model_id"] == "org/model"
        and side["models"]["m"]["revision"] == "c" * 40
    )
    assert side["models"]["m"]["file_sha256"] == {"model.safetensors": "d" * 64}
    assert list(side["data_sha256"].values()) == [
        side["inputs_sha256"][str(tmp_path / "counterfact.json")]
    ]
    assert side["seeds"] == {"seed": 37, "ordering_seed": 37}
    h5 = {p: v for p, v in side["hdf5_inputs"].items()}
    assert len(h5) == 8 and all(re.fullmatch(r"[0-9a-f]{64}", v["sha256"]) for v in h5.values())
    assert next(iter(h5.values()))["records"]["trajectory_sha256"] == "ab" * 32
    assert side["extra"]["methods"] == ["ftc", "mend", "rome", "rrome"]
    # the same record in the PNG text chunk and in the PDF info dictionary
    png = Image.open(stem.with_suffix(".png"))
    assert json.loads(png.text[plots.PROVENANCE_KEY])["digest"] == record["digest"]
    pdf = stem.with_suffix(".pdf").read_bytes()
    assert (
        b"/Subject" in pdf
        and record["digest"].encode() in pdf
        and record["config_hash"].encode() in pdf
    )


def test_sidecar_changes_when_an_input_changes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(["ftc"], samples=2)
    layout = write_fixture(tmp_path, cfg, n_edits=6)
    first, stem = _render(tmp_path, cfg, layout, "figure1", sample=1)
    again, _ = _render(tmp_path, cfg, layout, "figure1", sample=1)
    assert again["digest"] == first["digest"]  # same inputs, same record (the time stamp aside)
    assert set(first["inputs_sha256"]) == {str(tmp_path / "counterfact.json")} | {
        p
        for e in layout
        if e["sample"] == 1
        for p in (e["metrics"], e["evaluation"], e["downstream"])
    }
    csv_path = layout[1]["metrics"]  # ftc, sample 1
    assert layout[1]["sample"] == 1
    with open(csv_path, "a") as fh:
        fh.write("7,1007,1.0,0.5,0.5,1e-6,1.0\n")
    changed, _ = _render(tmp_path, cfg, layout, "figure1", sample=1)
    assert changed["digest"] != first["digest"]
    assert changed["inputs_sha256"][csv_path] != first["inputs_sha256"][csv_path]
    with h5py.File(layout[1]["evaluation"], "r+") as f:
        f["forgetting/curve_paper"][0] = 99.0
    h5_changed, _ = _render(tmp_path, cfg, layout, "figure1", sample=1)
    assert (
        h5_changed["hdf5_inputs"][layout[1]["evaluation"]]
        != changed["hdf5_inputs"][layout[1]["evaluation"]]
    )
    assert json.loads(stem.with_suffix(".json").read_text())["digest"] == h5_changed["digest"]


# --------------------------------------------------------------------------- tables


def test_table2_rows_and_files(three_methods, tmp_path):
    cfg, layout = three_methods
    dis = figure_data.load_disabling(layout)
    # MEND's sample 1 has a second onset (the rule's reason names the matrix)
    mend1 = dis["mend"][1]
    mend1["edits"].append(
        {
            "edit": 9,
            "case_id": 1009,
            "kind": "disabling",
            "standalone_distance": 5e-4,
            "reason": "onset in matrix 1: update norm 50 = 45 x the median 1.1 of edits 4..8",
        }
    )
    rows, gens = tables.write_table2(
        dis,
        md=tmp_path / "t.md",
        csv_path=tmp_path / "t.csv",
        tex=tmp_path / "t.tex",
        generations_csv=tmp_path / "g.csv",
    )
    pooled = {(r["method"], r["kind"]): r for r in rows if r["sample"] == "all"}
    d = pooled[("rome", "disabling")]
    assert d["count"] == 2 and d["mean"] == pytest.approx(4.5e-4)  # (3e-4 + 6e-4) / 2
    assert (
        d["std"] == pytest.approx(np.std([3e-4, 6e-4], ddof=1))
        and d["min"] == 3e-4
        and d["max"] == 6e-4
    )
    n = pooled[("rome", "normal")]
    assert n["count"] == 4 and n["mean"] == pytest.approx(2e-6)
    per_sample = [
        r
        for r in rows
        if r["method"] == "rome" and r["kind"] == "disabling" and r["sample"] != "all"
    ]
    assert [(r["sample"], r["count"], r["std"]) for r in per_sample] == [
        ("0", 1, None),
        ("1", 1, None),
    ]
    md = (tmp_path / "t.md").read_text()
    assert "| ROME | 2 | 4.500e-04 ± 2.12e-04 [3.00e-04, 6.00e-04] | 4 | 2.000e-06" in md
    assert md.index("| FT-C |") < md.index("| MEND |") < md.index("| ROME |")
    assert "A \\| pipe & 50%" in md  # a pipe in a cell is escaped
    tex = (tmp_path / "t.tex").read_text()
    assert r"$4.500\times10^{-4}$" in tex and r"A | pipe \& 50\%" in tex and r"\$x\_1\$" in tex
    assert tex.count(r"\begin{tabular}") == 4  # Table 2, onset counts, onset list, Table 8
    with open(tmp_path / "t.csv") as fh:
        got = list(csv.DictReader(fh))
    assert (
        got[0].keys() == set(tables.TABLE2_FIELDS) | set() or list(got[0]) == tables.TABLE2_FIELDS
    )
    stats = [r for r in got if r["kind"] != "onset"]
    assert len(stats) == 4 * 2 * 3  # 4 methods x 2 kinds x (2 samples + pooled)
    assert len(gens) == 4 * 2 and gens[0]["before"] == " Paris." and gens[0]["sample"] == 0
    # onsets: per method and sample, the per-sample disabling count, and one CSV row per onset edit
    assert tables.onset_counts(dis) == {
        m: {"0": 1, "1": 2 if m == "mend" else 1} for m in ("ftc", "mend", "rome", "rrome")
    }
    onsets = [
        (r["method"], r["sample"], r["edit"], r["case_id"]) for r in got if r["kind"] == "onset"
    ]
    assert onsets == [
        (m, s, e, c)
        for m in ("ftc", "mend", "rome", "rrome")
        for s in ("0", "1")
        for e, c in ([("4", "1004"), ("9", "1009")] if (m, s) == ("mend", "1") else [("4", "1004")])
    ]
    mend_onset = next(r for r in got if r["kind"] == "onset" and r["edit"] == "9")
    assert (
        mend_onset["count"] == "1"
        and float(mend_onset["mean"]) == 5e-4
        and "matrix 1" in mend_onset["reason"]
    )
    per_sample_counts = {
        (r["method"], r["sample"]): int(r["count"]) for r in stats if r["kind"] == "disabling"
    }
    assert per_sample_counts[("mend", "1")] == 2 and per_sample_counts[("mend", "all")] == 3
    assert "| Method | Sample 0 | Sample 1 | All |" in md
    assert "| MEND | 1 | 2 | 3 |" in md and "| ROME | 1 | 1 | 2 |" in md
    assert (
        "| MEND | 1 | 9 | 1009 | 5.000e-04 | onset in matrix 1: update norm 50 = 45 x the median "
        "1.1 of edits 4..8 |"
    ) in md
    assert md.count("| 4 | 1004 |") == 8
    assert md.index("**Onsets.**") < md.index("**Table 8 analogue.**")
    assert (
        r"MEND & 1 & 2 & 3 \\" in tex
        and r"MEND & 1 & 9 & 1009 & $5.000\times10^{-4}$ & onset in matrix 1" in tex
    )
    assert r"\label{tab:disabling-onsets}" in tex


def test_table2_without_disabling_edits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(["rome"], samples=1)
    layout = write_fixture(tmp_path, cfg, with_generations=False)
    doc = json.loads((tmp_path / layout[0]["disabling"]).read_text())
    doc["edits"] = [e for e in doc["edits"] if e["kind"] == "normal"]
    (tmp_path / layout[0]["disabling"]).write_text(json.dumps(doc))
    rows, gens = tables.write_table2(
        figure_data.load_disabling(layout),
        md=tmp_path / "t.md",
        csv_path=tmp_path / "t.csv",
        tex=tmp_path / "t.tex",
        generations_csv=tmp_path / "g.csv",
    )
    assert gens == []
    md = (tmp_path / "t.md").read_text()
    assert "| ROME | 0 | n/a | 2 |" in md and "No disabling edit was flagged" in md
    assert "| ROME | 0 | 0 |" in md and "No onset was flagged." in md
    assert "No onset was flagged." in (tmp_path / "t.tex").read_text()
    with open(tmp_path / "t.csv") as fh:
        assert not [r for r in csv.DictReader(fh) if r["kind"] == "onset"]


def test_runtime_table(tmp_path):
    bench = tmp_path / "results/benchmarks"
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    files = {
        "trajectory/m/rome/sample0.tsv": "10.0\t0:00:10\t100\t200\t90\t95\t1\t2\t50\t8\n",
        "trajectory/m/rome/sample1.tsv": "30.0\t0:00:30\t300\t400\t290\t295\t1\t2\t50\t20\n",
        "prepare_model/m.tsv": "5.0\t0:00:05\tNA\t-\t1\t1\t0\t0\t10\t1\n",
    }
    for rel, row in files.items():
        (bench / rel).parent.mkdir(parents=True, exist_ok=True)
        (bench / rel).write_text(header + row)
    (bench / "trajectory/other-model/rome").mkdir(parents=True)
    (bench / "trajectory/other-model/rome/sample0.tsv").write_text(
        header + files["prepare_model/m.tsv"]
    )
    paths = tables.find_benchmarks(str(bench), models=["m"])  # another config's model left out
    assert sorted(paths) == sorted(str(bench / rel) for rel in files)
    assert len(tables.find_benchmarks(str(bench))) == 4
    paths = [str(bench / rel) for rel in files]
    rows = tables.runtime_rows(paths, root=str(bench))
    assert [(r["rule"], r["job"]) for r in rows] == [
        ("trajectory", "m/rome/sample0"),
        ("trajectory", "m/rome/sample1"),
        ("prepare_model", "m"),
    ]
    assert rows[2]["max_rss"] is None and rows[0]["h:m:s"] == "0:00:10"
    summary = {r["rule"]: r for r in tables.runtime_summary(rows)}
    assert summary["trajectory"] == {
        "rule": "trajectory",
        "jobs": 2,
        "total_s": 40.0,
        "mean_s": 20.0,
        "max_s": 30.0,
        "peak_rss_mb": 300.0,
        "total_cpu_s": 28.0,
    }
    tables.write_runtime(
        paths, jobs_csv=tmp_path / "j.csv", summary_csv=tmp_path / "s.csv", root=str(bench)
    )
    assert (tmp_path / "s.csv").read_text().splitlines()[
        0
    ] == "rule,jobs,total_s,mean_s,max_s,peak_rss_mb,total_cpu_s"
