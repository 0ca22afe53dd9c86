"""MEND: gradient factors, identity initialisation, training to >= 80% held-out efficacy, resume,
public-format files, refusal of editor files made for something else, trajectories."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch

from editscale.data import counterfact
from editscale.data.editor_split import make_editor_split, write_editor_split
from editscale.editors.base import apply_updates
from editscale.editors.mend import (
    EditorFileMismatch,
    MendNetwork,
    capture_factors,
    edit_batch,
    edited_module_paths,
    load_editor,
    make_editor,
    module_shape,
)
from editscale.lm.models import arch_of, get_module, load_model, model_identity
from editscale.lm.scoring import evaluate_record
from tests.conftest import COUNTERFACT_500, WIKITEXT

torch.set_num_threads(1)

CORPUS = {"type": "text_files", "paths": [str(WIKITEXT)], "doc_split": "blank_lines"}
TRAINING = {
    "rank": 32,
    "lr": 1e-3,
    "lr_lr": 1e-3,
    "edit_lr_init": 1e-6,
    "accumulate": 5,
    "max_steps": 60,
    "val_every": 30,
    "norm_records": 30,
    "loc_docs": 20,
    "loc_max_tokens": 32,
    "checkpoint_every": 10,
}
RECORD = {
    "case_id": 7,
    "requested_rewrite": {
        "prompt": "The mother tongue of {} is",
        "subject": "Danielle Darrieux",
        "target_new": {"str": "English"},
        "target_true": {"str": "French"},
    },
    "paraphrase_prompts": [],
    "neighborhood_prompts": [],
}


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "llama"])
def test_factors_sum_to_the_weight_gradient(tiny_model_factory, arch):
    """sum_t delta_t x_t^T (captured by hooks) equals autograd's gradient of each edited matrix."""
    model, tok = load_model(tiny_model_factory(arch))
    modules = edited_module_paths(model, [1, 2])
    batch = edit_batch(
        tok, [("The mother tongue of Danielle Darrieux is", "English French")], "cpu"
    )
    raw, loss = capture_factors(model, modules, batch)
    from editscale.editors.mend import batch_nll, model_logits

    weights = [get_module(model, m).weight for m in modules]
    for w in weights:
        w.requires_grad_(True)
    grads = torch.autograd.grad(batch_nll(model_logits(model), batch).mean(), weights)
    for w in weights:
        w.requires_grad_(False)
    for m, g in zip(modules, grads):
        x, d = raw[m]
        g_out_in = g.T if arch_of(model).conv1d else g
        torch.testing.assert_close(d.T @ x, g_out_in, rtol=1e-4, atol=1e-6)
        assert x.shape[0] == d.shape[0] >= 1


