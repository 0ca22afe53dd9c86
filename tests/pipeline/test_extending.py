"""docs/extending.md followed as written, on tiny examples: an editor added outside the package
and run through the DAG, a model architecture added to the table and edited with ROME, and a data
set converted to CounterFact's schema and edited.

The code blocks of the page that start ``# file: <path>`` are written out as those files, and the
``# entry: ARCHITECTURES`` block is the table entry, so the page is what is tested.
"""

from __future__ import annotations

import csv
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from editscale.config import ConfigError, load_config
from editscale.data.counterfact import RecordError, load_counterfact
from editscale.editors import EDITORS, editor_info, load_editor_module
from editscale.editors.base import apply_updates, check_editor
from editscale.editors.rome import make_editor as make_rome_editor
from editscale.lm import models
from editscale.lm.models import (
    ArchSpec,
    UnsupportedArchitecture,
    arch_of,
    causal_attention_mask,
    get_module,
    load_model,
)
from editscale.lm.scoring import evaluate_record
from tests.conftest import synthetic_records
from tests.pipeline.test_cluster_kill import tiny_workflow_config

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "extending.md"
BLOCK = re.compile(r"```python\n# (file|entry): (\S+)\n(.*?)```", re.S)


def doc_blocks(kind: str) -> dict[str, str]:
    """The page's python blocks starting ``# <kind>: <name>``, by name."""
    return {name: body for k, name, body in BLOCK.findall(DOC.read_text()) if k == kind}


def write_doc_files(dest: Path) -> Path:
    for rel, body in doc_blocks("file").items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(body)
    return dest


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """The page's rank-one editor package in a folder on the import path (as PYTHONPATH puts it)."""
    folder = write_doc_files(tmp_path / "plugins")
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name in [m for m in sys.modules if m == "rankone_editor" or m.startswith("rankone_")]:
        del sys.modules[name]


def params_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(model, before: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]


def edit_each(model, tok, editor, records) -> tuple[list[dict], list[dict]]:
    """The scores of each record before and right after its edit (sequential edits)."""
    spec, before, after = arch_of(model), [], []
    for rec in records:
        before.append(evaluate_record(model, tok, rec))
        apply_updates(model, editor.compute(rec).updates, spec)
        after.append(evaluate_record(model, tok, rec))
    return before, after


def subject_last_records(n: int) -> list[dict]:
    """Synthetic records whose prompt ends with the subject: in a random tiny model attention
    spreads a change at one position thinly over the later ones, so the edited key here sits
    where the target is predicted."""
    records = synthetic_records(n)
    for rec, prompt in zip(records, PROMPTS):
        rec["requested_rewrite"]["prompt"] = prompt
    return records


PROMPTS = ["The home country of {}", "News from {}", "A letter about {}", "The birthplace of {}"]
# ROME's clamp and weight decay scale with the MLP output at the subject, which a random tiny
# model keeps near 0: loosened, v* can reach the target (the update is ROME's all the same)
ROME_HP = {
    "layer": 1,
    "mom2_adjustment": False,
    "context_template_lengths": [[5, 2]],
    "clamp_norm_factor": 100.0,
    "v_weight_decay": 0.0,
}


def assert_edited(before: list[dict], after: list[dict]) -> None:
    """Each edit makes its new target the likelier one (ES 1), and P(new) - P(true) rises on
    average."""
    assert [a["es"] for a in after] == [1.0] * len(after)
    assert np.mean([a["es_mag"] for a in after]) > np.mean([b["es_mag"] for b in before])


# ---------------------------------------------------------------- a method outside the package


def test_the_page_declares_its_editor_without_torch(plugin_dir):
    code = "import sys, rankone_editor; assert 'torch' not in sys.modules, sorted(sys.modules)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin_dir), str(REPO / "src")]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    info = editor_info("rankone_editor")
    assert info.module == "rankone_editor.editor" and not info.needs_covariance
    assert "rankone_editor" in EDITORS and "rankone_editor" not in list(EDITORS)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_page_editor_edits_one_matrix_and_inserts_the_target(
    plugin_dir, tiny_model_factory, arch
):
    model, tok = load_model(tiny_model_factory(arch))
    hp = {"layer": 1, "steps": 25}
    ed = load_editor_module("rankone_editor").make_editor(model, tok, hp, None, 0)
    assert check_editor(ed) is ed and ed.carry_dims == {} and ed.edited_biases == ()
    weights = params_of(model)
    result = ed.compute(subject_last_records(1)[0])
    assert changed(model, weights) == []  # compute leaves the model alone
    assert result.info["nll_after"] < result.info["nll_before"]
    before, after = edit_each(model, tok, ed, subject_last_records(4))
    assert changed(model, weights) == [f"{arch_of(model).mlp_out_path(1)}.weight"]
    assert_edited(before, after)


def test_config_check_of_the_page_editor_names_the_key(plugin_dir, tmp_path):
    from tests.test_config import minimal

    cfg = minimal()
    cfg["methods"] = {
        "rankone": {"editor": "rankone_editor", "per_model": {"m": {"layer": 1, "stepz": 3}}}
    }
    cfg["experiments"] = [{"model": "m", "method": "rankone"}]
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert err.value.key == "methods.rankone.per_model.m.stepz" and "'steps'" in str(err.value)
    cfg["methods"]["rankone"]["per_model"]["m"] = {"layer": 1, "lr": 0}
    with pytest.raises(ConfigError, match="lr > 0"):
        load_config(cfg)
    cfg["methods"]["rankone"]["editor"] = "rankone_editor_absent"
    with pytest.raises(ConfigError, match="unknown editor 'rankone_editor_absent'"):
        load_config(cfg)


