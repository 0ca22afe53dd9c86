"""Downloads with a checksum, and relative links to files kept in place."""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from pathlib import Path

from editscale.io.files import atomic_path
from editscale.io.provenance import sha256_file

log = logging.getLogger(__name__)

_DOWNLOAD_CHUNK = 1 << 20


# --------------------------------------------------------------------------- downloads


def link_relative(src: str | os.PathLike, link: str | os.PathLike) -> Path:
    """Make ``link`` a symlink to ``src`` by a relative path (from the link's resolved folder),
    replacing any file or link there, so a copied or moved project that keeps both in place reads
    its own copy rather than the original checkout's. Returns the link's target as written."""
    src, link = Path(src).resolve(), Path(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    target = Path(os.path.relpath(src, link.parent.resolve()))
    link.unlink(missing_ok=True)
    os.symlink(target, link)
    return target


def download_file(url: str, dest: str | os.PathLike, sha256: str | None = None) -> str:
    """Download ``url`` (http, https or file) to ``dest`` and return the file's sha256.

    Streams into ``dest + '.part'``, checks ``sha256`` when given (the ``.part`` file is
    removed on a mismatch, and ``dest`` is never created) and then renames. When ``dest``
    already exists with the expected hash nothing is downloaded.
    """
    dest = Path(dest)
    expected = sha256.lower() if sha256 else None
    if expected and dest.exists():
        have = sha256_file(dest)
        if have == expected:
            log.info("%s already present with the expected sha256", dest)
            return have
        log.warning(
            "%s exists with sha256 %s, expected %s: downloading again", dest, have, expected
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    log.info("downloading %s -> %s", url, dest)
    request = urllib.request.Request(url, headers={"User-Agent": "editscale"})
    with atomic_path(dest, suffix=".part") as part:  # removed when the download or check fails
        with urllib.request.urlopen(request, timeout=60) as response, open(part, "wb") as out:
            while block := response.read(_DOWNLOAD_CHUNK):
                h.update(block)
                out.write(block)
        actual = h.hexdigest()
        if expected and actual != expected:
            raise ValueError(f"sha256 mismatch for {url}: expected {expected}, got {actual}")
    return actual
