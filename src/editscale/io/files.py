"""Atomic file writes: a temporary file in the same folder, then a rename.

A reader (or a rerun after a crash) sees either the old file or the whole new one, never half a
file. Every writer of the package goes through these helpers:

* :func:`atomic_path` -- a context manager yielding the temporary path ``<name><suffix>`` beside
  the target, for writers that take a path (HDF5, ``torch.save``); renamed onto the target when
  the block ends, removed when it raises.
* :func:`atomic_open` -- the same, yielding an open file object (CSV writers, streamed downloads).
* :func:`atomic_write_text`, :func:`atomic_write_json`, :func:`atomic_save` -- one call.

The file gets the mode ``open`` gives (0666 less the umask), as a plain write would, unless a
fixed ``mode`` is asked of :func:`atomic_write_text`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield ``<path><suffix>`` to write; rename it onto ``path`` when the block ends without an
    error, remove it when the block raises (``path`` is then left as it was)."""
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(
    path: str | os.PathLike,
    mode: str = "w",
    *,
    suffix: str = ".tmp",
    sealed: bool = False,
    **open_kwargs: Any,
) -> Iterator[IO]:
    """Yield a file opened (``open(tmp, mode, **open_kwargs)``) on ``<path><suffix>``, closed and
    renamed onto ``path`` when the block ends; removed when the block raises. ``sealed``: then
    write its seal (:func:`seal_file`)."""
    with atomic_path(path, suffix=suffix) as tmp, open(tmp, mode, **open_kwargs) as fh:
        yield fh
    if sealed:
        seal_file(path)


# -- seals of text results ---------------------------------------------------------------------
# A result file another job reads (per-edit metrics CSV, tidy evaluation CSVs, the disabling
# analysis) gets a sidecar ``<file>.sha256`` in ``sha256sum`` format (``sha256sum -c`` checks it
# by hand); readers open it with open_sealed, which refuses a file whose bytes changed. (HDF5
# results carry their seal inside: editscale.io.h5.)
SEAL_SUFFIX = ".sha256"


class DamagedFileError(RuntimeError):
    """A file's bytes are not those written, or it cannot be read back: the message names the
    file (and the dataset, where one failed) and what to do."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20, start: int = 0) -> str:
    """Hex sha256 of a file's bytes from offset ``start`` on, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def seal_path(path: str | os.PathLike) -> Path:
    """The sidecar holding the seal of text result ``path``."""
    return Path(str(path) + SEAL_SUFFIX)


def seal_file(path: str | os.PathLike) -> None:
    """Write the seal of the finished file ``path``: ``<sha256>  <name>`` in its sidecar."""
    path = Path(path)
    atomic_write_text(seal_path(path), f"{sha256_file(path)}  {path.name}\n")


def verify_sealed(path: str | os.PathLike) -> bool:
    """Check ``path`` against its sidecar seal: True when it matches, False (with a warning) when
    it has none (written before seals); :class:`DamagedFileError` naming the file otherwise."""
    path, side = Path(path), seal_path(path)
    if not side.is_file():
        log.warning("%s has no seal (%s; written before seals existed): not verified", path, side)
        return False
    fields = side.read_text(encoding="utf-8", errors="replace").split()
    if len(fields) != 2 or fields[1] != path.name or len(fields[0]) != 64:
        raise DamagedFileError(
            f"{path}: its seal {side} is damaged: delete both and rerun the job that makes them"
        )
    if sha256_file(path) != fields[0]:
        raise DamagedFileError(
            f"{path}: its bytes are not those written (sha256 differs from {side}): the file is "
            "damaged or was edited; delete it and rerun the job that makes it"
        )
    return True


def open_sealed(path: str | os.PathLike, **open_kwargs: Any) -> IO:
    """``open(path, "r", **open_kwargs)`` after :func:`verify_sealed`."""
    verify_sealed(path)
    return open(path, "r", **open_kwargs)


def read_sealed_json(path: str | os.PathLike) -> Any:
    """The JSON document of a sealed file (:func:`verify_sealed`), a parse error naming it."""
    with open_sealed(path, encoding="utf-8") as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as err:
            raise DamagedFileError(f"{path}: not valid JSON ({err})") from err


def atomic_write_text(
    path: str | os.PathLike, text: str, *, encoding: str = "utf-8", mode: int | None = None
) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename.

    ``mode``: a fixed permission for the file (e.g. 0o644 for results meant to be shared); it is
    then written through a uniquely named temporary file (``mkstemp``, so that two writers never
    share one) flushed to disk before the rename. ``None``: the umask's mode, as ``open`` gives.
    """
    path = Path(path)
    if mode is None:
        with atomic_open(path, "w", encoding=encoding) as fh:
            fh.write(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding=encoding) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(
    path: str | os.PathLike, obj: Any, *, end: str = "", sealed: bool = False, **dumps_kwargs: Any
) -> None:
    """Write ``json.dumps(obj, **dumps_kwargs) + end`` to ``path`` atomically (UTF-8);
    ``sealed``: with its seal (:func:`seal_file`)."""
    atomic_write_text(path, json.dumps(obj, **dumps_kwargs) + end)
    if sealed:
        seal_file(path)


def atomic_save(save: Callable[[Any, Path], None], obj: Any, path: str | os.PathLike) -> None:
    """``save(obj, tmp)`` (e.g. ``torch.save``) into a temporary file, then renamed to ``path``:
    torch-free here, so that the modules of the torch-free rules can import this one."""
    with atomic_path(path) as tmp:
        save(obj, tmp)
