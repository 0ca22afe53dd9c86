"""The single-edit diagnostic and the edit gates built on it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from editscale.editing import diagnostic as ed
from editscale.editing.editor_state import load_second_moment
from editscale.editors import load_editor_module
from editscale.editors.base import apply_updates
from editscale.lm.models import arch_of, edit_parameter, load_model
from tests.conftest import synthetic_records

HP = {"layer": 1, "v_num_grad_steps": 5, "context_template_lengths": [[4, 2]]}


def test_rows_match_the_update_and_weights_are_restored(traj_inputs):
    model, tok = load_model(traj_inputs["model_dir"])
    c = load_second_moment(traj_inputs["stats_path"], traj_inputs["model_dir"], 1)
    path = arch_of(model).mlp_out_path(1)
    with torch.no_grad():  # a non-zero bias: ROME's value gap is taken against the module's output
        model.get_submodule(path).bias.copy_(
            torch.linspace(-1.0, 1.0, model.get_submodule(path).bias.numel())
        )
    w0 = edit_parameter(model, path).detach().clone()
    records = synthetic_records(3)
    rows, summary = ed.run_diagnostic(
        model, tok, editor_name="rome", hparams=HP, records=records, second_moment=c, seed=3
    )
    assert torch.equal(edit_parameter(model, path), w0)  # restored bit for bit
    assert len(rows) == 3 and summary["n_records"] == 3

    # the same edit computed independently: its norm ratio and ES after
    editor = load_editor_module("rome").make_editor(model, tok, HP, c, 3)
    res = editor.compute(records[0])
    delta = float(res.updates[0].delta_out_in().double().norm())
    assert rows[0]["ratio"] == pytest.approx(delta / float(w0.double().norm()), rel=1e-5)
    # rank one with a unit u: ||dW|| = value gap / |k . u|
    assert rows[0]["update_norm"] == pytest.approx(
        rows[0]["value_gap"] / abs(rows[0]["denominator"]), rel=1e-4
    )
    assert rows[0]["denominator"] == pytest.approx(
        float(res.vectors["k_used"] @ res.vectors["u"]), rel=1e-5
    )
    assert 0 < rows[0]["key_cos"] <= 1 + 1e-9
    apply_updates(model, res.updates, arch_of(model))
    from editscale.lm.scoring import evaluate_record

    assert rows[0]["es_after"] == evaluate_record(model, tok, records[0])["es"]
    assert summary["ratio"]["median"] == pytest.approx(float(np.median([r["ratio"] for r in rows])))
    assert summary["ns_drop"] == pytest.approx(summary["ns_before"] - summary["ns_after"])


def test_subject_position_with_and_without_bos(tiny_tokenizer):
    first, n = ed.subject_token_span(tiny_tokenizer, "{} was born in", "Toko Yasuda")
    assert first == 0 and n >= 2
    first, _ = ed.subject_token_span(tiny_tokenizer, "The mother tongue of {} is", "Toko Yasuda")
    assert first > 0

    class WithBos:  # a tokenizer that prepends one special token, as Llama's do
        def __call__(self, text, return_offsets_mapping=False):
            enc = tiny_tokenizer(text, return_offsets_mapping=True)
            return {"offset_mapping": [(0, 0)] + list(enc["offset_mapping"])}

    first, _ = ed.subject_token_span(WithBos(), "{} was born in", "Toko Yasuda")
    assert first == 1


def test_spectrum_of_a_known_matrix():
    c = torch.diag(torch.tensor([4.0, 1.0, 1e-8], dtype=torch.float64))
    s = ed.spectrum(c)
    assert s["eig_max"] == pytest.approx(4.0) and s["eig_min"] == pytest.approx(1e-8)
    assert s["condition"] == pytest.approx(4e8) and s["n_below_1e-6_max"] == 1 and s["dim"] == 3


LIMITS = {"max_ratio_median": 0.5, "min_es": 0.9, "min_ps": 0.6, "max_ns_drop": 0.1}


def test_edit_gates_pass_and_fail_at_their_limits():
    ok = {"edit_ratio_median": 0.49, "edit_es": 0.91, "edit_ps": 0.61, "edit_ns_drop": 0.09}
    assert ed.edit_gate_failures(ok, LIMITS) == []
    bad = {"edit_ratio_median": 0.51, "edit_es": 0.89, "edit_ps": 0.59, "edit_ns_drop": 0.11}
    misses = ed.edit_gate_failures(bad, LIMITS)
    assert [m.split(":")[0] for m in misses] == [
        "edit_ratio_median",
        "edit_es",
        "edit_ps",
        "edit_ns_drop",
    ]
    assert "0.510 (must be <= 0.5)" in misses[0] and "0.890 (must be >= 0.9)" in misses[1]


def test_run_gates_writes_edit_values_and_stops_on_a_miss(traj_inputs, tmp_path):
    from editscale.evaluation.gates import GateError, run_gates

    common = dict(
        model_dir=traj_inputs["model_dir"],
        counterfact_path=traj_inputs["counterfact_path"],
        ordering_paths=[traj_inputs["ordering_path"]],
        n_edits=4,
        task_set_paths={},
        thresholds={"rewrite": 0.0, "paraphrase": 0.0, "neighborhood": 0.0, "downstream_f1": 0.0},
        stats_path=traj_inputs["stats_path"],
        seed=3,
    )
    edit = {
        "method": "rome",
        "editor": "rome",
        "hparams": HP,
        "n_records": 3,
        "max_ratio_median": 1e9,
        "min_es": 0.0,
        "min_ps": 0.0,
        "max_ns_drop": 1.0,
    }
    report = run_gates(**common, edit=edit, out_json=tmp_path / "ok" / "gates.json")
    assert report["passed"] and set(report["edit_values"]) == {
        "edit_ratio_median",
        "edit_es",
        "edit_ps",
        "edit_ns_drop",
    }
    assert (tmp_path / "ok" / "edit_diagnostic" / "records.csv").read_text().count(
        "\n"
    ) == 4  # header + 3
    ratio = report["edit_values"]["edit_ratio_median"]
    strict = dict(edit, max_ratio_median=ratio * 0.99)
    with pytest.raises(GateError, match="edit_ratio_median"):
        run_gates(**common, edit=strict, out_json=tmp_path / "bad" / "gates.json")
    written = json.loads((tmp_path / "bad" / "gates.json").read_text())
    assert not written["passed"] and math.isclose(
        written["edit_values"]["edit_ratio_median"], ratio, rel_tol=1e-6
    )


def test_command_line(traj_inputs, tmp_path):
    out = tmp_path / "diag"
    rc = ed.main(
        [
            "--model",
            str(traj_inputs["model_dir"]),
            "--stats",
            str(traj_inputs["stats_path"]),
            "--counterfact",
            str(traj_inputs["counterfact_path"]),
            "--layer",
            "1",
            "--n",
            "2",
            "--hparams",
            json.dumps({k: v for k, v in HP.items() if k != "layer"}),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["n_records"] == 2 and summary["spectrum"]["dim"] > 0
    assert "‖ΔW‖_F / ‖W‖_F" in (out / "summary.md").read_text()


def test_edit_gates_not_enforced_are_recorded_and_do_not_stop(traj_inputs, tmp_path):
    from editscale.evaluation.gates import run_gates

    edit = {
        "method": "rome",
        "editor": "rome",
        "hparams": HP,
        "n_records": 2,
        "max_ratio_median": 1e-9,
        "min_es": 0.0,
        "min_ps": 0.0,
        "max_ns_drop": 1.0,
        "enforce": False,
    }
    report = run_gates(
        model_dir=traj_inputs["model_dir"],
        counterfact_path=traj_inputs["counterfact_path"],
        ordering_paths=[traj_inputs["ordering_path"]],
        n_edits=2,
        task_set_paths={},
        thresholds={"rewrite": 0.0, "paraphrase": 0.0, "neighborhood": 0.0, "downstream_f1": 0.0},
        stats_path=traj_inputs["stats_path"],
        seed=3,
        edit=edit,
        out_json=tmp_path / "gates.json",
    )
    assert report["passed"] and not report["passed_edit"] and not report["edit_enforced"]
    assert report["edit_failures"][0].startswith("edit_ratio_median:")


def test_match_score_of_the_organism_rule():
    """docs/organism.md's choice rule: the quantities from diagnostic rows and the score S."""
    import math

    from editscale.editing.diagnostic import match_quantities, match_score

    def rows(ratios, gaps, dens, firsts):
        return [
            {"ratio": r, "key_gap": g, "denominator": d, "subject_first": f}
            for r, g, d, f in zip(ratios, gaps, dens, firsts)
        ]

    ref_rows = rows([0.1, 0.2, 0.3, 0.4], [2.0, 4.0, 1.0, 1.0], [1, 2, 3, 4], [1, 1, 0, 0])
    ref = match_quantities(ref_rows)
    assert ref["ratio"] == 0.25 and ref["key_gap"] == 1.5
    assert ref["subject_first_asymmetry"] == 3.0 and ref["subject_first"] == 0.5
    assert ref["denominator_tail"] == pytest.approx(1.3 / 2.5)
    assert match_score(ref, ref) == 0.0
    doubled = dict(ref, ratio=0.5, subject_first=0.75)
    assert match_score(doubled, ref) == pytest.approx(math.log(2) + 0.25)
    # no subject-first record: the asymmetry cannot be formed, the candidate cannot match
    none_first = match_quantities(rows([0.1, 0.2], [1.0, 1.0], [1, 2], [0, 0]))
    assert math.isnan(none_first["subject_first_asymmetry"])
    assert match_score(none_first, ref) == math.inf
