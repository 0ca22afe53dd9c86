"""The architecture table, loading, manifests and the (offline-tested) hub download."""

from __future__ import annotations

import json
import shutil

import huggingface_hub
import pytest
import torch

from editscale.lm.models import (
    ARCHITECTURES,
    MANIFEST_NAME,
    UnsupportedArchitecture,
    arch_of,
    causal_attention_mask,
    download_model,
    edit_parameter,
    get_module,
    link_local_model,
    load_model,
    model_identity,
    n_layers,
    read_manifest,
    weight_out_in,
    weight_patterns,
)
from tests.conftest import ARCHS


@pytest.mark.parametrize("arch", ARCHS)
def test_table_names_real_modules(tiny_model_factory, arch):
    model, tok = load_model(tiny_model_factory(arch, n_layer=3, d_model=32))
    spec = arch_of(model)
    assert spec is ARCHITECTURES[arch]
    assert n_layers(model) == 3
    for layer in range(3):
        w_out = weight_out_in(edit_parameter(model, spec.mlp_out_path(layer)), spec)
        w_in = weight_out_in(edit_parameter(model, spec.mlp_in_path(layer)), spec)
        assert w_out.shape == (32, 128), "MLP out projection maps 4d -> d"
        assert w_in.shape == (128, 32), "MLP in projection maps d -> 4d"
    assert get_module(model, spec.lm_head).weight.shape[0] == len(tok)
    assert not any(p.requires_grad for p in model.parameters())
    out = model(**tok(["a b c"], return_tensors="pt"))
    assert out.logits.shape[-1] == len(tok)


def test_dtype_and_unknown_dtype(tiny_model_factory):
    model, _ = load_model(tiny_model_factory("llama"), dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_model(tiny_model_factory("llama"), dtype="float8")


def test_unsupported_architecture_is_named(tiny_model_factory):
    model, _ = load_model(tiny_model_factory("gpt2"))
    model.config.model_type = "bert"
    with pytest.raises(UnsupportedArchitecture, match="bert"):
        arch_of(model)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_model(tmp_path)


def test_local_link_manifest_and_identity(tiny_model_factory, tmp_path):
    src = tiny_model_factory("gpt2")
    man = link_local_model(src, tmp_path / "m")
    assert man["source"] == "local" and "model.safetensors" in man["files"]
    assert man["files"] == read_manifest(src)["files"]
    ident = model_identity(tmp_path / "m")
    assert ident["model_id"].startswith("local:") and len(ident["revision"]) == 16
    load_model(tmp_path / "m")


def test_weight_patterns_prefer_safetensors():
    assert (
        weight_patterns(["config.json", "model.safetensors", "pytorch_model.bin"])[-1]
        == "*.safetensors"
    )
    assert weight_patterns(["config.json", "pytorch_model.bin"])[-1] == "*.bin"
    with pytest.raises(FileNotFoundError):
        weight_patterns(["config.json", "model.ckpt"])


def test_download_model_writes_hub_manifest(tiny_model_factory, tmp_path, monkeypatch):
    """The hub client is replaced by a local copy: everything else is the production path."""
    src = tiny_model_factory("gpt2")
    calls = {}

    def fake_list(repo_id, revision):
        calls["list"] = (repo_id, revision)
        return [p.name for p in src.iterdir()]

    def fake_snapshot(repo_id, revision, local_dir, allow_patterns):
        calls["snapshot"] = (repo_id, revision, allow_patterns)
        shutil.copytree(src, local_dir, dirs_exist_ok=True)

    monkeypatch.setattr(huggingface_hub, "list_repo_files", fake_list)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    rev = "0123456789abcdef0123456789abcdef01234567"
    man = download_model("org/tiny", rev, tmp_path / "dl")
    assert calls["list"] == ("org/tiny", rev) and calls["snapshot"][2][-1] == "*.safetensors"
    assert man["repo_id"] == "org/tiny" and man["revision"] == rev
    on_disk = json.loads((tmp_path / "dl" / MANIFEST_NAME).read_text())
    assert on_disk["files"]["model.safetensors"] == read_manifest(src)["files"]["model.safetensors"]
    assert model_identity(tmp_path / "dl") == {"model_id": "org/tiny", "revision": rev}


def test_download_stops_at_an_unknown_architecture_before_the_weights(
    tiny_model_factory, tmp_path, monkeypatch
):
    """config.json is fetched first: a model_type without a table entry stops the download,
    naming it, before a weight file is requested."""
    src = tiny_model_factory("gpt2")
    asked = []

    def fake_snapshot(repo_id, revision, local_dir, allow_patterns):
        asked.append(allow_patterns)
        local_dir.mkdir(parents=True, exist_ok=True)
        config = json.loads((src / "config.json").read_text())
        (local_dir / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))

    monkeypatch.setattr(
        huggingface_hub, "list_repo_files", lambda r, revision: ["model.safetensors"]
    )
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    with pytest.raises(UnsupportedArchitecture, match="model_type 'bert'.*'qwen2'"):
        download_model("org/tiny-bert", "0" * 40, tmp_path / "dl")
    assert asked == [["config.json"]]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_causal_attention_mask_matches_the_models_own(tiny_model_factory, arch, side):
    """The 4-D mask gives the logits of the model's own 2-D-mask path at every real position,
    with and without a KV cache, and keeps padded rows finite."""
    model, tok = load_model(tiny_model_factory(arch, n_layer=2, d_model=32))
    base, head = get_module(model, arch_of(model).base), get_module(model, arch_of(model).lm_head)
    enc = tok(["a b c d e f", "a", "c d"], return_tensors="pt", padding=True, padding_side=side)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        ours = base(
            input_ids=ids,
            attention_mask=causal_attention_mask(mask, ids.shape[1], base.dtype),
            position_ids=pos,
            use_cache=True,
        )
        real = mask.bool()
        assert torch.isfinite(ours.last_hidden_state).all()
        torch.testing.assert_close(
            head(ours.last_hidden_state[real]),
            head(ref.last_hidden_state[real]),
            rtol=1e-5,
            atol=1e-5,
        )
        nxt = torch.tensor([[5, 6], [7, 8], [9, 10]])
        full = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        npos = mask.sum(-1, keepdim=True) + torch.arange(2)[None]
        ref2 = base(input_ids=nxt, attention_mask=full, position_ids=npos, cache=ref.cache)
        ours2 = base(
            input_ids=nxt,
            attention_mask=causal_attention_mask(full, 2, base.dtype),
            position_ids=npos,
            cache=ours.cache,
        )
        torch.testing.assert_close(
            ours2.last_hidden_state, ref2.last_hidden_state, rtol=1e-5, atol=1e-5
        )


