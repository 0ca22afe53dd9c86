"""Sequential yardstick: edit trajectories of several models side by side, on a common axis of
edits per key dimension of the edited matrix.

A ROME-family update is rank one in the edited matrix's key space (its input width, ``d_mlp``),
so how many edits a model has taken per key dimension is what makes trajectories of models of
different widths comparable: the paper edits GPT-J (16,384 keys) and GPT-2 XL (6,400) 1,200 times
(0.07 and 0.19 edits per key dimension), ``config/smollm2.yaml`` SmolLM2-135M 300 times (1,536
keys, 0.20). Each side is a finished run (its config files, working directory and model key);
for every method and sample the yardstick reads the trajectory's per-edit metrics, the
forgetting curve of its evaluation and the CounterFact records, and reports per bin of edits per
key dimension (:data:`BINS`):

* ``es``, ``ps``, ``ns``: block means of the per-edit scores (each edit scored right after it);
* ``forgotten``: the paper's forgetting curve (percent of earlier edits forgotten) averaged over
  the bin's checkpoints;
* ``norm_growth``: ||W_t||_F / ||W_0||_F at the bin's last edit;
* ``jump_median``, ``jump_p99``: the onset statistic, each edit's update norm over the median of
  the trailing window before it (config ``disabling.window``), its median and 99th percentile;
* ``onsets_per_100``: onsets of the disabling rule (config ``disabling``,
  :func:`editscale.evaluation.disabling.find_onsets`) per 100 edits;
* ``subject_first``: the share of the bin's edits whose subject is the first token of the prompt
  (tokenised as the evaluation tokenises it, BOS included when the tokenizer adds one);
* ``key_gap`` and ``denominator`` (ROME's k.u), medians over subject-first edits and the others,
  where the trajectory records them.

Every onset is listed on its own (its edit, density, record, subject-first, key gap, denominator
and jump). Command line (from the repository root)::

    python -m editscale.reporting.yardstick \\
        --side smollm2:smollm2:runs/smollm2-yardstick:config/smollm2.yaml,\\
config/experiments/smollm2-yardstick.yaml \\
        --side organism:toy-llama:.:config/config.yaml \\
        --methods rome rrome --out figures/diagnostics/yardstick

``--side LABEL:MODEL:DIRECTORY:CONFIG[,CONFIG...]`` (config files merged in order, as Snakemake's
``--configfile``). Writes ``yardstick.md``, ``yardstick.csv``, ``onsets.csv``, ``yardstick.png``
and a provenance sidecar ``yardstick.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from editscale.evaluation.disabling import RULE_KEYS, find_onsets, trailing_medians
from editscale.io import paths
from editscale.reporting.figure_data import figure_layout, load_sample

log = logging.getLogger(__name__)

BINS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
FIELDS = (
    "side",
    "method",
    "bin",
    "edits",
    "samples",
    "es",
    "ps",
    "ns",
    "forgotten",
    "norm_growth",
    "jump_median",
    "jump_p99",
    "onsets_per_100",
    "subject_first",
    "key_gap_first",
    "key_gap_inside",
    "denominator_first",
    "denominator_inside",
    "key_gap_max",
    "denominator_min",
)
ONSET_FIELDS = (
    "side",
    "method",
    "sample",
    "edit",
    "per_key_dim",
    "case_id",
    "subject_first",
    "key_gap",
    "denominator",
    "jump",
)


@dataclass
class Side:
    """One finished run: its label, model key, working directory and merged config."""

    label: str
    model: str
    directory: Path
    config: dict


@dataclass
class Trajectory:
    """One (side, method, sample) trajectory with what the yardstick reads of it."""

    side: str
    method: str
    sample: int
    d_key: int
    metrics: dict  # column -> (n_edits,) float array (the per-edit CSV)
    forgetting: tuple | None  # (checkpoints, percent forgotten)
    norm_growth: np.ndarray | None  # ||W_t|| / ||W_0|| per edit (first edited matrix)
    subject_first: np.ndarray  # (n_edits,) bool
    jump: np.ndarray  # update norm / trailing median
    onsets: list[int]  # 1-based edits

    @property
    def density(self) -> np.ndarray:
        return self.metrics["edit"] / self.d_key


def parse_side(text: str) -> Side:
    """``LABEL:MODEL:DIRECTORY:CONFIG[,CONFIG...]`` to a :class:`Side` (configs merged)."""
    from editscale.reporting.publish import merged_config

    parts = text.split(":")
    if len(parts) != 4 or not all(parts):
        raise SystemExit(f"--side {text!r}: expected LABEL:MODEL:DIRECTORY:CONFIG[,CONFIG...]")
    label, model, directory, configs = parts
    cfg = merged_config([Path(p) for p in configs.split(",")])
    if model not in cfg.get("models", {}):
        raise SystemExit(f"--side {text!r}: model {model!r} is not in models: of {configs}")
    return Side(label, model, Path(directory), cfg)


def subject_first_flags(tok, records: dict[int, dict], case_ids) -> np.ndarray:
    """Whether each record's subject is the first token of its rewriting prompt."""
    from editscale.editing.diagnostic import subject_token_span

    out = []
    for cid in case_ids:
        rec = records.get(int(cid))
        if rec is None:
            raise ValueError(f"case_id {int(cid)} of a trajectory is not in the CounterFact file")
        rw = rec["requested_rewrite"]
        out.append(subject_token_span(tok, rw["prompt"], rw["subject"])[0] == 0)
    return np.asarray(out, dtype=bool)


