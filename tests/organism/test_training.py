"""Training a world model: the schedule, block packing, a real SIGKILL + resume that ends with the
same weights as an uninterrupted run, and the gates (JSON written, clear failure)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from editscale.data import counterfact
from editscale.evaluation import gates
from editscale.lm.models import load_model, model_identity, read_manifest
from editscale.organism import training, world

SPEC = {
    "n_people": 300,
    "n_places": 60,
    "n_companies": 60,
    "n_neighbors": 3,
    "n_attribute": 3,
    "n_task_dev": 40,
    "n_task_heldout": 10,
    "n_task_chains": 6,
    "chain_length": 3,
    "n_filler": 10,
    "n_heldout_docs": 10,
}
HP = {
    "n_layer": 1,
    "d_model": 32,
    "n_head": 2,
    "vocab_size": 600,
    "block_size": 64,
    "batch_size": 4,
    "max_steps": 24,
    "lr": 3e-3,
    "warmup_steps": 4,
    "checkpoint_every": 2,
    "seed": 5,
}

TRAIN_SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
from editscale.organism import training
training.train_world_model(
    sys.argv[1], sys.argv[2], training.TrainHParams.from_dict(json.loads(sys.argv[3])),
    world_name="small", progress_every_s=0,
)
"""


@pytest.fixture(autouse=True)
def one_thread():
    """Train with one torch thread, then restore the count (later tests compare runs bitwise)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world_files(tmp_path_factory):
    return world.write_world(
        world.generate_world(world.WorldSpec.from_dict(SPEC)), tmp_path_factory.mktemp("w")
    )


def test_learning_rate_schedule():
    hp = training.TrainHParams.from_dict(
        {"max_steps": 110, "warmup_steps": 10, "lr": 1.0, "min_lr_ratio": 0.1}
    )
    assert training.lr_at(0, hp) == pytest.approx(0.1) and training.lr_at(9, hp) == pytest.approx(
        1.0
    )
    assert training.lr_at(10, hp) == pytest.approx(1.0)
    assert training.lr_at(60, hp) == pytest.approx(0.55)  # half-way down the cosine
    assert training.lr_at(110, hp) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="d_model"):
        training.TrainHParams.from_dict({"d_model": 30, "n_head": 4})
    with pytest.raises(ValueError, match="lr_max"):
        training.TrainHParams.from_dict({"lr_max": 1})


def test_packing_keeps_documents_whole():
    docs = [[1] * 3, [2] * 5, [3] * 2, [4] * 9, [5] * 1]
    blocks = training.pack_blocks(docs, [0, 1, 2, 3, 4], block_size=8, eos_id=0)
    assert blocks == [[1, 1, 1, 0], [2, 2, 2, 2, 2, 0], [3, 3, 0], [4] * 7 + [0], [5, 0]]
    blocks = training.pack_blocks(docs, [2, 0, 4], block_size=8, eos_id=0)
    assert blocks == [[3, 3, 0, 1, 1, 1, 0], [5, 0]]


def test_packing_with_bos_starts_every_document_with_it():
    docs = [[1] * 3, [2] * 5, [3] * 9]
    blocks = training.pack_blocks(docs, [0, 1, 2], block_size=8, eos_id=0, bos_id=0)
    assert blocks == [[0, 1, 1, 1, 0], [0, 2, 2, 2, 2, 2, 0], [0] + [3] * 6 + [0]]


def test_bos_tokenizer_prepends_bos_to_texts_not_to_continuations():
    from editscale.lm.models import train_bpe_tokenizer

    texts = ["Gaglum was born in Paris.", "The mother tongue of Stena is Greek."] * 20
    plain = train_bpe_tokenizer(texts, 300, add_prefix_space=True)
    bos = train_bpe_tokenizer(texts, 300, add_prefix_space=True, add_bos=True)
    a, b = plain("Gaglum was born in")["input_ids"], bos("Gaglum was born in")["input_ids"]
    assert b == [bos.bos_token_id] + a and a[0] != plain.bos_token_id
    assert (
        bos(" Paris", add_special_tokens=False)["input_ids"]
        == plain(" Paris", add_special_tokens=False)["input_ids"]
    )
    enc = bos(["Stena", "The mother tongue of Stena"], padding=True, padding_side="left")
    assert all(row[row.index(1) if 1 in row else 0] == 1 for row in enc["attention_mask"])
    assert [ids[m.index(1)] for ids, m in zip(enc["input_ids"], enc["attention_mask"])] == [
        bos.bos_token_id
    ] * 2


@pytest.mark.parametrize("arch, attr", [("gpt2", "n_inner"), ("llama", "intermediate_size")])
def test_scratch_config_mlp_width_and_dropout(arch, attr):
    from editscale.lm.models import scratch_config

    cfg = scratch_config(arch, 100, 2, 32, 4, d_mlp=48, dropout=0.0)
    assert getattr(cfg, attr) == 48
    assert all(
        getattr(cfg, k) == 0.0
        for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout")
        if hasattr(cfg, k)
    )
    assert getattr(scratch_config(arch, 100, 2, 32, 4), attr) in (
        None,
        128,
    )  # GPT-2: None means 4 x d_model
    with pytest.raises(ValueError, match="arch"):
        training.TrainHParams.from_dict({"arch": "t5"})


def test_every_step_gets_a_full_batch_across_epochs():
    docs = [[1 + i % 7] * (1 + (i * 5) % 11) for i in range(60)]
    hp = training.TrainHParams.from_dict({"block_size": 16, "batch_size": 4, "seed": 1})
    sched = training._Schedule(docs, hp, eos_id=0)
    for step in range(sched.batches_per_epoch * 6):
        epoch, blocks = sched.batch(step)
        assert len(blocks) == 4 and all(0 < len(b) <= 16 for b in blocks)
    assert epoch == 5


def test_training_resumes_after_a_kill(world_files, tmp_path):
    corpus = world_files["train"]
    ref = tmp_path / "ref"
    training.train_world_model(corpus, ref, training.TrainHParams.from_dict(HP), world_name="small")

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", TRAIN_SCRIPT, str(corpus), str(killed), json.dumps(HP)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpt = Path(f"{killed}.train") / "checkpoint.pt"
    deadline = time.time() + 120
    step = 0
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            try:
                step = torch.load(ckpt, weights_only=True)["step"]
            except Exception:  # being replaced right now
                step = 0
            if step >= 6:
                break
        time.sleep(0.05)
    assert proc.poll() is None, (
        "training ended before it could be killed: " + proc.stderr.read().decode()
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists()
    done = torch.load(ckpt, weights_only=True)["step"]
    assert 6 <= done < HP["max_steps"]

    manifest = training.train_world_model(
        corpus, killed, training.TrainHParams.from_dict(HP), world_name="small"
    )
    a, b = load_file(ref / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not Path(f"{killed}.train").exists()  # checkpoints are removed once the model is written
    assert manifest["source"] == "world" and manifest["training"]["max_steps"] == HP["max_steps"]
    assert read_manifest(killed)["corpus_sha256"] == read_manifest(ref)["corpus_sha256"]
    assert model_identity(killed)["model_id"] == "world:small:gpt2"
    model, tok = load_model(killed)
    assert model.config.n_positions == HP["block_size"] and len(tok) <= HP["vocab_size"]


def test_gates_write_json_and_fail_clearly(world_files, tmp_path):
    model_dir = tmp_path / "m"
    training.train_world_model(
        world_files["train"],
        model_dir,
        training.TrainHParams.from_dict({**HP, "max_steps": 4, "block_size": 512}),
        world_name="small",
    )
    records = counterfact.load_counterfact(world_files["counterfact"])
    ordering = tmp_path / "ordering.json"
    counterfact.write_ordering(ordering, [r["case_id"] for r in records])
    from editscale.data import glue

    sets = {}
    for task in ("sst2", "cola"):
        ex = glue.load_glue(
            task, {"type": "glue_files", "path": str(world_files["counterfact"].parent / "glue")}
        )
        path = tmp_path / f"{task}.json"
        path.write_text(json.dumps(glue.prepare_task_set(task, ex, 5, seed=1)))
        sets[task] = str(path)
    kwargs = dict(
        model_dir=model_dir,
        counterfact_path=world_files["counterfact"],
        ordering_paths=[str(ordering)],
        n_edits=30,
        task_set_paths=sets,
    )
    out = tmp_path / "gates.json"
    report = gates.run_gates(
        **kwargs,
        thresholds={"rewrite": 0, "paraphrase": 0, "neighborhood": 0, "downstream_f1": 0},
        out_json=out,
    )
    assert report["passed"] and report["n_records"] == 30
    values = report["values"]
    assert set(values) == {"rewrite", "paraphrase", "neighborhood", "f1_sst2", "f1_cola"}
    assert all(0 <= v <= 1 for v in values.values())
    assert json.loads(out.read_text())["values"] == values

    f1s = [values["f1_sst2"], values["f1_cola"]]
    below = {k: values[k] - 0.01 for k in gates.FACT_GATES}
    # thresholds just below (or at) every measured value: passes
    for thresholds in (
        {**below, "downstream_f1": min(f1s) - 0.01},
        {**{k: values[k] for k in gates.FACT_GATES}, "downstream_f1": min(f1s)},
    ):
        report = gates.run_gates(**kwargs, thresholds=thresholds, out_json=out)
        assert report["passed"] and report["failures"] == [] and report["values"] == values
        assert json.loads(out.read_text())["passed"]

    # a threshold just above one measured value: that gate
    # (and only it) fails, named with both numbers
    for gate in gates.FACT_GATES:
        over = values[gate] + 0.01
        with pytest.raises(gates.GateError) as err:
            gates.run_gates(
                **kwargs,
                thresholds={**below, gate: over, "downstream_f1": min(f1s) - 0.01},
                out_json=out,
            )
        expected = f"{gate}: {values[gate]:.3f} < {over:.3f}"
        assert expected in str(err.value)
        failed = json.loads(out.read_text())
        assert not failed["passed"] and failed["failures"] == [expected]
        assert failed["thresholds"][gate] == pytest.approx(over)

    # downstream_f1 just above the best task's F1: every task's gate fails
    over = max(f1s) + 0.01
    with pytest.raises(gates.GateError) as err:
        gates.run_gates(**kwargs, thresholds={**below, "downstream_f1": over}, out_json=out)
    expected = [f"f1_{task}: {values[f'f1_{task}']:.3f} < {over:.3f}" for task in ("cola", "sst2")]
    assert all(e in str(err.value) for e in expected)
    assert sorted(json.loads(out.read_text())["failures"]) == expected


def test_llama_organism_with_bos_trains_and_loads(world_files, tmp_path):
    """arch / bos / d_mlp of a world model: a Llama-architecture model whose
    tokenizer prepends BOS."""
    dest = tmp_path / "llama"
    hp = training.TrainHParams.from_dict(
        {**HP, "arch": "llama", "bos": True, "d_mlp": 40, "max_steps": 3}
    )
    manifest = training.train_world_model(world_files["train"], dest, hp, world_name="small")
    assert manifest["arch"] == "llama" and model_identity(dest)["model_id"] == "world:small:llama"
    model, tok = load_model(dest)
    assert model.config.model_type == "llama" and model.config.intermediate_size == 40
    assert tok("Gaglum was born in")["input_ids"][0] == tok.bos_token_id
