"""CounterFact loading and validation, edit orderings, downloads and text corpora.

CounterFact records follow the ROME schema (kmeng01/rome ``counterfact.json``)::

    {"case_id": int, "pararel_idx": int,
     "requested_rewrite": {"prompt": "{} is located in", "subject": str, "relation_id": str,
                           "target_new": {"str": str, "id": str},
                           "target_true": {"str": str, "id": str}},
     "paraphrase_prompts": [str], "neighborhood_prompts": [str],
     "attribute_prompts": [str], "generation_prompts": [str]}

Every field the experiment reads is required; ``pararel_idx``, ``relation_id``, the target
``id``s, ``attribute_prompts`` and ``generation_prompts`` are optional but type-checked
when present. Errors are :class:`RecordError` and name the file, the record
(``case_id`` and index) and the dotted field path.

Orderings reproduce the authors' sampling: ``random.seed(37)`` and then the SAME list is
shuffled in place n times in a row, sample n being the state after the (n+1)-th shuffle.
The shuffles are therefore cumulative (sample 1 is a shuffle of sample 0's order, not of
the file order). Here a local ``random.Random(seed)`` replaces the global RNG; it yields the
same permutations as ``random.seed(seed); random.shuffle(...)``. The list shuffled is the
ascending list of every usable case id; records reserved for training an editor are dropped from
the shuffled list afterwards (:func:`ordering_sample`), so sample n is the authors' sample n less
those records.

Corpora (for covariance statistics) are dicts from the YAML config, either local text files
(``type: text_files``) or a ``datasets`` data set (``type: hub``); see :func:`iter_corpus`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import tempfile
import urllib.request
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator

from editscale.provenance import sha256_file

__all__ = [
    "RecordError",
    "validate_record",
    "load_counterfact",
    "unique_subject_records",
    "make_orderings",
    "write_ordering",
    "read_ordering",
    "records_by_case_id",
    "download_file",
    "link_relative",
    "sha256_file",
    "iter_corpus",
    "corpus_fingerprint",
    "CORPUS_TYPES",
    "DOC_SPLITS",
]

log = logging.getLogger(__name__)

CORPUS_TYPES = ("text_files", "hub")
DOC_SPLITS = ("wikitext_articles", "blank_lines", "lines", "jsonl")

# Known corpus keys per type; others are reported with a warning (likely typos).
_CORPUS_KEYS = {
    "text_files": {"type", "paths", "doc_split"},
    "hub": {"type", "dataset", "name", "split", "text_field", "revision", "streaming", "data_files"},
}

# A top-level WikiText heading: "= Title =" with exactly one '=' on each side.
_WIKITEXT_TITLE = re.compile(r"^= (?!=).*(?<!=) =$")

_DOWNLOAD_CHUNK = 1 << 20


class RecordError(ValueError):
    """A CounterFact record (or file) that does not follow the ROME schema."""


# --------------------------------------------------------------------------- CounterFact


def _where(record: Any, index: int, source: str) -> str:
    case_id = record.get("case_id") if isinstance(record, dict) else None
    if isinstance(case_id, int) and not isinstance(case_id, bool):
        return f"{source}: record {index} (case_id {case_id})"
    return f"{source}: record {index}"


def _fail(record: Any, index: int, source: str, field: str, problem: str) -> RecordError:
    return RecordError(f"{_where(record, index, source)}: field '{field}': {problem}")


def _type_name(value: Any) -> str:
    return type(value).__name__


def _get(record: dict, index: int, source: str, container: Any, key: str, path: str,
         required: bool = True) -> Any:
    if not isinstance(container, dict):
        raise _fail(record, index, source, path.rsplit(".", 1)[0],
                    f"expected an object, got {_type_name(container)}")
    if key not in container:
        if required:
            raise _fail(record, index, source, path, "missing")
        return None
    return container[key]


def _check_str(record: dict, index: int, source: str, value: Any, path: str,
               non_empty: bool = True) -> None:
    if not isinstance(value, str):
        raise _fail(record, index, source, path, f"expected a string, got {_type_name(value)} {value!r}")
    if non_empty and not value.strip():
        raise _fail(record, index, source, path, "empty string")


def _check_int(record: dict, index: int, source: str, value: Any, path: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(record, index, source, path, f"expected an integer, got {_type_name(value)} {value!r}")


def _check_str_list(record: dict, index: int, source: str, value: Any, path: str) -> None:
    if not isinstance(value, list):
        raise _fail(record, index, source, path, f"expected a list of strings, got {_type_name(value)}")
    for i, item in enumerate(value):
        _check_str(record, index, source, item, f"{path}[{i}]")


def validate_record(record: dict, index: int, source: str = "<memory>") -> None:
    """Raise :class:`RecordError` unless ``record`` follows the ROME CounterFact schema.

    ``index`` is the record's position in its file and ``source`` the file name; both go
    into the message, with the ``case_id`` and the dotted path of the offending field.
    """
    if not isinstance(record, dict):
        raise RecordError(f"{source}: record {index}: expected an object, got {_type_name(record)}")
    _check_int(record, index, source, _get(record, index, source, record, "case_id", "case_id"), "case_id")
    if "pararel_idx" in record:
        _check_int(record, index, source, record["pararel_idx"], "pararel_idx")

    rw = _get(record, index, source, record, "requested_rewrite", "requested_rewrite")
    if not isinstance(rw, dict):
        raise _fail(record, index, source, "requested_rewrite", f"expected an object, got {_type_name(rw)}")
    prompt = _get(record, index, source, rw, "prompt", "requested_rewrite.prompt")
    _check_str(record, index, source, prompt, "requested_rewrite.prompt")
    n_slots = prompt.count("{}")
    if n_slots != 1:
        raise _fail(record, index, source, "requested_rewrite.prompt",
                    f"must contain exactly one '{{}}' subject slot, found {n_slots} in {prompt!r}")
    subject = _get(record, index, source, rw, "subject", "requested_rewrite.subject")
    _check_str(record, index, source, subject, "requested_rewrite.subject")
    relation = _get(record, index, source, rw, "relation_id", "requested_rewrite.relation_id", required=False)
    if relation is not None:
        _check_str(record, index, source, relation, "requested_rewrite.relation_id")
    for target in ("target_new", "target_true"):
        base = f"requested_rewrite.{target}"
        tgt = _get(record, index, source, rw, target, base)
        if not isinstance(tgt, dict):
            raise _fail(record, index, source, base, f"expected an object, got {_type_name(tgt)}")
        _check_str(record, index, source, _get(record, index, source, tgt, "str", f"{base}.str"), f"{base}.str")
        if "id" in tgt:
            _check_str(record, index, source, tgt["id"], f"{base}.id")
    if rw["target_new"]["str"] == rw["target_true"]["str"]:
        raise _fail(record, index, source, "requested_rewrite.target_new.str",
                    f"equals requested_rewrite.target_true.str ({rw['target_true']['str']!r}): "
                    f"the edit would change nothing")

    for field in ("paraphrase_prompts", "neighborhood_prompts"):
        _check_str_list(record, index, source, _get(record, index, source, record, field, field), field)
    for field in ("attribute_prompts", "generation_prompts"):
        if field in record:
            _check_str_list(record, index, source, record[field], field)


def load_counterfact(path: str | os.PathLike) -> list[dict]:
    """Read a CounterFact JSON list and validate every record (the first error is raised).

    Also rejects duplicate ``case_id``s and an empty list. Raises :class:`RecordError` (a
    ``ValueError``) for schema problems, for a file that is not UTF-8 (with byte offset and line)
    and for a file that is not valid JSON (with line and column).
    """
    path = Path(path)
    source = str(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise RecordError(f"{source}: not UTF-8 text: byte {raw[exc.start:exc.start + 1]!r} at byte offset "
                          f"{exc.start} (line {line}): {exc.reason}") from exc
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{source}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc
    if not isinstance(records, list):
        raise RecordError(f"{source}: expected a JSON list of records, got {_type_name(records)}")
    if not records:
        raise RecordError(f"{source}: the CounterFact list is empty (no records)")
    first_index: dict[int, int] = {}
    for i, rec in enumerate(records):
        validate_record(rec, i, source)
        cid = rec["case_id"]
        if cid in first_index:
            raise _fail(rec, i, source, "case_id",
                        f"duplicate case_id {cid} (first seen at record {first_index[cid]})")
        first_index[cid] = i
    log.info("loaded %d CounterFact records from %s", len(records), source)
    return records


def subject_prompt(record: dict) -> tuple[str, int]:
    """A record's rewrite prompt with its subject filled in, and the end of the subject in it
    (the character index after the subject's last character, as ROME's lookup takes it)."""
    rw = record["requested_rewrite"]
    pre, _, post = rw["prompt"].partition("{}")
    return pre + rw["subject"] + post, len(pre) + len(rw["subject"])


def unique_subject_records(records: list[dict]) -> list[dict]:
    """Keep the first record of every unique lower-cased subject, in file order.

    On the full CounterFact file this keeps 20,391 of 21,919 records (the paper's count).
    """
    seen: set[str] = set()
    kept: list[dict] = []
    for rec in records:
        key = rec["requested_rewrite"]["subject"].lower()
        if key not in seen:
            seen.add(key)
            kept.append(rec)
    log.info("unique subjects: kept %d of %d records", len(kept), len(records))
    return kept


def records_by_case_id(records: list[dict]) -> dict[int, dict]:
    """Index records by ``case_id``; a duplicate ``case_id`` raises ``ValueError``."""
    index: dict[int, dict] = {}
    for rec in records:
        cid = rec["case_id"]
        if cid in index:
            raise ValueError(f"duplicate case_id {cid}")
        index[cid] = rec
    return index


# --------------------------------------------------------------------------- orderings


def make_orderings(case_ids: list[int], n_samples: int, seed: int) -> list[list[int]]:
    """Edit orderings as the authors drew them: ``n_samples`` CUMULATIVE shuffles.

    The authors called ``random.seed(37)`` once and then shuffled the same list in place
    ``n`` times in a row; sample ``n`` (0-based) is the list after shuffle ``n + 1``, so
    sample 1 is a shuffle of sample 0's order, not of the input order. A local
    ``random.Random(seed)`` gives the same permutations without touching the global RNG.
    """
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    rng = random.Random(seed)
    order = list(case_ids)
    samples: list[list[int]] = []
    for _ in range(n_samples):
        rng.shuffle(order)
        samples.append(list(order))
    return samples


def ordering_sample(case_ids: Iterable[int], sample: int, seed: int,
                    exclude: Iterable[int] = ()) -> list[int]:
    """Sample ``sample`` (0-based) of the authors' orderings, with ``exclude`` dropped afterwards.

    The shuffles run on the ascending list of ALL ``case_ids`` (the authors' list of unique-subject
    record indices, which are the case ids in the public file), exactly as
    :func:`make_orderings`; only then are the ``exclude``d ids (records reserved for training an
    editor) removed, so every other record keeps its position relative to the others and the
    trajectory edits the authors' sample n minus the reserved records. Removing them before
    shuffling would give different permutations altogether.
    """
    if sample < 0:
        raise ValueError(f"sample must be >= 0, got {sample}")
    order = make_orderings(sorted(case_ids), sample + 1, seed)[sample]
    drop = set(exclude)
    return [c for c in order if c not in drop] if drop else order


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_ordering(path: str | os.PathLike, case_ids: list[int], **meta: Any) -> None:
    """Write ``{"case_ids": [...], **meta}`` as JSON, atomically (temp file, then rename)."""
    ids = [int(c) for c in case_ids]
    _atomic_write_text(Path(path), json.dumps({"case_ids": ids, **meta}, indent=1) + "\n")


def read_ordering(path: str | os.PathLike) -> list[int]:
    """Read the ``case_ids`` list written by :func:`write_ordering`."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc
    ids = data.get("case_ids") if isinstance(data, dict) else None
    if not isinstance(ids, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in ids):
        raise ValueError(f"{path}: expected an object with 'case_ids': a list of integers")
    return ids


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
        log.warning("%s exists with sha256 %s, expected %s: downloading again", dest, have, expected)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    log.info("downloading %s -> %s", url, dest)
    request = urllib.request.Request(url, headers={"User-Agent": "editscale"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response, open(part, "wb") as out:
            while block := response.read(_DOWNLOAD_CHUNK):
                h.update(block)
                out.write(block)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    actual = h.hexdigest()
    if expected and actual != expected:
        part.unlink(missing_ok=True)
        raise ValueError(f"sha256 mismatch for {url}: expected {expected}, got {actual}")
    os.replace(part, dest)
    return actual


# --------------------------------------------------------------------------- corpora


def _corpus_type(corpus: dict) -> str:
    if not isinstance(corpus, dict):
        raise ValueError(f"corpus: expected a mapping, got {_type_name(corpus)}")
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
        raise ValueError(f"corpus.doc_split: unknown value {split!r}; allowed: {', '.join(DOC_SPLITS)}")
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
            from .world import read_jsonl_docs

            yield from read_jsonl_docs(path)
            continue
        with open(path, encoding="utf-8") as f:
            yield from _split_documents(f, doc_split)


def _resolve_data_files(data_files: Any, base_dir: str | os.PathLike) -> Any:
    """Resolve relative local ``data_files`` (str, list or split -> files mapping) against base_dir."""
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
        raise ValueError("corpus.dataset: expected a data set name (e.g. 'wikimedia/wikipedia' or 'json')")
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
        raise ValueError(f"corpus.text_field: field {text_field!r} not in data set {name!r} (columns: {columns})")
    return ds


def _iter_hub(corpus: dict, base_dir: str | os.PathLike) -> Iterator[str]:
    ds = _hub_dataset(corpus, base_dir)
    name, text_field = corpus.get("dataset"), corpus.get("text_field", "text")
    for i, example in enumerate(ds):
        if text_field not in example:
            raise ValueError(f"corpus.text_field: field {text_field!r} not in data set {name!r} "
                             f"(example {i} has {sorted(example)})")
        text = example[text_field]
        if text is None:
            continue
        if not isinstance(text, str):
            raise ValueError(f"corpus.text_field: field {text_field!r} of data set {name!r} "
                             f"is {_type_name(text)} in example {i}, expected a string")
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


def sample_corpus(corpus: dict, n_docs: int, mode: str = "first", seed: int = 1,
                  base_dir: str | os.PathLike = ".") -> Iterator[str]:
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
            raise ValueError("stats.sample: 'random' needs the corpus's length; set streaming: false "
                             f"for hub corpus {corpus.get('dataset')!r}")
        docs = _hub_dataset(corpus, base_dir)
        field = corpus.get("text_field", "text")
        text_of = lambda d: (d[field] or "").strip()  # noqa: E731
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    for i in order[:n_docs]:
        text = text_of(docs[i])
        if text:
            yield text


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
        for v in (resolved.values() if isinstance(resolved, dict) else [resolved]):
            flat.extend(v if isinstance(v, (list, tuple)) else [v])
        for p in flat:
            if isinstance(p, str) and Path(p).is_file():
                files.append((Path(p).name, sha256_file(p)))
    payload = json.dumps({"spec": corpus, "files": files}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
