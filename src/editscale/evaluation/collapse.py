"""Model-collapse measures at the evaluation checkpoints: held-out perplexity, generation entropy.

Both are measured on a fixed *probe* (:func:`build_probe`, written once per run by rule
``collapse_probe`` to ``resources/data/collapse_probe.json``), so every checkpoint of every
trajectory sees the same text:

Held-out perplexity
    ``n_docs`` documents drawn with ``random.Random(seed)`` (without replacement, kept in corpus
    order) from the first ``pool_docs`` documents of a corpus (default: ``stats.corpus``, read with
    :func:`editscale.data.corpora.iter_corpus`, the reader of the key statistics). At evaluation
    time each document is tokenised (tokenizer defaults, no special tokens added) and cut to its
    first ``max_tokens`` tokens; documents with fewer than 2 tokens are skipped. Token ``i`` is
    predicted from tokens ``0..i-1`` of its own document (the first token of a document is not
    predicted, nothing is prepended). Over the ``N`` predicted tokens of all documents::

        mean_nll = (1 / N) * sum_docs sum_{i >= 1} -ln p(x_i | x_<i)      (nats per token)
        perplexity = exp(mean_nll)

    Documents go through the model in right-padded batches of ``batch_size``, one forward pass
    per batch; log-probabilities are computed in float32 and summed in float64.

Generation entropy (ROME's fluency measure, which r-ROME uses to detect collapse)
    Greedy continuations of ``max_new_tokens`` tokens of ``n_prompts`` fixed prompts
    (:func:`editscale.lm.generation.generate_greedy`). Each generation's text is the prompt followed
    by its continuation (ROME scores ``generate_fast``'s output, which includes the prompt). Its
    words are the runs of letters/digits/underscore and every other non-space character alone
    (:func:`word_tokens`, a dependency-free stand-in for NLTK's ``word_tokenize``). For n = 2, 3,
    ``H_n`` is the entropy in bits of the frequency distribution of the text's word n-grams
    (0 when it has none); the text's entropy is the mean of the weighted values::

        H(text) = ((2/3) * H_2 + (4/3) * H_3) / 2

    and the checkpoint's generation entropy is the mean of ``H`` over the prompts (ROME's
    ``n_gram_entropy`` with ``agg="arith"``, kmeng01/rome
    ``experiments/py/eval_utils_counterfact.py``). ROME samples its generations (top-k 5, 100
    tokens); here decoding is greedy, so the value is a deterministic function of the weights. A
    model that repeats itself scores low (a text repeating one word scores 0).
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections import Counter
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from editscale.lm.models import (
    arch_of,
    get_module,
    model_attention_mask,
    output_head,
    right_padded,
)

log = logging.getLogger(__name__)

NGRAM_ORDERS = (2, 3)
NGRAM_WEIGHTS = (2 / 3, 4 / 3)
# Prompts when the config gives none and the CounterFact file has no generation prompts.
FALLBACK_PROMPTS = (
    "The capital of France is",
    "My favourite food is",
    "The president of the United States",
    "In the morning I like to",
    "The best way to learn a language is",
    "Last year the city of",
    "The weather today is",
    "She was born in",
)
# Scalar measures per checkpoint (the tidy CSV's metric names).
MEASURES = ("perplexity", "mean_nll", "n_tokens", "generation_entropy")
_WORD = re.compile(r"\w+|[^\w\s]")


# --------------------------------------------------------------------------- n-gram entropy


def word_tokens(text: str) -> list[str]:
    """Words of ``text``: runs of word characters (``\\w+``) and single
    other non-space characters."""
    return _WORD.findall(text)


def ngram_entropy(tokens: Sequence[str], n: int) -> float:
    """Entropy (bits) of the frequency distribution of the ``n``-grams of ``tokens`` (0 if none)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    total = sum(counts.values())
    if total == 0:
        return 0.0
    p = np.array(sorted(counts.values()), dtype=np.float64) / total
    return float(max(0.0, -np.sum(p * np.log2(p))))


