"""The model families of issue 29 through the workflow: a config naming a released model of every
family plans every editor on it (a dry run, no network), and a few ROME and MEMIT edits with one
evaluation run through the DAG on tiny Llama-3-style, Qwen2, Gemma 2 and Phi-3 models."""

from __future__ import annotations

import csv
import hashlib
import json

import h5py
import pytest
import yaml

from editscale.lm.models import build_scratch_model
from tests.conftest import FAMILIES, FAMILY_WINDOW
from tests.pipeline.test_workflow import REPO, job_counts, snakemake, tiny_local_config

# A released model of each family: (hub repo, transformers model_type, blocks). Kept in step with
# the family table of config/README.md, which gives each editor's default layers and their source.
HUB_MODELS = {
    "llama-3-8b": ("meta-llama/Meta-Llama-3-8B", "llama", 32),
    "mistral-7b": ("mistralai/Mistral-7B-v0.1", "mistral", 32),
    "qwen2-7b": ("Qwen/Qwen2-7B", "qwen2", 28),
    "qwen2.5-7b": ("Qwen/Qwen2.5-7B", "qwen2", 28),
    "qwen3-8b": ("Qwen/Qwen3-8B", "qwen3", 36),
    "gemma-7b": ("google/gemma-7b", "gemma", 28),
    "gemma-2-9b": ("google/gemma-2-9b", "gemma2", 42),
    "gemma-3-1b": ("google/gemma-3-1b-pt", "gemma3_text", 26),
    "phi-3-mini": ("microsoft/Phi-3-mini-4k-instruct", "phi3", 32),
    "olmo-2-7b": ("allenai/OLMo-2-1124-7B", "olmo2", 32),
}
# each editor's layers on these models (config/README.md, "Model families")
DEFAULT_LAYERS = {
    "rome": {"layer": 5},
    "rrome": {"layer": 5},
    "memit": {"layers": [4, 5, 6, 7, 8]},
    "emmet": {"layers": [4, 5, 6, 7, 8]},
    "alphaedit": {"layers": [4, 5, 6, 7, 8]},
    "encore": {"layers": [4, 5, 6, 7, 8]},
    "ftc": {"layer": 0},
    "mend": {"n_last_layers": 3},
}


def hub_families_config() -> dict:
    """config/paper.yaml's data, statistics corpus and evaluation with :data:`HUB_MODELS` and
    every editor on each (MEND training its own editors: no public ones exist for them)."""
    cfg = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    cfg["models"] = {
        # a commit-shaped pin: a dry run never contacts the hub, so it is not looked up
        name: {
            "source": "hub",
            "repo_id": repo,
            "revision": hashlib.sha1(repo.encode()).hexdigest(),
            "n_layer": n_layer,
            "dtype": "bfloat16",
            "device": "cuda",
        }
        for name, (repo, _, n_layer) in HUB_MODELS.items()
    }
    cfg["stats"]["published"] = []
    editors = {"rrome": "rome"}
    rome = cfg["methods"]["rome"]["hparams"]
    cfg["methods"] = {
        method: {
            "editor": editors.get(method, method),
            "hparams": {**rome, "key_mode": "homogeneous"} if method == "rrome" else {},
            "per_model": {name: dict(layers) for name in HUB_MODELS},
        }
        for method, layers in DEFAULT_LAYERS.items()
    }
    cfg["methods"]["rome"]["hparams"] = rome
    cfg["methods"]["mend"]["training"] = {}
    cfg["experiments"] = [
        {"model": name, "method": method} for name in HUB_MODELS for method in DEFAULT_LAYERS
    ]
    cfg.update(samples=1, n_edits=100, snapshot_every=50)
    cfg["resources"] = {}
    return cfg


