"""Few-shot downstream evaluation of a (possibly edited) causal LM on four binary GLUE tasks.

Follows the authors' own evaluation code (``glue_eval/{sst,mrpc,cola,rte}_eval.py`` and
``glue_eval/dataset/create_glue_subset.py`` in
scalable-model-editing/gradual-catastrophic-forgetting and its successor
scalable-model-editing/unified-model-editing, first commit c182001):

Prompt format
    One example renders as the task's template (PAPER.md table) ending with the answer cue;
    a demonstration appends ``" " + label word``. The prompt is every demonstration followed by
    ``"\\n\\n"``, then the query with nothing after the cue, i.e.
    ``"\\n\\n".join(demos + [query])``. This is byte-for-byte the authors' ``few_shot_context``
    (a triple-quoted block whose demonstrations end in a blank line) + ``prefix + query + cue``.
    Field text is used verbatim (SST-2 sentences keep their trailing space, as in the authors'
    prompts). The prompt is tokenised with the tokenizer's default special tokens, as
    ``tokenizer.encode`` does there.

Demonstrations
    The authors used fixed hand-picked training-set demonstrations (kept verbatim in
    :data:`AUTHORS_DEMONSTRATIONS`, ``demo_source="authors"``). The default
    (``demo_source="sampled"``) draws them, seeded, from the validation examples outside the
    evaluation set, with the per-label counts of :attr:`TaskSpec.demo_balance` (the authors'
    balance: SST-2 2+2, MRPC 3+3, CoLA 3+3, RTE 2 entailment + 1 not), then shuffles them.

Evaluation subset
    :func:`select_balanced` is the authors' procedure: group by label in first-seen order,
    shuffle each group, keep the first ``n_per_label``, concatenate, shuffle. The authors ran it
    for sst2, mrpc, cola, rte in turn with *one* global ``random.seed(37)``;
    ``selection="authors_chain"`` replays the earlier tasks' draws (they depend only on the
    GLUE validation class sizes, :data:`AUTHORS_GLUE_CLASS_SIZES`) and so reproduces their exact
    200-example subsets from the GLUE files (checked against their pickles: identical examples
    and order; MRPC as the same pairs in GLUE's untokenised text). ``selection="seeded"`` (the
    default) uses ``random.Random(seed)`` for each task independently.

Answers
    Greedy decoding of 3 new tokens (the authors' ``gen_len=3``, also for CoLA), stopping at
    EOS like ``model.generate``. The answer is read as the authors do: the text after the last
    occurrence of the answer cue (``split(cue)[-1]``; the prompt ends with the cue, so this is
    the generation unless it repeats the cue), case-sensitive substring tests in the authors'
    fixed order (SST-2 positive before negative, MRPC/CoLA Yes before No, RTE False before
    True); anything else is invalid (-1). Note ``"No"`` also matches ``"Not"``, as theirs did.

RTE labels
    GLUE label 0 = entailment. ``rte_label_mapping("natural")`` renders it "True"; the authors
    (``"authors"``) render label 1 (not_entailment) as "True" — their demonstrations are
    consistent with that inversion. The word is always derived from the label, so demonstrations
    and answers stay consistent under either mapping.

Scores
    ``f1_score(labels, preds, average="weighted")`` with invalid answers kept as a third class
    (it has no support, so it only lowers recall of the true classes), accuracy and
    ``matthews_corrcoef`` over the same predictions.
"""

from __future__ import annotations

import csv
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

log = logging.getLogger(__name__)

INVALID = -1