def text_entropy(
    text: str, ns: Sequence[int] = NGRAM_ORDERS, weights: Sequence[float] = NGRAM_WEIGHTS
) -> float:
    """ROME's weighted n-gram entropy of one text: the mean over ``ns`` of ``weight_n * H_n``."""
    if len(ns) != len(weights) or not ns:
        raise ValueError("one weight per n-gram order is needed")
    tokens = word_tokens(text)
    return float(np.mean([w * ngram_entropy(tokens, n) for n, w in zip(ns, weights)]))


def generation_entropy(texts: Sequence[str]) -> float:
    """Mean :func:`text_entropy` of the generations (NaN when there are none)."""
    return float(np.mean([text_entropy(t) for t in texts])) if len(texts) else math.nan


# --------------------------------------------------------------------------- the probe


def select_documents(docs: Iterable[str], n_docs: int, pool_docs: int, seed: int) -> list[str]:
    """``n_docs`` documents drawn with ``Random(seed)`` from the first ``pool_docs`` of ``docs``.

    The drawn documents keep their corpus order. A pool smaller than ``n_docs`` is used whole.
    """
    if n_docs < 0 or pool_docs < 1:
        raise ValueError("n_docs must be >= 0 and pool_docs >= 1")
    if n_docs == 0:
        return []
    pool = []
    for doc in docs:
        if len(pool) == pool_docs:
            break
        pool.append(doc)
    if len(pool) < n_docs:
        log.warning(
            "the corpus has only %d documents: perplexity uses all of them (%d requested)",
            len(pool),
            n_docs,
        )
        return pool
    chosen = sorted(random.Random(seed).sample(range(len(pool)), n_docs))
    return [pool[i] for i in chosen]


def probe_prompts(
    prompts: Sequence[str] | None, n_prompts: int, records: Sequence[Mapping] = ()
) -> tuple[list[str], str]:
    """The generation prompts and where they come from (``config``, ``counterfact`` or
    ``fallback``).

    Given ``prompts``: their first ``n_prompts``. Otherwise the first generation prompt of each of
    the first ``n_prompts`` records (file order) that have one; when no record has one, the first
    ``n_prompts`` of :data:`FALLBACK_PROMPTS`.
    """
    if n_prompts < 0:
        raise ValueError("n_prompts must be >= 0")
    if prompts is not None:
        return list(prompts)[:n_prompts], "config"
    from_records = [str(r["generation_prompts"][0]) for r in records if r.get("generation_prompts")]
    if from_records:
        if len(from_records) < n_prompts:
            log.warning(
                "only %d records have generation prompts (%d prompts requested)",
                len(from_records),
                n_prompts,
            )
        return from_records[:n_prompts], "counterfact"
    return list(FALLBACK_PROMPTS)[:n_prompts], "fallback"


def build_probe(
    *,
    docs: Iterable[str] | None,
    corpus: str | None,
    corpus_fingerprint: str | None,
    n_docs: int,
    pool_docs: int,
    seed: int,
    prompts: Sequence[str] | None,
    n_prompts: int,
    records: Sequence[Mapping] = (),
) -> dict:
    """The fixed texts of the collapse measures (JSON-serialisable);
    ``docs`` None = no perplexity."""
    documents = select_documents(docs, n_docs, pool_docs, seed) if docs is not None else []
    chosen, source = probe_prompts(prompts, n_prompts, records)
    return {
        "perplexity": {
            "corpus": corpus,
            "corpus_fingerprint": corpus_fingerprint,
            "n_docs": n_docs,
            "pool_docs": pool_docs,
            "seed": seed,
            "docs": documents,
        },
        "generation": {"source": source, "n_prompts": n_prompts, "prompts": chosen},
    }


# --------------------------------------------------------------------------- perplexity


def heldout_token_lists(tok, docs: Sequence[str], max_tokens: int) -> list[list[int]]:
    """Each document's first ``max_tokens`` token ids (no special tokens); those under 2 dropped."""
    if max_tokens < 2:
        raise ValueError("max_tokens must be >= 2 (one token is predicted from the one before)")
    if not docs:
        return []
    ids = tok(list(docs), add_special_tokens=False)["input_ids"]
    return [x[:max_tokens] for x in ids if len(x) >= 2]