def test_a_config_naming_every_familys_hub_model_plans_every_editor(tmp_path):
    cfg = hub_families_config()
    assert sorted({t for _, t, _ in HUB_MODELS.values()}) == sorted(
        {FAMILIES[f][0] for f in FAMILIES}
    )
    config_file = tmp_path / "families.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    proc = snakemake(
        "-n", "--configfile", str(config_file), "--directory", str(tmp_path / "w"), cwd=tmp_path
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    counts = job_counts(out)
    n_models, n_methods = len(HUB_MODELS), len(DEFAULT_LAYERS)
    assert counts["prepare_model"] == n_models and counts["trajectory"] == n_models * n_methods
    # the statistics of layers 4-8 (ROME's 5 among them), once per model
    assert counts["key_stats"] == n_models * 5 and counts["train_mend"] == n_models
    assert "resources/stats/gemma-2-9b/wikipedia/layer8.h5" in out


# --------------------------------------------------------------------------- the DAG on tiny models

DAG_FAMILIES = ["llama3", "qwen2", "gemma2", "phi3"]


@pytest.mark.slow
@pytest.mark.parametrize("family", DAG_FAMILIES)
def test_rome_and_memit_edits_and_an_evaluation_through_the_dag(
    family, tmp_path, counterfact_path, tiny_tokenizer, tiny_bos_tokenizer
):
    """3 ROME and 3 MEMIT edits of a tiny model of the family (sliding window 6 where it has one),
    its key statistics, one evaluation checkpoint after the edits (forgetting, downstream
    generation with the shared prefix cache, collapse) and the figures' inputs."""
    model_type, bos, updates = FAMILIES[family]
    model_dir = tmp_path / "model"
    build_scratch_model(
        model_type,
        tiny_bos_tokenizer if bos else tiny_tokenizer,
        model_dir,
        n_layer=3,
        d_model=32,
        n_head=4,
        n_positions=1024,
        sliding_window=FAMILY_WINDOW,
        config_updates=updates,
    )
    cfg = tiny_local_config(model_dir, counterfact_path, n_docs=12, tasks=["sst2"])
    cfg["experiments"].append({"model": "tiny-local", "method": "memit"})
    cfg["methods"]["rome"]["hparams"].update(v_num_grad_steps=3, context_template_lengths=[[5, 2]])
    cfg["methods"]["memit"] = {
        "editor": "memit",
        "hparams": {"v_num_grad_steps": 3, "context_template_lengths": [[5, 2]]},
        "per_model": {"tiny-local": {"layers": [0, 1]}},
    }
    cfg.update(samples=1, n_edits=3, snapshot_every=3)
    cfg["evaluation"].update(forgetting_every=3, downstream_every=3, chunk_size=2)
    cfg["downstream"]["n_per_label"] = 2
    cfg["evaluation"]["perplexity"].update(n_docs=4)
    cfg["evaluation"]["generation"].update(n_prompts=2, max_new_tokens=4)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    work = tmp_path / "work"
    targets = [
        f"results/{kind}/tiny-local/{m}/sample0.{ext}"
        for m in ("rome", "memit")
        for kind, ext in (("evaluations", "h5"), ("trajectories", "csv"))
    ]
    proc = snakemake(
        "--cores",
        "2",
        "--configfile",
        str(config_file),
        "--directory",
        str(work),
        *targets,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    for method in ("rome", "memit"):
        h5 = work / f"results/trajectories/tiny-local/{method}/sample0.h5"
        with h5py.File(h5, "r") as f:
            assert bool(f.attrs["complete"])
        rows = list(csv.DictReader(open(h5.with_suffix(".csv"), newline="")))
        assert [int(r["edit"]) for r in rows] == [1, 2, 3]
        assert all(float(r["update_norm_0"]) > 0 for r in rows)
        with h5py.File(work / f"results/evaluations/tiny-local/{method}/sample0.h5", "r") as f:
            assert list(f["forgetting/checkpoints"][()]) == [3]
            assert list(f["downstream/checkpoints"][()]) == [0, 3]
    manifest = json.loads(
        (work / "resources/models/tiny-local/editscale_manifest.json").read_text()
    )
    assert manifest["source"] == "local"