def jump_ratio(update_norm: np.ndarray, window: int) -> np.ndarray:
    """Each edit's update norm over the median of the ``window`` edits before it (NaN first)."""
    base = trailing_medians(update_norm, window)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(update_norm, dtype=float) / base


def load_side(side: Side, methods: list[str]) -> list[Trajectory]:
    """Every trajectory of ``methods`` in ``side``'s run (paths relative to its directory)."""
    from transformers import AutoTokenizer

    from editscale.data.counterfact import load_counterfact
    from editscale.editing.disk import model_widths

    model_dir = side.directory / Path(paths.model_manifest(side.model)).parent
    d_key = model_widths(model_dir)[1]
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    records = {int(r["case_id"]): r for r in load_counterfact(side.directory / paths.COUNTERFACT)}
    rule = {k: side.config["disabling"][k] for k in RULE_KEYS}
    out = []
    for entry in figure_layout(side.config, side.model):
        if entry["method"] not in methods:
            continue
        entry = {k: side.directory / v if k in _FILES and v else v for k, v in entry.items()}
        data = load_sample(entry)
        if "denominator" not in data.metrics:
            data.metrics["denominator"] = stored_denominators(
                side, entry["method"], int(entry["sample"]), data.metrics["case_id"]
            )
        norm = data.metrics["update_norm_0"]
        growth = data.norm_growth()
        out.append(
            Trajectory(
                side=side.label,
                method=entry["method"],
                sample=int(entry["sample"]),
                d_key=d_key,
                metrics=data.metrics,
                forgetting=data.forgetting,
                norm_growth=growth[0] if growth else None,
                subject_first=subject_first_flags(tok, records, data.metrics["case_id"]),
                jump=jump_ratio(norm, rule["window"]),
                onsets=sorted({o.edit for o in find_onsets(norm, **rule)}),
            )
        )
    missing = set(methods) - {t.method for t in out}
    if missing:
        raise SystemExit(f"side {side.label}: no trajectories of {sorted(missing)} in its config")
    return out


_FILES = ("metrics", "evaluation", "downstream", "collapse", "disabling")


def recorded_stats(h5: Path, directory: Path, model: str) -> list[Path] | None:
    """The key statistics files a trajectory was made with, found under ``directory``'s
    ``resources/`` by the sha256 the trajectory file records (None: it used none)."""
    from editscale.editing.store import open_trajectory, read_editor_setup
    from editscale.editors import stats_layers
    from editscale.io.provenance import sha256_file

    with open_trajectory(h5) as f:
        recorded = str(f.attrs.get("stats_sha256", ""))
    if not recorded:
        return None
    layers = stats_layers(read_editor_setup(h5)["hparams"])
    out = []
    for layer, sha in zip(layers, recorded.split(",")):
        found = sorted((directory / "resources").glob(f"stats*/{model}/**/layer{layer}.h5"))
        hits = [p for p in found if sha256_file(p) == sha]
        if not hits:
            raise SystemExit(
                f"{h5}: its key statistics of layer {layer} (sha256 {sha[:12]}...) are not under "
                f"{directory / 'resources'}"
            )
        out.append(hits[0])
    return out


