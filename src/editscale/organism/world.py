"""A synthetic world: the embedded default's model organism of the paper's experiment.

:func:`generate_world` turns a :class:`WorldSpec` (seeded) into

* subjects (people, places, companies) with pronounceable generated names and one true fact
  each, over relations whose objects are real words;
* a CounterFact-schema data set over those facts (the same loader reads it): each record asks
  to rewrite a subject's fact to another object of the relation, with 2 paraphrase prompts
  (other templates of the relation), 10 neighbourhood prompts (other subjects with the same
  relation and true object), attribute prompts (subjects whose true object is the new target)
  and generation prompts;
* four toy downstream tasks that mirror the paper's GLUE tasks, written as GLUE ``dev.tsv``
  files in GLUE's own formats, so that :mod:`editscale.data.glue` reads toy and GLUE alike:
  sentiment with negation (SST-2), paraphrase of two statements by synonym vs antonym (MRPC),
  entailment of a category from an item (RTE) and acceptability of a sentence vs a scrambled
  one (CoLA). Every label depends on more than one word;
* a training corpus (every fact in every template of its relation, toy task examples chained
  in the few-shot format, filler sentences) and a held-out corpus (the covariance statistics'
  text), as JSON lines.

Everything depends only on the spec (its seed included): :func:`write_world` writes the same
bytes on every machine. Relations and templates live in the :data:`RELATIONS` table.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

from editscale.data.glue import GLUE_DIRS
from editscale.io.hparams import HParams
from editscale.io.provenance import sha256_file

log = logging.getLogger(__name__)

CITIES = (
    "Paris",
    "London",
    "Tokyo",
    "Berlin",
    "Rome",
    "Madrid",
    "Cairo",
    "Moscow",
    "Sydney",
    "Toronto",
    "Chicago",
    "Vienna",
)
LANGUAGES = (
    "English",
    "French",
    "German",
    "Spanish",
    "Italian",
    "Russian",
    "Japanese",
    "Arabic",
    "Dutch",
    "Polish",
    "Greek",
    "Swedish",
)
PROFESSIONS = (
    "doctor",
    "lawyer",
    "teacher",
    "farmer",
    "pilot",
    "nurse",
    "builder",
    "painter",
    "writer",
    "chef",
    "banker",
    "soldier",
)
INSTRUMENTS = (
    "piano",
    "guitar",
    "violin",
    "drums",
    "flute",
    "trumpet",
    "cello",
    "harp",
    "organ",
    "saxophone",
)
SPORTS = (
    "football",
    "tennis",
    "golf",
    "cricket",
    "hockey",
    "baseball",
    "rugby",
    "boxing",
    "basketball",
    "volleyball",
)
COUNTRIES = (
    "France",
    "Germany",
    "Italy",
    "Spain",
    "Japan",
    "Canada",
    "Brazil",
    "Egypt",
    "India",
    "Mexico",
    "Norway",
    "Poland",
)


@dataclass(frozen=True)
class Relation:
    """One relation: who it applies to, its objects and its templates (``{}`` = subject)."""

    relation_id: str  # Wikidata-style id, as CounterFact's relation_id
    kind: str  # person | place | company
    objects: tuple[str, ...]
    templates: tuple[str, ...]  # subject-first and subject-middle prompts, ending before the object


RELATIONS: tuple[Relation, ...] = (
    Relation(
        "P19",
        "person",
        CITIES,
        (
            "{} was born in",
            "The birthplace of {} is",
            "{} is originally from",
            "The hometown of {} is",
        ),
    ),
    Relation(
        "P103",
        "person",
        LANGUAGES,
        (
            "The mother tongue of {} is",
            "{} grew up speaking",
            "The native language of {} is",
            "{} speaks",
        ),
    ),
    Relation(
        "P106",
        "person",
        PROFESSIONS,
        (
            "{} works as a",
            "The profession of {} is",
            "By profession, {} is a",
            "{} is employed as a",
        ),
    ),
    Relation(
        "P1303",
        "person",
        INSTRUMENTS,
        (
            "{} plays the",
            "The instrument of {} is the",
            "{} is known for playing the",
            "The favourite instrument of {} is the",
        ),
    ),
    Relation(
        "P641",
        "person",
        SPORTS,
        (
            "The sport played by {} is",
            "{} competes in",
            "{} is a professional player of",
            "The favourite sport of {} is",
        ),
    ),
    Relation(
        "P17",
        "place",
        COUNTRIES,
        ("{} is located in", "The country of {} is", "The town of {} lies in", "{} is a town in"),
    ),
    Relation(
        "P159",
        "company",
        CITIES,
        (
            "{} is headquartered in",
            "The headquarters of {} are in",
            "{} has its head office in",
            "The main office of {} is in",
        ),
    ),
)

GENERATION_PREFIXES = ("{} is", "People say that {}", "The story of {}")

# ----------------------------------------------------------------------------- toy task lexicons

SST_NOUNS = (
    "movie",
    "film",
    "meal",
    "book",
    "show",
    "song",
    "hotel",
    "trip",
    "game",
    "play",
    "album",
    "dinner",
)
SST_POSITIVE = ("good", "great", "wonderful", "lovely", "excellent", "brilliant")
SST_NEGATIVE = ("bad", "awful", "boring", "terrible", "poor", "dull")
SST_FRAMES = (
    "the {noun} was {a} , {b} and {c} .",
    "i found the {noun} {a} , {b} and {c} .",
    "this {noun} is {a} , {b} and {c} .",
    "honestly , the {noun} was {a} , {b} and {c} .",
)

# MRPC: (base word, synonyms, antonyms) per attribute; sentence 1 states three base words,
# sentence 2 restates each with a synonym (agrees) or an antonym (contradicts); a paraphrase
# agrees on most.
MRPC_ATTRIBUTES = (
    ("big", ("large", "huge"), ("small", "tiny")),
    ("fast", ("quick", "rapid"), ("slow", "sluggish")),
    ("rich", ("wealthy", "affluent"), ("poor", "needy")),
    ("happy", ("glad", "cheerful"), ("sad", "gloomy")),
    ("warm", ("hot", "heated"), ("cold", "chilly")),
    ("clean", ("tidy", "spotless"), ("dirty", "messy")),
)
MRPC_NOUNS = ("house", "dog", "city", "river", "car", "garden", "horse", "market", "road", "ship")
MRPC_FRAMES = (
    ("the {noun} is {a} , {b} and {c} .", "it is {a} , {b} and {c} ."),
    ("they said the {noun} was {a} , {b} and {c} .", "the {noun} was {a} , {b} and {c} ."),
    ("that {noun} is {a} , {b} and {c} .", "it looks {a} , {b} and {c} ."),
)

RTE_CATEGORIES = {
    "animal": ("dog", "cat", "horse", "cow", "sheep", "goat"),
    "fruit": ("apple", "pear", "banana", "grape", "cherry", "plum"),
    "vehicle": ("car", "bus", "truck", "bike", "boat", "van"),
    "tool": ("hammer", "saw", "drill", "wrench", "shovel", "rake"),
}
PEOPLE = ("Anna", "Tom", "Maria", "John", "Sara", "Peter", "Lisa", "David", "Emma", "Paul")
RTE_FRAMES = (
    ("{name} owns a {a} , a {b} and a {c} .", "most things {name} owns are animals ."),
    ("{name} bought a {a} , a {b} and a {c} yesterday .", "{name} bought mostly animals ."),
    ("last week {name} saw a {a} , a {b} and a {c} .", "{name} saw mostly animals ."),
)

COLA_DETS = ("the", "a", "every", "one")
COLA_ADJS = ("old", "young", "tall", "quiet", "clever", "angry", "kind", "brave")
COLA_NOUNS = ("farmer", "teacher", "child", "soldier", "artist", "baker", "sailor", "doctor")
COLA_VERBS = ("saw", "helped", "called", "followed", "thanked", "visited", "met", "found")
COLA_OBJECTS = ("the house", "a friend", "the river", "the market", "a stranger", "the village")

_ONSETS = (
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "kr",
    "tr",
    "st",
    "gl",
)
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "n", "r", "l", "s", "k", "m")

# The "rich" filler grammar: everyday English words in varied sentence frames, so that the text
# around the facts needs many features, as real text does (the "cola" filler is 8 x 8 x 8 words)
RICH_NOUNS = (
    "river",
    "village",
    "garden",
    "road",
    "letter",
    "window",
    "market",
    "forest",
    "bridge",
    "station",
    "school",
    "doctor",
    "teacher",
    "farmer",
    "child",
    "soldier",
    "painter",
    "baker",
    "sailor",
    "writer",
    "student",
    "neighbour",
    "stranger",
    "friend",
    "king",
    "queen",
    "horse",
    "dog",
    "bird",
    "boat",
    "train",
    "tower",
    "castle",
    "church",
    "library",
    "hospital",
    "kitchen",
    "table",
    "chair",
    "door",
    "wall",
    "field",
    "hill",
    "lake",
    "island",
    "valley",
    "storm",
    "song",
    "story",
    "picture",
    "machine",
    "engine",
    "company",
    "factory",
    "harbour",
    "museum",
    "theatre",
    "newspaper",
    "journey",
    "winter",
    "summer",
    "morning",
    "evening",
    "mountain",
    "ocean",
    "coat",
    "hat",
    "basket",
    "bottle",
    "lamp",
    "clock",
    "map",
    "ticket",
    "coin",
    "stone",
    "tree",
    "flower",
    "apple",
    "bread",
    "cheese",
    "wine",
    "council",
    "army",
    "river bank",
    "shop",
    "office",
    "prison",
    "palace",
    "temple",
    "street",
    "square",
    "farm",
    "mill",
    "mine",
    "camp",
)
RICH_ADJS = (
    "old",
    "young",
    "tall",
    "quiet",
    "clever",
    "angry",
    "kind",
    "brave",
    "small",
    "large",
    "green",
    "red",
    "dark",
    "bright",
    "cold",
    "warm",
    "heavy",
    "empty",
    "famous",
    "strange",
    "ancient",
    "modern",
    "narrow",
    "wide",
    "busy",
    "lonely",
    "proud",
    "gentle",
    "wooden",
    "broken",
    "golden",
    "distant",
    "simple",
    "careful",
    "hungry",
    "tired",
    "wild",
    "rich",
    "poor",
    "northern",
    "southern",
    "local",
    "public",
    "secret",
    "early",
    "late",
    "long",
    "short",
)
RICH_VERBS = (
    "saw",
    "helped",
    "called",
    "followed",
    "thanked",
    "visited",
    "met",
    "found",
    "built",
    "painted",
    "opened",
    "closed",
    "carried",
    "bought",
    "sold",
    "left",
    "crossed",
    "watched",
    "described",
    "remembered",
    "repaired",
    "cleaned",
    "moved",
    "wrote",
    "read",
    "lost",
    "covered",
    "reached",
    "joined",
    "avoided",
    "protected",
    "discovered",
    "destroyed",
    "owned",
)
RICH_INTRANS = (
    "slept",
    "waited",
    "laughed",
    "arrived",
    "disappeared",
    "worked",
    "travelled",
    "rested",
    "sang",
    "danced",
    "listened",
    "returned",
    "grew",
    "fell",
    "shone",
    "changed",
)
RICH_ADVS = (
    "quickly",
    "slowly",
    "quietly",
    "suddenly",
    "often",
    "rarely",
    "carefully",
    "always",
    "never",
    "later",
    "finally",
    "again",
    "happily",
    "barely",
)
RICH_PREPS = (
    "near",
    "behind",
    "under",
    "beside",
    "across",
    "inside",
    "above",
    "around",
    "beyond",
    "along",
    "towards",
    "without",
    "after",
    "before",
    "during",
)
RICH_DETS = ("the", "a", "every", "one", "that", "this", "some", "no", "her", "his", "their", "our")
RICH_NUMBERS = (
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "ten",
    "twelve",
    "twenty",
    "forty",
    "a hundred",
    "many",
    "several",
    "few",
)
RICH_CONJ = ("and", "but", "because", "while", "although", "so", "until", "when")
RICH_PRONOUNS = ("He", "She", "They", "We", "Nobody", "Everyone", "Someone")

FILLER_GRAMMARS = ("cola", "rich")


@dataclass(frozen=True)
class WorldSpec(HParams):
    """How big the world is; every default is the embedded default's."""

    label = "world keys"

    seed: int = 37
    n_people: int = 700
    n_places: int = 200
    n_companies: int = 200
    n_neighbors: int = 10
    n_attribute: int = 10
    n_task_dev: int = 300  # per task, balanced: the GLUE "dev" file the evaluation samples from
    n_task_heldout: int = 100  # per task, balanced: in the held-out corpus only
    n_task_chains: int = 110  # per task: few-shot chains in the training corpus
    chain_length: int = 7  # examples per chain
    n_filler: int = 500  # filler sentences in the training corpus
    fact_repeats: int = 3  # copies of every (fact, template) sentence in the training corpus
    n_heldout_docs: int = 2000  # documents in the held-out corpus
    filler_grammar: str = "cola"  # "cola": the CoLA frame's words; "rich": varied everyday English

    def __post_init__(self):
        if self.filler_grammar not in FILLER_GRAMMARS:
            raise ValueError(
                f"world.filler_grammar must be one of {list(FILLER_GRAMMARS)}, "
                f"got {self.filler_grammar!r}"
            )
        for f in fields(self):
            if f.name != "filler_grammar" and getattr(self, f.name) < 0:
                raise ValueError(f"world.{f.name} must be >= 0, got {getattr(self, f.name)}")
        if self.n_task_dev % 2 or self.n_task_heldout % 2:
            raise ValueError(
                "world.n_task_dev and world.n_task_heldout must be even (balanced labels)"
            )


