"""Tests for editscale.data.counterfact: CounterFact loading/validation,
orderings, downloads, corpora."""

from __future__ import annotations

import copy
import hashlib
import json
import random
from pathlib import Path

import pytest

from editscale.data import corpora, counterfact, download
from editscale.io import provenance
from tests.conftest import SHARED_DATA

WIKITEXT_REL = "wikitext/wikitext-2_valid.tokens.txt"

# First 5 case_ids of sample 0 (seed 37) over the unique-subject records of counterfact_500.json.
GOLDEN_SEED37_SAMPLE0_HEAD = [1543, 13470, 11270, 21003, 12418]


def _record(case_id: int, subject: str = "Angola", prompt: str = "{} is located in") -> dict:
    return {
        "case_id": case_id,
        "pararel_idx": 1,
        "requested_rewrite": {
            "prompt": prompt,
            "relation_id": "P30",
            "target_new": {"str": "Antarctica", "id": "Q51"},
            "target_true": {"str": "Africa", "id": "Q15"},
            "subject": subject,
        },
        "paraphrase_prompts": [f"{subject} belongs to the continent of"],
        "neighborhood_prompts": ["Ghana is in"],
        "attribute_prompts": ["Ross Island is located in"],
        "generation_prompts": [f"People around {subject} speak"],
    }


# --------------------------------------------------------------------------- CounterFact


@pytest.fixture(scope="module")
def real_records(counterfact_path):
    return counterfact.load_counterfact(counterfact_path)


def test_load_real_counterfact(real_records):
    assert len(real_records) == 500
    ids = [r["case_id"] for r in real_records]
    assert len(set(ids)) == 500
    assert min(ids) == 18 and max(ids) == 21884
    assert len({r["requested_rewrite"]["relation_id"] for r in real_records}) == 34
    by_id = counterfact.records_by_case_id(real_records)
    assert by_id[ids[0]] is real_records[0]


def test_unique_subjects_real(real_records):
    expected, seen = [], set()
    for r in real_records:
        s = r["requested_rewrite"]["subject"].lower()
        if s not in seen:
            seen.add(s)
            expected.append(r["case_id"])
    kept = counterfact.unique_subject_records(real_records)
    assert [r["case_id"] for r in kept] == expected
    assert len(kept) == len({r["requested_rewrite"]["subject"].lower() for r in real_records})
    assert len(kept) < len(real_records)  # the subset has duplicate subjects


def test_unique_subjects_case_variants():
    recs = [
        _record(5, "Paris"),
        _record(3, "paris"),
        _record(9, "Rome"),
        _record(1, "PARIS"),
        _record(2, "rome "),
    ]
    kept = counterfact.unique_subject_records(recs)
    assert [r["case_id"] for r in kept] == [5, 9, 2]  # 'rome ' differs from 'rome' (no stripping)


def test_records_by_case_id_rejects_duplicates():
    with pytest.raises(ValueError, match="duplicate case_id 4"):
        counterfact.records_by_case_id([_record(4), _record(4)])


def _write(tmp_path: Path, records) -> Path:
    path = tmp_path / "cf.json"
    path.write_text(json.dumps(records))
    return path


def _break(mutate) -> list[dict]:
    recs = [_record(10, "Angola"), _record(11, "Ghana"), _record(12, "Peru")]
    mutate(recs[1])
    return recs


