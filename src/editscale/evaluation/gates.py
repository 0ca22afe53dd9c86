"""Gates on a trained model before any edit: does it know the facts it will be edited on, can
it do the (toy) downstream tasks, and (``edit`` gates) do single ROME edits on it behave as on a
real model (update small relative to the matrix, effective, specific)? Measured values go to a
JSON next to the model; a missed gate raises :class:`GateError` naming each gate, its value and
its threshold."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from editscale.io.files import atomic_write_json
from editscale.lm.scoring import score_targets, target_token_ids

log = logging.getLogger(__name__)

FACT_GATES = ("rewrite", "paraphrase", "neighborhood")


class GateError(RuntimeError):
    pass


def fact_knowledge(model, tok, records: Sequence[dict], batch_size: int = 128) -> dict[str, float]:
    """Fraction of rewrite, paraphrase and neighbourhood prompts with P(true) > P(new)."""
    prompts, targets, kinds = [], [], []
    for rec in records:
        rw = rec["requested_rewrite"]
        ids = [
            target_token_ids(tok, rw["target_true"]["str"]),
            target_token_ids(tok, rw["target_new"]["str"]),
        ]
        groups = {
            "rewrite": [rw["prompt"].replace("{}", rw["subject"], 1)],
            "paraphrase": list(rec["paraphrase_prompts"]),
            "neighborhood": list(rec["neighborhood_prompts"]),
        }
        for kind, plist in groups.items():
            prompts += plist
            targets += [ids] * len(plist)
            kinds += [kind] * len(plist)
    sc = score_targets(model, tok, prompts, targets, batch_size=batch_size)
    known = sc.nll[:, 0] < sc.nll[:, 1]
    kinds_arr = np.asarray(kinds)
    return {k: float(known[kinds_arr == k].mean()) for k in FACT_GATES}


def gate_failures(values: Mapping[str, float], thresholds: Mapping[str, float]) -> list[str]:
    return [
        f"{name}: {values[name]:.3f} < {thresholds[name]:.3f}"
        for name in thresholds
        if name in values and values[name] < thresholds[name]
    ]


def edit_gates(
    model,
    tok,
    records: Sequence[dict],
    edit: Mapping,
    *,
    stats_path,
    model_dir,
    seed: int,
    diagnostic_dir=None,
) -> tuple[dict[str, float], dict[str, str], list[str], dict]:
    """Single-edit diagnostic over the first ``edit['n_records']`` records, applied alone.

    Returns the measured values, their limits as text, the misses and the diagnostic summary.
    """
    from editscale.editing.diagnostic import (
        edit_gate_failures,
        edit_gate_values,
        run_diagnostic,
        write_outputs,
    )
    from editscale.editing.editor_state import load_second_moment

    hparams = dict(edit["hparams"])
    n = int(edit["n_records"])
    if len(records) < n:
        raise ValueError(f"gates.edit.n_records={n} but only {len(records)} records were given")
    c = load_second_moment(stats_path, model_dir, int(hparams["layer"])) if stats_path else None
    log.info(
        "edit gates: %d single %s edits at layer %s on the unedited model",
        n,
        edit["editor"],
        hparams.get("layer"),
    )
    rows, summary = run_diagnostic(
        model,
        tok,
        editor_name=edit["editor"],
        hparams=hparams,
        records=records[:n],
        second_moment=c,
        seed=seed,
    )
    if diagnostic_dir is not None:
        write_outputs(
            rows,
            summary,
            diagnostic_dir,
            f"{Path(model_dir).name}, {edit['method']} single edits",
            extra={"method": edit["method"], "hparams": hparams, "seed": seed},
        )
    values = edit_gate_values(summary)
    limits = {
        "edit_ratio_median": f"<= {edit['max_ratio_median']:g}",
        "edit_es": f">= {edit['min_es']:g}",
        "edit_ps": f">= {edit['min_ps']:g}",
        "edit_ns_drop": f"<= {edit['max_ns_drop']:g}",
    }
    return values, limits, edit_gate_failures(values, edit), summary


def _gate_records(counterfact_path, ordering_paths: Sequence[str], n_edits: int) -> list[dict]:
    """Every record some ordering edits (each once, by case id)."""
    from editscale.data.counterfact import select_records

    case_ids: dict[int, dict] = {}
    for path in ordering_paths:
        for rec in select_records(counterfact_path, path, n_edits):
            case_ids.setdefault(rec["case_id"], rec)
    records = [case_ids[c] for c in sorted(case_ids)]
    log.info(
        "gates on %d records to be edited (%d orderings x %d edits)",
        len(records),
        len(ordering_paths),
        n_edits,
    )
    return records


def _downstream_gates(
    model, tok, task_set_paths: Mapping[str, str], thresholds: Mapping[str, float], values, limits
) -> None:
    """Add each task's downstream F1 (``f1_<task>``) and its threshold."""
    from editscale.evaluation.downstream import evaluate_task_set

    for task, path in sorted(task_set_paths.items()):
        with open(path, encoding="utf-8") as f:
            result = evaluate_task_set(model, tok, json.load(f))
        values[f"f1_{task}"] = float(result["f1"])
        limits[f"f1_{task}"] = float(thresholds["downstream_f1"])


