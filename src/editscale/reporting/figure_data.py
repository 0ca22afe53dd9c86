"""The data behind the figures and tables: which methods, in which order, from which files.

Two layers, both free of torch and matplotlib:

* :func:`figure_methods` / :func:`figure_layout` say which (method, sample) trajectories of a
  model are drawn and where their tidy files are (:mod:`editscale.io.paths`). They use the
  standard library only, so that the Snakefile can call them when it builds the DAG.
* :func:`load_sample` / :func:`load_methods` / :func:`load_disabling` read those files (the
  per-edit metrics CSV, the merged evaluation HDF5 + downstream and collapse CSVs, the disabling
  JSON) into plain numpy arrays: the plot code (:mod:`editscale.reporting.plots`) takes these,
  never a model.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from editscale.io import paths
from editscale.io.files import open_sealed, read_sealed_json

# The paper's panel order (by editor), then every other method in config order.
PAPER_ORDER = ("ftc", "mend", "rome")
LABELS = {
    "ftc": "FT-C",
    "mend": "MEND",
    "rome": "ROME",
    "memit": "MEMIT",
    "r-rome": "r-ROME",
    "rrome": "r-ROME",
}


def method_label(cfg: dict, method: str) -> str:
    """Display name: config ``figures.labels[method]``, the paper's name, or the key itself."""
    labels = (cfg.get("figures") or {}).get("labels") or {}
    if method in labels:
        return labels[method]
    if method in LABELS:
        return LABELS[method]
    editor = cfg["methods"][method]["editor"]
    # a method named after nothing known but using a known editor keeps its own key (e.g. rome_k*)
    return LABELS[editor] if method == editor and editor in LABELS else method


def has_disabling(cfg: dict, method: str) -> bool:
    """Whether ``method``'s trajectories get a disabling job and enter Table 2 (config
    ``disabling.methods``; null: every method)."""
    listed = cfg.get("disabling", {}).get("methods")
    return listed is None or method in listed


def experiment_samples(cfg: dict, model: str, method: str) -> int:
    """Orderings (samples) of the experiment (model, method): its own ``samples``, else the
    top-level ``samples``; its trajectories are samples 0 .. n-1 of the run's orderings."""
    for e in cfg["experiments"]:
        if e["model"] == model and e["method"] == method and e.get("samples") is not None:
            return int(e["samples"])
    return int(cfg["samples"])


def figure_methods(cfg: dict, model: str) -> list[str]:
    """The methods configured for ``model``: FT-C, MEND, ROME (by editor; the method named after
    its editor before other methods using it) first, then the rest in config order."""
    methods = []
    for e in cfg["experiments"]:
        if e["model"] == model and e["method"] not in methods:
            methods.append(e["method"])

    def key(item):
        index, method = item
        editor = cfg["methods"][method]["editor"]
        rank = PAPER_ORDER.index(editor) if editor in PAPER_ORDER else len(PAPER_ORDER)
        return (rank, method != editor, index)  # the method named after its editor before variants

    return [m for _, m in sorted(enumerate(methods), key=key)]


def figure_layout(cfg: dict, model: str, evaluated: bool = True) -> list[dict[str, Any]]:
    """One entry per (method, sample) of ``model``: its label, editor and tidy files.

    ``evaluated``: whether the evaluation jobs exist (they do unless the checkpoint plan is
    empty); without them ``evaluation`` and ``downstream`` are None.
    """
    out = []
    for method in figure_methods(cfg, model):
        for sample in range(experiment_samples(cfg, model, method)):
            ev = partial(paths.evaluation, model, method, sample)
            out.append(
                {
                    "method": method,
                    "label": method_label(cfg, method),
                    "editor": cfg["methods"][method]["editor"],
                    "sample": sample,
                    "edits_per_step": int(cfg["methods"][method].get("edits_per_step", 1)),
                    "metrics": paths.trajectory(model, method, sample, "csv"),
                    "evaluation": ev(".h5") if evaluated else None,
                    "downstream": ev("_downstream.csv") if evaluated else None,
                    "collapse": ev("_collapse.csv") if evaluated else None,
                    "disabling": (
                        paths.disabling(model, method, sample)
                        if has_disabling(cfg, method)
                        else None
                    ),
                }
            )
    return out


# --------------------------------------------------------------------------- loading


@dataclass
class SampleData:
    """One trajectory's tidy data. Arrays are numpy float64; edits are 1-based."""

    sample: int
    metrics: (
        dict  # column -> (n_edits,) array of the per-edit CSV (edit, es, ps, ns, distance_i ...)
    )
    matrices: list[str] = field(
        default_factory=list
    )  # names of the edited matrices (distance_i order)
    forgetting: tuple | None = None  # (checkpoints, percent forgotten), the paper's curve
    downstream: dict = field(default_factory=dict)  # task -> (checkpoints, F1 in [0, 1])
    collapse: dict = field(
        default_factory=dict
    )  # measure -> (checkpoints, values), e.g. perplexity
    initial_norms: list | None = (
        None  # ||W_0||_F of each edited matrix (distance_i order), if stored
    )

    @property
    def edits(self):
        return self.metrics["edit"]

    def distances(self) -> list:
        """The per-edit normalised distance of each edited matrix (distance_0, distance_1, ...)."""
        out, i = [], 0
        while f"distance_{i}" in self.metrics:
            out.append(self.metrics[f"distance_{i}"])
            i += 1
        return out

    def norm_growth(self) -> list:
        """||W_t||_F / ||W_0||_F per edit of each edited matrix (empty when the trajectory or the
        evaluation file predates the weight norms)."""
        names = [f"weight_norm_{i}" for i in range(len(self.initial_norms or []))]
        if self.initial_norms is None or any(k not in self.metrics for k in names):
            return []
        return [self.metrics[k] / w0 for k, w0 in zip(names, self.initial_norms)]


