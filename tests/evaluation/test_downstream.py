"""Downstream few-shot GLUE evaluation: loaders, selection, prompt shapes,
parsing, scoring, generation."""

from __future__ import annotations

import csv
import json
import random

import pytest
import torch
from sklearn.metrics import f1_score

from editscale.data import glue
from editscale.evaluation import downstream
from editscale.lm import generation
from editscale.lm.models import load_model

GLUE_SOURCE = {"type": "glue_files", "path": "glue"}  # relative to the shared data folder


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models: one intra-op thread avoids contention on a busy 2-core
    machine (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _load(shared_data, task):
    return glue.load_glue(task, GLUE_SOURCE, base_dir=shared_data)


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task,count", [("sst2", 872), ("mrpc", 408), ("rte", 277), ("cola", 1043)])
def test_real_glue_files_load(shared_data, task, count):
    ex = _load(shared_data, task)
    assert len(ex) == count
    assert {e["label"] for e in ex} == {0, 1}
    assert len({e["idx"] for e in ex}) == count
    for e in ex:
        assert set(e) == {"idx", "label", *glue.TASKS[task].fields}
        assert all(isinstance(e[f], str) and e[f] for f in glue.TASKS[task].fields)


def test_real_files_details(shared_data):
    mrpc = _load(shared_data, "mrpc")
    first = mrpc[0]
    assert first["idx"] == 0 and first["label"] == 1
    assert (
        first["sentence1"]
        == "He said the foodservice pie business doesn't fit the company's long-term growth "
        "strategy."
    )
    assert not any("\ufeff" in v for v in first.values() if isinstance(v, str))
    # QUOTE_NONE: an unbalanced quote at the start of a field stays literal, no line is swallowed
    assert first["sentence2"].startswith('"The foodservice pie business')

    rte = {e["idx"]: e for e in _load(shared_data, "rte")}
    assert (
        rte[13]["sentence2"] == 'Jack Kevorkian is the real name of "Dr. Death".'
    )  # csv-quoted field
    assert 'famed as "Dr. Death," has violated' in rte[13]["sentence1"]
    assert (
        'irreconcilable differences" as the reason' in rte[6]["sentence1"]
    )  # doubled quote inside
    assert rte[0]["label"] == 1 and rte[0]["sentence2"] == "Christopher Reeve had an accident."

    cola = _load(shared_data, "cola")
    assert cola[0] == {
        "idx": 0,
        "sentence": "The sailors rode the breeze clear of the rocks.",
        "label": 1,
    }
    sst = _load(shared_data, "sst2")
    assert sst[0] == {
        "idx": 0,
        "sentence": "it 's a charming and often affecting journey . ",
        "label": 1,
    }


def _write_tsv(path, rows):
    """A tab-separated file with csv's default quoting (the RTE export's format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, delimiter="\t", lineterminator="\n").writerows(rows)


def test_rte_quoted_tab_and_newline(tmp_path):
    rows = [
        ["sentence1", "sentence2", "label", "idx"],
        ['He said "hi"\tand left.', "Two\nlines.", "0", "5"],
        ["plain", "text", "1", "6"],
    ]
    _write_tsv(tmp_path / "RTE" / "dev.tsv", rows)
    ex = glue.load_glue("rte", {"type": "glue_files", "path": "."}, base_dir=tmp_path)
    assert ex == [
        {"idx": 5, "sentence1": 'He said "hi"\tand left.', "sentence2": "Two\nlines.", "label": 0},
        {"idx": 6, "sentence1": "plain", "sentence2": "text", "label": 1},
    ]


@pytest.mark.parametrize(
    "task,rows,line",
    [
        ("sst2", ["sentence\tlabel", "good\t1", "bad\t0\textra"], 3),
        ("sst2", ["sentence\tlabel", "good\t1", "bad\tneg"], 3),
        ("cola", ["src\t1\t\tok", "src\t2\t*\tbad label"], 2),
        ("mrpc", ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "1\t1\t2\ta"], 2),
        ("sst2", ["text\tlabel", "good\t1"], 1),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path, task, rows, line):
    path = tmp_path / glue.GLUE_DIRS[task] / "dev.tsv"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"dev\.tsv:{line}:"):
        glue.load_glue(task, {"type": "glue_files", "path": "."}, base_dir=tmp_path)


def test_hub_shaped_dataset_matches_file_loader(tmp_path):
    sst = [("a fine film . ", 1), ("dull , dull , dull", 0), ('a "so-called" comedy', 0)]
    rte = [('P "one".', "H one.", 0, 0), ("P two.", "H two.", 1, 1)]
    sst_file = tmp_path / "glue" / "SST-2" / "dev.tsv"
    sst_file.parent.mkdir(parents=True)
    sst_file.write_text(
        "sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in sst), encoding="utf-8"
    )
    _write_tsv(
        tmp_path / "glue" / "RTE" / "dev.tsv", [["sentence1", "sentence2", "label", "idx"], *rte]
    )
    hub_dir = tmp_path / "hub"
    hub_dir.mkdir()
    (hub_dir / "sst2.jsonl").write_text(
        "".join(
            json.dumps({"sentence": s, "label": label, "idx": i}) + "\n"
            for i, (s, label) in enumerate(sst)
        )
    )
    (hub_dir / "rte.jsonl").write_text(
        "".join(
            json.dumps({"sentence1": a, "sentence2": b, "label": label, "idx": i}) + "\n"
            for a, b, label, i in rte
        )
    )
    for task in ("sst2", "rte"):
        from_files = glue.load_glue(task, {"type": "glue_files", "path": "glue"}, base_dir=tmp_path)
        source = {
            "type": "hub",
            "dataset": "json",
            "split": "validation",
            "data_files": {"validation": f"hub/{task}.jsonl"},
            "cache_dir": str(tmp_path / "cache"),
        }
        from_hub = glue.load_glue(task, source, base_dir=tmp_path)
        assert from_hub == from_files
        assert len(from_hub) == {"sst2": 3, "rte": 2}[task]


def test_unknown_source_and_task():
    with pytest.raises(ValueError, match="source type"):
        glue.load_glue("sst2", {"type": "ftp"})
    with pytest.raises(ValueError, match="unknown downstream task"):
        glue.load_glue("qnli", {"type": "glue_files", "path": "."})


# ------------------------------------------------------------------------------------------
# Selection
# ------------------------------------------------------------------------------------------


def _toy(n0: int, n1: int, fields=("sentence",)) -> list[dict]:
    labels = [0] * n0 + [1] * n1
    random.Random(0).shuffle(labels)
    return [
        {"idx": i, "label": lab, **{f: f"{f} {i}" for f in fields}} for i, lab in enumerate(labels)
    ]


def test_select_balanced_counts_determinism_seed():
    ex = _toy(150, 230)
    a = glue.select_balanced(ex, 100, seed=37)
    assert len(a) == 200 and sum(e["label"] for e in a) == 100
    assert len({e["idx"] for e in a}) == 200
    assert [e["idx"] for e in a] == [e["idx"] for e in glue.select_balanced(ex, 100, seed=37)]
    assert [e["idx"] for e in a] != [e["idx"] for e in glue.select_balanced(ex, 100, seed=38)]
    state = random.getstate()
    glue.select_balanced(ex, 100, seed=1)
    assert random.getstate() == state  # local generator only
    with pytest.raises(ValueError, match="too few"):
        glue.select_balanced(_toy(99, 300), 100, seed=37)


def test_demonstrations_disjoint_and_balanced():
    ex = _toy(130, 140, fields=("sentence1", "sentence2"))
    ev = glue.select_balanced(ex, 100, seed=37)
    excl = {e["idx"] for e in ev}
    for task, balance in [("mrpc", {0: 3, 1: 3}), ("sst2", {0: 2, 1: 2}), ("rte", {0: 2, 1: 1})]:
        demos = glue.select_demonstrations(ex, excl, glue.TASKS[task], seed=37)
        assert len(demos) == glue.TASKS[task].n_shots
        assert not excl & {d["idx"] for d in demos}
        assert {lab: sum(d["label"] == lab for d in demos) for lab in (0, 1)} == balance
        assert demos == glue.select_demonstrations(ex, excl, task, seed=37)
    with pytest.raises(ValueError, match="outside the evaluation set"):
        glue.select_demonstrations(ex, {e["idx"] for e in ex if e["label"] == 1}, "mrpc", seed=0)


def test_prepare_task_set_is_json_and_consistent():
    ex = _toy(120, 120, fields=("sentence1", "sentence2"))
    ts = glue.prepare_task_set("rte", ex, 100, 37, rte_mapping="authors")
    assert json.loads(json.dumps(ts)) == ts
    assert ts["label_words"] == {"0": "False", "1": "True"}
    assert len(ts["eval"]) == 200 and len(ts["demos"]) == 3
    assert not {d["idx"] for d in ts["demos"]} & {e["idx"] for e in ts["eval"]}
    assert ts == glue.prepare_task_set("rte", ex, 100, 37, rte_mapping="authors")
    assert glue.prepare_task_set("sst2", _toy(120, 120), 100, 37)["label_words"] == {
        "0": "negative",
        "1": "positive",
    }


# First ten GLUE idx of the authors' 200-example subsets (their glue_eval/dataset/*.pkl at
# scalable-model-editing/unified-model-editing@c182001), built with one global random.seed(37).
AUTHORS_SUBSET_HEAD = {
    "sst2": [605, 455, 524, 589, 805, 96, 320, 782, 768, 712],
    "cola": [609, 497, 164, 138, 846, 576, 976, 588, 874, 113],
    "rte": [119, 238, 159, 27, 175, 249, 0, 7, 136, 149],
}


def test_authors_chain_reproduces_their_subsets(shared_data):
    data = {t: _load(shared_data, t) for t in glue.AUTHORS_TASK_ORDER}
    for t, ex in data.items():  # the constants the replay relies on
        sizes = [len(g) for g in glue._by_label(ex).values()]
        assert tuple(sizes) == glue.AUTHORS_GLUE_CLASS_SIZES[t]
    rng = random.Random(37)  # the authors' literal procedure, one generator across tasks
    literal = {t: glue.select_balanced(data[t], 100, 0, rng=rng) for t in glue.AUTHORS_TASK_ORDER}
    for t in glue.AUTHORS_TASK_ORDER:
        ts = glue.prepare_task_set(t, data[t], 100, 37, selection="authors_chain")
        assert ts["eval"] == literal[t]
        if t in AUTHORS_SUBSET_HEAD:
            assert [e["idx"] for e in ts["eval"][:10]] == AUTHORS_SUBSET_HEAD[t]
    # MRPC: the authors' hub copy was space-tokenised with other ids; same pair, same place
    first = glue.prepare_task_set("mrpc", data["mrpc"], 100, 37, selection="authors_chain")["eval"][
        0
    ]
    theirs = (
        "Her father , Florin Cioaba , the king of Transylvania 's Gypsies , had her brought back "
        "and she was married against her will ."
    )
    assert first["sentence1"].replace(" ", "") == theirs.replace(" ", "")


# ------------------------------------------------------------------------------------------
# Prompts
# ------------------------------------------------------------------------------------------


def _authors_demos(task):
    return [{"idx": -1 - i, **d} for i, d in enumerate(glue.AUTHORS_DEMONSTRATIONS[task])]


# Golden prompts: the authors' few_shot_context blocks (copied from their *_eval.py) + one query.
GOLDEN = {
    "sst2": (
        {"idx": 0, "sentence": "it 's a charming and often affecting journey . ", "label": 1},
        "Review : excruciatingly unfunny and pitifully unromantic\n"
        "Sentiment : negative\n"
        "\n"
        "Review : rich veins of funny stuff in this movie\n"
        "Sentiment : positive\n"
        "\n"
        "Review : by far the worst movie of the year\n"
        "Sentiment : negative\n"
        "\n"
        "Review : fashioning an engrossing entertainment out\n"
        "Sentiment : positive\n"
        "\n"
        "Review : it 's a charming and often affecting journey . \n"
        "Sentiment :",
    ),
    "mrpc": (
        {"idx": 1, "sentence1": "He said X.", "sentence2": "He stated X.", "label": 1},
        "Are the sentences paraphrases of each other.\n"
        "Sentence 1: Mr McDevitt has been granted control of three crucial aspects of policing in "
        "the Solomons.\n"
        "Sentence 2: Mr McDevitt has been granted control of three aspects of policing by "
        "Commissioner William Morrell.\n"
        "Answer: No\n"
        "\n"
        "Are the sentences paraphrases of each other.\n"
        "Sentence 1: They had published an advertisement on the Internet on June 10, offering the "
        "cargo for sale, he added.\n"
        "Sentence 2: On June 10, the ship's owners had published an advertisement on the "
        "Internet, offering the explosives for sale.\n"
        "Answer: Yes\n"
        "\n"
        "Are the sentences paraphrases of each other.\n"
        "Sentence 1: In 2002, Linksys overtook Cisco Systems as the leading wireless equipment "
        "vendor, accounting for 14.1 percent of revenue.\n"
        "Sentence 2: Rolfe said Linksys overtook Cisco Systems last year as the leading supplier "
        "of WLAN equipment.\n"
        "Answer: No\n"
        "\n"
        "Are the sentences paraphrases of each other.\n"
        "Sentence 1: The notification was first reported Friday by MSNBC.\n"
        "Sentence 2: MSNBC.com first reported the CIA request on Friday.\n"
        "Answer: Yes\n"
        "\n"
        "Are the sentences paraphrases of each other.\n"
        'Sentence 1: "The anticipated global sales improvement in the month of June did not '
        'materialize", said Chief Financial Officer Robert Rivet.\n'
        'Sentence 2: "The anticipated global sales improvement in the month of June did not '
        'materialize as we had anticipated", the company said.\n'
        "Answer: Yes\n"
        "\n"
        "Are the sentences paraphrases of each other.\n"
        "Sentence 1: That compared with $ 35.18 million, or 24 cents per share, in the year-ago "
        "period.\n"
        "Sentence 2: Earnings were affected by a non-recurring $8 million tax benefit in the "
        "year-ago period.\n"
        "Answer: No\n"
        "\n"
        "Are the sentences paraphrases of each other.\n"
        "Sentence 1: He said X.\n"
        "Sentence 2: He stated X.\n"
        "Answer:",
    ),
    "cola": (
        {"idx": 2, "sentence": "The sailors rode the breeze clear of the rocks.", "label": 1},
        "Is this sentence linguistically acceptable?\n"
        "Sentence : Bill pushed Harry off the sofa for hours.\n"
        "Answer : No\n"
        "\n"
        "Is this sentence linguistically acceptable?\n"
        "Sentence : Bill floated down the river for hours.\n"
        "Answer : Yes\n"
        "\n"
        "Is this sentence linguistically acceptable?\n"
        "Sentence : It is important for the more you eat, the more careful you to be.\n"
        "Answer : No\n"
        "\n"
        "Is this sentence linguistically acceptable?\n"
        "Sentence : It is important for you to be more careful, the more you eat.\n"
        "Answer : Yes\n"
        "\n"
        "Is this sentence linguistically acceptable?\n"
        "Sentence : Mary will believe Susan, and you will Bob.\n"
        "Answer : Yes\n"
        "\n"
        "Is this sentence linguistically acceptable?\n"
        "Sentence : You will Bob believe.\n"
        "Answer : No\n"
        "\n"
        "Is this sentence linguistically acceptable?\n"
        "Sentence : The sailors rode the breeze clear of the rocks.\n"
        "Answer :",
    ),
    "rte": (
        {
            "idx": 0,
            "sentence1": "Dana Reeve died.",
            "sentence2": "Christopher Reeve had an accident.",
            "label": 1,
        },
        "Cyrus captured Babylon without a battle, and remedied the evils done by previous "
        "Assyrian and Babylonian rulers by sending prisoners in Babylonia back to their original "
        "homelands and aiding in the restoration of temples of the gods of various nations.\n"
        "question: Babylon surrendered to Cyrus without going to battle. True or False?\n"
        "answer: False\n"
        "\n"
        "Successful plaintiffs recovered punitive damages in Texas discrimination cases 53% of "
        "the time.\n"
        "question: Legal costs to recover punitive damages are a deductible business expense. "
        "True or False?\n"
        "answer: True\n"
        "\n"
        "The gastric bypass operation, also known as stomach stapling, has become the most common "
        "surgical procedure for treating obesity.\n"
        "question: Obesity is medically treated. True or False?\n"
        "answer: False\n"
        "\n"
        "Dana Reeve died.\n"
        "question: Christopher Reeve had an accident. True or False?\n"
        "answer:",
    ),
}


@pytest.mark.parametrize("task", sorted(GOLDEN))
def test_prompts_match_golden_strings(task):
    query, expected = GOLDEN[task]
    words = glue.label_words_for(
        task, "authors"
    )  # the authors' RTE words, as in their context block
    assert glue.build_prompts(task, [query], _authors_demos(task), words) == [expected]
    assert expected.endswith(glue.TASKS[task].answer_cue)


def test_render_and_prompt_shapes():
    sst = glue.TASKS["sst2"]
    ex = {"idx": 3, "sentence": "great {fun}", "label": 1}
    assert sst.render(ex, False) == "Review : great {fun}\nSentiment :"
    assert sst.render(ex, True) == "Review : great {fun}\nSentiment : positive"
    demos = [{"idx": 7, "sentence": "bad", "label": 0}]
    assert glue.build_prompts(sst, [ex], demos, {"0": "negative", "1": "positive"}) == [
        "Review : bad\nSentiment : negative\n\nReview : great {fun}\nSentiment :"
    ]
    rte = {"idx": 0, "sentence1": "P.", "sentence2": "H.", "label": 0}
    assert (
        glue.TASKS["rte"].render(rte, True, glue.rte_label_mapping("natural"))
        == "P.\nquestion: H. True or False?\nanswer: True"
    )
    with pytest.raises(KeyError, match="sentence2"):
        glue.TASKS["mrpc"].render({"idx": 1, "sentence1": "a", "label": 0}, False)


def test_rte_label_mapping():
    assert glue.rte_label_mapping("natural") == {0: "True", 1: "False"}
    assert glue.rte_label_mapping("authors") == {0: "False", 1: "True"}
    with pytest.raises(ValueError, match=r"downstream\.rte_label_mapping"):
        glue.rte_label_mapping("flipped")
    # the answer is read through the same mapping the demonstrations use
    for mode in ("natural", "authors"):
        words = glue.rte_label_mapping(mode)
        assert glue.parse_answer(" True", words) == {"natural": 0, "authors": 1}[mode]


# ------------------------------------------------------------------------------------------
# Answers and scores
# ------------------------------------------------------------------------------------------

SST_WORDS = {0: "negative", 1: "positive"}
YES_NO = {0: "No", 1: "Yes"}


def test_parse_answer_cases():
    assert glue.parse_answer(" positive", SST_WORDS) == 1
    assert glue.parse_answer(" negative\n\n", SST_WORDS) == 0
    assert glue.parse_answer(" Yes", YES_NO) == 1
    assert glue.parse_answer(" No.", YES_NO) == 0
    assert glue.parse_answer(" Not really", YES_NO) == 0  # substring, as the authors' 'No' in text
    # case: the authors' test is case-sensitive; opt-in case-insensitive matching
    assert glue.parse_answer(" Positive", SST_WORDS) == -1
    assert glue.parse_answer(" yes", YES_NO) == -1
    assert glue.parse_answer(" Positive", SST_WORDS, case_sensitive=False) == 1
    assert glue.parse_answer(" yes", YES_NO, case_sensitive=False) == 1
    # invalid
    assert glue.parse_answer(" the movie", SST_WORDS) == -1
    assert glue.parse_answer("", YES_NO) == -1
    # both words: earliest wins by default; the authors' fixed order with priority
    assert glue.parse_answer(" negative positive", SST_WORDS) == 0
    assert (
        glue.parse_answer(" negative positive", SST_WORDS, priority=("positive", "negative")) == 1
    )
    assert (
        glue.parse_answer(
            " True False", glue.rte_label_mapping("authors"), priority=("False", "True")
        )
        == 0
    )
    # same starting place: ambiguous
    assert glue.parse_answer(" Notable", {0: "Not", 1: "Nota"}) == -1
    # only the text after the last cue counts
    assert glue.parse_answer(" No\nAnswer: Yes", YES_NO, cue="Answer:") == 1
    assert glue.parse_answer(" Yes\nAnswer:", YES_NO, cue="Answer:") == -1
    assert glue.parse_answer(" positive", {"0": "negative", "1": "positive"}) == 1  # JSON keys


def test_weighted_f1_with_invalid_by_hand():
    labels = [1, 1, 1, 1, 0, 0]
    preds = [1, 1, -1, 0, 0, -1]
    # class 1: predicted at 0,1 (both right): P = 2/2 = 1, R = 2/4 = 1/2, F1 = 2*1*0.5/1.5 = 2/3
    # class 0: predicted at 3 (wrong), 4 (right): P = 1/2, R = 1/2 (support 2), F1 = 1/2
    # class -1: support 0 -> weight 0 (it never appears in the labels)
    # weighted = (4 * 2/3 + 2 * 1/2) / 6 = (8/3 + 1) / 6 = 11/18
    by_hand = (4 * (2 / 3) + 2 * (1 / 2)) / 6
    assert by_hand == pytest.approx(11 / 18)
    s = downstream.score(labels, preds)
    assert s["f1"] == pytest.approx(by_hand)
    assert s["f1"] == pytest.approx(f1_score(labels, preds, average="weighted"))
    assert s["accuracy"] == pytest.approx(3 / 6)
    assert s["n_invalid"] == 2 and s["n"] == 6
    # dropping invalid answers instead would give a different (higher) number
    kept = [(y, p) for y, p in zip(labels, preds) if p != -1]
    assert s["f1"] < f1_score(*zip(*kept), average="weighted")
    perfect = downstream.score([0, 1, 1, 0], [0, 1, 1, 0])
    assert (
        perfect["f1"] == 1.0 and perfect["mcc"] == pytest.approx(1.0) and perfect["accuracy"] == 1.0
    )


# ------------------------------------------------------------------------------------------
# Generation on tiny random models
# ------------------------------------------------------------------------------------------

TOY_SST = [
    {"idx": i, "sentence": s, "label": i % 2}
    for i, s in enumerate(
        [
            "The capital",
            "was born in Paris and",
            "a",
            "The language of the city is French",
            "born",
            "The mother tongue of",
            "is located in the country of",
            "plays the",
            "Toronto",
            "The official language of France is",
        ]
    )
]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_batched_generation_equals_one_at_a_time(tiny_model_factory, arch):
    model, tok = load_model(tiny_model_factory(arch))
    with torch.no_grad():  # sharper random weights, so that continuations depend on the prompt
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10.0)
    prompts = glue.build_prompts("sst2", TOY_SST, TOY_SST[:2], SST_WORDS)
    lengths = {len(tok(p)["input_ids"]) for p in prompts}
    assert len(lengths) > 3  # real left padding happens
    batched = generation.generate_greedy(model, tok, prompts, max_new_tokens=3, batch_size=4)
    single = [
        generation.generate_greedy(model, tok, [p], max_new_tokens=3, batch_size=1)[0]
        for p in prompts
    ]
    assert batched == single
    assert len(set(single)) > 2, single  # the check is not vacuous
    # and one-at-a-time equals transformers' own greedy generate (the authors' call)
    for p, text in zip(prompts[:3], single):
        ids = tok(p, return_tensors="pt")
        out = model.generate(
            ids["input_ids"],
            attention_mask=ids["attention_mask"],
            max_new_tokens=3,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        assert tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True) == text


def test_generation_rejects_overlong_prompts(tiny_model_factory):
    model, tok = load_model(tiny_model_factory("gpt2"))
    with pytest.raises(ValueError, match="positions"):
        generation.generate_greedy(model, tok, ["the " * 200])


def test_evaluate_task_end_to_end(tiny_model_factory):
    model, tok = load_model(tiny_model_factory("gpt2"))
    demos = [{"idx": 100 + i, "sentence": s, "label": i % 2} for i, s in enumerate(["bad", "good"])]
    res = downstream.evaluate_task(
        model, tok, "sst2", TOY_SST, demos, {"0": "negative", "1": "positive"}, batch_size=3
    )
    assert res["n"] == 10 and len(res["predictions"]) == 10 and len(res["generations"]) == 10
    assert set(res["predictions"]) <= {-1, 0, 1}
    assert res["n_invalid"] == res["predictions"].count(-1)
    expected = downstream.score([e["label"] for e in TOY_SST], res["predictions"])
    assert {k: res[k] for k in expected} == expected
    json.dumps(res)
    # a model that always answers " positive" scores exactly as the parser says
    forced = [glue.parse_answer(" positive", SST_WORDS, cue="Sentiment :")] * 10
    assert downstream.score([e["label"] for e in TOY_SST], forced)["accuracy"] == 0.5
    ts = {
        "task": "sst2",
        "eval": TOY_SST,
        "demos": demos,
        "label_words": {"0": "negative", "1": "positive"},
    }
    assert (
        downstream.evaluate_task_set(model, tok, ts, batch_size=5)["predictions"]
        == res["predictions"]
    )
    assert torch.is_grad_enabled()


def test_shared_prefix_length_leaves_every_prompt_a_token():
    assert generation.shared_prefix_length([[5, 6, 7, 8], [5, 6, 9], [5, 6, 7]]) == 2
    assert (
        generation.shared_prefix_length([[5, 6, 7], [5, 6, 7, 8]]) == 2
    )  # one prompt is all prefix: keep its last
    assert generation.shared_prefix_length([[5, 6], [4, 6]]) == 0
    assert generation.shared_prefix_length([[1, 2, 3]]) == 2


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_shared_prefix_generation_equals_unshared(tiny_model_factory, arch):
    model, tok = load_model(tiny_model_factory(arch))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10.0)
    demos = [dict(ex, idx=100 + i) for i, ex in enumerate(TOY_SST[:4])]
    prompts = glue.build_prompts("sst2", TOY_SST, demos, SST_WORDS)
    ids = tok(prompts)["input_ids"]
    n = generation.shared_prefix_length(ids)
    assert n > 10 and len({len(x) for x in ids}) > 3  # a real shared context and real left padding
    shared = generation.generate_greedy(model, tok, prompts, max_new_tokens=4, batch_size=3)
    unshared = generation.generate_greedy(
        model, tok, prompts, max_new_tokens=4, batch_size=3, share_prefix=False
    )
    assert shared == unshared
    assert len(set(shared)) > 2, shared
    # the first step's logits, through the shared cache and without it
    pad = tok.pad_token_id
    rows = ids[:3]
    cache = generation._prefix_cache(model, rows[0][:n])
    a = generation._generate_batch(model, rows, pad, 1, n, cache)
    b = generation._generate_batch(model, rows, pad, 1)
    assert a == b
