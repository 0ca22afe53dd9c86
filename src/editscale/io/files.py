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

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


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
    path: str | os.PathLike, mode: str = "w", *, suffix: str = ".tmp", **open_kwargs: Any
) -> Iterator[IO]:
    """Yield a file opened (``open(tmp, mode, **open_kwargs)``) on ``<path><suffix>``, closed and
    renamed onto ``path`` when the block ends; removed when the block raises."""
    with atomic_path(path, suffix=suffix) as tmp, open(tmp, mode, **open_kwargs) as fh:
        yield fh


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
    path: str | os.PathLike, obj: Any, *, end: str = "", **dumps_kwargs: Any
) -> None:
    """Write ``json.dumps(obj, **dumps_kwargs) + end`` to ``path`` atomically (UTF-8)."""
    atomic_write_text(path, json.dumps(obj, **dumps_kwargs) + end)


def atomic_save(save: Callable[[Any, Path], None], obj: Any, path: str | os.PathLike) -> None:
    """``save(obj, tmp)`` (e.g. ``torch.save``) into a temporary file, then renamed to ``path``:
    torch-free here, so that the modules of the torch-free rules can import this one."""
    with atomic_path(path) as tmp:
        save(obj, tmp)