def test_causal_attention_mask_values():
    pad = torch.tensor([[0, 1, 1], [1, 1, 0]])
    m = causal_attention_mask(pad, 2, torch.float32)
    assert m.shape == (2, 1, 2, 3)
    seen = (m == 0)[:, 0]
    assert seen[0].tolist() == [[False, True, False], [False, True, True]]
    assert seen[1].tolist() == [[True, True, False], [True, True, False]]
    first = causal_attention_mask(pad, 3, torch.float32)[0, 0, 0]
    assert (first == 0).tolist() == [True, False, False], "a left pad sees only itself"


def _manifested_copy(src, dest):
    """A copy of a tiny model folder with an ``editscale_manifest.json`` written for it."""
    from editscale.lm.models import write_manifest

    shutil.copytree(src, dest)
    (dest / MANIFEST_NAME).unlink(missing_ok=True)
    write_manifest(dest, source="scratch", arch="gpt2", seed=0)
    return dest


def test_load_model_refuses_weights_changed_since_the_manifest(tiny_model_factory, tmp_path):
    folder = _manifested_copy(tiny_model_factory("gpt2"), tmp_path / "m")
    before = model_identity(folder)
    model, _ = load_model(folder)
    assert set(model.editscale_weight_sha256) == {"model.safetensors"}
    assert model_identity(folder, verify=True) == before, "identity stable for an unchanged folder"
    weights = folder / "model.safetensors"
    listed = read_manifest(folder)["files"]["model.safetensors"]
    data = bytearray(weights.read_bytes())
    mid = len(data) // 2  # inside the tensor data: the file still parses, only the values change
    data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])
    weights.write_bytes(bytes(data))
    with pytest.raises(Exception, match="model.safetensors") as err:
        load_model(folder)
    assert listed in str(err.value), "the error names the manifest's hash"
    with pytest.raises(Exception, match="model.safetensors"):
        model_identity(folder, verify=True)


def test_load_model_refuses_a_missing_listed_weight_file(tiny_model_factory, tmp_path):
    folder = _manifested_copy(tiny_model_factory("gpt2"), tmp_path / "m")
    (folder / "model.safetensors").rename(folder / "other.name")
    with pytest.raises(Exception, match="model.safetensors.*missing"):
        load_model(folder)