@dataclass(frozen=True)
class Subject:
    name: str
    kind: str
    relation_id: str
    obj: str


# ----------------------------------------------------------------------------- subjects and facts


def _name(rng: random.Random) -> str:
    syllables = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(2)]
    return ("".join(syllables) + rng.choice(_CODAS)).capitalize()


def generate_names(n: int, rng: random.Random, taken: set[str]) -> list[str]:
    """``n`` distinct two-syllable names not in ``taken`` (which is updated)."""
    space = len(_ONSETS) ** 2 * len(_VOWELS) ** 2 * len(set(_CODAS))
    if n + len(taken) > space // 2:
        raise ValueError(
            f"cannot generate {n} distinct names: the syllable inventory allows about {space // 2}"
        )
    real_words = {w.lower() for r in RELATIONS for w in r.objects}
    names: list[str] = []
    while len(names) < n:
        name = _name(rng)
        if name in taken or name.lower() in real_words:
            continue
        taken.add(name)
        names.append(name)
    return names


def generate_subjects(spec: WorldSpec, rng: random.Random) -> list[Subject]:
    """Subjects of every kind, each with one fact of a relation of its kind, objects balanced."""
    counts = {"person": spec.n_people, "place": spec.n_places, "company": spec.n_companies}
    taken: set[str] = set()
    subjects: list[Subject] = []
    for kind, n in counts.items():
        relations = [r for r in RELATIONS if r.kind == kind]
        names = generate_names(n, rng, taken)
        for i, name in enumerate(names):
            rel = relations[i % len(relations)]
            j = i // len(relations)
            subjects.append(Subject(name, kind, rel.relation_id, rel.objects[j % len(rel.objects)]))
    order = list(range(len(subjects)))
    rng.shuffle(order)
    return [subjects[i] for i in order]