@dataclass(frozen=True)
class TaskSpec:
    """How a binary task is rendered and read back; driven only by normalised example fields."""

    name: str
    n_shots: int
    label_words: dict[int, str]  # default label -> word
    answer_cue: str
    template: str  # str.format template over `fields`, ending with `answer_cue`
    fields: tuple[str, ...]
    demo_balance: dict[int, int]  # label -> number of demonstrations
    answer_priority: tuple[str, ...]  # order in which label words are looked for (authors' order)

    def __post_init__(self) -> None:
        if not self.template.endswith(self.answer_cue):
            raise ValueError(
                f"task {self.name}: template must end with the answer cue {self.answer_cue!r}"
            )
        if sum(self.demo_balance.values()) != self.n_shots:
            raise ValueError(
                f"task {self.name}: demo_balance {self.demo_balance} does not sum to {self.n_shots}"
            )

    def render(
        self, example: Mapping, with_answer: bool, label_words: Mapping | None = None
    ) -> str:
        """The example in the prompt shape; with ``with_answer`` followed
        by ``" " + label word``."""
        missing = [f for f in self.fields if f not in example]
        if missing:
            raise KeyError(
                f"task {self.name}: example idx={example.get('idx')} lacks fields {missing}"
            )
        text = self.template.format_map({f: example[f] for f in self.fields})
        if not with_answer:
            return text
        words = int_label_words(label_words if label_words is not None else self.label_words)
        label = int(example["label"])
        if label not in words:
            raise ValueError(f"task {self.name}: label {label} has no label word in {words}")
        return f"{text} {words[label]}"


TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec(
        name="sst2",
        n_shots=4,
        label_words={0: "negative", 1: "positive"},
        answer_cue="Sentiment :",
        template="Review : {sentence}\nSentiment :",
        fields=("sentence",),
        demo_balance={0: 2, 1: 2},
        answer_priority=("positive", "negative"),
    ),
    "mrpc": TaskSpec(
        name="mrpc",
        n_shots=6,
        label_words={0: "No", 1: "Yes"},
        answer_cue="Answer:",
        template="Are the sentences paraphrases of each other.\nSentence 1: {sentence1}\n"
        "Sentence 2: {sentence2}\nAnswer:",
        fields=("sentence1", "sentence2"),
        demo_balance={0: 3, 1: 3},
        answer_priority=("Yes", "No"),
    ),
    "cola": TaskSpec(
        name="cola",
        n_shots=6,
        label_words={0: "No", 1: "Yes"},
        answer_cue="Answer :",
        template="Is this sentence linguistically acceptable?\nSentence : {sentence}\nAnswer :",
        fields=("sentence",),
        demo_balance={0: 3, 1: 3},
        answer_priority=("Yes", "No"),
    ),
    "rte": TaskSpec(
        name="rte",
        n_shots=3,
        label_words={0: "True", 1: "False"},
        answer_cue="answer:",
        template="{sentence1}\nquestion: {sentence2} True or False?\nanswer:",
        fields=("sentence1", "sentence2"),
        demo_balance={0: 2, 1: 1},
        answer_priority=("False", "True"),
    ),
}

