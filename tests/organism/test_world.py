"""The synthetic world of the embedded default: deterministic, CounterFact-schema records, balanced
toy tasks in GLUE's file formats whose labels need more than one word, JSON-lines corpora."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from editscale.data import corpora, counterfact, glue
from editscale.organism import world

SMALL = {
    "n_people": 300,
    "n_places": 60,
    "n_companies": 60,
    "n_neighbors": 3,
    "n_attribute": 3,
    "n_task_dev": 60,
    "n_task_heldout": 20,
    "n_task_chains": 10,
    "chain_length": 4,
    "n_filler": 20,
    "n_heldout_docs": 30,
}


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    spec = world.WorldSpec.from_dict(SMALL)
    dest = tmp_path_factory.mktemp("world")
    w = world.generate_world(spec)
    return w, world.write_world(w, dest)


def test_generator_is_deterministic(small_world, tmp_path):
    _, files = small_world
    again = world.write_world(world.generate_world(world.WorldSpec.from_dict(SMALL)), tmp_path)
    for role, path in files.items():
        assert path.read_bytes() == again[role].read_bytes(), role
    other = world.write_world(
        world.generate_world(world.WorldSpec.from_dict({**SMALL, "seed": 1})), tmp_path / "other"
    )
    assert other["counterfact"].read_bytes() != files["counterfact"].read_bytes()


def test_records_pass_the_counterfact_loader(small_world):
    w, files = small_world
    records = counterfact.load_counterfact(files["counterfact"])
    assert len(records) == len(w.subjects) == 420
    assert len(counterfact.unique_subject_records(records)) == len(records)
    facts = {(s.name, s.relation_id): s.obj for s in w.subjects}
    by_fact = Counter((s.relation_id, s.obj) for s in w.subjects)
    positions = Counter()
    for rec in records:
        rw = rec["requested_rewrite"]
        rel = world.relation(rw["relation_id"])
        assert rw["prompt"] in rel.templates and rw["prompt"].count("{}") == 1
        positions["first" if rw["prompt"].startswith("{}") else "middle"] += 1
        assert rw["target_true"]["str"] == facts[(rw["subject"], rw["relation_id"])]
        assert (
            rw["target_new"]["str"] != rw["target_true"]["str"]
            and rw["target_new"]["str"] in rel.objects
        )
        assert len(rec["paraphrase_prompts"]) == 2 and len(rec["neighborhood_prompts"]) == 3
        assert all(rw["subject"] in p for p in rec["paraphrase_prompts"])
        for prompt in rec["neighborhood_prompts"]:  # another subject, same relation and true object
            template = next(
                t
                for t in rel.templates
                if prompt.startswith(t.split("{}")[0]) and prompt.endswith(t.split("{}")[1])
            )
            subject = prompt[
                len(template.split("{}")[0]) : len(prompt) - len(template.split("{}")[1])
            ]
            assert (
                subject != rw["subject"]
                and facts[(subject, rw["relation_id"])] == rw["target_true"]["str"]
            )
        assert by_fact[(rw["relation_id"], rw["target_new"]["str"])] >= 3
    assert positions["first"] > 0 and positions["middle"] > 0  # both template shapes are edited
    assert len(world.RELATIONS) >= 6


def test_every_fact_is_stated_in_every_template(small_world):
    w, files = small_world
    train = set(corpora.read_jsonl_docs(files["train"]))
    for s in w.subjects[:20]:
        for t in world.relation(s.relation_id).templates:
            assert f"{t.format(s.name)} {s.obj}." in train


@pytest.mark.parametrize("task", ["sst2", "mrpc", "rte", "cola"])
def test_toy_tasks_are_balanced_held_out_and_read_as_glue(small_world, task):
    w, files = small_world
    examples = glue.load_glue(
        task, {"type": "glue_files", "path": str(files["counterfact"].parent / "glue")}
    )
    assert len(examples) == 60
    assert Counter(ex["label"] for ex in examples) == {0: 30, 1: 30}
    spec = glue.TASKS[task]
    train_text = files["train"].read_text(encoding="utf-8")
    for ex in examples:  # evaluation examples never appear in the training corpus
        assert json.dumps(spec.render(ex, with_answer=False))[1:-1] not in train_text
    task_set = glue.prepare_task_set(task, examples, 20, seed=3)
    assert Counter(ex["label"] for ex in task_set["eval"]) == {0: 20, 1: 20}


def test_toy_labels_need_more_than_one_word():
    rng = random.Random(0)
    # sentiment: the majority of three adjectives; no single adjective decides
    sst = [world._sst2(rng) for _ in range(400)]
    for adj in world.SST_POSITIVE[:3] + world.SST_NEGATIVE[:3]:
        assert {ex["label"] for ex in sst if f" {adj} " in ex["sentence"]} == {0, 1}, adj
    for ex in sst[:50]:
        words = ex["sentence"].replace(",", " ").split()
        positive = sum(w in world.SST_POSITIVE for w in words)
        assert ex["label"] == int(positive >= 2)
    # paraphrase: agreement on at least two of three attributes;
    # no single word of sentence 2 decides
    mrpc = [world._mrpc(rng) for _ in range(600)]
    for word in ("large", "tiny", "glad"):
        assert {ex["label"] for ex in mrpc if f" {word} " in ex["sentence2"]} == {0, 1}, word
    # entailment: at least two of the three items are animals; no single item decides
    rte = [world._rte(rng) for _ in range(600)]
    for item in (" dog", " apple"):
        assert {ex["label"] for ex in rte if item in ex["sentence1"]} == {0, 1}
    # acceptability: same words, different order
    cola = [world._cola(rng) for _ in range(200)]

    def grammatical(words):
        return (
            words[0] in world.COLA_DETS
            and words[1] in world.COLA_ADJS
            and words[2] in world.COLA_NOUNS
            and words[3] in world.COLA_VERBS
            and " ".join(words[4:]) in world.COLA_OBJECTS
        )

    for ex in cola:
        words = ex["sentence"].lower().rstrip(".").split()
        assert (
            sum(w in world.COLA_VERBS for w in words) == 1
            and sum(w in world.COLA_ADJS for w in words) == 1
        )
        assert grammatical(words) == bool(ex["label"]), ex


def test_jsonl_corpus_reads_through_iter_corpus_and_names_the_bad_line(small_world, tmp_path):
    w, files = small_world
    docs = list(
        corpora.iter_corpus(
            {"type": "text_files", "paths": [str(files["heldout"])], "doc_split": "jsonl"}
        )
    )
    assert docs == w.heldout_docs and any("\n\n" in d for d in docs)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        list(corpora.read_jsonl_docs(bad))


def test_spec_errors_name_the_key():
    with pytest.raises(ValueError, match="n_peple"):
        world.WorldSpec.from_dict({"n_peple": 3})
    with pytest.raises(ValueError, match="neighbours"):
        world.generate_world(world.WorldSpec.from_dict({**SMALL, "n_people": 20}))
    with pytest.raises(ValueError, match="filler_grammar"):
        world.WorldSpec.from_dict({"filler_grammar": "english"})


def test_rich_filler_is_varied_seeded_and_used_in_both_corpora():
    def words(grammar, seed):
        r = random.Random(seed)
        return [world.filler_sentence(r, grammar) for _ in range(400)]

    rich, cola = words("rich", 0), words("cola", 0)
    assert rich == words("rich", 0) and rich != words("rich", 1)
    vocab = {w.strip(".,").lower() for s in rich for w in s.split()}
    assert len(vocab) > 200 and len({w.strip(".,").lower() for s in cola for w in s.split()}) < 60
    assert all(s[0].isupper() and s.endswith(".") for s in rich)
    assert not any(" we was " in f" {s.lower()} " or " they was " in f" {s.lower()} " for s in rich)

    spec = world.WorldSpec.from_dict({**SMALL, "filler_grammar": "rich", "n_filler": 50})
    w = world.generate_world(spec)
    plain = world.generate_world(world.WorldSpec.from_dict({**SMALL, "n_filler": 50}))
    assert w.records == plain.records and w.task_dev == plain.task_dev  # only the filler differs
    rich_words = set(world.RICH_NOUNS) - set(world.COLA_NOUNS) - {"river bank"}
    for docs in (w.train_docs, w.heldout_docs):
        assert any(set(d.lower().replace(".", " ").split()) & rich_words for d in docs)
    assert len(w.train_docs) == len(plain.train_docs) and len(w.heldout_docs) == len(
        plain.heldout_docs
    )