def test_untrained_editor_is_identity_and_shared_by_shape(tiny_model_factory):
    model, _ = load_model(tiny_model_factory("gpt2"))
    modules = edited_module_paths(model, [0, 1, 2])
    net = MendNetwork(
        modules, {m: module_shape(model, m) for m in modules}, rank=8, edit_lr_init=0.5
    )
    assert sorted(net.transforms) == ["128x32", "32x128"]  # one network per shape, 3 modes each
    assert net.modes == {m: i // 2 for i, m in enumerate(modules)}
    x, d = torch.randn(5, 32), torch.randn(5, 128)
    xt, dt = net.transform(modules[0], x, d)
    torch.testing.assert_close(xt, x)  # mean 0, std 1 buffers: normalisation is the identity too
    torch.testing.assert_close(dt, d)
    u, v = net.factors({m: (x, d) if i % 2 == 0 else (d, x) for i, m in enumerate(modules)})[
        modules[0]
    ]
    torch.testing.assert_close(v, -0.5 * d)  # W <- W - lr * G, G = d^T x


@pytest.fixture(scope="module")
def trained(tiny_model_factory, shared_data, tmp_path_factory):
    """A MEND editor trained on 60 reserved records of a tiny GPT-2, plus 40 held-out records."""
    from editscale.editors.mend_training import train_mend

    d = tmp_path_factory.mktemp("mend")
    model_dir = tiny_model_factory("gpt2")
    records = counterfact.unique_subject_records(counterfact.load_counterfact(COUNTERFACT_500))
    split = make_editor_split([r["case_id"] for r in records], 60, 20, seed=1)
    write_editor_split(d / "split.json", split)
    t0 = time.perf_counter()
    manifest = train_mend(
        model_dir=model_dir,
        counterfact_path=COUNTERFACT_500,
        split_path=d / "split.json",
        corpus=CORPUS,
        out_path=d / "mend.safetensors",
        hparams={},
        training=TRAINING,
    )
    seconds = time.perf_counter() - t0
    reserved = set(split["train"]) | set(split["val"])
    held_out = [r for r in records if r["case_id"] not in reserved][:40]
    return {
        "dir": d,
        "model_dir": model_dir,
        "file": d / "mend.safetensors",
        "manifest": manifest,
        "held_out": held_out,
        "split": split,
        "seconds": seconds,
    }


def single_edit_es(model, tok, ed, records) -> tuple[float, float]:
    orig = {k: v.clone() for k, v in model.state_dict().items()}
    hits, t0 = [], time.perf_counter()
    for rec in records:
        apply_updates(model, ed.compute(rec).updates, arch_of(model))
        hits.append(evaluate_record(model, tok, rec)["es"])
        model.load_state_dict(orig)
    return sum(hits) / len(hits), (time.perf_counter() - t0) / len(records)


def test_trained_editor_reaches_80_percent_held_out_efficacy(trained):
    man = trained["manifest"]
    assert man["validation_untrained"]["es"] < 0.8  # an untrained editor (lr 1e-6) barely edits
    assert man["validation"]["es"] >= 0.8
    model, tok = load_model(trained["model_dir"])
    ed = make_editor(
        model,
        tok,
        {},
        None,
        0,
        editor_file=trained["file"],
        identity=model_identity(trained["model_dir"]),
    )
    es, sec = single_edit_es(model, tok, ed, trained["held_out"])
    print(
        f"MEND: trained in {trained['seconds']:.1f} s, held-out ES {es:.2f}, "
        f"{sec * 1000:.0f} ms per edit"
    )
    assert es >= 0.8
    upd = ed.compute(trained["held_out"][0]).updates
    assert [u.module for u in upd] == ed.edited_modules and all(u.kind == "low_rank" for u in upd)


def test_manifest_records_identity_records_hash_and_scores(trained):
    side = json.loads(Path(str(trained["file"]) + ".json").read_text())
    ident = model_identity(trained["model_dir"])
    assert side["model_id"] == ident["model_id"] and side["revision"] == ident["revision"]
    assert (
        len(side["training_records_sha256"]) == 64 and side["n_train"] == 60 and side["n_val"] == 20
    )
    assert side["training"]["rank"] == 32 and side["hparams"]["n_last_layers"] == 3
    for key in ("es", "loc_kl", "loc_top1", "edit_nll", "loss"):
        assert key in side["validation"]
    assert [h["step"] for h in side["history"]] == [30.0, 60.0]
    assert not Path(str(trained["file"]) + ".ckpt.pt").exists()


def test_editor_file_for_another_model_or_matrices_is_refused(trained, tiny_model_factory):
    other_dir = tiny_model_factory("gpt2", seed=1)  # same shapes, other weights: another revision
    model, tok = load_model(other_dir)
    with pytest.raises(EditorFileMismatch, match="revision"):
        make_editor(
            model, tok, {}, None, 0, editor_file=trained["file"], identity=model_identity(other_dir)
        )
    model, tok = load_model(trained["model_dir"])
    with pytest.raises(EditorFileMismatch, match="matrices"):
        make_editor(
            model,
            tok,
            {"layers": [1, 2]},
            None,
            0,
            editor_file=trained["file"],
            identity=model_identity(trained["model_dir"]),
        )
    wide = tiny_model_factory("gpt2", d_model=48)
    model, tok = load_model(wide)
    with pytest.raises(EditorFileMismatch, match="shape"):
        make_editor(model, tok, {}, None, 0, editor_file=trained["file"], identity=None)


def test_public_format_file_is_mapped_onto_the_same_editor(trained, tmp_path):
    """A file laid out like the ROME project's mend-*.pt (built here) gives the same edits."""
    from transformers import GPT2Config

    model, tok = load_model(trained["model_dir"])
    ours, _ = load_editor(trained["file"], model, edited_module_paths(model, [0, 1, 2]))
    state = {}
    for key, value in ours.state_dict().items():
        if key == "edit_lrs":
            continue
        _, shape, rest = key.split(".", 2)
        x_dim, d_dim = shape.split("x")
        rest = rest.replace(".mode_shift", ".mode_shift.weight").replace(
            ".mode_scale", ".mode_scale.weight"
        )
        state[f"mend.({x_dim}, {d_dim}).{rest}"] = value.clone()
    for name, dim in (("u", int(ours.shapes[ours.module_paths[0]][0])),):
        state[f"mend.(32, 128).{name}_s"] = torch.zeros(dim)
    # the public order is c_proj, c_fc per layer for GPT-2, and the public sign is W + lr G
    lrs = dict(zip(ours.module_paths, ours.edit_lrs.detach()))
    public_order = [f"transformer.h.{i}.mlp.{m}" for i in range(3) for m in ("c_proj", "c_fc")]
    state["edit_lrs"] = -torch.stack([lrs[m] for m in public_order])
    state["model_config"] = GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=600)
    path = tmp_path / "mend-10tok-gpt2-tiny.pt"
    torch.save({"model": state, "opt": {"state": {}}, "step": 7, "val_stats": {"acc": 0.5}}, path)

    ed_pub = make_editor(model, tok, {}, None, 0, editor_file=path)
    ed_own = make_editor(model, tok, {}, None, 0, editor_file=trained["file"])
    a, b = ed_pub.compute(RECORD).updates, ed_own.compute(RECORD).updates
    for ua, ub in zip(a, b):
        assert ua.module == ub.module
        torch.testing.assert_close(ua.u, ub.u)
        torch.testing.assert_close(ua.v, ub.v)
    # a public file for a model of another width is refused before any edit
    state["model_config"] = GPT2Config(n_embd=1600, n_layer=48)
    torch.save({"model": state}, tmp_path / "wide.pt")
    with pytest.raises(EditorFileMismatch, match="hidden size 1600"):
        make_editor(model, tok, {}, None, 0, editor_file=tmp_path / "wide.pt")