@pytest.mark.parametrize(
    "mutate, field, fragment",
    [
        (lambda r: r["requested_rewrite"].pop("subject"), "requested_rewrite.subject", "missing"),
        (lambda r: r.pop("neighborhood_prompts"), "neighborhood_prompts", "missing"),
        (
            lambda r: r["requested_rewrite"]["target_new"].update(str=7),
            "requested_rewrite.target_new.str",
            "expected a string",
        ),
        (
            lambda r: r["requested_rewrite"].update(target_true="Africa"),
            "requested_rewrite.target_true",
            "expected an object",
        ),
        (
            lambda r: r["paraphrase_prompts"].append(None),
            "paraphrase_prompts[1]",
            "expected a string",
        ),
        (
            lambda r: r["requested_rewrite"].update(prompt="Ghana is located in"),
            "requested_rewrite.prompt",
            "exactly one",
        ),
        (
            lambda r: r["requested_rewrite"].update(prompt="{} and {} are in"),
            "requested_rewrite.prompt",
            "found 2",
        ),
        (
            lambda r: r["requested_rewrite"]["target_new"].update(str="Africa"),
            "requested_rewrite.target_new.str",
            "equals requested_rewrite.target_true.str",
        ),
    ],
)
def test_record_errors(tmp_path, mutate, field, fragment):
    path = _write(tmp_path, _break(mutate))
    with pytest.raises(counterfact.RecordError) as info:
        counterfact.load_counterfact(path)
    msg = str(info.value)
    assert "case_id 11" in msg and "record 1" in msg
    assert f"'{field}'" in msg
    assert str(path) in msg
    assert fragment in msg


def test_bad_case_id_names_index(tmp_path):
    path = _write(tmp_path, _break(lambda r: r.update(case_id="11")))
    with pytest.raises(
        counterfact.RecordError, match=r"record 1: field 'case_id': expected an integer"
    ) as info:
        counterfact.load_counterfact(path)
    assert str(path) in str(info.value)


def test_duplicate_case_id(tmp_path):
    path = _write(tmp_path, _break(lambda r: r.update(case_id=10)))
    with pytest.raises(counterfact.RecordError) as info:
        counterfact.load_counterfact(path)
    msg = str(info.value)
    assert "case_id 10" in msg and "'case_id'" in msg and "duplicate" in msg and str(path) in msg


def test_real_record_broken_copy(tmp_path, real_records):
    recs = copy.deepcopy(real_records)
    victim = recs[250]
    victim["requested_rewrite"]["target_new"]["str"] = ["not", "a", "string"]
    path = _write(tmp_path, recs)
    with pytest.raises(counterfact.RecordError) as info:
        counterfact.load_counterfact(path)
    msg = str(info.value)
    assert f"case_id {victim['case_id']}" in msg
    assert "'requested_rewrite.target_new.str'" in msg and str(path) in msg


def test_bad_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"case_id": 1,\n   "requested_rewrite": }\n]\n')
    with pytest.raises(counterfact.RecordError) as info:
        counterfact.load_counterfact(path)
    msg = str(info.value)
    assert str(path) in msg and "not valid JSON" in msg and "line 3" in msg and "column" in msg


def test_not_utf8_names_file_and_offset(tmp_path):
    path = tmp_path / "latin1.json"
    good = json.dumps([_record(10)], indent=1).encode()
    at = good.index(b"Angola")
    path.write_bytes(good[:at] + "Ang\u00f6la".encode("latin-1") + good[at + len("Angola") :])
    with pytest.raises(counterfact.RecordError) as info:
        counterfact.load_counterfact(path)
    msg = str(info.value)
    line = good[:at].count(b"\n") + 1
    assert (
        str(path) in msg
        and "not UTF-8" in msg
        and f"byte offset {at + 3}" in msg
        and f"line {line}" in msg
    )


def test_empty_list_names_file(tmp_path):
    path = _write(tmp_path, [])
    with pytest.raises(counterfact.RecordError, match="empty") as info:
        counterfact.load_counterfact(path)
    assert str(path) in str(info.value)


