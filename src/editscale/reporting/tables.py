"""The paper's tables from tidy data: Table 2 (+ the Table 8 analogue) and the runtime table.

* :func:`table2_rows` pools the disabling JSONs of every sample of a method: the mean standalone
  normalised distance ||delta W||_F / numel of the flagged (disabling) edits and of the sampled
  normal edits, each applied alone to the unedited model, with counts, the sample standard deviation
  and the range. The disabling edits are the onsets of update-norm run-aways
  (:mod:`editscale.evaluation.disabling`): :func:`onset_rows` lists them per method and sample
  (edit, case id, standalone distance, reason) and :func:`onset_counts` counts them per sample.
  :func:`write_table2` writes all of it as Markdown, CSV and LaTeX, with a small table of the
  generations before and after the first disabling edit. The CSV holds the statistics rows (kind
  ``disabling`` / ``normal``; the count of a per-sample ``disabling`` row is that sample's number of
  onsets) followed by one row of kind ``onset`` per onset edit (count 1, its standalone distance as
  mean/min/max, and its edit, case id and reason).
* :func:`write_summary`: the lifelong-editing summary, one row per method (ES/PS/NS of the last
  edits, downstream F1 retained, facts still known at the end, norm growth, disabling onsets).
* :func:`find_benchmarks` + :func:`runtime_rows` read Snakemake ``benchmark:`` files into one table.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from editscale.io import paths
from editscale.io.files import atomic_open, atomic_write_text, read_sealed_json

_KINDS = ("disabling", "normal")
# every rendering of Table 2 says what it is
RECONSTRUCTION = (
    "A reconstruction: the paper's authors published no code for Table 2; the onset rule that "
    "flags disabling edits, the seeded sample of normal edits and the pooling over orderings are "
    "this project's (config `disabling`)."
)
TABLE2_FIELDS = [
    "method",
    "label",
    "sample",
    "kind",
    "count",
    "mean",
    "std",
    "min",
    "max",
    "edit",
    "case_id",
    "reason",
]  # the last three: rows of kind "onset" only


def _stats(values) -> dict:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    return {
        "count": int(v.size),
        "mean": float(v.mean()) if v.size else None,
        "std": float(v.std(ddof=1)) if v.size > 1 else None,
        "min": float(v.min()) if v.size else None,
        "max": float(v.max()) if v.size else None,
    }


def table2_rows(disabling: dict[str, list[dict]]) -> list[dict]:
    """Rows (method, sample or 'all', kind, count, mean, std, min, max) from disabling JSONs.

    ``disabling``: method -> one document per sample
    (``editscale.evaluation.disabling.run_disabling``'s JSON with ``sample`` and ``label`` added).
    The 'all' rows pool the edits of every sample.
    """
    rows = []
    for method, docs in disabling.items():
        label = docs[0].get("label", method) if docs else method
        for kind in _KINDS:
            pooled = []
            for doc in docs:
                vals = [float(e["standalone_distance"]) for e in doc["edits"] if e["kind"] == kind]
                pooled += vals
                rows.append(
                    {
                        "method": method,
                        "label": label,
                        "sample": str(doc["sample"]),
                        "kind": kind,
                        **_stats(vals),
                    }
                )
            rows.append(
                {"method": method, "label": label, "sample": "all", "kind": kind, **_stats(pooled)}
            )
    return rows


def onset_rows(disabling: dict[str, list[dict]]) -> list[dict]:
    """One row per disabling edit (run-away onset): method, label, sample, edit, case id, standalone
    distance and the rule's reason, by method (layout order), sample, then edit."""
    rows = []
    for method, docs in disabling.items():
        for doc in docs:
            for e in sorted(
                (e for e in doc["edits"] if e["kind"] == "disabling"), key=lambda e: int(e["edit"])
            ):
                rows.append(
                    {
                        "method": method,
                        "label": doc.get("label", method),
                        "sample": str(doc["sample"]),
                        "edit": int(e["edit"]),
                        "case_id": e.get("case_id"),
                        "standalone_distance": e.get("standalone_distance"),
                        "reason": e.get("reason", ""),
                    }
                )
    return rows


def onset_counts(disabling: dict[str, list[dict]]) -> dict[str, dict[str, int]]:
    """method -> {sample: number of onsets in that sample's trajectory} (layout order)."""
    return {
        method: {
            str(doc["sample"]): sum(e["kind"] == "disabling" for e in doc["edits"]) for doc in docs
        }
        for method, docs in disabling.items()
    }


def _onset_csv_row(o: dict) -> dict:
    d = o["standalone_distance"]
    return {
        "method": o["method"],
        "label": o["label"],
        "sample": o["sample"],
        "kind": "onset",
        "count": 1,
        "mean": d,
        "std": None,
        "min": d,
        "max": d,
        "edit": o["edit"],
        "case_id": o["case_id"],
        "reason": o["reason"],
    }


def generation_rows(disabling: dict[str, list[dict]]) -> list[dict]:
    """Per method, the generations around the first disabling edit of the
    first sample that has one."""
    rows = []
    for method, docs in disabling.items():
        for doc in docs:
            gen = doc.get("generations")
            if not gen:
                continue
            for prompt, before, after in zip(gen["prompts"], gen["before"], gen["after"]):
                rows.append(
                    {
                        "method": method,
                        "label": doc.get("label", method),
                        "sample": doc["sample"],
                        "edit": gen["edit"],
                        "case_id": gen["case_id"],
                        "prompt": prompt,
                        "before": before,
                        "after": after,
                    }
                )
            break
    return rows


# --------------------------------------------------------------------------- formatting


def _sci_md(x) -> str:
    return "n/a" if x is None else f"{x:.3e}"


def _sci_tex(x) -> str:
    if x is None:
        return "--"
    mant, exp = f"{x:.3e}".split("e")
    return f"${mant}\\times10^{{{int(exp)}}}$"


def _cell_md(s: str) -> str:
    return " ".join(str(s).split()).replace("|", "\\|") or " "


def _tex_escape(s: str) -> str:
    out = []
    for ch in " ".join(str(s).split()):
        out.append(
            {
                "\\": r"\textbackslash{}",
                "&": r"\&",
                "%": r"\%",
                "$": r"\$",
                "#": r"\#",
                "_": r"\_",
                "{": r"\{",
                "}": r"\}",
                "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}",
            }.get(ch, ch)
        )
    return "".join(out)


def _pooled(rows: list[dict]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r["sample"] == "all":
            out.setdefault(r["method"], {"label": r["label"]})[r["kind"]] = r
    return out


def _ratio(p: dict):
    d, n = p["disabling"]["mean"], p["normal"]["mean"]
    return d / n if d is not None and n else None


def _spread_md(r: dict) -> str:
    if r["mean"] is None:
        return "n/a"
    sd = f" ± {r['std']:.2e}" if r["std"] is not None else ""
    rng = f" [{r['min']:.2e}, {r['max']:.2e}]" if r["count"] > 1 else ""
    return f"{_sci_md(r['mean'])}{sd}{rng}"


def _sample_ids(counts: dict[str, dict[str, int]]) -> list[str]:
    return list(dict.fromkeys(s for per_sample in counts.values() for s in per_sample))


def _label_of(rows: list[dict], method: str) -> str:
    return next((r["label"] for r in rows if r["method"] == method), method)


def onsets_markdown(
    rows: list[dict], onsets: list[dict], counts: dict[str, dict[str, int]]
) -> list[str]:
    """Markdown lines: onsets per method and sample, then the list of onset edits."""
    samples = _sample_ids(counts)
    lines = [
        "**Onsets.** Disabling edits are the onsets of update-norm run-aways (the first edit of "
        "each run-away of an edited matrix; config `disabling`): their number per method and "
        "sample, then each onset edit t with its CounterFact case id, its standalone distance and "
        "the rule's reason.",
        "",
        "| Method | " + " | ".join(f"Sample {s}" for s in samples) + " | All |",
        "|---|" + "---:|" * (len(samples) + 1),
    ]
    for method, per_sample in counts.items():
        cells = [str(per_sample[s]) if s in per_sample else "n/a" for s in samples]
        lines.append(
            f"| {_label_of(rows, method)} | "
            + " | ".join(cells)
            + f" | {sum(per_sample.values())} |"
        )
    lines.append("")
    if not onsets:
        lines.append("No onset was flagged.")
    else:
        lines += [
            "| Method | Sample | Edit t | Case id | Distance | Reason |",
            "|---|---:|---:|---:|---|---|",
        ]
        for o in onsets:
            case = "n/a" if o["case_id"] is None else o["case_id"]
            lines.append(
                f"| {_cell_md(o['label'])} | {o['sample']} | {o['edit']} | {case} | "
                f"{_sci_md(o['standalone_distance'])} | {_cell_md(o['reason'])} |"
            )
    return lines + [""]


def table2_markdown(
    rows: list[dict],
    gens: list[dict],
    n_samples: int,
    *,
    onsets: list[dict] | None = None,
    counts: dict[str, dict[str, int]] | None = None,
) -> str:
    pooled = _pooled(rows)
    lines = [
        "**Table 2.** Mean normalised distance ‖ΔW‖_F / #elements of the edited matrix when an "
        "edit is applied alone to the unedited model, disabling vs normal edits (pooled over "
        f"{n_samples} sample(s); ± sample standard deviation, [min, max]; n = number of edits). "
        f"{RECONSTRUCTION}",
        "",
        "| Method | Disabling n | Disabling distance | Normal n | Normal distance | Ratio |",
        "|---|---:|---|---:|---|---:|",
    ]
    for p in pooled.values():
        ratio = _ratio(p)
        lines.append(
            f"| {p['label']} | {p['disabling']['count']} | {_spread_md(p['disabling'])} | "
            f"{p['normal']['count']} | {_spread_md(p['normal'])} | "
            f"{'n/a' if ratio is None else f'{ratio:.3g}'} |"
        )
    lines += ["", "Paper (GPT-J, ROME): disabling 3.339e-04, normal 8.156e-07.", ""]
    if counts is not None:
        lines += onsets_markdown(rows, onsets or [], counts)
    lines += [
        "**Table 8 analogue.** Greedy generations before (model after edit t-1) and after (model "
        "after edit t) the first disabling edit t.",
        "",
    ]
    if not gens:
        lines.append("No disabling edit was flagged, so there are no generations to show.")
    else:
        lines += [
            "| Method | Edit t (case id) | Prompt | Before | After |",
            "|---|---|---|---|---|",
        ]
        for g in gens:
            lines.append(
                f"| {g['label']} | {g['edit']} ({g['case_id']}) | {_cell_md(g['prompt'])} | "
                f"{_cell_md(g['before'])} | {_cell_md(g['after'])} |"
            )
    return "\n".join(lines) + "\n"


def onsets_latex(
    rows: list[dict], onsets: list[dict], counts: dict[str, dict[str, int]]
) -> list[str]:
    """LaTeX lines: a table float with the onsets per method and sample and
    the list of onset edits."""
    samples = _sample_ids(counts)
    out = [
        "% Onsets of update-norm run-aways (the disabling edits) per method and sample",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{l" + "r" * (len(samples) + 1) + "}",
        r"\hline",
        "Method & " + " & ".join(f"sample {_tex_escape(s)}" for s in samples) + r" & all \\",
        r"\hline",
    ]
    for method, per_sample in counts.items():
        cells = [str(per_sample[s]) if s in per_sample else "--" for s in samples]
        out.append(
            f"{_tex_escape(_label_of(rows, method))} & "
            + " & ".join(cells)
            + f" & {sum(per_sample.values())} "
            + r"\\"
        )
    out += [
        r"\hline",
        r"\end{tabular}",
        r"\medskip",
        "",
        r"\begin{tabular}{lrrrlp{0.42\linewidth}}",
        r"\hline",
        r"Method & sample & edit $t$ & case id & distance & reason \\",
        r"\hline",
    ]
    if not onsets:
        out.append(r"\multicolumn{6}{l}{No onset was flagged.} \\")
    for o in onsets:
        case = "--" if o["case_id"] is None else _tex_escape(o["case_id"])
        out.append(
            f"{_tex_escape(o['label'])} & {_tex_escape(o['sample'])} & {o['edit']} & "
            f"{case} & {_sci_tex(o['standalone_distance'])} & "
            f"{_tex_escape(o['reason'])} " + r"\\"
        )
    out += [
        r"\hline",
        r"\end{tabular}",
        r"\caption{Disabling edits: onsets of update-norm run-aways (the first edit of each "
        r"run-away of an edited matrix), per method and sample, and each onset edit with its case "
        r"id, standalone distance and the rule's reason.}",
        r"\label{tab:disabling-onsets}",
        r"\end{table}",
        "",
    ]
    return out


def table2_latex(
    rows: list[dict],
    gens: list[dict],
    n_samples: int,
    *,
    onsets: list[dict] | None = None,
    counts: dict[str, dict[str, int]] | None = None,
) -> str:
    pooled = _pooled(rows)
    out = [
        "% Table 2 analogue (editscale): standalone normalised distance of disabling vs normal "
        "edits",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{lrlrl}",
        r"\hline",
        r"Method & \multicolumn{2}{c}{Disabling edits} & \multicolumn{2}{c}{Normal edits} \\",
        r" & $n$ & distance & $n$ & distance \\",
        r"\hline",
    ]
    for p in pooled.values():
        cells = []
        for kind in _KINDS:
            r = p[kind]
            sd = f" $\\pm$ {_sci_tex(r['std'])}" if r["std"] is not None else ""
            cells += [str(r["count"]), _sci_tex(r["mean"]) + sd]
        out.append(f"{_tex_escape(p['label'])} & " + " & ".join(cells) + r" \\")
    out += [
        r"\hline",
        r"\end{tabular}",
        r"\caption{Mean distance $\|\Delta W\|_F/\#\mathrm{elements}$ of the edited matrix "
        r"when an edit is applied alone to the unedited model, disabling vs normal edits (pooled "
        rf"over {n_samples} sample(s); $\pm$ sample standard deviation). {RECONSTRUCTION}}}",
        r"\label{tab:disabling-distance}",
        r"\end{table}",
        "",
    ]
    if counts is not None:
        out += onsets_latex(rows, onsets or [], counts)
    out += [
        "% Table 8 analogue: generations around the first disabling edit",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{p{0.12\linewidth}p{0.2\linewidth}"
        r"p{0.3\linewidth}p{0.3\linewidth}}",
        r"\hline",
        r"Method (edit) & Prompt & Before & After \\",
        r"\hline",
    ]
    if not gens:
        out.append(r"\multicolumn{4}{l}{No disabling edit was flagged.} \\")
    for g in gens:
        out.append(
            f"{_tex_escape(g['label'])} ({g['edit']}) & {_tex_escape(g['prompt'])} & "
            f"{_tex_escape(g['before'])} & {_tex_escape(g['after'])} \\\\"
        )
    out += [
        r"\hline",
        r"\end{tabular}",
        r"\caption{Greedy generations of the model before and after the first disabling edit.}",
        r"\label{tab:disabling-generations}",
        r"\end{table}",
        "",
    ]
    return "\n".join(out)


def _write_text(path, text: str) -> None:
    atomic_write_text(path, text)


def _write_csv(path, fields: list[str], rows: list[dict]) -> None:
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows([{k: ("" if r.get(k) is None else r.get(k)) for k in fields} for r in rows])


def write_table2(
    disabling: dict[str, list[dict]], *, md, csv_path, tex, generations_csv
) -> tuple[list, list]:
    """Write Table 2 (+ the onsets and the Table 8 analogue) as Markdown, LaTeX and two CSVs.

    Returns the statistics rows and the generation rows; the onset rows are in the CSV (kind
    ``onset``) and in the Markdown and LaTeX tables.
    """
    rows = table2_rows(disabling)
    gens = generation_rows(disabling)
    onsets = onset_rows(disabling)
    counts = onset_counts(disabling)
    n_samples = max((len(d) for d in disabling.values()), default=0)
    _write_text(md, table2_markdown(rows, gens, n_samples, onsets=onsets, counts=counts))
    _write_text(tex, table2_latex(rows, gens, n_samples, onsets=onsets, counts=counts))
    _write_csv(csv_path, TABLE2_FIELDS, rows + [_onset_csv_row(o) for o in onsets])
    _write_csv(
        generations_csv,
        ["method", "label", "sample", "edit", "case_id", "prompt", "before", "after"],
        gens,
    )
    return rows, gens


# --------------------------------------------------------------------------- runtime

RUNTIME_FIELDS = [
    "rule",
    "job",
    "s",
    "h:m:s",
    "max_rss",
    "max_vms",
    "max_uss",
    "max_pss",
    "io_in",
    "io_out",
    "mean_load",
    "cpu_time",
]


def runtime_rows(benchmarks: list[str], root: str = paths.BENCHMARKS) -> list[dict]:
    """One row per benchmark file (``results/benchmarks/<rule>/<job...>.tsv``); repeated
    measurements (``repeat()``) are averaged."""
    rows = []
    for path in benchmarks:
        rel = Path(path).relative_to(root) if Path(path).is_relative_to(root) else Path(path)
        with open(path, newline="", encoding="utf-8") as fh:
            recs = list(csv.DictReader(fh, delimiter="\t"))
        row = {
            "rule": rel.parts[0],
            "job": str(Path(*rel.parts[1:]).with_suffix("")) if len(rel.parts) > 1 else "",
        }
        for k in RUNTIME_FIELDS[2:]:
            vals = [r.get(k) for r in recs if r.get(k) not in (None, "", "NA", "-")]
            if k == "h:m:s":
                row[k] = vals[0] if vals else ""
                continue
            try:
                row[k] = float(np.mean([float(v) for v in vals])) if vals else None
            except ValueError:
                row[k] = None
        rows.append(row)
    return rows


def runtime_summary(rows: list[dict]) -> list[dict]:
    """Per rule: jobs, total / mean / max wall seconds, peak RSS (MB), total CPU seconds."""
    out = []
    for rule in dict.fromkeys(r["rule"] for r in rows):
        rr = [r for r in rows if r["rule"] == rule]
        s = [r["s"] for r in rr if r["s"] is not None]
        rss = [r["max_rss"] for r in rr if r.get("max_rss") is not None]
        cpu = [r["cpu_time"] for r in rr if r.get("cpu_time") is not None]
        out.append(
            {
                "rule": rule,
                "jobs": len(rr),
                "total_s": sum(s),
                "mean_s": float(np.mean(s)) if s else None,
                "max_s": max(s) if s else None,
                "peak_rss_mb": max(rss) if rss else None,
                "total_cpu_s": sum(cpu) if cpu else None,
            }
        )
    return out


def find_benchmarks(root: str = paths.BENCHMARKS, models: list[str] | None = None) -> list[str]:
    """Every benchmark file under ``root`` (``<rule>/<model>/...tsv`` or ``<rule>/<model>.tsv``),
    restricted to jobs of ``models`` when given (files left by runs of other configs are
    skipped)."""
    out = []
    for path in sorted(Path(root).rglob("*.tsv")):
        parts = path.relative_to(root).parts
        if len(parts) < 2:
            continue
        model = parts[1] if len(parts) > 2 else Path(parts[1]).stem
        if models is None or model in models:
            out.append(str(path))
    return out


def write_runtime(
    benchmarks: list[str], *, jobs_csv, summary_csv, root: str = paths.BENCHMARKS
) -> None:
    rows = runtime_rows(sorted(benchmarks), root)
    _write_csv(jobs_csv, RUNTIME_FIELDS, rows)
    _write_csv(
        summary_csv,
        ["rule", "jobs", "total_s", "mean_s", "max_s", "peak_rss_mb", "total_cpu_s"],
        runtime_summary(rows),
    )


# --------------------------------------------------------------------------- lifelong summary

SUMMARY_FIELDS = [
    "method",
    "label",
    "editor",
    "edits_per_step",
    "samples",
    "n_edits",
    "es_last",
    "ps_last",
    "ns_last",
    "f1_unedited",
    "f1_end",
    "f1_retained",
    "known_end",
    "known_checkpoint",
    "norm_growth",
    "onsets",
    "onsets_per_sample",
    "first_onset",
]


def _sample_summary(entry: dict, *, last: int, forgetting_test: str) -> dict:
    """One trajectory's summary numbers (NaN where its evaluation files are absent)."""

    from editscale.io.h5 import open_verified
    from editscale.reporting.figure_data import load_metrics_csv, load_sample

    m = load_metrics_csv(entry["metrics"])
    n = len(m["edit"])
    out = {
        "n_edits": n,
        **{f"{k}_last": float(np.nanmean(m[k][-last:])) for k in ("es", "ps", "ns")},
    }
    sd = load_sample(entry)
    growth = [float(g[-1]) for g in sd.norm_growth()]
    out["norm_growth"] = max(growth) if growth else math.nan
    f1_0 = [float(v[0]) for c, v in sd.downstream.values() if len(c) and c[0] == 0]
    f1_t = [float(v[-1]) for c, v in sd.downstream.values() if len(c) and c[-1] > 0]
    out["f1_unedited"] = float(np.mean(f1_0)) if f1_0 else math.nan
    out["f1_end"] = float(np.mean(f1_t)) if f1_t else math.nan
    out["f1_retained"] = (
        out["f1_end"] / out["f1_unedited"] if f1_0 and f1_t and out["f1_unedited"] > 0 else math.nan
    )
    out["known_end"], out["known_checkpoint"] = math.nan, None
    if entry.get("evaluation") and Path(entry["evaluation"]).exists():
        with open_verified(entry["evaluation"]) as f:
            fg = f.get("forgetting")
            if fg is not None and forgetting_test in fg and len(fg["checkpoints"]):
                col = np.asarray(fg[forgetting_test][:, -1], dtype=float)  # NaN: not yet edited
                out["known_end"] = float(np.nanmean(col)) if np.isfinite(col).any() else math.nan
                out["known_checkpoint"] = int(fg["checkpoints"][-1])
    out["onsets"], out["first_onset"] = None, None  # no disabling job (disabling.methods)
    if entry["disabling"] is not None:
        doc = read_sealed_json(entry["disabling"])
        onsets = sorted(int(r["edit"]) for r in doc["edits"] if r["kind"] == "disabling")
        out["onsets"], out["first_onset"] = len(onsets), (onsets[0] if onsets else None)
    return out


def summary_rows(
    layout: list[dict], *, last: int = 100, forgetting_test: str = "argmax_ok"
) -> list[dict]:
    """One row per method of a :func:`editscale.reporting.figure_data.figure_layout`: the field's
    lifelong-editing summary, each number the mean over the method's samples.

    ``es_last``/``ps_last``/``ns_last``: ES/PS/NS of the last ``last`` edits (each scored right
    after its own edit, or its step); ``f1_retained``: the mean F1 of the downstream tasks at the
    last downstream checkpoint over that of the unedited model (checkpoint 0); ``known_end``: the
    fraction of the facts edited by the last forgetting checkpoint (``known_checkpoint``) whose new
    target is still known there (``forgetting_test``); ``norm_growth``: ||W_T||_F / ||W_0||_F of the
    edited matrix that grew most; ``onsets``: disabling onsets
    (:mod:`editscale.evaluation.disabling`) summed over samples, ``onsets_per_sample`` each sample's
    count and ``first_onset`` the earliest edit.
    """
    by_method: dict[str, list[dict]] = {}
    for e in layout:
        by_method.setdefault(e["method"], []).append(e)
    rows = []
    for method, entries in by_method.items():
        per = [_sample_summary(e, last=last, forgetting_test=forgetting_test) for e in entries]
        row = {
            "method": method,
            "label": entries[0]["label"],
            "editor": entries[0]["editor"],
            "edits_per_step": int(entries[0].get("edits_per_step", 1)),
            "samples": len(per),
            "n_edits": min(p["n_edits"] for p in per),
        }
        for k in (
            "es_last",
            "ps_last",
            "ns_last",
            "f1_unedited",
            "f1_end",
            "f1_retained",
            "known_end",
            "norm_growth",
        ):
            vals = [p[k] for p in per if not math.isnan(p[k])]
            row[k] = float(np.mean(vals)) if vals else None
        checkpoints = {p["known_checkpoint"] for p in per}
        row["known_checkpoint"] = checkpoints.pop() if len(checkpoints) == 1 else None
        counted = all(p["onsets"] is not None for p in per)
        row["onsets"] = sum(p["onsets"] for p in per) if counted else None
        row["onsets_per_sample"] = "/".join(str(p["onsets"]) for p in per) if counted else "n/a"
        firsts = [p["first_onset"] for p in per if p["first_onset"] is not None]
        row["first_onset"] = min(firsts) if firsts else None
        rows.append(row)
    return rows


def _num(x, fmt: str, none: str) -> str:
    return none if x is None else format(x, fmt)


def summary_markdown(rows: list[dict], *, last: int) -> str:
    out = [
        "| Method | edits/step | ES | PS | NS | F1 retained | known at end | norm growth | onsets "
        "(per sample) | first onset |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {_cell_md(r['label'])} | {r['edits_per_step']} | "
            f"{_num(r['es_last'], '.2f', 'n/a')} | {_num(r['ps_last'], '.2f', 'n/a')} | "
            f"{_num(r['ns_last'], '.2f', 'n/a')} | {_num(r['f1_retained'], '.2f', 'n/a')} | "
            f"{_num(r['known_end'], '.2f', 'n/a')} | {_num(r['norm_growth'], '.3g', 'n/a')} | "
            f"{_num(r['onsets'], 'd', 'n/a')} ({r['onsets_per_sample']}) | "
            f"{_num(r['first_onset'], 'd', '-')} |"
        )
    n = max((r["samples"] for r in rows), default=0)
    out += [
        "",
        f"Means over {n} samples. ES/PS/NS: the last {last} edits, each scored after its own edit "
        "(or step). F1 retained: the mean F1 of the downstream tasks at the last downstream "
        "checkpoint over the unedited model's. Known at end: the fraction of the edited facts "
        "whose new target is still the model's answer at the last forgetting checkpoint. Norm "
        "growth: ||W_T||_F / ||W_0||_F of the edited matrix that grew most. Onsets: disabling "
        "edits (run-away onsets of the update norm; steps for batched methods), all samples.",
        "",
    ]
    return "\n".join(out)


def summary_latex(rows: list[dict], *, last: int) -> str:
    out = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{lrrrrrrrrr}",
        r"\hline",
        r"Method & edits/step & ES & PS & NS & F1 retained & known at end & norm growth & onsets "
        r"& first onset \\",
        r"\hline",
    ]
    for r in rows:
        out.append(
            f"{_tex_escape(r['label'])} & {r['edits_per_step']} & "
            f"{_num(r['es_last'], '.2f', '--')} & {_num(r['ps_last'], '.2f', '--')} & "
            f"{_num(r['ns_last'], '.2f', '--')} & {_num(r['f1_retained'], '.2f', '--')} & "
            f"{_num(r['known_end'], '.2f', '--')} & {_num(r['norm_growth'], '.3g', '--')} & "
            f"{_num(r['onsets'], 'd', 'n/a')} & {_num(r['first_onset'], 'd', '--')} " + r"\\"
        )
    out += [
        r"\hline",
        r"\end{tabular}",
        rf"\caption{{Lifelong editing: ES/PS/NS over the last {last} edits, downstream F1 "
        r"retained relative to the unedited model, fraction of edited facts still known at the "
        r"end, norm growth of the most grown edited matrix and disabling onsets; means over "
        r"samples.}",
        r"\label{tab:lifelong-summary}",
        r"\end{table}",
        "",
    ]
    return "\n".join(out)


def write_summary(
    layout: list[dict], *, md, csv_path, tex, last: int = 100, forgetting_test: str = "argmax_ok"
) -> list[dict]:
    """Write the lifelong summary table (:func:`summary_rows`) as Markdown, CSV and LaTeX."""
    rows = summary_rows(layout, last=last, forgetting_test=forgetting_test)
    _write_text(md, summary_markdown(rows, last=last))
    _write_text(tex, summary_latex(rows, last=last))
    _write_csv(csv_path, SUMMARY_FIELDS, rows)
    return rows