CHILD = """
import json, logging, os, signal, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s", force=True)
import torch
torch.set_num_threads(1)
from editscale.editors import mend_training
save = mend_training.save_checkpoint
def save_or_die(obj, path):
    # killed while steps 11-15 run: their work is lost, the step-10 checkpoint is on disk
    # (deterministic: an outside kill after a fixed sleep raced a fast machine to the end)
    if obj["step"] >= 15:
        os.kill(os.getpid(), signal.SIGKILL)
    save(obj, path)
mend_training.save_checkpoint = save_or_die
mend_training.train_mend(**json.loads(sys.argv[1]))
"""


@pytest.mark.slow
def test_training_resumes_after_a_kill(trained, tmp_path, caplog):
    split = {"train": trained["split"]["train"][:10], "val": trained["split"]["val"][:3]}
    write_editor_split(tmp_path / "split.json", split)
    args = dict(
        model_dir=str(trained["model_dir"]),
        counterfact_path=str(COUNTERFACT_500),
        split_path=str(tmp_path / "split.json"),
        corpus=CORPUS,
        hparams={},
        training={
            **TRAINING,
            "max_steps": 20,
            "val_every": 10,
            "checkpoint_every": 5,
            "norm_records": 5,
            "loc_docs": 5,
        },
    )
    ref = tmp_path / "ref.safetensors"
    from editscale.editors.mend_training import train_mend

    train_mend(**args, out_path=ref)
    out = tmp_path / "killed.safetensors"
    ckpt = Path(str(out) + ".ckpt.pt")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps({**args, "out_path": str(out)})],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, output
    assert not out.exists()
    assert torch.load(ckpt, weights_only=True)["step"] == 10
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="editscale.editors.mend_training"):
        train_mend(**args, out_path=out)
    # resumed, not started afresh (which would give the same bits)
    assert f"resuming MEND training from {ckpt} at step 10" in caplog.text
    from safetensors.torch import load_file

    a, b = load_file(str(ref)), load_file(str(out))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_mend_trajectory_stores_low_rank_updates_and_rebuilds(trained, tmp_path):
    from editscale.data.counterfact import write_ordering
    from editscale.editing.runner import run_trajectory
    from editscale.editing.store import read_metrics, rebuild_weights

    ids = [r["case_id"] for r in trained["held_out"][:4]]
    write_ordering(tmp_path / "order.json", ids, sample=0)
    out = tmp_path / "mend.h5"
    kw = dict(
        model_dir=trained["model_dir"],
        counterfact_path=COUNTERFACT_500,
        ordering_path=tmp_path / "order.json",
        stats_path=None,
        method="mend",
        editor="mend",
        hparams={},
        n_edits=4,
        snapshot_every=3,
        seed=0,
        progress_every_s=0.0,
    )
    with pytest.raises(ValueError, match="needs an editor file"):
        run_trajectory(**kw, out_path=out)
    run_trajectory(**kw, out_path=out, editor_file=trained["file"])
    m = read_metrics(out)
    assert list(m["case_id"]) == ids and (m["mend_rank"] >= 1).all() and m["es"].mean() >= 0.5
    with h5py.File(out) as f:
        assert f["updates/0"].attrs["kind"] == "low_rank"
        assert (
            int(f["updates/0/offsets"][4]) == f["updates/0/u"].shape[0] == int(m["mend_rank"].sum())
        )
        assert f.attrs["editor_file_sha256"]
        snap4 = {i: f[f"snapshots/{i}/4"][()] for i in range(6)}
        params = json.loads(f.attrs["params"])
    rebuilt = rebuild_weights(out, 4)
    for i, p in enumerate(params):
        assert torch.equal(rebuilt[p], torch.from_numpy(snap4[i])), p