def test_not_a_list(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text(json.dumps({"case_id": 1}))
    with pytest.raises(counterfact.RecordError, match="expected a JSON list"):
        counterfact.load_counterfact(path)


def test_validate_record_optional_fields():
    rec = _record(1)
    for key in ("pararel_idx", "attribute_prompts", "generation_prompts"):
        rec.pop(key)
    rec["requested_rewrite"]["target_new"].pop("id")
    counterfact.validate_record(rec, 0)
    rec["pararel_idx"] = True
    with pytest.raises(
        counterfact.RecordError, match=r"<memory>: record 0 \(case_id 1\): field 'pararel_idx'"
    ):
        counterfact.validate_record(rec, 0)


# --------------------------------------------------------------------------- orderings


def test_orderings_cumulative_and_deterministic():
    ids = list(range(100, 160))
    a = counterfact.make_orderings(ids, 4, seed=37)
    assert a == counterfact.make_orderings(ids, 4, seed=37)
    assert a != counterfact.make_orderings(ids, 4, seed=38)
    rng = random.Random(37)
    order = list(ids)
    for n in range(4):
        rng.shuffle(order)
        assert a[n] == order
        assert sorted(a[n]) == ids
    assert ids == list(range(100, 160))  # input untouched
    # the authors' global-RNG recipe gives the same permutations
    state = random.getstate()
    try:
        random.seed(37)
        order = list(ids)
        random.shuffle(order)
        random.shuffle(order)
        assert a[1] == order
    finally:
        random.setstate(state)


def test_orderings_edge_cases():
    assert counterfact.make_orderings([1, 2, 3], 0, seed=1) == []
    with pytest.raises(ValueError):
        counterfact.make_orderings([1, 2, 3], -1, seed=1)


def test_orderings_golden(real_records):
    ids = [r["case_id"] for r in counterfact.unique_subject_records(real_records)]
    samples = counterfact.make_orderings(ids, 2, seed=37)
    assert samples[0][:5] == GOLDEN_SEED37_SAMPLE0_HEAD
    assert sorted(samples[1]) == sorted(ids)


AUTHORS_ORDERINGS = SHARED_DATA / "authors" / "counterfact_sampled_unique_10_20391.json"


@pytest.fixture(scope="module")
def authors_orderings() -> dict[str, list[int]]:
    """The authors' own orderings file (read in place, never copied into the project)."""
    if not AUTHORS_ORDERINGS.exists():
        pytest.skip(f"{AUTHORS_ORDERINGS} not found (a fresh clone has no ../shared/data)")
    return json.loads(AUTHORS_ORDERINGS.read_text())


def test_orderings_reproduce_the_authors_ten_samples(authors_orderings):
    """random.seed(37) + 10 successive shuffles of the ascending id list = their file, all 10."""
    assert sorted(authors_orderings) == [str(n) for n in range(10)]
    ids = sorted(authors_orderings["0"])
    assert len(ids) == 20391
    samples = counterfact.make_orderings(ids, 10, seed=37)
    for n in range(10):
        assert samples[n] == authors_orderings[str(n)], f"sample {n}"
    # the rule's entry point: any input order of the ids (it sorts them first)
    shuffled = list(ids)
    random.Random(1).shuffle(shuffled)
    for n in (0, 3, 9):
        assert counterfact.ordering_sample(shuffled, n, seed=37) == authors_orderings[str(n)]


def test_reserved_records_are_dropped_after_shuffling(authors_orderings):
    """With records reserved for editor training, every other record keeps its relative order:
    the ordering is the authors' sample with the reserved ids struck out."""
    from editscale.data.editor_split import make_editor_split

    ids = sorted(authors_orderings["0"])
    split = make_editor_split(ids, 1000, 50, seed=37)
    reserved = set(split["train"]) | set(split["val"])
    for n in range(10):
        got = counterfact.ordering_sample(ids, n, seed=37, exclude=reserved)
        full = authors_orderings[str(n)]
        assert got == [c for c in full if c not in reserved]
        assert len(got) == len(ids) - len(reserved) and not reserved & set(got)
        # a subsequence of the authors' sample: positions increase
        pos = {c: i for i, c in enumerate(full)}
        assert all(pos[a] < pos[b] for a, b in zip(got, got[1:]))
    # removing the reserved ids BEFORE shuffling (the old behaviour) gives another order
    kept = [c for c in ids if c not in reserved]
    assert counterfact.make_orderings(kept, 1, seed=37)[0] != counterfact.ordering_sample(
        ids, 0, seed=37, exclude=reserved
    )
    with pytest.raises(ValueError):
        counterfact.ordering_sample(ids, -1, seed=37)


def test_write_read_ordering(tmp_path):
    path = tmp_path / "sub" / "sample_0.json"
    counterfact.write_ordering(path, [5, 3, 9], seed=37, sample=0)
    assert counterfact.read_ordering(path) == [5, 3, 9]
    assert json.loads(path.read_text()) == {"case_ids": [5, 3, 9], "seed": 37, "sample": 0}
    assert [p.name for p in path.parent.iterdir()] == ["sample_0.json"]  # no temp files left
    path.write_text(json.dumps({"case_ids": [1, "2"]}))
    with pytest.raises(ValueError, match="case_ids"):
        counterfact.read_ordering(path)


# --------------------------------------------------------------------------- downloads


def test_link_relative_survives_a_moved_project(tmp_path):
    import os
    import shutil

    from editscale.data.download import link_relative

    project = tmp_path / "proj"
    (project / "data").mkdir(parents=True)
    (project / "data" / "cf.json").write_text("[1]")
    link = project / "resources" / "data" / "counterfact.json"
    (link.parent).mkdir(parents=True)
    link.write_text("old")  # an existing file or link is replaced
    target = link_relative(project / "data" / "cf.json", link)
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert os.readlink(link) == str(target) == os.path.join("..", "..", "data", "cf.json")
    assert link.resolve() == (project / "data" / "cf.json").resolve() and link.read_text() == "[1]"
    shutil.move(project, tmp_path / "moved")
    (tmp_path / "moved" / "data" / "cf.json").write_text("[2]")
    assert (tmp_path / "moved" / "resources" / "data" / "counterfact.json").read_text() == "[2]"


def test_counterfact_rule_links_relatively():
    script = (
        Path(__file__).resolve().parents[2] / "workflow" / "scripts" / "counterfact.py"
    ).read_text()
    assert "link_relative(" in script and "os.symlink" not in script


def test_download_file_url(tmp_path):
    src = tmp_path / "src.bin"
    payload = b"editscale" * 100_000
    src.write_bytes(payload)
    good = hashlib.sha256(payload).hexdigest()
    assert provenance.sha256_file(src) == good
    dest = tmp_path / "out" / "dl.bin"

    assert download.download_file(src.as_uri(), dest, sha256=good) == good
    assert dest.read_bytes() == payload
    assert not dest.with_name("dl.bin.part").exists()
    mtime = dest.stat().st_mtime_ns
    assert (
        download.download_file(src.as_uri(), dest, sha256=good.upper()) == good
    )  # already there: no-op
    assert dest.stat().st_mtime_ns == mtime

    bad = "0" * 64
    dest2 = tmp_path / "out" / "dl2.bin"
    with pytest.raises(ValueError) as info:
        download.download_file(src.as_uri(), dest2, sha256=bad)
    msg = str(info.value)
    assert bad in msg and good in msg and src.as_uri() in msg
    assert not dest2.exists() and not dest2.with_name("dl2.bin.part").exists()

    assert download.download_file(src.as_uri(), dest2) == good  # no hash given: returns the digest


# --------------------------------------------------------------------------- corpora


def _wikitext(split: str) -> dict:
    return {"type": "text_files", "paths": [WIKITEXT_REL], "doc_split": split}


def test_wikitext_articles(shared_data):
    docs = list(corpora.iter_corpus(_wikitext("wikitext_articles"), base_dir=shared_data))
    titles = [d.split("\n", 1)[0] for d in docs]
    assert 40 <= len(docs) <= 80  # WikiText-2 validation has 60 articles
    assert docs[0].startswith(
        "= Homarus gammarus =\nHomarus gammarus , known as the European lobster"
    )
    assert all(t.startswith("= ") and t.endswith(" =") and not t.startswith("= =") for t in titles)
    assert "\n= = Description = =\n" in docs[0]  # sub-headings stay inside the article
    assert all(d == d.strip() and d for d in docs)
    assert docs == list(corpora.iter_corpus(_wikitext("wikitext_articles"), base_dir=shared_data))


def test_wikitext_paragraphs_and_lines(shared_data):
    lines = list(corpora.iter_corpus(_wikitext("lines"), base_dir=shared_data))
    paragraphs = list(corpora.iter_corpus(_wikitext("blank_lines"), base_dir=shared_data))
    raw = (shared_data / WIKITEXT_REL).read_text(encoding="utf-8").splitlines()
    assert lines == [ln.strip() for ln in raw if ln.strip()]
    assert lines[0] == "= Homarus gammarus ="
    assert len(paragraphs) <= len(lines)
    assert "\n".join(paragraphs).split("\n") == lines


def test_doc_splits_small(tmp_path):
    (tmp_path / "a.txt").write_text(
        "intro line\n\n = Alpha = \n\n text a1 \n = = Sub = = \n"
        " text a2\n\n = Beta = \n text b\n\n\n"
    )
    spec = {"type": "text_files", "paths": ["a.txt"], "doc_split": "wikitext_articles"}
    assert list(corpora.iter_corpus(spec, tmp_path)) == [
        "intro line",
        "= Alpha =\ntext a1\n= = Sub = =\ntext a2",
        "= Beta =\ntext b",
    ]
    spec["doc_split"] = "blank_lines"
    assert list(corpora.iter_corpus(spec, tmp_path)) == [
        "intro line",
        "= Alpha =",
        "text a1\n= = Sub = =\ntext a2",
        "= Beta =\ntext b",
    ]
    spec["doc_split"] = "lines"
    assert len(list(corpora.iter_corpus(spec, tmp_path))) == 7
    spec["doc_split"] = "sentences"
    with pytest.raises(ValueError, match="corpus.doc_split"):
        list(corpora.iter_corpus(spec, tmp_path))


def test_unknown_corpus_type():
    with pytest.raises(ValueError, match=r"corpus\.type.*text_files.*hub"):
        corpora.iter_corpus({"type": "s3", "paths": []})


def _write_jsonl(path: Path, texts: list) -> None:
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))


