"""Text corpora for key statistics and training: local text files or a ``datasets`` data
set, split into documents (:func:`iter_corpus`), sampled and fingerprinted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator

from editscale.io.provenance import sha256_file

log = logging.getLogger(__name__)

CORPUS_TYPES = ("text_files", "hub")
DOC_SPLITS = ("wikitext_articles", "blank_lines", "lines", "jsonl")

# Known corpus keys per type; others are reported with a warning (likely typos).
_CORPUS_KEYS = {
    "text_files": {"type", "paths", "doc_split"},
    "hub": {
        "type",
        "dataset",
        "name",
        "split",
        "text_field",
        "revision",
        "streaming",
        "data_files",
    },
}

# A top-level WikiText heading: "= Title =" with exactly one '=' on each side.
_WIKITEXT_TITLE = re.compile(r"^= (?!=).*(?<!=) =$")


# --------------------------------------------------------------------------- corpora


def _corpus_type(corpus: dict) -> str:
    if not isinstance(corpus, dict):
        raise ValueError(f"corpus: expected a mapping, got {type(corpus).__name__}")
    kind = corpus.get("type")
    if kind not in CORPUS_TYPES:
        raise ValueError(f"corpus.type: unknown value {kind!r}; allowed: {', '.join(CORPUS_TYPES)}")
    unknown = sorted(set(corpus) - _CORPUS_KEYS[kind])
    if unknown:
        log.warning("corpus of type %s: ignoring unknown keys %s", kind, unknown)
    return kind


def _text_file_paths(corpus: dict, base_dir: str | os.PathLike) -> list[Path]:
    paths = corpus.get("paths")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not isinstance(paths, list) or not paths:
        raise ValueError("corpus.paths: expected a non-empty list of file paths")
    return [Path(base_dir) / p for p in paths]


def _doc_split(corpus: dict) -> str:
    split = corpus.get("doc_split")
    if split not in DOC_SPLITS:
        raise ValueError(
            f"corpus.doc_split: unknown value {split!r}; allowed: {', '.join(DOC_SPLITS)}"
        )
    return split


def _split_documents(lines: Iterable[str], doc_split: str) -> Iterator[str]:
    """Group stripped lines into documents; blank lines are dropped, empty documents skipped."""
    if doc_split == "lines":
        for line in lines:
            if line.strip():
                yield line.strip()
        return
    current: list[str] = []
    for raw in lines:
        line = raw.strip()
        if doc_split == "blank_lines":
            boundary = not line
        else:  # wikitext_articles
            boundary = bool(_WIKITEXT_TITLE.match(line))
        if boundary and current:
            yield "\n".join(current)
            current = []
        if line:
            current.append(line)
    if current:
        yield "\n".join(current)


def _iter_text_files(corpus: dict, base_dir: str | os.PathLike) -> Iterator[str]:
    doc_split = _doc_split(corpus)
    for path in _text_file_paths(corpus, base_dir):
        if doc_split == "jsonl":  # one JSON object per line, its "text" is the document
            yield from read_jsonl_docs(path)
            continue
        with open(path, encoding="utf-8") as f:
            yield from _split_documents(f, doc_split)


def _resolve_data_files(data_files: Any, base_dir: str | os.PathLike) -> Any:
    """Resolve relative local ``data_files`` (str, list or split -> files mapping)
    against base_dir."""

    def one(p: Any) -> Any:
        if isinstance(p, str) and "://" not in p and not os.path.isabs(p):
            return str(Path(base_dir) / p)
        return p

    if isinstance(data_files, dict):
        return {k: _resolve_data_files(v, base_dir) for k, v in data_files.items()}
    if isinstance(data_files, (list, tuple)):
        return [one(p) for p in data_files]
    return one(data_files)


def _hub_dataset(corpus: dict, base_dir: str | os.PathLike):
    """``datasets.load_dataset`` of a hub corpus spec (its text field checked)."""
    import datasets  # heavy import, only when a hub corpus is used

    name = corpus.get("dataset")
    if not isinstance(name, str) or not name:
        raise ValueError(
            "corpus.dataset: expected a data set name (e.g. 'wikimedia/wikipedia' or 'json')"
        )
    text_field = corpus.get("text_field", "text")
    kwargs: dict[str, Any] = {
        "split": corpus.get("split", "train"),
        "streaming": bool(corpus.get("streaming", True)),
    }
    if corpus.get("revision") is not None:
        kwargs["revision"] = corpus["revision"]
    elif "data_files" not in corpus:
        log.warning("hub corpus %s has no revision: the data may change between runs", name)
    if corpus.get("data_files") is not None:
        kwargs["data_files"] = _resolve_data_files(corpus["data_files"], base_dir)
    ds = datasets.load_dataset(name, corpus.get("name"), **kwargs)
    columns = getattr(ds, "column_names", None)
    if columns is not None and text_field not in columns:
        raise ValueError(
            f"corpus.text_field: field {text_field!r} not in data set {name!r} (columns: {columns})"
        )
    return ds


def _iter_hub(corpus: dict, base_dir: str | os.PathLike) -> Iterator[str]:
    ds = _hub_dataset(corpus, base_dir)
    name, text_field = corpus.get("dataset"), corpus.get("text_field", "text")
    for i, example in enumerate(ds):
        if text_field not in example:
            raise ValueError(
                f"corpus.text_field: field {text_field!r} not in data set {name!r} "
                f"(example {i} has {sorted(example)})"
            )
        text = example[text_field]
        if text is None:
            continue
        if not isinstance(text, str):
            raise ValueError(
                f"corpus.text_field: field {text_field!r} of data set {name!r} "
                f"is {type(text).__name__} in example {i}, expected a string"
            )
        text = text.strip()
        if text:
            yield text


def iter_corpus(corpus: dict, base_dir: str | os.PathLike = ".") -> Iterator[str]:
    """Yield the documents (stripped, non-empty strings) of a corpus spec, in a fixed order.

    ``type: text_files`` reads ``paths`` (relative to ``base_dir``) in the given order and
    splits each by ``doc_split``: ``wikitext_articles`` (a document starts at a top-level
    heading ``= Title =`` and keeps its sub-headings ``= = X = =``; the heading is the
    document's first line), ``blank_lines`` (paragraphs) or ``lines``. Within a document,
    lines are stripped and blank lines dropped.

    ``type: hub`` calls ``datasets.load_dataset(dataset, name, split=, revision=,
    streaming=, data_files=)`` (the last only when given, relative paths resolved against
    ``base_dir``, so ``dataset: json`` with local files works offline) and yields
    ``text_field`` (default ``text``).
    """
    kind = _corpus_type(corpus)
    if kind == "text_files":
        return _iter_text_files(corpus, base_dir)
    return _iter_hub(corpus, base_dir)


def sample_corpus(
    corpus: dict, n_docs: int, mode: str = "first", seed: int = 1, base_dir: str | os.PathLike = "."
) -> Iterator[str]:
    """The ``n_docs`` documents statistics are computed from, in a fixed order.

    ``first``: the corpus's first ``n_docs`` documents (:func:`iter_corpus`'s order).
    ``random``: ROME's fixed random subset (``layer_stats`` with ``random_sample=1``): the
    indices ``0..N-1`` of the corpus's N documents shuffled by ``random.Random(seed)`` and the
    first ``n_docs`` of them taken, in that shuffled order (so any prefix is a random subset
    too). It needs the corpus's length: all documents of a ``text_files`` corpus, a hub data set
    loaded with ``streaming: false``. A hub document whose text is empty is skipped (its index
    still counts, as in ROME).
    """
    if mode == "first":
        yield from islice(iter_corpus(corpus, base_dir), n_docs)
        return
    if mode != "random":
        raise ValueError(f"stats.sample: expected 'first' or 'random', got {mode!r}")
    if _corpus_type(corpus) == "text_files":
        docs: Any = list(iter_corpus(corpus, base_dir))
        text_of = lambda d: d  # noqa: E731
    else:
        if corpus.get("streaming", True):
            raise ValueError(
                "stats.sample: 'random' needs the corpus's length; set streaming: false "
                f"for hub corpus {corpus.get('dataset')!r}"
            )
        docs = _hub_dataset(corpus, base_dir)
        field = corpus.get("text_field", "text")
        text_of = lambda d: (d[field] or "").strip()  # noqa: E731
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    for i in order[:n_docs]:
        text = text_of(docs[i])
        if text:
            yield text


def streamed(corpus: dict) -> dict:
    """``corpus`` read as a stream when it is a hub data set (``streaming: true``; other corpora
    unchanged): for readers of its first documents only, such as the collapse probe (its first
    ``pool_docs``), which then never download or convert a whole dump. The documents and their
    order are the same as without streaming."""
    if _corpus_type(corpus) != "hub" or corpus.get("streaming", True):
        return corpus
    return {**corpus, "streaming": True}


def corpus_fingerprint(corpus: dict, base_dir: str | os.PathLike = ".") -> str:
    """sha256 over the corpus spec and the sha256 of its local files (to tag statistics).

    Local files are ``paths`` of a ``text_files`` corpus and local ``data_files`` of a hub
    corpus. A hub data set without local files is identified by its spec alone (pin
    ``revision`` for a stable fingerprint).
    """
    kind = _corpus_type(corpus)
    files: list[tuple[str, str]] = []
    if kind == "text_files":
        _doc_split(corpus)
        for p in _text_file_paths(corpus, base_dir):
            files.append((p.name, sha256_file(p)))
    elif corpus.get("data_files") is not None:
        resolved = _resolve_data_files(corpus["data_files"], base_dir)
        flat: list[Any] = []
        for v in resolved.values() if isinstance(resolved, dict) else [resolved]:
            flat.extend(v if isinstance(v, (list, tuple)) else [v])
        for p in flat:
            if isinstance(p, str) and Path(p).is_file():
                files.append((Path(p).name, sha256_file(p)))
    payload = json.dumps({"spec": corpus, "files": files}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def read_jsonl_docs(path: str | os.PathLike) -> Iterator[str]:
    """The ``text`` of every line of a JSON-lines corpus, with the line number in any error."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{path}:{lineno}: not a JSON object with a 'text' field ({err})"
                ) from None
            yield doc