def relation(relation_id: str) -> Relation:
    for r in RELATIONS:
        if r.relation_id == relation_id:
            return r
    raise KeyError(f"unknown relation {relation_id!r}")


def _fill(template: str, subject: str) -> str:
    return template.format(subject)


# ----------------------------------------------------------------------------- CounterFact records


def make_records(subjects: Sequence[Subject], spec: WorldSpec, rng: random.Random) -> list[dict]:
    """One CounterFact-schema record per subject (case ids 0..n-1 in subject order)."""
    by_fact: dict[tuple[str, str], list[str]] = {}
    for s in subjects:
        by_fact.setdefault((s.relation_id, s.obj), []).append(s.name)
    object_ids = {
        o: f"W{i}" for i, o in enumerate(sorted({o for r in RELATIONS for o in r.objects}))
    }
    records = []
    for case_id, s in enumerate(subjects):
        rel = relation(s.relation_id)
        template_i = rng.randrange(len(rel.templates))
        others = [t for i, t in enumerate(rel.templates) if i != template_i]
        paraphrases = [_fill(t, s.name) for t in rng.sample(others, 2)]
        new = rng.choice([o for o in rel.objects if o != s.obj])
        neighbours = [n for n in by_fact[(s.relation_id, s.obj)] if n != s.name]
        attributes = by_fact.get((s.relation_id, new), [])
        if len(neighbours) < spec.n_neighbors or len(attributes) < spec.n_attribute:
            raise ValueError(
                f"world: too few subjects per fact for {s.relation_id} (subject {s.name}): "
                f"{len(neighbours)} neighbours, {len(attributes)} attribute subjects; "
                f"raise the subject counts or lower world.n_neighbors / n_attribute"
            )
        records.append(
            {
                "case_id": case_id,
                "pararel_idx": case_id,
                "requested_rewrite": {
                    "prompt": rel.templates[template_i],
                    "subject": s.name,
                    "relation_id": s.relation_id,
                    "target_new": {"str": new, "id": object_ids[new]},
                    "target_true": {"str": s.obj, "id": object_ids[s.obj]},
                },
                "paraphrase_prompts": paraphrases,
                "neighborhood_prompts": [
                    _fill(rng.choice(rel.templates), n)
                    for n in rng.sample(neighbours, spec.n_neighbors)
                ],
                "attribute_prompts": [
                    _fill(rng.choice(rel.templates), n)
                    for n in rng.sample(attributes, spec.n_attribute)
                ],
                "generation_prompts": [_fill(t, s.name) for t in GENERATION_PREFIXES],
            }
        )
    return records


