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
when present. ``paraphrase_prompts`` and ``neighborhood_prompts`` must each hold at least one
prompt (every record of the real CounterFact has 2 and 10). Errors are :class:`RecordError` and
name the file, the record (``case_id`` and index) and the dotted field path. Hostile lengths are
refused too: a text field longer than ``max_chars`` (:func:`check_record_chars`, at start-up), and
in the jobs a prompt and target longer than the model's context (:func:`check_record_tokens`).

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

import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Iterable

from editscale.io.files import atomic_write_text

log = logging.getLogger(__name__)


class RecordError(ValueError):
    """A CounterFact record (or file) that does not follow the ROME schema."""


DEFAULT_MAX_CHARS = 1000
"""Default longest text field of a record (config key ``counterfact.max_chars``). The longest
field of the real CounterFact subset in ``../shared/data`` (500 records) is a paraphrase prompt of
161 characters; subjects reach 48, targets 14."""


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


def _get(
    record: dict,
    index: int,
    source: str,
    container: Any,
    key: str,
    path: str,
    required: bool = True,
) -> Any:
    if not isinstance(container, dict):
        raise _fail(
            record,
            index,
            source,
            path.rsplit(".", 1)[0],
            f"expected an object, got {_type_name(container)}",
        )
    if key not in container:
        if required:
            raise _fail(record, index, source, path, "missing")
        return None
    return container[key]


def _check_str(
    record: dict, index: int, source: str, value: Any, path: str, non_empty: bool = True
) -> None:
    if not isinstance(value, str):
        raise _fail(
            record, index, source, path, f"expected a string, got {_type_name(value)} {value!r}"
        )
    if non_empty and not value.strip():
        raise _fail(record, index, source, path, "empty string")


