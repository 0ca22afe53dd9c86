"""Single-edit diagnostic: each of N records applied alone to the unedited model.

For every record the editor computes its update on the unedited model; the update is applied,
the record is scored, and the weights are restored bit for bit before the next record. Reported
per record (for a rank-one editor such as ROME; other editors report what applies to them):

* ``ratio``: ||delta W||_F / ||W||_F of the edited matrix;
* ``denominator``: ROME's k . u, with u = C^-1 k* / ||C^-1 k*|| and k the key used in the
  update (the bare prompt's key for ``key_mode: original``, k* for r-ROME);
* ``key_cos``: cos(k*, C^-1 k*), how far C^-1 turns the key (1 for a well-conditioned C);
* ``value_gap``: ||v* - W k||, the output change the update must make; ||delta W||_F =
  value_gap / denominator for a rank-one update (u has unit norm);
* ``key_gap``: ||k* - k|| / ||k||;
* ``ratio_isotropic``: value_gap / (||k|| ||W||_F), the ratio the same v* would give if C were
  isotropic (C^-1 k* parallel to k*): ratio / ratio_isotropic is what C^-1 adds;
* ``v_clamp``: ||delta|| / (clamp_norm_factor x ||MLP output||), 1 when v* sits at ROME's norm
  clamp; ``v_nll``: the new target's NLL at the end of the v* optimisation;
* ``subject_first``: whether the subject's first token is the prompt's first token (no BOS or
  other token before it), and ``subject_tokens``, its length in tokens;
* ES / PS / NS before and after the edit (``evaluation.evaluate_record``).

The summary adds medians and quantiles, the spectrum of the key second moment C (largest and
smallest eigenvalues, condition number, count of eigenvalues under 1e-6 x the largest) and the
ratio split by ``subject_first``. :func:`edit_gate_values` turns a summary into the edit gates
of a world model (``models.<name>.gates.edit``).

Command line (any model folder, statistics file and CounterFact file)::

    python -m editscale.editing.diagnostic --model DIR --stats layer6.h5 --counterfact cf.json \\
        --layer 6 --n 50 --out results/diagnostics/smollm2
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from editscale.editors import load_editor_module
from editscale.editors.base import apply_updates, edited_tensor_names
from editscale.io.files import atomic_open, atomic_write_json
from editscale.lm.models import arch_of, edit_parameter, weight_out_in
from editscale.lm.scoring import evaluate_record

log = logging.getLogger(__name__)

ROW_FIELDS = (
    "case_id",
    "subject",
    "prompt",
    "subject_first",
    "subject_tokens",
    "ratio",
    "update_norm",
    "denominator",
    "key_cos",
    "value_gap",
    "key_gap",
    "k_norm",
    "ratio_isotropic",
    "v_clamp",
    "v_nll",
    "es_before",
    "ps_before",
    "ns_before",
    "es_after",
    "ps_after",
    "ns_after",
    "seconds",
)


def subject_token_span(tok, prompt: str, subject: str) -> tuple[int, int]:
    """(index of the subject's first token, its length in tokens) in the bare prompt.

    The prompt is tokenised as the evaluation tokenises it (the tokenizer's own special tokens
    included), so a tokenizer that prepends BOS puts the subject at index >= 1.
    """
    pre, _, post = prompt.partition("{}")
    text = pre + subject + post
    start, end = len(pre), len(pre) + len(subject)
    enc = tok(text, return_offsets_mapping=True)
    covered = [
        i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < end and e > start
    ]
    if not covered:
        raise ValueError(f"subject {subject!r} not found among the tokens of {text!r}")
    return covered[0], covered[-1] - covered[0] + 1


def spectrum(second_moment: torch.Tensor | None) -> dict[str, float] | None:
    """Largest and smallest eigenvalues of C, its condition number and near-null dimensions."""
    if second_moment is None:
        return None
    ev = torch.linalg.eigvalsh(second_moment.double()).cpu().numpy()
    top, low = float(ev[-1]), float(ev[0])
    return {
        "dim": int(ev.size),
        "eig_max": top,
        "eig_min": low,
        "condition": top / low if low > 0 else math.inf,
        "n_below_1e-6_max": int((ev < 1e-6 * top).sum()),
        "eig_median": float(np.median(ev)),
    }


def _quantiles(x: np.ndarray) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if not x.size:
        return {}
    q = np.quantile(x, [0.0, 0.1, 0.5, 0.9, 1.0])
    return {
        "min": float(q[0]),
        "p10": float(q[1]),
        "median": float(q[2]),
        "p90": float(q[3]),
        "max": float(q[4]),
        "mean": float(x.mean()),
    }


def diagnose_record(
    model,
    tok,
    editor,
    record: dict,
    weights: dict[str, torch.Tensor],
    second_moment_inv,
    batch_size: int = 64,
) -> dict:
    """One record: update statistics and ES/PS/NS before and after, weights restored afterwards."""
    t0 = time.perf_counter()
    spec = arch_of(model)
    rw = record["requested_rewrite"]
    before = evaluate_record(model, tok, record, batch_size=batch_size)
    res = editor.compute(record)
    main = res.updates[0]
    w0 = weight_out_in(weights[main.module], spec)
    update_norm = float(np.sqrt(sum(u.frobenius_norm() ** 2 for u in res.updates)))
    w_norm = float(np.sqrt(sum(float(weights[u.module].double().norm()) ** 2 for u in res.updates)))
    row = {
        "case_id": record["case_id"],
        "subject": rw["subject"],
        "prompt": rw["prompt"],
        "update_norm": update_norm,
        "ratio": update_norm / w_norm,
        "denominator": math.nan,
        "key_cos": math.nan,
        "value_gap": math.nan,
        "key_gap": math.nan,
        "k_norm": math.nan,
        "ratio_isotropic": math.nan,
        "v_clamp": math.nan,
        "v_nll": float(res.info.get("v_nll", math.nan)),
    }
    first, n_tok = subject_token_span(tok, rw["prompt"], rw["subject"])
    row.update(subject_first=int(first == 0), subject_tokens=n_tok)
    vec = res.vectors
    if "u" in vec and "k_used" in vec:
        k_used, u, k_star = vec["k_used"].double(), vec["u"].double(), vec["k_star"].double()
        row["denominator"] = float(k_used @ u)
        row["k_norm"] = float(k_used.norm())
        # as ROME: the gap to the module's output at k, bias included (GPT-2's Conv1D has one)
        module = model.get_submodule(main.module)
        with torch.no_grad():
            out = module(k_used.to(device=w0.device, dtype=w0.dtype)[None]).double()[0]
        row["value_gap"] = float((vec["target"].double().to(w0.device) - out).norm())
        if second_moment_inv is not None:
            ck = second_moment_inv.to(k_star.device) @ k_star
            row["key_cos"] = float(k_star @ ck / (k_star.norm() * ck.norm()))
        row["key_gap"] = float(res.info.get("key_gap", math.nan))
        row["ratio_isotropic"] = row["value_gap"] / (row["k_norm"] * w_norm)
        clamp = getattr(getattr(editor, "hp", None), "clamp_norm_factor", None)
        if clamp and res.info.get("target_init_norm"):
            row["v_clamp"] = float(res.info["delta_norm"]) / (
                clamp * float(res.info["target_init_norm"])
            )
    apply_updates(model, res.updates, spec)
    try:
        after = evaluate_record(model, tok, record, batch_size=batch_size)
    finally:
        with torch.no_grad():
            for path, w in weights.items():
                edit_parameter(model, path).copy_(w)
    for k in ("es", "ps", "ns"):
        row[f"{k}_before"] = before[k]
        row[f"{k}_after"] = after[k]
    row["seconds"] = time.perf_counter() - t0
    return row


def summarise(rows: Sequence[dict], second_moment: torch.Tensor | None) -> dict:
    """Medians, quantiles and means over the records, the spectrum of C, the first-token split."""
    col = {
        k: np.array([r[k] for r in rows], dtype=float)
        for k in ROW_FIELDS
        if k not in ("subject", "prompt")
    }
    first = col["subject_first"] == 1
    out = {
        "n_records": len(rows),
        "ratio": _quantiles(col["ratio"]),
        "update_norm": _quantiles(col["update_norm"]),
        "denominator": _quantiles(col["denominator"]),
        "key_cos": _quantiles(col["key_cos"]),
        "value_gap": _quantiles(col["value_gap"]),
        "key_gap": _quantiles(col["key_gap"]),
        "ratio_isotropic": _quantiles(col["ratio_isotropic"]),
        "v_clamp": _quantiles(col["v_clamp"]),
        "v_nll": _quantiles(col["v_nll"]),
        "subject_first_fraction": float(first.mean()) if rows else math.nan,
        "ratio_median_subject_first": float(np.median(col["ratio"][first]))
        if first.any()
        else None,
        "ratio_median_subject_inside": float(np.median(col["ratio"][~first]))
        if (~first).any()
        else None,
        "subject_tokens_mean": float(col["subject_tokens"].mean()) if rows else math.nan,
        "seconds_per_record": float(col["seconds"].mean()) if rows else math.nan,
        "spectrum": spectrum(second_moment),
    }
    for k in ("es", "ps", "ns"):
        out[f"{k}_before"] = float(np.mean(col[f"{k}_before"]))
        out[f"{k}_after"] = float(np.mean(col[f"{k}_after"]))
    out["ns_drop"] = out["ns_before"] - out["ns_after"]
    return out


def run_diagnostic(
    model,
    tok,
    *,
    editor_name: str,
    hparams: dict,
    records: Sequence[dict],
    second_moment: torch.Tensor | None,
    seed: int,
    batch_size: int = 64,
    progress_every_s: float = 30.0,
) -> tuple[list[dict], dict]:
    """Apply every record alone to ``model`` (left unchanged);
    return per-record rows and a summary."""
    editor = load_editor_module(editor_name).make_editor(model, tok, hparams, second_moment, seed)
    # every tensor the editor changes (an edited bias too: FT-C include_bias),
    # restored after each record
    weights = {p: edit_parameter(model, p).detach().clone() for p in edited_tensor_names(editor)}
    c_inv = None
    if second_moment is not None:
        c_inv = torch.linalg.inv(second_moment.double())
    rows: list[dict] = []
    t0 = last = time.perf_counter()
    for i, rec in enumerate(records, 1):
        rows.append(diagnose_record(model, tok, editor, rec, weights, c_inv, batch_size=batch_size))
        now = time.perf_counter()
        if now - last >= progress_every_s or i == len(records):
            ratios = np.array([r["ratio"] for r in rows])
            log.info(
                "single edits %d/%d: median ||dW||/||W|| %.3g | %.1f s elapsed, ~%.0f s left",
                i,
                len(records),
                float(np.median(ratios)),
                now - t0,
                (now - t0) / i * (len(records) - i),
            )
            last = now
    return rows, summarise(rows, second_moment)


def edit_gate_values(summary: dict) -> dict[str, float]:
    """The edit gates' measured values: median ratio, single-edit ES and PS, mean NS drop."""
    return {
        "edit_ratio_median": summary["ratio"]["median"],
        "edit_es": summary["es_after"],
        "edit_ps": summary["ps_after"],
        "edit_ns_drop": summary["ns_drop"],
    }


def edit_gate_failures(values: dict[str, float], gates: dict) -> list[str]:
    """Misses of the edit gates (ratio and NS drop are upper limits, ES and PS lower limits)."""
    checks = (
        ("edit_ratio_median", "max_ratio_median", "<="),
        ("edit_es", "min_es", ">="),
        ("edit_ps", "min_ps", ">="),
        ("edit_ns_drop", "max_ns_drop", "<="),
    )
    out = []
    for name, key, op in checks:
        limit = gates.get(key)
        if limit is None:
            continue
        ok = values[name] <= limit if op == "<=" else values[name] >= limit
        if not ok:
            out.append(f"{name}: {values[name]:.3f} (must be {op} {limit:g})")
    return out


MATCH_TERMS = ("ratio", "key_gap", "denominator_tail", "subject_first_asymmetry")


def match_quantities(rows: Sequence[dict]) -> dict[str, float]:
    """The pre-outcome quantities of docs/organism.md's rule for choosing the default organism,
    from the rows of a single-edit diagnostic (``records.csv``): median ratio, median key gap,
    10th percentile / median of k.u, median key gap of subject-first records over the others',
    and the share of subject-first records."""

    def col(name: str, sel=None) -> np.ndarray:
        x = np.asarray([float(r[name]) for r in rows])
        return x if sel is None else x[sel]

    first = col("subject_first") == 1
    den = col("denominator")
    asym = (
        float(np.median(col("key_gap", first)) / np.median(col("key_gap", ~first)))
        if first.any() and (~first).any()
        else math.nan
    )
    return {
        "ratio": float(np.median(col("ratio"))),
        "key_gap": float(np.median(col("key_gap"))),
        "denominator_tail": float(np.percentile(den, 10) / np.median(den)),
        "subject_first_asymmetry": asym,
        "subject_first": float(first.mean()),
    }


def match_score(candidate: dict[str, float], reference: dict[str, float]) -> float:
    """S = sum of |ln(q / q_ref)| over :data:`MATCH_TERMS` + |f - f_ref| (f: subject-first
    share); a term that cannot be formed (no subject-first records) counts as infinite."""
    s = abs(candidate["subject_first"] - reference["subject_first"])
    for k in MATCH_TERMS:
        q, ref = candidate[k], reference[k]
        s += abs(math.log(q / ref)) if q > 0 and ref > 0 else math.inf
    return s


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}g}"