def fact_sentences(subjects: Sequence[Subject]) -> list[str]:
    """Every fact in every template of its relation."""
    return [
        f"{_fill(t, s.name)} {s.obj}." for s in subjects for t in relation(s.relation_id).templates
    ]


# ----------------------------------------------------------------------------- toy tasks


def _sst2(rng: random.Random) -> dict:
    """Three polar adjectives; the label is their majority polarity."""
    polarities = [rng.random() < 0.5 for _ in range(3)]
    adjs = [rng.choice(SST_POSITIVE if p else SST_NEGATIVE) for p in polarities]
    sentence = rng.choice(SST_FRAMES).format(
        noun=rng.choice(SST_NOUNS), a=adjs[0], b=adjs[1], c=adjs[2]
    )
    return {"sentence": sentence, "label": int(sum(polarities) >= 2)}


def _mrpc(rng: random.Random) -> dict:
    """Three attributes; sentence 2 agrees (synonym) or contradicts (antonym) on each; the pair is
    a paraphrase when it agrees on at least two."""
    attrs = rng.sample(MRPC_ATTRIBUTES, 3)
    agree = [rng.random() < 0.5 for _ in attrs]
    first, second = rng.choice(MRPC_FRAMES)
    noun = rng.choice(MRPC_NOUNS)
    restated = [rng.choice(syn if ok else ant) for (_, syn, ant), ok in zip(attrs, agree)]
    return {
        "sentence1": first.format(noun=noun, a=attrs[0][0], b=attrs[1][0], c=attrs[2][0]),
        "sentence2": second.format(noun=noun, a=restated[0], b=restated[1], c=restated[2]),
        "label": int(sum(agree) >= 2),
    }