@torch.no_grad()
def _doc_nll_sums(model, token_lists: list[list[int]], pad_id: int) -> list[float]:
    """Sum of -ln p over the predicted tokens of each document of one batch (one forward pass)."""
    device = next(model.parameters()).device
    base, head = get_module(model, arch_of(model).base), output_head(model)
    ids, mask = right_padded(token_lists, pad_id, device)
    width = ids.shape[1]
    pos = torch.arange(width, device=device)[None, :].expand(len(token_lists), -1)
    out = base(
        input_ids=ids,
        attention_mask=model_attention_mask(model, mask, width, base.dtype),
        position_ids=pos,
        use_cache=False,
    )
    sel = mask[:, 1:].bool()  # positions whose next token is a real token
    hidden = out.last_hidden_state[:, :-1][sel]
    logp = head(hidden).float().log_softmax(-1)
    tok_nll = -logp.gather(1, ids[:, 1:][sel][:, None]).squeeze(1).double()
    rows = sel.nonzero()[:, 0]
    sums = torch.zeros(len(token_lists), dtype=torch.float64, device=device).index_add_(
        0, rows, tok_nll
    )
    return sums.cpu().tolist()


def heldout_perplexity(
    model, token_lists: Sequence[Sequence[int]], batch_size: int = 16, pad_id: int = 0
) -> dict:
    """Perplexity over documents given as token ids (see the module docstring).

    Returns ``perplexity``, ``mean_nll`` (nats per predicted token), ``n_tokens`` (predicted
    tokens) and ``doc_nll`` (each document's mean NLL per predicted token, in the given order).
    Documents are batched by length (longest first) to limit padding.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    lists = [list(x) for x in token_lists]
    if not lists:
        return {"perplexity": math.nan, "mean_nll": math.nan, "n_tokens": 0, "doc_nll": np.zeros(0)}
    if min(len(x) for x in lists) < 2:
        raise ValueError("every document needs at least 2 tokens")
    order = sorted(range(len(lists)), key=lambda i: (-len(lists[i]), i))
    sums = np.zeros(len(lists), dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(order), batch_size):
            rows = order[s : s + batch_size]
            sums[rows] = _doc_nll_sums(model, [lists[i] for i in rows], pad_id)
    finally:
        model.train(was_training)
    counts = np.array([len(x) - 1 for x in lists], dtype=np.float64)
    n_tokens = int(counts.sum())
    mean_nll = float(sums.sum() / n_tokens)
    return {
        "perplexity": math.exp(mean_nll),
        "mean_nll": mean_nll,
        "n_tokens": n_tokens,
        "doc_nll": sums / counts,
    }


# --------------------------------------------------------------------------- one checkpoint


def evaluate_collapse(
    model,
    tok,
    probe: Mapping,
    *,
    max_tokens: int,
    max_new_tokens: int,
    batch_size: int = 16,
    generation_batch_size: int = 16,
    token_lists: list[list[int]] | None = None,
) -> dict:
    """Both measures on the current weights: the scalars of :data:`MEASURES`, ``doc_nll``,
    ``generations`` (continuations only) and ``entropies`` (per prompt, of prompt + continuation).

    ``token_lists``: the probe's documents already tokenised (:func:`heldout_token_lists`), to
    tokenise them once per job rather than per checkpoint.
    """
    if token_lists is None:
        token_lists = heldout_token_lists(tok, probe["perplexity"]["docs"], max_tokens)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    out = heldout_perplexity(model, token_lists, batch_size=batch_size, pad_id=pad_id)
    prompts = list(probe["generation"]["prompts"])
    if prompts and max_new_tokens > 0:
        from editscale.lm.generation import generate_greedy

        gens = generate_greedy(
            model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=generation_batch_size
        )
    else:
        gens = []
    entropies = np.array([text_entropy(p + g) for p, g in zip(prompts, gens)], dtype=np.float64)
    out.update(
        generations=gens,
        entropies=entropies,
        generation_entropy=float(entropies.mean()) if entropies.size else math.nan,
    )
    return out
