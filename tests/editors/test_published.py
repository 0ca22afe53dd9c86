"""Public editor weights (mend-*.pt): the sha256 is recorded on the first download and checked on
every later download and use. Downloads are file:// URLs to local files: no network."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from editscale.editors.published import (
    EditorWeightsMismatch,
    fetch_editor_weights,
    manifest_path_for,
    read_manifest,
    verify_editor_weights,
)


def publish(path, data: bytes) -> str:
    """Put ``data`` at ``path`` (the 'remote' file) and return its file:// URL."""
    path.write_bytes(data)
    return path.resolve().as_uri()


def download(url, dest, sha256=None) -> dict:
    """What rule download_editor does: fetch, then write the sidecar."""
    info = fetch_editor_weights(url, dest, sha256=sha256)
    (dest.parent / (dest.name + ".json")).write_text(json.dumps({**info, "source": "public"}))
    return info


def test_first_download_records_the_sha256_and_later_uses_check_it(tmp_path):
    url = publish(tmp_path / "mend-10tok-gpt2-xl.pt", b"editor weights v1")
    dest = tmp_path / "resources/editors/gpt2-xl/mend.pt"
    manifest = manifest_path_for(dest)
    assert manifest == (tmp_path / "resources/editors/weights_manifest.json").resolve()
    assert not manifest.exists()

    info = download(url, dest)
    sha = hashlib.sha256(b"editor weights v1").hexdigest()
    assert info["sha256"] == sha and info["sha256_check"].startswith("recorded")
    entry = read_manifest(manifest)[url]
    assert entry["sha256"] == sha and entry["bytes"] == len(b"editor weights v1")
    assert verify_editor_weights(dest) == sha  # a later use: same bytes, fine

    # a later use of a file whose bytes changed stops, naming the file
    dest.write_bytes(b"editor weights v1, tampered")
    with pytest.raises(EditorWeightsMismatch, match=rf"editor weights {dest}.*sha256"):
        verify_editor_weights(dest)

    # a re-download (file deleted) must give the recorded bytes: the remote file changed -> stop
    dest.unlink()
    publish(tmp_path / "mend-10tok-gpt2-xl.pt", b"editor weights v2")
    with pytest.raises(EditorWeightsMismatch, match="recorded on first download") as err:
        download(url, dest)
    assert str(dest) in str(err.value) and url in str(err.value)
    assert not dest.exists()  # nothing half-checked left behind
    assert read_manifest(manifest)[url]["sha256"] == sha  # the record is kept

    # unchanged remote bytes download again fine and are checked against the record
    publish(tmp_path / "mend-10tok-gpt2-xl.pt", b"editor weights v1")
    assert download(url, dest)["sha256_check"] == "checked against the manifest"


def test_a_config_sha256_is_checked_and_must_agree_with_the_record(tmp_path):
    data = b"gpt-j editor"
    url = publish(tmp_path / "mend-10tok-gpt-j-6b.pt", data)
    dest = tmp_path / "resources/editors/gpt-j-6b/mend.pt"
    with pytest.raises(EditorWeightsMismatch, match="the config"):
        download(url, dest, sha256="0" * 64)
    good = hashlib.sha256(data).hexdigest()
    assert download(url, dest, sha256=good)["sha256"] == good
    assert read_manifest(manifest_path_for(dest))[url]["sha256"] == good
    dest.unlink()
    with pytest.raises(EditorWeightsMismatch, match="disagrees with the sha256"):
        download(url, dest, sha256="1" * 64)


def test_the_sidecar_is_checked_against_the_manifest(tmp_path):
    url = publish(tmp_path / "w.pt", b"abc")
    dest = tmp_path / "resources/editors/m/mend.pt"
    download(url, dest)
    # replace file and sidecar consistently: the manifest's record still catches it
    dest.write_bytes(b"xyz")
    side = dest.parent / "mend.pt.json"
    side.write_text(
        json.dumps({**json.loads(side.read_text()), "sha256": hashlib.sha256(b"xyz").hexdigest()})
    )
    with pytest.raises(EditorWeightsMismatch, match="recorded on first download"):
        verify_editor_weights(dest)
    # a file placed by hand (no sidecar) is not checked
    side.unlink()
    assert verify_editor_weights(dest) is None


def test_the_mend_loader_refuses_changed_weights(tmp_path, tiny_model_factory):
    """Every use goes through the loader: a changed file stops before it is unpickled."""
    from editscale.editors.mend import make_editor
    from editscale.lm.models import load_model

    model, tok = load_model(tiny_model_factory("gpt2"))
    url = publish(tmp_path / "mend-10tok-tiny.pt", b"not a torch file")
    dest = tmp_path / "resources/editors/tiny/mend.pt"
    download(url, dest)
    with pytest.raises(
        Exception
    ) as err:  # the bytes check passes; the (fake) file then fails to load
        make_editor(model, tok, {}, None, 0, editor_file=dest)
    assert not isinstance(err.value, EditorWeightsMismatch)
    dest.write_bytes(b"not a torch file either")
    with pytest.raises(EditorWeightsMismatch, match=str(dest)):
        make_editor(model, tok, {}, None, 0, editor_file=dest)


def test_download_rule_records_then_refuses_other_bytes(
    tmp_path, tiny_model_factory, counterfact_path
):
    """Rule download_editor through Snakemake, sha256 not given in the config."""
    from tests.pipeline.test_workflow import REPO, snakemake

    model_dir = tiny_model_factory("gpt2")
    remote = tmp_path / "mend-10tok-tiny.pt"
    url = publish(remote, b"public editor bytes")
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["models"] = {"tiny-local": {"source": "local", "path": str(model_dir), "device": "cpu"}}
    cfg["counterfact"] = {
        "path": str(counterfact_path),
        "url": None,
        "sha256": None,
        "unique_subjects": True,
    }
    cfg["experiments"] = [{"model": "tiny-local", "method": "mend"}]
    cfg["n_edits"] = 10  # the default's 1,000 is more than the shared file's 498 usable records
    cfg["methods"] = {
        "mend": {
            "editor": "mend",
            "hparams": {"n_last_layers": 3},
            "per_model": {"tiny-local": {}},
            "editor_weights": {"tiny-local": {"url": url}},
        }
    }
    cfg["resources"] = {}
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    work = tmp_path / "work"
    target = "resources/editors/tiny-local/mend.pt"

    proc = snakemake(
        "--cores",
        "1",
        "--configfile",
        str(config_file),
        "--directory",
        str(work),
        target,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    sha = hashlib.sha256(b"public editor bytes").hexdigest()
    assert read_manifest(work / "resources/editors/weights_manifest.json")[url]["sha256"] == sha
    side = json.loads((work / f"{target}.json").read_text())
    assert (
        side["sha256"] == sha
        and side["for_model"] == "tiny-local"
        and side["sha256_check"].startswith("recorded")
    )
    assert not (
        work / "resources/data/editor_split.json"
    ).exists()  # public editors: nothing reserved

    # the file at the URL changes; the download job runs again (forced): it stops, naming the file
    remote.write_bytes(b"other bytes")
    proc = snakemake(
        "--cores",
        "1",
        "--configfile",
        str(config_file),
        "--directory",
        str(work),
        "--forcerun",
        "download_editor",
        target,
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (
        "EditorWeightsMismatch" in out and "mend.pt" in out and "recorded on first download" in out
    )