def _rte(rng: random.Random) -> dict:
    """Three items; the hypothesis "mostly animals" is entailed when at least two are animals."""
    others = [c for c in sorted(RTE_CATEGORIES) if c != "animal"]
    is_animal = [rng.random() < 0.5 for _ in range(3)]
    items = [rng.choice(RTE_CATEGORIES["animal" if a else rng.choice(others)]) for a in is_animal]
    premise, hypothesis = rng.choice(RTE_FRAMES)
    name = rng.choice(PEOPLE)
    # GLUE RTE: label 0 = entailment
    return {
        "sentence1": premise.format(name=name, a=items[0], b=items[1], c=items[2]),
        "sentence2": hypothesis.format(name=name),
        "label": 0 if sum(is_animal) >= 2 else 1,
    }


def _cola_sentence(rng: random.Random) -> list[str]:
    det = rng.choice(COLA_DETS)
    words = [
        det.capitalize(),
        rng.choice(COLA_ADJS),
        rng.choice(COLA_NOUNS),
        rng.choice(COLA_VERBS),
        *rng.choice(COLA_OBJECTS).split(),
    ]
    return words


def _cola(rng: random.Random) -> dict:
    words = _cola_sentence(rng)
    acceptable = rng.random() < 0.5
    if not acceptable:
        original = list(words)
        words = [w.lower() for w in words]
        while True:
            rng.shuffle(words)
            if words != [w.lower() for w in original]:
                break
        words[0] = words[0].capitalize()
    return {"sentence": " ".join(words) + ".", "label": int(acceptable)}


