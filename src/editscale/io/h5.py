"""HDF5 files that can be verified: the one owner of how the workflow writes, seals and reads them.

Every HDF5 file the workflow writes (trajectories, evaluation chunks and merged evaluations, key
statistics) is **sealed** when it is finished: HDF5 leaves a user block of :data:`SEAL_BYTES`
bytes before its own data (``userblock_size``), and :func:`seal` writes there the SHA-256 of every
byte after it::

    editscale-h5-seal/1 sha256=<64 hex digits>\\n  followed by zero bytes up to SEAL_BYTES

So a change of any byte of the file -- a dataset's values, an attribute (hyperparameters, seed,
config), a string dataset (ROME's context templates), HDF5's own structures, or the seal itself --
is found by :func:`verify` before a reader uses the file, and refused with a
:class:`DamagedFileError` naming the file. fletcher32 checksums on the numeric datasets (written
by the trajectory store) still find a damaged chunk of a file that is being written, where the
seal is not yet there.

Readers open files with :func:`open_verified`, which verifies a file once per process while its
size, modification time and inode stay the same (a trajectory is opened many times by one
evaluation job). A file written before seals existed (its first bytes are HDF5's signature) is
read with a warning naming it; one whose first bytes are neither is refused.

Unfinished files (a trajectory's ``.partial``) are not sealed while they grow; what the editor is
rebuilt from (attributes and string datasets) is covered there by :func:`metadata_digest`,
checked on resume by the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from editscale.io.files import DamagedFileError, atomic_path, sha256_file

log = logging.getLogger(__name__)

SEAL_BYTES = 512
_SEAL_RE = re.compile(rb"editscale-h5-seal/1 sha256=([0-9a-f]{64})\n")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_CHUNK = 8 << 20


def create(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> h5py.File:
    """A new HDF5 file with room for the seal (a user block of :data:`SEAL_BYTES` bytes)."""
    return h5py.File(path, mode, userblock_size=SEAL_BYTES, **kwargs)


@contextlib.contextmanager
def write_sealed(path: str | os.PathLike) -> Iterator[h5py.File]:
    """Write a finished HDF5 file: yield it open for writing at a temporary path beside ``path``;
    when the block ends, close, seal and rename it onto ``path`` (removed when the block raises)."""
    with atomic_path(path) as tmp:
        with create(tmp) as f:
            yield f
        seal(tmp)


def _digest_after_block(path: Path) -> str:
    return sha256_file(path, _CHUNK, start=SEAL_BYTES)


def _seal_block(digest: str) -> bytes:
    text = b"editscale-h5-seal/1 sha256=" + digest.encode() + b"\n"
    return text + b"\0" * (SEAL_BYTES - len(text))


def seal(path: str | os.PathLike) -> None:
    """Write the SHA-256 of the bytes after the user block into the user block of the closed file
    ``path`` (made by :func:`create`). Call it when the file is complete: any later change breaks
    the seal."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(len(_HDF5_SIGNATURE))
    if head == _HDF5_SIGNATURE:
        raise ValueError(f"{path} has no user block to seal (not made by editscale.io.h5.create)")
    block = _seal_block(_digest_after_block(path))
    with open(path, "r+b") as fh:
        fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())


def has_user_block(path: str | os.PathLike) -> bool:
    """Whether ``path`` was made with room for a seal (False: a file from before seals)."""
    with open(path, "rb") as fh:
        return fh.read(len(_HDF5_SIGNATURE)) != _HDF5_SIGNATURE


def verify(path: str | os.PathLike, *, locate: bool = True) -> bool:
    """Check ``path`` against its seal: True when it matches, False (with a warning) for an
    unsealed file from before seals; :class:`DamagedFileError` naming the file otherwise (and,
    with ``locate``, the damaged dataset, as far as HDF5 can tell)."""
    path = Path(path)
    with open(path, "rb") as fh:
        block = fh.read(SEAL_BYTES)
    if block[: len(_HDF5_SIGNATURE)] == _HDF5_SIGNATURE:
        log.warning("%s carries no seal (written before seals existed): not verified", path)
        return False
    match = _SEAL_RE.match(block)
    if match is None or block != _seal_block(match.group(1).decode()):
        raise DamagedFileError(
            f"{path}: its seal (the first {SEAL_BYTES} bytes) is damaged or missing, so the file "
            "cannot be verified: delete it and rerun the job that makes it (snakemake "
            "--forcerun <rule>, or just snakemake once it is gone)"
        )
    found = _digest_after_block(path)
    if found != match.group(1).decode():
        raise DamagedFileError(
            f"{path}: its bytes are not those written (sha256 {found[:16]}... != sealed "
            f"{match.group(1).decode()[:16]}...{'; ' + _locate_damage(path) if locate else ''}): "
            "the file is damaged; "
            "delete it and rerun the job that makes it (snakemake recreates a missing file)"
        )
    return True


def problem_reading(f: h5py.File) -> str | None:
    """Why the open file ``f`` cannot be read back whole (a structure pointing past its end, a
    dataset whose checksum fails), or None: every object visited, every dataset read in full."""
    datasets: list[h5py.Dataset] = []
    try:
        f.visititems(lambda _, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
        for ds in datasets:
            read_dataset(ds)
    except DamagedFileError as err:
        return str(err)
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        return f"HDF5 cannot read its structure ({type(err).__name__}: {err})"
    return None


def readable_problem(path: str | os.PathLike, timeout_s: float = 600.0) -> str | None:
    """Why HDF5 cannot read the file ``path`` back whole (see :func:`problem_reading`), or None.

    Asked of a separate Python process with a memory limit and a timeout: on a damaged file HDF5
    can crash, ask for terabytes or loop, and the job that asks must survive to report it."""
    cmd = [sys.executable, "-m", "editscale.io.h5", os.fspath(path)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, preexec_fn=_limit_memory
        )
    except subprocess.TimeoutExpired:
        return f"HDF5 did not finish reading it within {timeout_s:.0f} s"
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return f"HDF5 failed reading it (exit status {proc.returncode}: {tail})"
    answer = json.loads(proc.stdout)
    if answer.get("locked"):
        raise BlockingIOError(f"{path} is open in another process: {answer['problem']}")
    return answer["problem"]


def _limit_memory() -> None:  # pragma: no cover - runs in the child process
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (_CHILD_MEMORY, _CHILD_MEMORY))
    except (ImportError, ValueError, OSError):
        pass