@dataclass
class MethodData:
    method: str
    label: str
    editor: str
    samples: list[SampleData]


def load_metrics_csv(path) -> dict:
    """Columns of a per-edit metrics CSV (``export_metrics_csv``) as float arrays."""
    import numpy as np

    with open_sealed(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{path} has no edits")
    return {
        k: np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows])
        for k in rows[0]
    }


def _load_downstream_csv(path) -> dict:
    import numpy as np

    by_task: dict[str, dict[int, float]] = {}
    with open_sealed(path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["metric"] == "f1":
                by_task.setdefault(r["task"], {})[int(r["checkpoint"])] = float(r["value"])
    return {
        task: (np.array(sorted(v), dtype=float), np.array([v[t] for t in sorted(v)]))
        for task, v in by_task.items()
    }


def load_collapse_csv(path) -> dict:
    """measure -> (checkpoints, values) of a tidy collapse CSV (checkpoint, metric, value)."""
    import numpy as np

    by_metric: dict[str, dict[int, float]] = {}
    with open_sealed(path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            by_metric.setdefault(r["metric"], {})[int(r["checkpoint"])] = float(r["value"])
    return {
        m: (np.array(sorted(v), dtype=float), np.array([v[t] for t in sorted(v)]))
        for m, v in by_metric.items()
    }


def _load_evaluation_h5(path) -> tuple[tuple | None, list[str], list | None]:
    """(checkpoints, the paper's forgetting curve), the edited matrices' names and their initial
    Frobenius norms, as far as stored."""
    import numpy as np

    from editscale.io.h5 import open_verified

    with open_verified(path) as f:
        matrices = json.loads(f.attrs["params"]) if "params" in f.attrs else []
        w0 = f.get("trajectory/weight_norm_initial")
        initial = [float(x) for x in w0[()]] if w0 is not None else None
        fg = f.get("forgetting")
        if fg is None or "curve_paper" not in fg or len(fg["checkpoints"]) == 0:
            return None, matrices, initial
        curve = (
            np.asarray(fg["checkpoints"][()], dtype=float),
            np.asarray(fg["curve_paper"][()], dtype=float),
        )
        return curve, matrices, initial


def load_sample(entry: dict) -> SampleData:
    """Read one :func:`figure_layout` entry (missing evaluation files give empty panels)."""
    metrics = load_metrics_csv(entry["metrics"])
    forgetting, matrices, downstream, collapse, initial = None, [], {}, {}, None
    if entry.get("evaluation") and Path(entry["evaluation"]).exists():
        forgetting, matrices, initial = _load_evaluation_h5(entry["evaluation"])
    if entry.get("downstream") and Path(entry["downstream"]).exists():
        downstream = _load_downstream_csv(entry["downstream"])
    if entry.get("collapse") and Path(entry["collapse"]).exists():
        collapse = load_collapse_csv(entry["collapse"])
    n_mat = sum(1 for k in metrics if k.startswith("distance_"))
    if len(matrices) != n_mat:
        matrices = [f"matrix {i}" for i in range(n_mat)]
    if initial is not None and len(initial) != n_mat:
        initial = None
    return SampleData(
        sample=int(entry["sample"]),
        metrics=metrics,
        matrices=matrices,
        forgetting=forgetting,
        downstream=downstream,
        collapse=collapse,
        initial_norms=initial,
    )


def load_methods(layout: list[dict]) -> list[MethodData]:
    """Group the layout's entries by method (order kept) and read every sample."""
    out: dict[str, MethodData] = {}
    for entry in layout:
        md = out.setdefault(
            entry["method"], MethodData(entry["method"], entry["label"], entry["editor"], [])
        )
        md.samples.append(load_sample(entry))
    return list(out.values())


def load_disabling(layout: list[dict]) -> dict[str, list[dict]]:
    """method -> the disabling JSON of each sample (with ``sample`` added), in layout order;
    methods without disabling jobs (config ``disabling.methods``) are left out."""
    out: dict[str, list[dict]] = {}
    for entry in layout:
        if entry["disabling"] is None:
            continue
        doc = read_sealed_json(entry["disabling"])
        out.setdefault(entry["method"], []).append(
            {**doc, "sample": entry["sample"], "label": entry["label"]}
        )
    return out


def short_matrix_name(name: str) -> str:
    """``transformer.h.5.mlp.fc_out.weight`` -> ``h.5.mlp.fc_out``."""
    for prefix in ("transformer.", "model.", "gpt_neox."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name[: -len(".weight")] if name.endswith(".weight") else name