def markdown(summary: dict, title: str) -> str:
    """The summary as a Markdown table (the README shows one per model)."""
    s, sp = summary, summary.get("spectrum") or {}

    def q(key: str) -> str:
        if not s.get(key):
            return "not recorded"
        return f"{_fmt(s[key].get('median'))} ({_fmt(s[key].get('p10'))}-{_fmt(s[key].get('p90'))})"

    lines = [
        f"**{title}** ({s['n_records']} single edits; median, 10th-90th percentile)",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| ‖ΔW‖_F / ‖W‖_F | {q('ratio')} |",
        f"| ‖ΔW‖_F | {q('update_norm')} |",
        f"| denominator k·u | {q('denominator')} |",
        f"| cos(k*, C⁻¹k*) | {q('key_cos')} |",
        f"| value gap ‖v*−Wk‖ | {q('value_gap')} |",
        f"| key gap ‖k*−k‖/‖k‖ | {q('key_gap')} |",
        f"| ratio if C were isotropic | {q('ratio_isotropic')} |",
        f"| ‖δ‖ / ROME's clamp (1 = at the clamp) | {q('v_clamp')} |",
        f"| target NLL after the v* optimisation | {q('v_nll')} |",
        f"| subject is the prompt's first token | {100 * s['subject_first_fraction']:.0f}% of "
        "records |",
        f"| median ratio, subject first / inside | {_fmt(s['ratio_median_subject_first'])} / "
        f"{_fmt(s['ratio_median_subject_inside'])} |",
        f"| ES before → after | {s['es_before']:.3f} → {s['es_after']:.3f} |",
        f"| PS before → after | {s['ps_before']:.3f} → {s['ps_after']:.3f} |",
        f"| NS before → after | {s['ns_before']:.3f} → {s['ns_after']:.3f} |",
    ]
    if sp:
        lines.append(
            f"| C: eigenvalues max / min, condition | {_fmt(sp['eig_max'])} / "
            f"{_fmt(sp['eig_min'])}, {_fmt(sp['condition'])} ({sp['n_below_1e-6_max']} of "
            f"{sp['dim']} below 1e-6 x max) |"
        )
    lines.append(f"| seconds per record | {_fmt(s['seconds_per_record'])} |")
    return "\n".join(lines) + "\n"