def _check_int(record: dict, index: int, source: str, value: Any, path: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(
            record, index, source, path, f"expected an integer, got {_type_name(value)} {value!r}"
        )


def _check_str_list(
    record: dict, index: int, source: str, value: Any, path: str, non_empty: bool = False
) -> None:
    if not isinstance(value, list):
        raise _fail(
            record, index, source, path, f"expected a list of strings, got {_type_name(value)}"
        )
    if non_empty and not value:
        raise _fail(
            record,
            index,
            source,
            path,
            "empty list: every record needs at least one prompt here (without one its score "
            "is undefined); remove the record or give it one",
        )
    for i, item in enumerate(value):
        _check_str(record, index, source, item, f"{path}[{i}]")


def validate_record(
    record: dict, index: int, source: str = "<memory>", max_chars: int | None = None
) -> None:
    """Raise :class:`RecordError` unless ``record`` follows the ROME CounterFact schema.

    ``index`` is the record's position in its file and ``source`` the file name; both go
    into the message, with the ``case_id`` and the dotted path of the offending field. The
    paraphrase and neighbourhood lists must each hold at least one prompt. ``max_chars``: when
    given, no text field may be longer (:func:`check_record_chars`).
    """
    if not isinstance(record, dict):
        raise RecordError(f"{source}: record {index}: expected an object, got {_type_name(record)}")
    _check_int(
        record, index, source, _get(record, index, source, record, "case_id", "case_id"), "case_id"
    )
    if "pararel_idx" in record:
        _check_int(record, index, source, record["pararel_idx"], "pararel_idx")

    rw = _get(record, index, source, record, "requested_rewrite", "requested_rewrite")
    if not isinstance(rw, dict):
        raise _fail(
            record, index, source, "requested_rewrite", f"expected an object, got {_type_name(rw)}"
        )
    prompt = _get(record, index, source, rw, "prompt", "requested_rewrite.prompt")
    _check_str(record, index, source, prompt, "requested_rewrite.prompt")
    n_slots = prompt.count("{}")
    if n_slots != 1:
        raise _fail(
            record,
            index,
            source,
            "requested_rewrite.prompt",
            f"must contain exactly one '{{}}' subject slot, found {n_slots} in {prompt!r}",
        )
    subject = _get(record, index, source, rw, "subject", "requested_rewrite.subject")
    _check_str(record, index, source, subject, "requested_rewrite.subject")
    relation = _get(
        record, index, source, rw, "relation_id", "requested_rewrite.relation_id", required=False
    )
    if relation is not None:
        _check_str(record, index, source, relation, "requested_rewrite.relation_id")
    for target in ("target_new", "target_true"):
        base = f"requested_rewrite.{target}"
        tgt = _get(record, index, source, rw, target, base)
        if not isinstance(tgt, dict):
            raise _fail(record, index, source, base, f"expected an object, got {_type_name(tgt)}")
        _check_str(
            record,
            index,
            source,
            _get(record, index, source, tgt, "str", f"{base}.str"),
            f"{base}.str",
        )
        if "id" in tgt:
            _check_str(record, index, source, tgt["id"], f"{base}.id")
    if rw["target_new"]["str"] == rw["target_true"]["str"]:
        raise _fail(
            record,
            index,
            source,
            "requested_rewrite.target_new.str",
            f"equals requested_rewrite.target_true.str ({rw['target_true']['str']!r}): "
            f"the edit would change nothing",
        )

    for field in ("paraphrase_prompts", "neighborhood_prompts"):
        value = _get(record, index, source, record, field, field)
        _check_str_list(record, index, source, value, field, non_empty=True)
    for field in ("attribute_prompts", "generation_prompts"):
        if field in record:
            _check_str_list(record, index, source, record[field], field)
    if max_chars is not None:
        check_record_chars(record, index, source, max_chars)


_PROMPT_FIELDS = (
    "paraphrase_prompts",
    "neighborhood_prompts",
    "attribute_prompts",
    "generation_prompts",
)


def _text_fields(record: dict) -> Iterable[tuple[str, str]]:
    """(dotted path, text) of every text field of a validated record."""
    rw = record["requested_rewrite"]
    for key in ("prompt", "subject", "relation_id"):
        if key in rw:
            yield f"requested_rewrite.{key}", rw[key]
    for target in ("target_new", "target_true"):
        for key in ("str", "id"):
            if key in rw[target]:
                yield f"requested_rewrite.{target}.{key}", rw[target][key]
    for field in _PROMPT_FIELDS:
        for i, text in enumerate(record.get(field, ())):
            yield f"{field}[{i}]", text


def check_record_chars(record: dict, index: int, source: str, max_chars: int) -> None:
    """Raise :class:`RecordError` when a text field of the (schema-valid) ``record`` is longer
    than ``max_chars`` characters, naming the file, record, case id and field. A character bound
    is what can be checked without a tokenizer (at start-up); the jobs check tokens against the
    model's context length (:func:`check_record_tokens`)."""
    for path, text in _text_fields(record):
        if len(text) > max_chars:
            preview = f"{text[:40]!r}{'...' if len(text) > 40 else ''}"
            raise _fail(
                record,
                index,
                source,
                path,
                f"{len(text):,} characters ({preview}), more than the limit of {max_chars:,} "
                "(config key counterfact.max_chars)",
            )


def load_counterfact(path: str | os.PathLike, max_chars: int | None = None) -> list[dict]:
    """Read a CounterFact JSON list and validate every record (the first error is raised).

    Also rejects duplicate ``case_id``s and an empty list. Raises :class:`RecordError` (a
    ``ValueError``) for schema problems, for a file that is not UTF-8 (with byte offset and line)
    and for a file that is not valid JSON (with line and column). ``max_chars``: when given, the
    longest text field a record may have (:func:`check_record_chars`).
    """
    path = Path(path)
    source = str(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise RecordError(
            f"{source}: not UTF-8 text: byte {raw[exc.start : exc.start + 1]!r} at byte offset "
            f"{exc.start} (line {line}): {exc.reason}"
        ) from exc
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(
            f"{source}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from exc
    if not isinstance(records, list):
        raise RecordError(f"{source}: expected a JSON list of records, got {_type_name(records)}")
    if not records:
        raise RecordError(f"{source}: the CounterFact list is empty (no records)")
    first_index: dict[int, int] = {}
    for i, rec in enumerate(records):
        validate_record(rec, i, source, max_chars)
        cid = rec["case_id"]
        if cid in first_index:
            raise _fail(
                rec,
                i,
                source,
                "case_id",
                f"duplicate case_id {cid} (first seen at record {first_index[cid]})",
            )
        first_index[cid] = i
    log.info("loaded %d CounterFact records from %s", len(records), source)
    return records


def subject_prompt(record: dict) -> tuple[str, int]:
    """A record's rewrite prompt with its subject filled in, and the end of the subject in it
    (the character index after the subject's last character, as ROME's lookup takes it)."""
    rw = record["requested_rewrite"]
    pre, _, post = rw["prompt"].partition("{}")
    return pre + rw["subject"] + post, len(pre) + len(rw["subject"])


def context_length(model_config: Any) -> tuple[str, int] | None:
    """The context length a model declares in its (transformers) config, and the name of the
    entry giving it: ``n_positions``, ``max_position_embeddings`` or ``n_ctx``; None if none."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return name, value
    return None


def _scored_prompts(record: dict) -> list[tuple[str, str]]:
    """(field, text) of every prompt a record is edited or scored on."""
    pairs = [("requested_rewrite.prompt", subject_prompt(record)[0])]
    for field in ("paraphrase_prompts", "neighborhood_prompts"):
        pairs += [(f"{field}[{i}]", text) for i, text in enumerate(record[field])]
    return pairs


def check_record_tokens(
    records: list[dict], tok, model_config: Any, source: str | os.PathLike = "<memory>"
) -> None:
    """Refuse records too long for the model, once per job, before its heavy work.

    Every prompt a record is edited and scored on (the rewrite prompt filled with the subject,
    each paraphrase and neighbourhood prompt), tokenised as the scoring tokenises it, followed by
    the longer of the record's two targets, must fit the model's context length
    (:func:`context_length` of ``model_config``; nothing is checked when it declares none). The
    editors' context templates (a few tokens in front of the rewrite prompt) are not counted.
    Raises :class:`RecordError` naming ``source``, the first offending record's case id and
    field, its token count and the limit, and how many records exceed it.
    """
    from editscale.lm.scoring import target_token_ids  # the scoring's own target tokens

    bound = context_length(model_config)
    if bound is None or not records:
        return
    name, limit = bound
    owners = [(rec, field, text) for rec in records for field, text in _scored_prompts(rec)]
    prompt_ids = tok([text for _, _, text in owners])["input_ids"]
    targets: dict[int, int] = {}
    over = []
    for (rec, field, _), ids in zip(owners, prompt_ids):
        rw = rec["requested_rewrite"]
        if id(rec) not in targets:
            targets[id(rec)] = max(
                len(target_token_ids(tok, rw[t]["str"])) for t in ("target_new", "target_true")
            )
        if len(ids) + targets[id(rec)] > limit:
            over.append((rec, field, len(ids) + targets[id(rec)]))
    if over:
        rec, field, n = over[0]
        n_records = len({id(r) for r, _, _ in over})
        raise RecordError(
            f"{source}: case_id {rec['case_id']}: field '{field}' followed by its longer target "
            f"is {n:,} tokens, more than the model's context length of {limit:,} (config "
            f"{name}); {n_records} of {len(records)} records exceed it: shorten or remove them"
        )


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


def ordering_sample(
    case_ids: Iterable[int], sample: int, seed: int, exclude: Iterable[int] = ()
) -> list[int]:
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


def write_ordering(path: str | os.PathLike, case_ids: list[int], **meta: Any) -> None:
    """Write ``{"case_ids": [...], **meta}`` as JSON, atomically (temp file, then rename)."""
    ids = [int(c) for c in case_ids]
    atomic_write_text(
        Path(path), json.dumps({"case_ids": ids, **meta}, indent=1) + "\n", mode=0o644
    )


def read_ordering(path: str | os.PathLike) -> list[int]:
    """Read the ``case_ids`` list written by :func:`write_ordering`."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
            ) from exc
    ids = data.get("case_ids") if isinstance(data, dict) else None
    if not isinstance(ids, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) for c in ids
    ):
        raise ValueError(f"{path}: expected an object with 'case_ids': a list of integers")
    return ids


def select_records(
    counterfact_path: str | os.PathLike, ordering_path: str | os.PathLike, n_edits: int
) -> list[dict]:
    """The first ``n_edits`` records of an ordering, validated, failing before any model work."""
    records = records_by_case_id(load_counterfact(counterfact_path))
    order = read_ordering(ordering_path)
    if len(order) < n_edits:
        raise ValueError(
            f"n_edits={n_edits} but the ordering {ordering_path} has only {len(order)} records"
        )
    missing = [c for c in order[:n_edits] if c not in records]
    if missing:
        raise ValueError(
            f"ordering {ordering_path} names case_ids absent from {counterfact_path}: {missing[:5]}"
        )
    return [records[c] for c in order[:n_edits]]