_CHILD_MEMORY = 16 << 30


def _locate_damage(path: Path) -> str:
    """Where a damaged file fails, as far as HDF5 can tell: the first dataset that cannot be read
    back (its checksum), or that the damage is elsewhere (an attribute, HDF5's own structures)."""
    problem = readable_problem(path, timeout_s=120.0)
    if problem is None:
        return "every dataset reads back, so the change is in an attribute or HDF5's own structures"
    match = re.search(r"dataset (\S+) cannot be read back", problem)
    return f"dataset {match.group(1)} fails its checksum" if match else problem


def _main(argv: list[str]) -> int:  # pragma: no cover - the child of readable_problem
    path, locked = argv[0], False
    try:
        with h5py.File(path, "r") as f:
            problem = problem_reading(f)
    except BlockingIOError as err:
        problem, locked = str(err), True
    except OSError as err:
        problem = f"HDF5 cannot open it ({err})"
    print(json.dumps({"problem": problem, "locked": locked}))
    return 0


def make_sealable(path: str | os.PathLike) -> None:
    """Rewrite the closed HDF5 file ``path`` (begun before seals existed, without a user block)
    into one with room for the seal: every object and attribute copied as it is."""
    with atomic_path(path, suffix=".sealable") as tmp:
        with open_h5(path, "r") as src, create(tmp) as dst:
            for k, v in src.attrs.items():
                dst.attrs[k] = v
            for name in src:
                src.copy(src[name], dst, name=name)


def finish_sealed(path: str | os.PathLike) -> None:
    """Seal the closed, complete file ``path``, first giving it room for the seal when it was
    begun before seals existed."""
    if not has_user_block(path):
        make_sealable(path)
    seal(path)


class _VerifiedFiles:
    """The files verified in this process, keyed by what changes when a file is rewritten."""

    def __init__(self, limit: int = 256):
        self._seen: dict[tuple, None] = {}
        self._limit = limit

    @staticmethod
    def _key(path: Path) -> tuple:
        st = path.stat()
        return (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)

    def check(self, path: Path) -> None:
        key = self._key(path)
        if key in self._seen:
            return
        verify(path)
        if len(self._seen) >= self._limit:
            self._seen.pop(next(iter(self._seen)))
        self._seen[key] = None


_VERIFIED = _VerifiedFiles()


def open_verified(path: str | os.PathLike) -> h5py.File:
    """``path`` verified against its seal (:func:`verify`) and opened read-only; an error HDF5
    raises while opening it names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    _VERIFIED.check(path)
    return open_h5(path, "r")


def open_h5(path: str | os.PathLike, mode: str = "r") -> h5py.File:
    """``h5py.File(path, mode)``, with an error that names the file when HDF5 cannot open it
    (a file locked by another process stays a ``BlockingIOError``)."""
    try:
        return h5py.File(path, mode)
    except (BlockingIOError, FileNotFoundError, PermissionError):
        raise
    except OSError as err:
        raise DamagedFileError(
            f"{path}: HDF5 cannot open it ({err}); the file is damaged or not HDF5: delete it "
            "and rerun the job that makes it"
        ) from err


def read_dataset(ds: h5py.Dataset, sel: Any = ()) -> np.ndarray:
    """``ds[sel]``; a failed read raises :class:`DamagedFileError` naming the file and dataset,
    where h5py's error (``filter returned failure during read`` for a fletcher32 mismatch) names
    neither."""
    try:
        return ds[sel]
    except OSError as err:
        why = (
            "it carries a fletcher32 checksum, so its bytes on disk are most likely not those "
            "written"
            if ds.fletcher32
            else "HDF5 cannot decode it"
        )
        raise DamagedFileError(
            f"{ds.file.filename}: dataset {ds.name} cannot be read back ({err}); {why}: "
            "the file is damaged, recompute it"
        ) from err


def _canonical(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, np.ndarray):
        return [_canonical(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def metadata_digest(f: h5py.File, *, skip_attrs: frozenset[str] = frozenset()) -> str:
    """SHA-256 of what the file says about itself: the attributes of every group and dataset
    (except ``skip_attrs`` of the root, e.g. counters that advance as the file grows) and the
    contents of its string datasets. Numeric datasets are left to their checksums; objects
    without attributes are not listed, so that a file may grow by them."""
    items: list[Any] = []

    def attrs_of(name: str, obj: h5py.HLObject) -> None:
        attrs = {
            k: _canonical(v) for k, v in obj.attrs.items() if not (name == "/" and k in skip_attrs)
        }
        if attrs or name == "/":  # objects without attributes may come and go as a file grows
            items.append([name, sorted(attrs.items())])
        if isinstance(obj, h5py.Dataset) and h5py.check_string_dtype(obj.dtype) is not None:
            items.append([name, _canonical(read_dataset(obj))])

    attrs_of("/", f)
    f.visititems(lambda name, obj: attrs_of(name, obj))
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