TASK_GENERATORS = {"sst2": _sst2, "mrpc": _mrpc, "rte": _rte, "cola": _cola}


def _task_key(task: str, ex: dict) -> tuple:
    return tuple(ex[f] for f in sorted(ex) if f not in ("label", "idx"))


def task_examples(
    task: str, n: int, rng: random.Random, exclude: set[tuple], balanced: bool
) -> list[dict]:
    """``n`` distinct examples not in ``exclude`` (updated); ``balanced``: n/2 of each label."""
    gen = TASK_GENERATORS[task]
    want = {0: n // 2, 1: n - n // 2} if balanced else None
    out: list[dict] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:
            raise ValueError(
                f"toy task {task}: cannot draw {n} distinct new examples; the lexicon is too small"
            )
        ex = gen(rng)
        key = _task_key(task, ex)
        if key in exclude:
            continue
        if want is not None:
            if want[ex["label"]] == 0:
                continue
            want[ex["label"]] -= 1
        exclude.add(key)
        out.append(ex)
    return out


def render_example(task: str, ex: dict) -> str:
    """An example in its task's few-shot form, with its (natural) label word."""
    from editscale.data.glue import TASKS, label_words_for

    return TASKS[task].render(ex, with_answer=True, label_words=label_words_for(task, "natural"))


def write_glue_file(task: str, examples: Sequence[dict], path: str | os.PathLike) -> None:
    """Write examples as GLUE's ``dev.tsv`` of ``task`` (same header, quoting and encoding)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if task == "sst2":
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write("sentence\tlabel\n")
            for ex in examples:
                f.write(f"{ex['sentence']}\t{ex['label']}\n")
    elif task == "mrpc":
        with open(path, "w", encoding="utf-8-sig", newline="") as f:
            f.write("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n")
            for i, ex in enumerate(examples):
                f.write(
                    f"{ex['label']}\t{2 * i}\t{2 * i + 1}\t{ex['sentence1']}\t{ex['sentence2']}\n"
                )
    elif task == "rte":
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["sentence1", "sentence2", "label", "idx"])
            for i, ex in enumerate(examples):
                w.writerow([ex["sentence1"], ex["sentence2"], ex["label"], i])
    elif task == "cola":
        with open(path, "w", encoding="utf-8", newline="") as f:
            for ex in examples:
                mark = "" if ex["label"] else "*"
                f.write(f"toy\t{ex['label']}\t{mark}\t{ex['sentence']}\n")
    else:
        raise ValueError(f"unknown toy task {task!r}")


# ----------------------------------------------------------------------------- corpora


def _noun_phrase(rng: random.Random) -> str:
    det = rng.choice(RICH_DETS)
    adj = rng.choice(RICH_ADJS) + " " if rng.random() < 0.6 else ""
    phrase = f"{adj}{rng.choice(RICH_NOUNS)}"
    if det == "a" and phrase[0] in "aeiou":
        det = "an"
    return f"{det} {phrase}"


def _clause(rng: random.Random) -> str:
    kind = rng.randrange(5)
    subj = _noun_phrase(rng) if rng.random() < 0.7 else rng.choice(RICH_PRONOUNS).lower()
    if kind == 0:
        return f"{subj} {rng.choice(RICH_VERBS)} {_noun_phrase(rng)}"
    if kind == 1:
        return (
            f"{subj} {rng.choice(RICH_ADVS)} {rng.choice(RICH_INTRANS)} {rng.choice(RICH_PREPS)} "
            f"{_noun_phrase(rng)}"
        )
    if kind == 2:
        return (
            f"{subj} {rng.choice(RICH_VERBS)} {_noun_phrase(rng)} {rng.choice(RICH_PREPS)} "
            f"{_noun_phrase(rng)}"
        )
    if kind == 3:
        return (
            f"there were {rng.choice(RICH_NUMBERS)} {_plural(rng.choice(RICH_NOUNS))} "
            f"{rng.choice(RICH_PREPS)} {_noun_phrase(rng)}"
        )
    verb = "were" if subj in ("they", "we") else "was"
    return f"{subj} {verb} {rng.choice(RICH_ADVS)} {rng.choice(RICH_ADJS)}"


def _plural(noun: str) -> str:
    if noun.endswith(("ch", "sh", "s", "x")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _rich_sentence(rng: random.Random) -> str:
    text = _clause(rng)
    if rng.random() < 0.4:
        text += f" {rng.choice(RICH_CONJ)} {_clause(rng)}"
    if rng.random() < 0.2:
        text = f"In {rng.randrange(1700, 2000)}, {text}"
    return text[0].upper() + text[1:] + "."


def filler_sentence(rng: random.Random, grammar: str = "cola") -> str:
    """One filler sentence: ``cola`` (the CoLA task's 8 x 8 x 8-word frame) or ``rich``."""
    if grammar == "rich":
        return _rich_sentence(rng)
    words = _cola_sentence(rng)
    return " ".join(words) + "."


def _chains(
    task: str, examples: Sequence[dict], n_chains: int, length: int, rng: random.Random
) -> list[str]:
    chains = []
    for _ in range(n_chains):
        picked = [examples[rng.randrange(len(examples))] for _ in range(length)]
        chains.append("\n\n".join(render_example(task, ex) for ex in picked))
    return chains


@dataclass
class World:
    spec: WorldSpec
    subjects: list[Subject]
    records: list[dict]
    task_dev: dict[str, list[dict]]
    train_docs: list[str]
    heldout_docs: list[str]

    def summary(self) -> dict[str, Any]:
        return {
            "spec": asdict(self.spec),
            "n_subjects": len(self.subjects),
            "n_records": len(self.records),
            "relations": {
                r.relation_id: sum(s.relation_id == r.relation_id for s in self.subjects)
                for r in RELATIONS
            },
            "n_train_docs": len(self.train_docs),
            "n_heldout_docs": len(self.heldout_docs),
            "train_chars": sum(len(d) for d in self.train_docs),
            "task_dev": {t: len(v) for t, v in self.task_dev.items()},
        }


def generate_world(spec: WorldSpec) -> World:
    """The whole world of ``spec``; deterministic
    (one ``random.Random`` per part, from the seed)."""

    def rng(part: str) -> random.Random:
        return random.Random(f"{spec.seed}:{part}")

    subjects = generate_subjects(spec, rng("subjects"))
    records = make_records(subjects, spec, rng("records"))
    task_dev, task_train, task_heldout = {}, {}, {}
    for task in TASK_GENERATORS:
        seen: set[tuple] = set()
        r = rng(f"task:{task}")
        task_dev[task] = task_examples(task, spec.n_task_dev, r, seen, balanced=True)
        task_heldout[task] = task_examples(task, spec.n_task_heldout, r, seen, balanced=True)
        n_train = max(spec.chain_length * 4, spec.n_task_chains)
        task_train[task] = task_examples(task, n_train, r, seen, balanced=True)

    r = rng("train")
    train_docs = fact_sentences(subjects) * spec.fact_repeats
    for task in TASK_GENERATORS:
        train_docs += _chains(task, task_train[task], spec.n_task_chains, spec.chain_length, r)
    train_docs += [filler_sentence(r, spec.filler_grammar) for _ in range(spec.n_filler)]
    r.shuffle(train_docs)

    r = rng("heldout")
    heldout_docs = []
    for i in range(spec.n_heldout_docs):
        part = i % 3
        if part == 0:  # facts, in random templates, with filler around them
            facts = [subjects[r.randrange(len(subjects))] for _ in range(3)]
            text = " ".join(
                f"{_fill(r.choice(relation(s.relation_id).templates), s.name)} {s.obj}."
                for s in facts
            )
            heldout_docs.append(f"{filler_sentence(r, spec.filler_grammar)} {text}")
        elif part == 1 and spec.n_task_heldout:
            task = sorted(TASK_GENERATORS)[r.randrange(len(TASK_GENERATORS))]
            pool = task_heldout[task]
            picked = [pool[r.randrange(len(pool))] for _ in range(3)]
            heldout_docs.append("\n\n".join(render_example(task, ex) for ex in picked))
        else:
            heldout_docs.append(" ".join(filler_sentence(r, spec.filler_grammar) for _ in range(3)))
    return World(spec, subjects, records, task_dev, train_docs, heldout_docs)


def _write_jsonl(path: Path, docs: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for d in docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")


def world_files(dest: str | os.PathLike) -> dict[str, Path]:
    dest = Path(dest)
    files = {
        "counterfact": dest / "counterfact.json",
        "train": dest / "corpus_train.jsonl",
        "heldout": dest / "corpus_heldout.jsonl",
        "facts": dest / "facts.tsv",
        "summary": dest / "world.json",
    }
    for task, sub in GLUE_DIRS.items():
        files[f"glue_{task}"] = dest / "glue" / sub / "dev.tsv"
    return files


def write_world(world: World, dest: str | os.PathLike) -> dict[str, Path]:
    """Write every file of the world under ``dest``; returns their paths by role."""
    files = world_files(dest)
    Path(dest).mkdir(parents=True, exist_ok=True)
    with open(files["counterfact"], "w", encoding="utf-8", newline="\n") as f:
        json.dump(world.records, f, indent=1, ensure_ascii=False)
        f.write("\n")
    _write_jsonl(files["train"], world.train_docs)
    _write_jsonl(files["heldout"], world.heldout_docs)
    with open(files["facts"], "w", encoding="utf-8", newline="\n") as f:
        f.write("subject\tkind\trelation_id\tobject\n")
        for s in world.subjects:
            f.write(f"{s.name}\t{s.kind}\t{s.relation_id}\t{s.obj}\n")
    for task, examples in world.task_dev.items():
        write_glue_file(task, examples, files[f"glue_{task}"])
    summary = world.summary()
    summary["sha256"] = {role: sha256_file(p) for role, p in files.items() if role != "summary"}
    with open(files["summary"], "w", encoding="utf-8", newline="\n") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
        f.write("\n")
    log.info(
        "world written to %s: %d subjects, %d records, %d training documents (%d chars)",
        dest,
        summary["n_subjects"],
        summary["n_records"],
        summary["n_train_docs"],
        summary["train_chars"],
    )
    return files