def _add_edit_gates(
    report: dict,
    failures: list[str],
    edit: Mapping,
    e_values: dict,
    e_limits: dict,
    e_failures: list[str],
    summary: dict,
) -> None:
    """The edit gates' values into ``report``; their failures into ``failures`` when enforced."""
    enforce = bool(edit.get("enforce", True))
    if enforce:
        failures += e_failures
    report.update(
        passed=not failures,
        failures=failures,
        edit_values=e_values,
        edit_thresholds=e_limits,
        edit_method=edit["method"],
        edit_diagnostic=summary,
        edit_enforced=enforce,
        passed_edit=not e_failures,
        edit_failures=e_failures,
    )
    for name, value in e_values.items():
        missed = any(f.startswith(name + ":") for f in e_failures)
        log.log(
            logging.WARNING if missed else logging.INFO,
            "gate %-17s %.3f (%s)%s",
            name,
            value,
            e_limits[name],
            "" if not missed else "  MISSED" if enforce else "  MISSED (not enforced)",
        )


def run_gates(
    *,
    model_dir,
    counterfact_path,
    ordering_paths: Sequence[str],
    n_edits: int,
    task_set_paths: Mapping[str, str],
    thresholds: Mapping[str, float],
    out_json,
    dtype: str = "float32",
    device: str = "cpu",
    edit: Mapping | None = None,
    stats_path=None,
    seed: int = 37,
) -> dict:
    """Measure every gate, write ``out_json`` (also when a gate fails), raise on failures.

    ``thresholds``: ``rewrite``, ``paraphrase``, ``neighborhood`` and ``downstream_f1`` (each task).
    ``edit``: the edit gates (``method``, ``editor``, ``hparams``, ``n_records``,
    ``max_ratio_median``, ``min_es``, ``min_ps``, ``max_ns_drop``), measured on the first
    ``n_records`` records of the first ordering (also beyond ``n_edits``), each applied alone
    (``stats_path``: the key statistics of the edited layer); the per-record diagnostic goes to
    ``edit_diagnostic/`` next to ``out_json``.
    """
    from editscale.data.counterfact import check_record_tokens, select_records
    from editscale.lm.models import load_model, model_identity

    model, tok = load_model(model_dir, dtype=dtype, device=device)
    records = _gate_records(counterfact_path, ordering_paths, n_edits)
    first = (
        select_records(counterfact_path, ordering_paths[0], int(edit["n_records"]))
        if edit is not None
        else []
    )
    check_record_tokens(records + first, tok, model.config, counterfact_path)
    values = fact_knowledge(model, tok, records)
    limits = {k: float(thresholds[k]) for k in FACT_GATES}
    _downstream_gates(model, tok, task_set_paths, thresholds, values, limits)
    failures = gate_failures(values, limits)
    report = {
        "model": model_identity(model_dir),
        "n_records": len(records),
        "values": values,
        "thresholds": limits,
        "passed": not failures,
        "failures": failures,
    }
    if edit is not None:
        gates = edit_gates(
            model,
            tok,
            first,
            edit,
            stats_path=stats_path,
            model_dir=model_dir,
            seed=seed,
            diagnostic_dir=Path(out_json).parent / "edit_diagnostic",
        )
        _add_edit_gates(report, failures, edit, *gates)
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_json, report, indent=1, sort_keys=True)
    for name, value in values.items():
        log.info(
            "gate %-13s %.3f (threshold %.2f)%s",
            name,
            value,
            limits[name],
            "" if value >= limits[name] else "  MISSED",
        )
    if failures:
        raise GateError(
            f"model {model_dir} misses its gates ({out_json}): "
            + "; ".join(failures)
            + ". Train longer or on a smaller world (models.<name>.training, worlds.<name>); "
            "edit gates: see the single-edit diagnostic in edit_diagnostic/ next to it."
        )
    return report
