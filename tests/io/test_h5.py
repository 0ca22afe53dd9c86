"""Sealed HDF5 files (editscale.io.h5): any changed byte is refused naming the file; metadata
digests; reading back a damaged file names it."""

from __future__ import annotations

import logging
import os

import h5py
import numpy as np
import pytest

from editscale.io import h5 as h5io
from editscale.io.h5 import DamagedFileError


def _sealed(path, n: int = 20) -> None:
    with h5io.write_sealed(path) as f:
        f.create_dataset("x", data=np.arange(n, dtype="f8"), fletcher32=True, chunks=(5,))
        f.create_dataset(
            "names", data=np.array(["a", "b"], dtype=object), dtype=h5py.string_dtype()
        )
        f.attrs["hparams"] = '{"v_lr": 0.5}'
        f.attrs["seed"] = 5


def test_a_sealed_file_verifies_and_reads(tmp_path):
    path = tmp_path / "a.h5"
    _sealed(path)
    assert h5io.verify(path) is True
    with h5io.open_verified(path) as f:
        assert list(f["x"][:3]) == [0.0, 1.0, 2.0] and f.attrs["seed"] == 5


def test_every_changed_byte_is_refused_naming_the_file(tmp_path):
    """Each byte of a small sealed file flipped in turn (seal, HDF5 structures, datasets,
    attributes, padding): every one is refused."""
    path = tmp_path / "a.h5"
    _sealed(path)
    data = path.read_bytes()
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        path.write_bytes(bytes(bad))
        with pytest.raises(DamagedFileError, match=str(path)):
            h5io.verify(path, locate=False)
    path.write_bytes(data)
    assert h5io.verify(path)


def test_the_refusal_names_the_damaged_dataset(tmp_path):
    path = tmp_path / "a.h5"
    _sealed(path)
    with h5py.File(path, "r") as f:
        offset = f["x"].id.get_chunk_info(1).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * 8)
    with pytest.raises(DamagedFileError, match=r"a.h5.*dataset /x fails its checksum"):
        h5io.open_verified(path)


def test_an_attribute_changed_through_hdf5_is_refused(tmp_path):
    """The probe's way: hparams rewritten with h5py, modification time put back."""
    path = tmp_path / "a.h5"
    _sealed(path)
    st = path.stat()
    with h5py.File(path, "r+") as f:
        f.attrs["hparams"] = '{"v_lr": 0.9}'
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(DamagedFileError, match=r"a.h5: its bytes are not those written"):
        h5io.open_verified(path)


def test_a_file_from_before_seals_is_read_with_a_warning(tmp_path, caplog):
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    with caplog.at_level(logging.WARNING, logger="editscale.io.h5"):
        assert h5io.verify(path) is False
    assert "old.h5 carries no seal" in caplog.text
    h5io.finish_sealed(path)  # a partial begun before seals gets room for one when finished
    assert h5io.verify(path) is True
    with h5py.File(path, "r") as f:
        assert list(f["x"][()]) == [0, 0, 0]


def test_not_hdf5_at_all_is_refused(tmp_path):
    path = tmp_path / "junk.h5"
    path.write_bytes(b"not an hdf5 file" * 64)
    with pytest.raises(DamagedFileError, match="junk.h5: its seal"):
        h5io.open_verified(path)


def test_a_file_is_verified_once_while_unchanged(tmp_path, monkeypatch):
    path = tmp_path / "a.h5"
    _sealed(path)
    calls = []
    real = h5io._digest_after_block
    monkeypatch.setattr(h5io, "_digest_after_block", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        h5io.open_verified(path).close()
    assert len(calls) == 1
    _sealed(path, n=25)  # rewritten (sealing reads it once): verified again
    h5io.open_verified(path).close()
    assert len(calls) == 3 and calls[-1] == path


def test_metadata_digest_covers_attributes_and_strings_not_growth(tmp_path):
    path = tmp_path / "m.h5"
    with h5io.create(path) as f:
        f.attrs["n_done"] = 0
        f.attrs["seed"] = 5
        g = f.create_group("editor_state")
        g.create_dataset(
            "templates", data=np.array(["{}", "A. {}"], dtype=object), dtype=h5py.string_dtype()
        )
        skip = frozenset({"n_done"})
        d0 = h5io.metadata_digest(f, skip_attrs=skip)
        f.attrs["n_done"] = 3  # a counter that advances
        f.create_dataset("snapshots/0/3", data=np.ones(4))  # growth by objects without attributes
        assert h5io.metadata_digest(f, skip_attrs=skip) == d0
        f.attrs["seed"] = 6
        assert h5io.metadata_digest(f, skip_attrs=skip) != d0
        f.attrs["seed"] = 5
        g["templates"][1] = "B. {}"
        assert h5io.metadata_digest(f, skip_attrs=skip) != d0


def test_problem_reading_finds_a_file_cut_short(tmp_path):
    """A file whose last bytes were never written (a full disk) opens, but cannot be read back
    whole: problem_reading says why."""
    path = tmp_path / "cut.h5"
    with h5io.create(path) as f:
        for i in range(8):
            f.create_dataset(f"d{i}", data=np.arange(200.0) + i, fletcher32=True, chunks=(50,))
    with h5py.File(path, "r") as f:
        assert h5io.problem_reading(f) is None
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)
    path.write_bytes(bytes(data))
    with h5py.File(path, "r") as f:
        assert h5io.problem_reading(f) is not None


def test_open_errors_name_the_file(tmp_path):
    path = tmp_path / "trunc.h5"
    _sealed(path)
    os.truncate(path, 700)
    with pytest.raises(DamagedFileError, match="trunc.h5"):
        h5io.open_h5(path)
