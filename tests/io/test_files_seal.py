"""Sealed text results (editscale.io.files): a sidecar <file>.sha256 in sha256sum format; a
changed byte, a damaged seal or invalid JSON is refused naming the file."""

from __future__ import annotations

import logging
import subprocess

import pytest

from editscale.io.files import (
    DamagedFileError,
    atomic_open,
    atomic_write_json,
    open_sealed,
    read_sealed_json,
    seal_path,
    verify_sealed,
)


def _csv(path) -> None:
    with atomic_open(path, "w", newline="", sealed=True) as fh:
        fh.write("edit,es\n1,0.25\n2,0.5\n")


def test_a_sealed_csv_reads_back_and_sha256sum_agrees(tmp_path):
    path = tmp_path / "m.csv"
    _csv(path)
    assert verify_sealed(path)
    with open_sealed(path, newline="") as fh:
        assert fh.read().splitlines()[1] == "1,0.25"
    proc = subprocess.run(
        ["sha256sum", "-c", seal_path(path).name], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "m.csv: OK" in proc.stdout


def test_every_changed_byte_is_refused(tmp_path):
    path = tmp_path / "m.csv"
    _csv(path)
    data = path.read_bytes()
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x04
        path.write_bytes(bytes(bad))
        with pytest.raises(DamagedFileError, match=f"{path}: its bytes are not those written"):
            verify_sealed(path)


def test_a_damaged_seal_is_refused(tmp_path):
    path = tmp_path / "m.csv"
    _csv(path)
    seal_path(path).write_text("xyz  m.csv\n")
    with pytest.raises(DamagedFileError, match="m.csv: its seal .* is damaged"):
        verify_sealed(path)


def test_a_file_without_a_seal_is_read_with_a_warning(tmp_path, caplog):
    path = tmp_path / "old.csv"
    path.write_text("edit\n1\n")
    with caplog.at_level(logging.WARNING, logger="editscale.io.files"):
        assert verify_sealed(path) is False
    assert "old.csv has no seal" in caplog.text


def test_sealed_json(tmp_path):
    path = tmp_path / "d.json"
    atomic_write_json(path, {"onsets": [47, 80]}, indent=1, sealed=True)
    assert read_sealed_json(path) == {"onsets": [47, 80]}
    path.write_text(path.read_text().replace("47", "48"))
    with pytest.raises(DamagedFileError, match="d.json: its bytes are not those written"):
        read_sealed_json(path)