def test_hub_local_json(tmp_path):
    _write_jsonl(tmp_path / "part0.jsonl", ["  first doc ", "", "second doc"])
    _write_jsonl(tmp_path / "part1.jsonl", ["third doc"])
    spec = {
        "type": "hub",
        "dataset": "json",
        "data_files": ["part0.jsonl", "part1.jsonl"],
        "split": "train",
        "text_field": "text",
        "streaming": True,
    }
    docs = list(corpora.iter_corpus(spec, base_dir=tmp_path))
    assert docs == ["first doc", "second doc", "third doc"]

    fp = corpora.corpus_fingerprint(spec, tmp_path)
    assert fp == corpora.corpus_fingerprint(spec, tmp_path)
    _write_jsonl(tmp_path / "part1.jsonl", ["third doc, changed"])
    assert corpora.corpus_fingerprint(spec, tmp_path) != fp

    with pytest.raises(ValueError, match=r"'body'.*'json'"):
        list(corpora.iter_corpus({**spec, "text_field": "body"}, base_dir=tmp_path))


def test_corpus_fingerprint_text_files(tmp_path):
    (tmp_path / "a.txt").write_text("= A =\nhello\n")
    spec = {"type": "text_files", "paths": ["a.txt"], "doc_split": "wikitext_articles"}
    fp = corpora.corpus_fingerprint(spec, tmp_path)
    assert len(fp) == 64 and fp == corpora.corpus_fingerprint(
        dict(reversed(list(spec.items()))), tmp_path
    )
    assert corpora.corpus_fingerprint({**spec, "doc_split": "lines"}, tmp_path) != fp
    (tmp_path / "a.txt").write_text("= A =\nhello!\n")
    assert corpora.corpus_fingerprint(spec, tmp_path) != fp


