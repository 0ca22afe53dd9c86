"""Public pretrained editor weights (the ROME project's ``mend-*.pt``): download, record, verify.

Light (no torch): the download rule and the MEND loader import it.

The public files are not versioned, so their sha256 is pinned on first use: rule
``download_editor`` records the sha256 of what it downloaded from a URL in the manifest
``resources/editors/weights_manifest.json`` (:func:`manifest_path_for`: two folders above the
editor file ``resources/editors/<model>/<method>.pt``), keyed by URL. That manifest is not an
output of any rule, so it outlives the files it describes:

* a later download from the same URL (the file was deleted, or the job re-ran) must give the same
  bytes; a config ``sha256`` must agree with the recorded one (and is checked itself);
* every later use of the file (the MEND loader, :func:`verify_editor_weights`) compares its bytes
  with the sha256 in the file's sidecar ``<file>.json`` (written by the download) and in the
  manifest.

Any mismatch raises :class:`EditorWeightsMismatch`, naming the file, the URL and where the
expected hash comes from.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
from pathlib import Path

from editscale.data.download import download_file
from editscale.io.files import atomic_write_json
from editscale.io.provenance import sha256_file

MANIFEST_NAME = "weights_manifest.json"


class EditorWeightsMismatch(RuntimeError):
    """Editor weights whose bytes differ from the sha256 recorded for them."""


def manifest_path_for(editor_file: str | os.PathLike) -> Path:
    """The manifest that records the sha256 of ``resources/editors/<model>/<method>.pt``."""
    return Path(editor_file).resolve().parent.parent / MANIFEST_NAME


@contextlib.contextmanager
def _locked(manifest: Path):
    """An exclusive lock on ``manifest`` (parallel downloads of other models update it too)."""
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with open(manifest.with_name(manifest.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_manifest(manifest: str | os.PathLike) -> dict[str, dict]:
    """{url: {"sha256", "bytes", "recorded", "file"}}; empty when the manifest does not exist."""
    path = Path(manifest)
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object keyed by URL")
    return data


def _write_manifest(manifest: Path, entries: dict) -> None:
    atomic_write_json(manifest, entries, end="\n", indent=1, sort_keys=True)


def fetch_editor_weights(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    manifest: str | os.PathLike | None = None,
) -> dict:
    """Download ``url`` to ``dest`` and check or record its sha256; returns the sidecar fields.

    Expected hash: ``sha256`` (the config) when given, else the one the manifest recorded for
    ``url`` on an earlier download; with neither (the first download) the downloaded file's hash
    is recorded. A config hash that disagrees with the recorded one fails before downloading.
    """
    dest = Path(dest)
    manifest = Path(manifest) if manifest is not None else manifest_path_for(dest)
    with _locked(manifest):
        recorded = read_manifest(manifest).get(url, {}).get("sha256")
    sha256 = sha256.lower() if sha256 else None
    if sha256 and recorded and sha256 != recorded:
        raise EditorWeightsMismatch(
            f"{dest}: config sha256 {sha256} for {url} disagrees with the sha256 {recorded} "
            f"recorded in {manifest} when it was first downloaded; the file at the URL may have "
            "changed (remove its entry from the manifest to accept the config's hash)"
        )
    expected = sha256 or recorded
    source = (
        "the config (editor_weights sha256)"
        if sha256
        else f"{manifest} (recorded on first download)"
    )
    try:
        actual = download_file(url, dest, sha256=expected)
    except ValueError as err:
        if "sha256 mismatch" not in str(err):
            raise
        raise EditorWeightsMismatch(
            f"{dest}: the file downloaded from {url} does not match the sha256 "
            f"{expected} of {source}: {err}"
        ) from err
    with _locked(manifest):
        entries = read_manifest(manifest)
        entry = entries.get(url)
        if entry is None:
            entries[url] = {
                "sha256": actual,
                "bytes": dest.stat().st_size,
                "file": str(dest),
                "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"
                ),
            }
            _write_manifest(manifest, entries)
            how = "recorded (first download)"
        elif entry["sha256"] != actual:  # another job recorded other bytes meanwhile
            raise EditorWeightsMismatch(
                f"{dest}: downloaded from {url} with sha256 {actual}, but {manifest} "
                f"records {entry['sha256']}"
            )
        else:
            how = (
                "checked against the manifest"
                if not sha256
                else "checked against the config and the manifest"
            )
    return {"url": url, "sha256": actual, "sha256_check": how, "weights_manifest": str(manifest)}


def verify_editor_weights(
    path: str | os.PathLike, manifest: str | os.PathLike | None = None
) -> str | None:
    """Check a downloaded editor file against the sha256 recorded for it; returns its sha256.

    The sidecar ``<path>.json`` of the download names the URL and sha256; the manifest (default
    :func:`manifest_path_for`) is checked too when it has an entry for that URL. A file without
    a sidecar (one placed by hand, not downloaded by the workflow) is not checked: None.
    """
    path = Path(path)
    side = Path(str(path) + ".json")
    if not side.exists():
        return None
    meta = json.loads(side.read_text())
    expected = {}
    if meta.get("sha256"):
        expected[f"its sidecar {side}"] = meta["sha256"]
    manifest = Path(manifest) if manifest is not None else manifest_path_for(path)
    if meta.get("url"):
        rec = read_manifest(manifest).get(meta["url"], {}).get("sha256")
        if rec:
            expected[f"{manifest} (recorded on first download from {meta['url']})"] = rec
    if not expected:
        return None
    actual = sha256_file(path)
    for where, sha in expected.items():
        if actual != sha:
            raise EditorWeightsMismatch(
                f"editor weights {path} have sha256 {actual}, but {where} records {sha}: "
                "the file changed after it was downloaded; delete it (and its .json) to "
                "download it again"
            )
    return actual