# The authors' fixed demonstrations (GLUE training examples, not in the validation sets), in
# their order, with GLUE labels. RTE labels follow from their inverted words (False = label 0).
AUTHORS_DEMONSTRATIONS: dict[str, list[dict]] = {
    "sst2": [
        {"sentence": "excruciatingly unfunny and pitifully unromantic", "label": 0},
        {"sentence": "rich veins of funny stuff in this movie", "label": 1},
        {"sentence": "by far the worst movie of the year", "label": 0},
        {"sentence": "fashioning an engrossing entertainment out", "label": 1},
    ],
    "mrpc": [
        {
            "sentence1": (
                "Mr McDevitt has been granted control of three crucial aspects of policing in the "
                "Solomons."
            ),
            "sentence2": (
                "Mr McDevitt has been granted control of three aspects of policing by "
                "Commissioner William Morrell."
            ),
            "label": 0,
        },
        {
            "sentence1": (
                "They had published an advertisement on the Internet on June 10, offering the "
                "cargo for sale, he added."
            ),
            "sentence2": (
                "On June 10, the ship's owners had published an advertisement on the Internet, "
                "offering the explosives for sale."
            ),
            "label": 1,
        },
        {
            "sentence1": (
                "In 2002, Linksys overtook Cisco Systems as the leading wireless equipment "
                "vendor, accounting for 14.1 percent of revenue."
            ),
            "sentence2": (
                "Rolfe said Linksys overtook Cisco Systems last year as the leading supplier of "
                "WLAN equipment."
            ),
            "label": 0,
        },
        {
            "sentence1": "The notification was first reported Friday by MSNBC.",
            "sentence2": "MSNBC.com first reported the CIA request on Friday.",
            "label": 1,
        },
        {
            "sentence1": (
                '"The anticipated global sales improvement in the month of June did not '
                'materialize", said Chief Financial Officer Robert Rivet.'
            ),
            "sentence2": (
                '"The anticipated global sales improvement in the month of June did not '
                'materialize as we had anticipated", the company said.'
            ),
            "label": 1,
        },
        {
            "sentence1": (
                "That compared with $ 35.18 million, or 24 cents per share, in the year-ago period."
            ),
            "sentence2": (
                "Earnings were affected by a non-recurring $8 million tax benefit in the year-ago "
                "period."
            ),
            "label": 0,
        },
    ],
    "cola": [
        {"sentence": "Bill pushed Harry off the sofa for hours.", "label": 0},
        {"sentence": "Bill floated down the river for hours.", "label": 1},
        {
            "sentence": "It is important for the more you eat, the more careful you to be.",
            "label": 0,
        },
        {"sentence": "It is important for you to be more careful, the more you eat.", "label": 1},
        {"sentence": "Mary will believe Susan, and you will Bob.", "label": 1},
        {"sentence": "You will Bob believe.", "label": 0},
    ],
    "rte": [
        {
            "sentence1": (
                "Cyrus captured Babylon without a battle, and remedied the evils done by previous "
                "Assyrian and Babylonian rulers by sending prisoners in Babylonia back to their "
                "original homelands and aiding in the restoration of temples of the gods of "
                "various nations."
            ),
            "sentence2": "Babylon surrendered to Cyrus without going to battle.",
            "label": 0,
        },
        {
            "sentence1": (
                "Successful plaintiffs recovered punitive damages in Texas discrimination cases "
                "53% of the time."
            ),
            "sentence2": (
                "Legal costs to recover punitive damages are a deductible business expense."
            ),
            "label": 1,
        },
        {
            "sentence1": (
                "The gastric bypass operation, also known as stomach stapling, has become the "
                "most common surgical procedure for treating obesity."
            ),
            "sentence2": "Obesity is medically treated.",
            "label": 0,
        },
    ],
}

# Order in which the authors built their subsets with one global RNG, and the GLUE validation
# class sizes in first-seen label order (what their shuffles consumed).
AUTHORS_TASK_ORDER: tuple[str, ...] = ("sst2", "mrpc", "cola", "rte")
AUTHORS_GLUE_CLASS_SIZES: dict[str, tuple[int, ...]] = {
    "sst2": (444, 428),
    "mrpc": (279, 129),
    "cola": (721, 322),
    "rte": (131, 146),
}

SELECTIONS = ("seeded", "authors_chain")
DEMO_SOURCES = ("sampled", "authors")

# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

GLUE_DIRS = {"sst2": "SST-2", "mrpc": "MRPC", "rte": "RTE", "cola": "CoLA"}
HUB_FIELDS = {
    "sst2": ("sentence",),
    "mrpc": ("sentence1", "sentence2"),
    "rte": ("sentence1", "sentence2"),
    "cola": ("sentence",),
}


@dataclass(frozen=True)
class _FileFormat:
    header: tuple[str, ...] | None
    n_cols: int
    quoting: int
    encoding: str
    label_col: int
    text_cols: dict[str, int]
    idx_col: int | None  # None: the data row number


_FILE_FORMATS = {
    "sst2": _FileFormat(
        ("sentence", "label"), 2, csv.QUOTE_NONE, "utf-8", 1, {"sentence": 0}, None
    ),
    "mrpc": _FileFormat(
        ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
        5,
        csv.QUOTE_NONE,
        "utf-8-sig",
        0,
        {"sentence1": 3, "sentence2": 4},
        None,
    ),
    "rte": _FileFormat(
        ("sentence1", "sentence2", "label", "idx"),
        4,
        csv.QUOTE_MINIMAL,
        "utf-8",
        2,
        {"sentence1": 0, "sentence2": 1},
        3,
    ),
    "cola": _FileFormat(None, 4, csv.QUOTE_NONE, "utf-8", 1, {"sentence": 3}, None),
}