def stored_denominators(side: Side, method: str, sample: int, case_ids) -> np.ndarray:
    """ROME's k.u of every edit of a trajectory that predates the ``denominator`` metric.

    Exact, not a re-run: u of each edit is in the trajectory file, and the key k the update used
    is the input of the edited matrix itself, which the trajectory's own edits never change, so
    it is recomputed once per record on the unedited model (with the trajectory's stored context
    templates for r-ROME's k*). NaN for editors without a single key (no ``key_used``)."""
    from editscale.data.counterfact import load_counterfact
    from editscale.editing.editor_state import trajectory_editor
    from editscale.editing.store import open_trajectory, read_updates
    from editscale.lm.models import load_model

    h5 = side.directory / paths.trajectory(side.model, method, sample, "h5")
    model_dir = side.directory / Path(paths.model_manifest(side.model)).parent
    model, tok = load_model(model_dir)
    stats = recorded_stats(h5, side.directory, side.model)
    editor = trajectory_editor(h5, model, tok, model_dir, stats_path=stats)
    if not hasattr(editor, "key_used"):
        return np.full(len(case_ids), np.nan)
    with open_trajectory(h5) as f:
        updates = read_updates(f, 0, len(case_ids))
    records = {int(r["case_id"]): r for r in load_counterfact(side.directory / paths.COUNTERFACT)}
    out = []
    for cid, upd in zip(case_ids, updates):
        k = editor.key_used(records[int(cid)]).double().cpu()
        out.append(float(k @ upd[0].u.double()))
    log.info(
        "%s %s sample %d: %d denominators from the stored updates",
        side.label,
        method,
        sample,
        len(out),
    )
    return np.asarray(out)