def test_corpus_fingerprint_real(shared_data):
    fp = corpora.corpus_fingerprint(_wikitext("wikitext_articles"), shared_data)
    assert fp == corpora.corpus_fingerprint(_wikitext("wikitext_articles"), shared_data)


def test_sample_corpus_first_and_romes_fixed_random_subset(tmp_path):
    """``first`` keeps file order; ``random`` is ROME's FixedRandomSubsetSampler: indices
    shuffled by random.Random(seed), the first n taken in that order (seeded, repeatable)."""
    import random

    docs = [f"document number {i}" for i in range(50)]
    (tmp_path / "c.txt").write_text("\n".join(docs) + "\n")
    corpus = {"type": "text_files", "paths": ["c.txt"], "doc_split": "lines"}
    assert list(corpora.sample_corpus(corpus, 7, "first", base_dir=tmp_path)) == docs[:7]
    order = list(range(50))
    random.Random(1).shuffle(order)
    picked = list(corpora.sample_corpus(corpus, 7, "random", 1, base_dir=tmp_path))
    assert picked == [docs[i] for i in order[:7]]
    assert picked != docs[:7] and picked == list(
        corpora.sample_corpus(corpus, 7, "random", 1, base_dir=tmp_path)
    )
    assert list(corpora.sample_corpus(corpus, 7, "random", 2, base_dir=tmp_path)) != picked
    assert len(list(corpora.sample_corpus(corpus, 500, "random", 1, base_dir=tmp_path))) == 50
    with pytest.raises(ValueError, match="streaming: false"):
        list(corpora.sample_corpus({"type": "hub", "dataset": "x", "streaming": True}, 5, "random"))
    with pytest.raises(ValueError, match="'first' or 'random'"):
        list(corpora.sample_corpus(corpus, 5, "last", base_dir=tmp_path))