def write_outputs(
    rows: Sequence[dict],
    summary: dict,
    out_dir: str | os.PathLike,
    title: str,
    extra: dict | None = None,
) -> dict[str, Path]:
    """``records.csv``, ``summary.json`` and ``summary.md`` under ``out_dir`` (atomic renames)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "records.csv", "json": out / "summary.json", "md": out / "summary.md"}
    with atomic_open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(ROW_FIELDS))
        w.writeheader()
        w.writerows(rows)
    atomic_write_json(paths["json"], {**(extra or {}), "summary": summary}, indent=1, default=str)
    paths["md"].write_text(markdown(summary, title), encoding="utf-8")
    return paths


def _stats_from_text(model, tok, args) -> Path:
    """Key statistics of ``args.layer`` from a text file (reused when already computed)."""
    from editscale.data.corpora import iter_corpus
    from editscale.editing.key_stats import compute_key_second_moment
    from editscale.lm.models import model_identity

    path = Path(args.out) / f"stats_layer{args.layer}.h5"
    if not path.exists():
        corpus = {
            "type": "text_files",
            "paths": [str(Path(args.stats_text).resolve())],
            "doc_split": "blank_lines",
        }
        compute_key_second_moment(
            model,
            tok,
            args.layer,
            iter_corpus(corpus),
            path,
            n_docs=args.stats_docs,
            max_doc_tokens=args.stats_tokens,
            batch_tokens=8192,
            attrs={
                **model_identity(args.model),
                "corpus": str(args.stats_text),
                "corpus_fingerprint": f"{args.stats_docs}x{args.stats_tokens}",
            },
        )
    return path


def main(argv: Sequence[str] | None = None) -> int:
    from editscale.data import counterfact
    from editscale.editing.key_stats import load_key_second_moment
    from editscale.lm.models import load_model

    p = argparse.ArgumentParser(
        prog="python -m editscale.editing.diagnostic", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", required=True, help="model folder (Hugging Face layout)")
    p.add_argument(
        "--stats", help="key statistics file of the edited layer (resources/stats/...h5)"
    )
    p.add_argument(
        "--stats-text",
        help="no --stats: compute them from this text file (documents split at "
        "blank lines, e.g. WikiText) into OUT/stats_layer<L>.h5, or reuse that file",
    )
    p.add_argument("--stats-docs", type=int, default=2000, help="documents for --stats-text")
    p.add_argument(
        "--stats-tokens", type=int, default=256, help="tokens per document for --stats-text"
    )
    p.add_argument("--counterfact", required=True, help="CounterFact-schema JSON file")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument(
        "--n", type=int, default=50, help="records (the file's first N, or the ordering's)"
    )
    p.add_argument("--ordering", help="an ordering file (resources/data/orderings/sampleN.json)")
    p.add_argument(
        "--hparams", default="{}", help="ROME hyperparameters as JSON (defaults: the paper's)"
    )
    p.add_argument("--editor", default="rome")
    p.add_argument("--seed", type=int, default=37)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--title", default=None)
    p.add_argument(
        "--out", required=True, help="output folder: records.csv, summary.json, summary.md"
    )
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    records = counterfact.load_counterfact(args.counterfact)
    if args.ordering:
        by_id = counterfact.records_by_case_id(records)
        records = [by_id[c] for c in counterfact.read_ordering(args.ordering)]
    if len(records) < args.n:
        raise SystemExit(f"--n {args.n}: {args.counterfact} has only {len(records)} records")
    records = records[: args.n]
    hparams = {"layer": args.layer, **json.loads(args.hparams)}
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    stats = args.stats
    if stats is None and args.stats_text:
        stats = _stats_from_text(model, tok, args)
    c = load_key_second_moment(stats, expect={"layer": args.layer}) if stats else None
    rows, summary = run_diagnostic(
        model,
        tok,
        editor_name=args.editor,
        hparams=hparams,
        records=records,
        second_moment=c,
        seed=args.seed,
    )
    title = args.title or f"{Path(args.model).name}, {args.editor} at layer {args.layer}"
    paths = write_outputs(
        rows, summary, args.out, title, extra={"args": vars(args), "hparams": hparams}
    )
    print(paths["md"].read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