def task_spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise ValueError(f"unknown downstream task {task!r} (known: {sorted(TASKS)})")
    return TASKS[task]


def _parse_label(value, where: str) -> int:
    try:
        label = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: label {value!r} is not an integer") from None
    if label not in (0, 1):
        raise ValueError(f"{where}: label {label} is not 0 or 1")
    return label


def _tsv_rows(path: Path, fmt: _FileFormat) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every data row; header and column count checked."""
    with open(path, encoding=fmt.encoding, newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=fmt.quoting)
        first = True
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if first and fmt.header is not None:
                first = False
                if tuple(row) != fmt.header:
                    raise ValueError(f"{path}:{line}: header {row} is not {list(fmt.header)}")
                continue
            first = False
            if len(row) != fmt.n_cols:
                raise ValueError(
                    f"{path}:{line}: expected {fmt.n_cols} tab-separated fields, got {len(row)}"
                )
            yield line, row


def _load_glue_file(task: str, path: Path) -> list[dict]:
    fmt = _FILE_FORMATS[task]
    out = []
    for n, (line, row) in enumerate(_tsv_rows(path, fmt)):
        where = f"{path}:{line}"
        ex: dict = {"idx": n if fmt.idx_col is None else _parse_int(row[fmt.idx_col], where, "idx")}
        ex.update({name: row[col] for name, col in fmt.text_cols.items()})
        ex["label"] = _parse_label(row[fmt.label_col], where)
        out.append(ex)
    return out


def _parse_int(value: str, where: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{where}: {what} {value!r} is not an integer") from None


def _resolve_data_files(data_files, base_dir: Path):
    def res(p):
        return p if Path(p).is_absolute() else str(base_dir / p)

    if isinstance(data_files, str):
        return res(data_files)
    if isinstance(data_files, Mapping):
        return {k: _resolve_data_files(v, base_dir) for k, v in data_files.items()}
    return [res(p) for p in data_files]


def _load_hub(task: str, source: Mapping, base_dir: Path) -> list[dict]:
    from datasets import load_dataset

    dataset = source.get("dataset", "glue")
    split = source.get("split", "validation")
    kwargs: dict = {"split": split}
    for key in ("revision", "cache_dir"):
        if source.get(key):
            kwargs[key] = source[key]
    if not source.get("data_files") and not source.get("revision"):
        log.warning(
            "downstream source %s has no pinned revision: the download may change over time",
            dataset,
        )
    if source.get("data_files"):
        ds = load_dataset(
            dataset, data_files=_resolve_data_files(source["data_files"], base_dir), **kwargs
        )
    else:
        ds = load_dataset(dataset, source.get("config", task), **kwargs)
    fields = HUB_FIELDS[task]
    out = []
    for i, row in enumerate(ds):
        where = f"{dataset}[{split}] row {i}"
        missing = [f for f in (*fields, "label") if f not in row]
        if missing:
            raise ValueError(f"{where}: lacks fields {missing}")
        ex: dict = {"idx": int(row["idx"]) if row.get("idx") is not None else i}
        ex.update({f: row[f] for f in fields})
        ex["label"] = _parse_label(row["label"], where)
        out.append(ex)
    return out


def load_glue(task: str, source: Mapping, base_dir: str | Path = ".") -> list[dict]:
    """Normalised examples ``{"idx", "label", <text fields>}`` of one GLUE task.

    ``source["type"]``: ``"glue_files"`` reads ``<path>/<TaskDir>/dev.tsv`` (``file`` overrides
    the name) in GLUE's formats; ``"hub"`` calls ``datasets.load_dataset`` (``dataset``,
    ``revision``, ``split``, ``config``; or ``data_files`` for a local ``json``/``csv`` dataset
    with hub field names). Relative paths are taken from ``base_dir``. Text is kept verbatim.
    """
    task_spec(task)
    base = Path(base_dir)
    kind = source.get("type")
    if kind == "glue_files":
        path = base / source["path"] / GLUE_DIRS[task] / source.get("file", "dev.tsv")
        if not path.exists():
            raise FileNotFoundError(f"GLUE file for task {task!r} not found: {path}")
        examples = _load_glue_file(task, path)
        origin = str(path)
    elif kind == "hub":
        examples = _load_hub(task, source, base)
        origin = f"{source.get('dataset', 'glue')}@{source.get('revision')}"
    else:
        raise ValueError(
            f"unknown downstream data source type {kind!r} (use 'glue_files' or 'hub')"
        )
    seen: set[int] = set()
    for ex in examples:
        if ex["idx"] in seen:
            raise ValueError(f"{origin}: duplicate idx {ex['idx']}")
        seen.add(ex["idx"])
    log.info("loaded %d %s examples from %s", len(examples), task, origin)
    return examples


# --------------------------------------------------------------------------------------------
# Label words, selection, prompts
# --------------------------------------------------------------------------------------------


def rte_label_mapping(mode: str) -> dict[int, str]:
    """RTE label words: ``natural`` (0 entailment -> True) or ``authors`` (1 -> True, inverted)."""
    if mode == "natural":
        return {0: "True", 1: "False"}
    if mode == "authors":
        return {0: "False", 1: "True"}
    raise ValueError(f"downstream.rte_label_mapping must be 'natural' or 'authors', got {mode!r}")


def label_words_for(task_name: str, rte_mapping: str = "natural") -> dict[int, str]:
    """The label words a task is run with (RTE's depend on the mapping option)."""
    spec = task_spec(task_name)
    return rte_label_mapping(rte_mapping) if task_name == "rte" else dict(spec.label_words)


def int_label_words(words: Mapping) -> dict[int, str]:
    """Label-word mapping with int keys (JSON round trips turn them into strings)."""
    return {int(k): str(v) for k, v in words.items()}


def _by_label(examples: Iterable[dict]) -> dict[int, list[dict]]:
    """Examples grouped by label, groups in first-seen order (as the authors' dict was)."""
    groups: dict[int, list[dict]] = {}
    for ex in examples:
        groups.setdefault(int(ex["label"]), []).append(dict(ex))
    return groups


def select_balanced(
    examples: Sequence[dict], n_per_label: int, seed: int, *, rng: random.Random | None = None
) -> list[dict]:
    """``n_per_label`` examples of every label, shuffled; deterministic for a seed.

    The authors' procedure (see the module docstring). ``rng`` replaces ``Random(seed)``
    (used to continue the authors' chained generator).
    """
    rng = rng if rng is not None else random.Random(seed)
    groups = _by_label(examples)
    short = {lab: len(g) for lab, g in groups.items() if len(g) < n_per_label}
    if short:
        raise ValueError(f"too few examples for {n_per_label} per label: {short}")
    chosen: list[dict] = []
    for group in groups.values():
        rng.shuffle(group)
        chosen += group[:n_per_label]
    rng.shuffle(chosen)
    return chosen


def authors_rng(task_name: str, n_per_label: int, seed: int = 37) -> random.Random:
    """``Random(seed)`` advanced past the authors' draws for the tasks built before ``task_name``.

    A shuffle's draws depend only on the list length, so replaying shuffles of placeholder lists
    with the GLUE class sizes reproduces the global generator's state.
    """
    if task_name not in AUTHORS_TASK_ORDER:
        raise ValueError(
            f"selection 'authors_chain' covers only {AUTHORS_TASK_ORDER}, not {task_name!r}"
        )
    rng = random.Random(seed)
    for prev in AUTHORS_TASK_ORDER[: AUTHORS_TASK_ORDER.index(task_name)]:
        sizes = AUTHORS_GLUE_CLASS_SIZES[prev]
        for size in sizes:
            rng.shuffle(list(range(size)))
        rng.shuffle(list(range(sum(min(s, n_per_label) for s in sizes))))
    return rng


def select_demonstrations(
    examples: Sequence[dict], exclude_idx: set, task: TaskSpec | str, seed: int
) -> list[dict]:
    """Few-shot demonstrations from examples outside ``exclude_idx``, balanced per the task.

    ``task.demo_balance[label]`` examples of each label are sampled with ``Random(seed)`` and the
    demonstrations are then shuffled with the same generator.
    """
    spec = task_spec(task) if isinstance(task, str) else task
    rng = random.Random(seed)
    pool = _by_label(ex for ex in examples if ex["idx"] not in exclude_idx)
    demos: list[dict] = []
    for label in sorted(spec.demo_balance):
        need = spec.demo_balance[label]
        cands = pool.get(label, [])
        if len(cands) < need:
            raise ValueError(
                f"task {spec.name}: only {len(cands)} examples of label {label} outside the "
                f"evaluation set, {need} demonstrations needed"
            )
        demos += rng.sample(cands, need)
    rng.shuffle(demos)
    return demos


def build_prompts(
    task: TaskSpec | str, eval_examples: Sequence[dict], demos: Sequence[dict], label_words: Mapping
) -> list[str]:
    """One prompt per example: each demonstration + ``"\\n\\n"``, then the query up to the cue."""
    spec = task_spec(task) if isinstance(task, str) else task
    words = int_label_words(label_words)
    context = "".join(spec.render(d, True, words) + "\n\n" for d in demos)
    return [context + spec.render(ex, False, words) for ex in eval_examples]


def parse_answer(
    generated: str,
    label_words: Mapping,
    *,
    cue: str | None = None,
    priority: Sequence[str] | None = None,
    case_sensitive: bool = True,
) -> int:
    """The label whose word occurs in ``generated``; ``-1`` when none (or an ambiguous tie).

    Only the text after the last occurrence of ``cue`` (if given and present) is searched.
    ``priority``: words tested in this order, first found wins (the authors' rule); without it
    the earliest occurrence wins and two words starting at the same place are ambiguous.
    """
    words = int_label_words(label_words)
    text = generated.split(cue)[-1] if cue else generated
    if not case_sensitive:
        text = text.lower()

    def norm(w: str) -> str:
        return w if case_sensitive else w.lower()

    if priority is not None:
        by_word = {norm(w): lab for lab, w in words.items()}
        for w in priority:
            if norm(w) in by_word and norm(w) in text:
                return by_word[norm(w)]
        return INVALID
    found = {lab: text.find(norm(w)) for lab, w in words.items()}
    found = {lab: pos for lab, pos in found.items() if pos >= 0}
    if not found:
        return INVALID
    first = min(found.values())
    winners = [lab for lab, pos in found.items() if pos == first]
    return winners[0] if len(winners) == 1 else INVALID


def prepare_task_set(
    task_name: str,
    examples: Sequence[dict],
    n_per_label: int,
    seed: int,
    rte_mapping: str = "natural",
    *,
    selection: str = "seeded",
    demo_source: str = "sampled",
) -> dict:
    """The fixed evaluation set of one task (JSON-serialisable), reused for every checkpoint.

    ``selection``: ``seeded`` (``Random(seed)`` per task) or ``authors_chain`` (the authors'
    exact subsets, see the module docstring). ``demo_source``: ``sampled`` (seeded, outside the
    evaluation set) or ``authors`` (their fixed demonstrations; idx -1, -2, ...).
    """
    spec = task_spec(task_name)
    if selection not in SELECTIONS:
        raise ValueError(f"downstream selection must be one of {SELECTIONS}, got {selection!r}")
    if demo_source not in DEMO_SOURCES:
        raise ValueError(
            f"downstream demo source must be one of {DEMO_SOURCES}, got {demo_source!r}"
        )
    words = label_words_for(task_name, rte_mapping)
    rng = authors_rng(task_name, n_per_label, seed) if selection == "authors_chain" else None
    eval_examples = select_balanced(examples, n_per_label, seed, rng=rng)
    if demo_source == "authors":
        demos = [{"idx": -1 - i, **d} for i, d in enumerate(AUTHORS_DEMONSTRATIONS[task_name])]
    else:
        demos = select_demonstrations(examples, {ex["idx"] for ex in eval_examples}, spec, seed)
    return {
        "task": task_name,
        "seed": seed,
        "n_per_label": n_per_label,
        "selection": selection,
        "demo_source": demo_source,
        "rte_label_mapping": rte_mapping if task_name == "rte" else None,
        "label_words": {str(k): v for k, v in sorted(words.items())},
        "n_shots": spec.n_shots,
        "answer_cue": spec.answer_cue,
        "eval": eval_examples,
        "demos": demos,
    }