def test_the_page_editor_runs_through_the_dag(
    plugin_dir, tmp_path, tiny_model_factory, counterfact_path
):
    """The recipe's config entry + PYTHONPATH: the trajectory (and the disabling job, which
    rebuilds the editor from the trajectory file) of the method, no statistics computed."""
    model_dir = tiny_model_factory("gpt2", n_layer=3, d_model=32, n_head=4, n_positions=1024)
    n_edits = 6
    cfg = tiny_workflow_config(model_dir, counterfact_path, n_edits=n_edits, snapshot_every=3)
    cfg["experiments"] = [{"model": "tiny-local", "method": "rankone"}]
    cfg["methods"] = {
        "rankone": {
            "editor": "rankone_editor",
            "hparams": {"steps": 25},
            "per_model": {"tiny-local": {"layer": 1}},
        }
    }
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    work = tmp_path / "work"
    targets = [
        "results/trajectories/tiny-local/rankone/sample0.csv",
        "results/disabling/tiny-local/rankone/sample0.json",
    ]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(plugin_dir), os.environ.get("PYTHONPATH")])),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2"]
    cmd += ["--configfile", str(config_file), "--directory", str(work), *targets]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert not (work / "resources/stats").exists()  # needs_covariance: false

    h5 = work / "results/trajectories/tiny-local/rankone/sample0.h5"
    with h5py.File(h5, "r") as f:
        assert bool(f.attrs["complete"]) and f.attrs["editor"] == "rankone_editor"
        assert json.loads(f.attrs["hparams"]) == {"layer": 1, "steps": 25}
    with open(h5.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["edit"]) for r in rows] == list(range(1, n_edits + 1))
    for row in rows:  # the editor's diagnostics are metrics; each edit lowers its target's NLL
        assert float(row["nll_after"]) < float(row["nll_before"])
        assert float(row["update_norm_0"]) > 0 and float(row["distance_0"]) > 0
    assert {r["es"] for r in rows} <= {"0.0", "1.0"}
    disabling = json.loads((work / targets[1]).read_text())
    assert disabling and (work / targets[1]).with_suffix(".csv").is_file()


# ---------------------------------------------------------------- a model architecture


def tiny_olmo(dest: Path, tok) -> Path:
    """A 3-block OLMo (the first one, model_type "olmo") with random weights, built from its config
    (no download)."""
    from transformers import AutoModelForCausalLM, OlmoConfig

    cfg = OlmoConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def assert_mask_is_the_models_own(model, tok) -> None:
    """The editors' 4-D attention mask gives the logits of the model's own 2-D mask path."""
    base = get_module(model, arch_of(model).base)
    enc = tok(["a b c d e f", "a", "c d"], return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        ref = base(input_ids=ids, attention_mask=mask).last_hidden_state
        ours = base(
            input_ids=ids, attention_mask=causal_attention_mask(mask, ids.shape[1], base.dtype)
        ).last_hidden_state
    torch.testing.assert_close(ours[mask.bool()], ref[mask.bool()], rtol=1e-5, atol=1e-5)


def test_an_architecture_added_to_the_table_is_edited_by_rome(
    tmp_path, tiny_tokenizer, monkeypatch
):
    model_dir = tiny_olmo(tmp_path / "olmo", tiny_tokenizer)
    assert "olmo" not in models.ARCHITECTURES
    with pytest.raises(UnsupportedArchitecture, match="'olmo'"):
        load_model(model_dir)
    (entry,) = doc_blocks("entry").values()
    table = eval("{" + entry + "}", {"ArchSpec": ArchSpec})
    for model_type, spec in table.items():
        monkeypatch.setitem(models.ARCHITECTURES, model_type, spec)
    model, tok = load_model(model_dir)
    assert arch_of(model).name == "olmo"
    assert_mask_is_the_models_own(model, tok)
    ed = make_rome_editor(model, tok, ROME_HP, None, 3)
    weights = params_of(model)
    before, after = edit_each(model, tok, ed, subject_last_records(4))
    assert changed(model, weights) == ["model.layers.1.mlp.down_proj.weight"]
    assert_edited(before, after)


# ---------------------------------------------------------------- a dataset


ROWS = [
    {
        "subject": "Danielle Darrieux",
        "prompt": "The mother tongue of {}",
        "old": "French",
        "new": "English",
        "paraphrases": ["Danielle Darrieux grew up speaking"],
        "neighbours": ["The mother tongue of Léon Blum is"],
    },
    {
        "subject": "Toko Yasuda",
        "prompt": "An instrument played by {}",
        "old": "guitar",
        "new": "piano",
        "paraphrases": ["Toko Yasuda is a musician who plays the"],
        "neighbours": ["Jimi Hendrix plays the", "Eric Clapton plays the"],
    },
]


def test_a_converted_dataset_is_validated_and_edited(tmp_path, tiny_model_factory):
    folder = write_doc_files(tmp_path / "convert")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "my_edits.json"
    proc = subprocess.run(
        [sys.executable, str(folder / "convert_edits.py"), str(rows), str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    records = load_counterfact(out)
    assert [r["case_id"] for r in records] == [0, 1]
    assert records[1]["requested_rewrite"]["target_new"]["str"] == "piano"

    model, tok = load_model(tiny_model_factory("gpt2"))
    ed = make_rome_editor(model, tok, ROME_HP, None, 3)
    assert_edited(*edit_each(model, tok, ed, records))

    to_counterfact = runpy.run_path(str(folder / "convert_edits.py"))["to_counterfact"]
    bad = dict(ROWS[0], prompt="The mother tongue of Danielle Darrieux")  # no subject slot
    out.write_text(json.dumps([to_counterfact(bad, 0)]))
    with pytest.raises(RecordError, match="record 0 .*requested_rewrite.prompt"):
        load_counterfact(out)
