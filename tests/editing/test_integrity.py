"""A trajectory file's integrity: its seal (finished), its metadata digest (hyperparameters, seed,
config, context templates), hparams that agree with its config, a damaged partial moved aside
before a resume, and HDF5 errors while writing that name the file."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import h5py
import pytest

from editscale.editing import store
from editscale.editing.store import CorruptDataError, StoreError, read_editor_setup
from editscale.io.h5 import DamagedFileError, seal
from tests.editing.test_runner import HPARAMS, _matches_finished, run

CONFIG = {"methods": {"rome": {"hparams": HPARAMS}}}


@pytest.fixture(scope="module")
def finished(traj_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("integrity") / "sample0.h5"
    run(traj_inputs, out, config=CONFIG)
    return out


def _rewrite(path: Path, change, *, restamp: bool = False, reseal: bool = False) -> None:
    """Change the file with h5py (``change(f)``), keep its modification time; ``restamp``: as if
    the writer had made it so (new metadata digest); ``reseal``: and sealed it so."""
    st = path.stat()
    with h5py.File(path, "r+") as f:
        change(f)
        if restamp:
            store._stamp_metadata(f)
    if reseal:
        seal(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _template(f: h5py.File) -> None:
    ds = f["editor_state/context_templates"]
    first = ds[1].decode()
    ds[1] = first.replace(first[0], "Q" if first[0] != "Q" else "R", 1)


def _v_lr(f: h5py.File) -> None:
    f.attrs["hparams"] = json.dumps({**json.loads(f.attrs["hparams"]), "v_lr": 0.9})


def test_the_editor_setup_reads_back_from_a_finished_file(finished):
    setup = read_editor_setup(finished)
    assert setup["hparams"] == HPARAMS and setup["seed"] == 5 and setup["state"]


def _seed(f: h5py.File) -> None:
    f.attrs["seed"] = int(f.attrs["seed"]) + 1


def _config(f: h5py.File) -> None:
    cfg = json.loads(f.attrs["config"])
    cfg["methods"]["rome"]["hparams"]["layer"] = 0
    f.attrs["config"] = json.dumps(cfg)


METADATA = pytest.mark.parametrize(
    "change",
    [_template, _v_lr, _seed, _config],
    ids=["context_template", "hparams", "seed", "config"],
)


@METADATA
def test_changed_metadata_of_a_finished_file_is_refused_by_its_seal(finished, tmp_path, change):
    path = tmp_path / "t.h5"
    shutil.copy(finished, path)
    _rewrite(path, change)
    with pytest.raises(DamagedFileError, match=r"t.h5: its bytes are not those written"):
        read_editor_setup(path)


@METADATA
def test_changed_metadata_is_refused_by_its_digest_even_when_resealed(finished, tmp_path, change):
    path = tmp_path / "t.h5"
    shutil.copy(finished, path)
    _rewrite(path, change, reseal=True)
    with pytest.raises(CorruptDataError, match=r"t.h5: its metadata .* are not those written"):
        read_editor_setup(path)


def test_hparams_that_disagree_with_the_files_config_are_refused(finished, tmp_path):
    """Even written consistently (digest and seal renewed), hparams that are not what the file's
    own config gives the method are refused, naming the differing key."""
    path = tmp_path / "t.h5"
    shutil.copy(finished, path)
    _rewrite(path, _v_lr, restamp=True, reseal=True)
    with pytest.raises(CorruptDataError, match=r"t.h5: its hparams attribute disagrees.*v_lr"):
        read_editor_setup(path)


def _as_partial(finished: Path, tmp_path: Path, n_done: int) -> tuple[Path, Path]:
    out = tmp_path / "r.h5"
    part = Path(str(out) + ".partial")
    shutil.copy(finished, part)
    with h5py.File(part, "r+") as f:
        f.attrs["n_done"] = n_done
        f.attrs["complete"] = False
    return out, part


def test_a_partial_cut_short_by_a_full_disk_is_moved_aside(traj_inputs, finished, tmp_path, caplog):
    """The last part of the file never written (zeros): it still opens with its edits committed,
    and resuming it would crash in HDF5 naming no file. It is read back first, found damaged,
    moved aside with a warning naming it, and the run starts afresh to the same result."""
    out, part = _as_partial(finished, tmp_path, n_done=3)
    data = bytearray(part.read_bytes())
    cut = int(len(data) * 0.6)
    data[cut:] = bytes(len(data) - cut)
    part.write_bytes(bytes(data))
    with h5py.File(part, "r") as f:  # opens, as after the probe's ENOSPC
        assert int(f.attrs["n_done"]) == 3
    with caplog.at_level(logging.WARNING, logger="editscale.editing.store"):
        run(traj_inputs, out, config=CONFIG)
    _matches_finished(finished, out)
    aside = list(tmp_path.glob("r.h5.partial.unreadable-*"))
    assert len(aside) == 1 and f"cannot resume the unfinished file {part}" in caplog.text


def test_a_partial_with_a_changed_template_is_moved_aside(traj_inputs, finished, tmp_path, caplog):
    out, part = _as_partial(finished, tmp_path, n_done=3)
    _rewrite(part, _template)
    with caplog.at_level(logging.WARNING, logger="editscale.editing.store"):
        run(traj_inputs, out, config=CONFIG)
    _matches_finished(finished, out)
    assert list(tmp_path.glob("r.h5.partial.damaged-*"))
    assert "metadata" in caplog.text and str(part) in caplog.text


def test_a_partial_whose_offsets_do_not_fit_is_not_resumed(finished, tmp_path):
    _, part = _as_partial(finished, tmp_path, n_done=3)
    with h5py.File(part, "r+") as f:
        assert store.partial_problem(f) is None
        f.attrs["n_done"] = 99
        assert "outside 0..6" in store.partial_problem(f)


def test_an_hdf5_error_while_writing_names_the_file(traj_inputs, tmp_path, monkeypatch):
    def full_disk(self, t, *a, **kw):
        raise RuntimeError("Unable to synchronously check link existence (addr overflow)")

    monkeypatch.setattr(store.TrajectoryWriter, "_write_step", full_disk)
    out = tmp_path / "w.h5"
    with pytest.raises(StoreError, match=rf"{out}.partial: writing edits from 1 on failed"):
        run(traj_inputs, out, config=CONFIG)