def local_hub_corpus(folder) -> tuple[list[dict], dict]:
    """30 rows in a JSON-lines file and a hub corpus spec over it (``json``, streaming off)."""
    rows = [{"text": f"row {i}"} for i in range(30)]
    (folder / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = {
        "type": "hub",
        "dataset": "json",
        "data_files": "d.jsonl",
        "split": "train",
        "streaming": False,
        "text_field": "text",
    }
    return rows, spec


def test_sample_corpus_random_from_a_local_hub_dataset(tmp_path):
    """A hub corpus (here ``json`` over a local file, streaming off) is indexed by position."""
    import random

    rows, corpus = local_hub_corpus(tmp_path)
    order = list(range(30))
    random.Random(1).shuffle(order)
    assert list(corpora.sample_corpus(corpus, 5, "random", 1, base_dir=tmp_path)) == [
        rows[i]["text"] for i in order[:5]
    ]


def test_a_streamed_hub_corpus_gives_the_same_first_documents(tmp_path):
    """The collapse probe streams a hub corpus (``streamed``): the same documents in the same
    order as the loaded data set, and other corpora are left as they are."""
    import itertools

    _, loaded = local_hub_corpus(tmp_path)
    stream = corpora.streamed(loaded)
    assert stream["streaming"] is True and loaded["streaming"] is False
    first = list(itertools.islice(corpora.iter_corpus(stream, base_dir=tmp_path), 12))
    assert first == list(itertools.islice(corpora.iter_corpus(loaded, base_dir=tmp_path), 12))
    text = {"type": "text_files", "paths": ["x.txt"]}
    assert corpora.streamed(text) is text