def _median(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else math.nan


def _bin_label(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}"


def _split_medians(trajs: list[Trajectory], masks: list[np.ndarray], column: str) -> tuple:
    """Medians of ``column`` over the masked edits, subject-first and the others."""
    if any(column not in t.metrics for t in trajs):
        return math.nan, math.nan
    vals = np.concatenate([t.metrics[column][m] for t, m in zip(trajs, masks)])
    first = np.concatenate([t.subject_first[m] for t, m in zip(trajs, masks)])
    return _median(vals[first]), _median(vals[~first])


def _pooled_column(trajs: list[Trajectory], masks: list[np.ndarray], column: str) -> np.ndarray:
    """``column`` over the masked edits of every trajectory (empty if one lacks it)."""
    if any(column not in t.metrics for t in trajs):
        return np.empty(0)
    return np.concatenate([t.metrics[column][m] for t, m in zip(trajs, masks)])


def _forgotten(trajs: list[Trajectory], lo: float, hi: float) -> float:
    vals = []
    for t in trajs:
        if t.forgetting is None:
            continue
        ckpt, curve = t.forgetting
        sel = (ckpt / t.d_key > lo) & (ckpt / t.d_key <= hi)
        vals.extend(curve[sel])
    return float(np.mean(vals)) if vals else math.nan


def bin_row(trajs: list[Trajectory], lo: float, hi: float) -> dict | None:
    """The yardstick row of one side and method over edits with density in (lo, hi]."""
    masks = [(t.density > lo) & (t.density <= hi) for t in trajs]
    n = int(sum(m.sum() for m in masks))
    if n == 0:
        return None

    def pooled(column: str) -> float:
        return float(np.mean(np.concatenate([t.metrics[column][m] for t, m in zip(trajs, masks)])))

    jumps = np.concatenate([t.jump[m] for t, m in zip(trajs, masks)])
    jumps = jumps[np.isfinite(jumps)]
    growth = [
        t.norm_growth[np.flatnonzero(m)[-1]]
        for t, m in zip(trajs, masks)
        if m.any() and t.norm_growth is not None
    ]
    onsets = sum(sum(1 for e in t.onsets if lo < e / t.d_key <= hi) for t in trajs)
    kg = _split_medians(trajs, masks, "key_gap")
    den = _split_medians(trajs, masks, "denominator")
    tails = {
        name: float(fn(np.abs(vals))) if vals.size else math.nan
        for name, fn, column in (
            ("key_gap_max", np.nanmax, "key_gap"),
            ("denominator_min", np.nanmin, "denominator"),
        )
        for vals in [_pooled_column(trajs, masks, column)]
    }
    return {
        "side": trajs[0].side,
        "method": trajs[0].method,
        "bin": _bin_label(lo, hi),
        "edits": n,
        "samples": sum(1 for m in masks if m.any()),
        "es": pooled("es"),
        "ps": pooled("ps"),
        "ns": pooled("ns"),
        "forgotten": _forgotten(trajs, lo, hi),
        "norm_growth": float(np.mean(growth)) if growth else math.nan,
        "jump_median": _median(jumps),
        "jump_p99": float(np.percentile(jumps, 99)) if jumps.size else math.nan,
        "onsets_per_100": 100.0 * onsets / n,
        "subject_first": float(
            np.mean(np.concatenate([t.subject_first[m] for t, m in zip(trajs, masks)]))
        ),
        "key_gap_first": kg[0],
        "key_gap_inside": kg[1],
        "denominator_first": den[0],
        "denominator_inside": den[1],
        **tails,
    }


def _groups(trajs: list[Trajectory]) -> dict[tuple[str, str], list[Trajectory]]:
    out: dict[tuple[str, str], list[Trajectory]] = {}
    for t in trajs:
        out.setdefault((t.side, t.method), []).append(t)
    return out


def yardstick_rows(trajs: list[Trajectory], bins=BINS) -> list[dict]:
    """One row per side, method and bin of edits per key dimension that has edits."""
    rows = []
    for group in _groups(trajs).values():
        for lo, hi in zip(bins[:-1], bins[1:]):
            row = bin_row(group, lo, hi)
            if row is not None:
                rows.append(row)
    return rows


def onset_rows(trajs: list[Trajectory]) -> list[dict]:
    """Every onset of every trajectory, with its record's key quantities."""
    rows = []
    for t in trajs:
        for e in t.onsets:
            i = e - 1

            def col(name: str, i: int = i, t: Trajectory = t) -> float:
                return float(t.metrics[name][i]) if name in t.metrics else math.nan

            rows.append(
                {
                    "side": t.side,
                    "method": t.method,
                    "sample": t.sample,
                    "edit": e,
                    "per_key_dim": e / t.d_key,
                    "case_id": int(t.metrics["case_id"][i]),
                    "subject_first": bool(t.subject_first[i]),
                    "key_gap": col("key_gap"),
                    "denominator": col("denominator"),
                    "jump": float(t.jump[i]),
                }
            )
    return rows


def _fmt(x) -> str:
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if math.isnan(x):
            return "n/a"
        return f"{x:.3g}"
    return str(x)


def markdown(rows: list[dict], onsets: list[dict], sides: list[Side]) -> str:
    """The yardstick's Markdown: the binned table, then the onsets."""
    lines = [
        "**Sequential yardstick** (edits per key dimension of the edited matrix; "
        "docs/organism.md, 'Sequential yardstick')",
        "",
        "| " + " | ".join(FIELDS) + " |",
        "|" + "---|" * len(FIELDS),
    ]
    lines += ["| " + " | ".join(_fmt(r[f]) for f in FIELDS) + " |" for r in rows]
    lines += ["", f"**Onsets** ({len(onsets)})", ""]
    if onsets:
        lines += ["| " + " | ".join(ONSET_FIELDS) + " |", "|" + "---|" * len(ONSET_FIELDS)]
        lines += ["| " + " | ".join(_fmt(o[f]) for f in ONSET_FIELDS) + " |" for o in onsets]
    lines += ["", "Sides: " + "; ".join(f"{s.label} = {s.model} in {s.directory}" for s in sides)]
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, fields, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(rows)


PANELS = (
    ("es", "ES (per edit, rolling mean)"),
    ("ns", "NS (per edit, rolling mean)"),
    ("forgotten", "% of earlier edits forgotten"),
    ("norm_growth", "||W_t|| / ||W_0||"),
    ("jump", "update norm / trailing median"),
    ("denominator", "k.u / its median (per edit)"),
)


def _rolling(x: np.ndarray, n: int) -> np.ndarray:
    n = max(1, min(n, len(x)))
    c = np.cumsum(np.insert(np.asarray(x, dtype=float), 0, 0.0))
    out = np.empty(len(x))
    out[n - 1 :] = (c[n:] - c[:-n]) / n
    out[: n - 1] = c[1:n] / np.arange(1, n)
    return out


def _panel_series(t: Trajectory, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    if key == "forgotten":
        if t.forgetting is None:
            return None
        return t.forgetting[0] / t.d_key, t.forgetting[1]
    if key == "norm_growth":
        return None if t.norm_growth is None else (t.density, t.norm_growth)
    if key == "jump":
        return t.density, t.jump
    if key == "denominator":
        den = np.abs(t.metrics.get("denominator", np.full(len(t.density), np.nan)))
        return t.density, den / _median(den)
    return t.density, _rolling(t.metrics[key], 20)


def plot(trajs: list[Trajectory], out_png: Path) -> None:
    """One panel per quantity against edits per key dimension; a line per trajectory, a colour per
    side and method, onsets marked on the jump panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(_groups(trajs))
    colours = {g: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(groups)}
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6))
    for ax, (key, title) in zip(axes, PANELS):
        for t in trajs:
            series = _panel_series(t, key)
            if series is None:
                continue
            label = f"{t.side} {t.method}" if t.sample == 0 else None
            colour = colours[(t.side, t.method)]
            if key == "denominator":
                ax.scatter(*series, color=colour, s=3, alpha=0.5, label=label)
            else:
                ax.plot(*series, color=colour, lw=0.9, alpha=0.8, label=label)
            if key in ("jump", "denominator") and t.onsets:
                idx = np.asarray(t.onsets) - 1
                ax.scatter(*(a[idx] for a in series), color=colour, s=14, marker="x")
        ax.set_title(title, fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("edits per key dimension")
        if key in ("jump", "norm_growth", "denominator"):
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def run(sides: list[Side], methods: list[str], out_dir: Path) -> list[dict]:
    """Load every side, write the tables, figure and provenance; returns the binned rows."""
    from editscale.io.provenance import artifact_provenance, write_sidecar

    trajs = [t for s in sides for t in load_side(s, methods)]
    rows, onsets = yardstick_rows(trajs), onset_rows(trajs)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = [
        out_dir / n for n in ("yardstick.md", "yardstick.csv", "onsets.csv", "yardstick.png")
    ]
    outputs[0].write_text(markdown(rows, onsets, sides), encoding="utf-8")
    _write_csv(outputs[1], FIELDS, rows)
    _write_csv(outputs[2], ONSET_FIELDS, onsets)
    plot(trajs, outputs[3])
    inputs = sorted({str(s.directory / e["metrics"]) for s in sides for e in _layout(s, methods)})
    record = artifact_provenance(
        outputs=[str(p) for p in outputs],
        inputs=inputs,
        config={s.label: s.config for s in sides},
        rule="yardstick",
        extra={"sides": [f"{s.label}:{s.model}:{s.directory}" for s in sides], "bins": BINS},
    )
    write_sidecar(record, out_dir / "yardstick.json")
    return rows


def _layout(side: Side, methods: list[str]) -> list[dict]:
    return [e for e in figure_layout(side.config, side.model) if e["method"] in methods]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--side", action="append", required=True, metavar="LABEL:MODEL:DIR:CONFIGS")
    ap.add_argument("--methods", nargs="+", default=["rome", "rrome"])
    ap.add_argument("--out", type=Path, default=Path("figures/diagnostics/yardstick"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    rows = run([parse_side(s) for s in args.side], args.methods, args.out)
    log.info("%d rows written to %s", len(rows), args.out)
    print(json.dumps({"rows": len(rows), "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
