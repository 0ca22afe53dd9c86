"""Prompts of the ROME family: context templates sampled from the model, the rewriting prompts
built from them, and the subject's last token located in each.
"""

from __future__ import annotations

import logging
import unicodedata

import torch

log = logging.getLogger(__name__)


@torch.no_grad()
def _sample_top_k(
    model, ids: torch.Tensor, n_new: int, top_k: int, gen: torch.Generator
) -> torch.Tensor:
    """``ids`` (rows, n) extended by ``n_new`` tokens, each sampled from the top-k of the model's
    next-token distribution with the (CPU) generator ``gen``."""
    device = ids.device
    past = None
    step_input = ids
    for _ in range(n_new):
        out = model(input_ids=step_input, cache=past, use_cache=True)
        past = out.cache
        logits = out.logits[:, -1].float().cpu()
        top = logits.topk(top_k, dim=-1)
        probs = top.values.softmax(-1)
        choice = torch.multinomial(probs, 1, generator=gen)
        nxt = top.indices.gather(1, choice).to(device)
        ids = torch.cat([ids, nxt], dim=1)
        step_input = nxt
    return ids


def _template(tok, row: torch.Tensor) -> str:
    text = unicodedata.normalize("NFKD", tok.decode(row, skip_special_tokens=True))
    return text.replace("\n\n", " ").replace("{", " ").replace("}", " ") + ". {}"


@torch.no_grad()
def generate_context_templates(
    model, tok, lengths: list, top_k: int, seed: int, starts: list[str] | None = None
) -> list[str]:
    """'{}' plus, for each (length, n), n prefixes sampled top-k from the model, each + '. {}'.

    As the public code: generation starts from one start token and stops at ``length`` tokens in
    all (so length - 1 sampled tokens); the text is NFKD-normalised, blank lines become a space
    and braces are removed. The start token is the tokenizer's BOS (EOS when it has none): for
    GPT-2 and GPT-J that is ``<|endoftext|>``, the public code's literal choice. Special tokens are
    dropped when decoding. Unlike the public code, sampling uses a local seeded generator, so the
    templates are reproducible.

    ``starts`` (MEMIT's public code: "The", "Therefore", "Because", "I", "You"): each of the n
    prefixes of a length instead begins with one of these words (n / len(starts) each, in order),
    tokenised as the tokenizer does by default, and the prefix keeps it.
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    templates = ["{}"]
    if starts:
        for length, count in lengths:
            for word in starts:
                first = tok(word)["input_ids"]
                ids = torch.tensor(
                    [first] * (int(count) // len(starts)), dtype=torch.long, device=device
                )
                if len(ids):
                    ids = _sample_top_k(model, ids, max(int(length) - len(first), 0), top_k, gen)
                templates += [_template(tok, row) for row in ids]
        return templates
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    for length, count in lengths:
        ids = torch.full((count, 1), start, dtype=torch.long, device=device)
        ids = _sample_top_k(model, ids, int(length) - 1, top_k, gen)
        templates += [_template(tok, row) for row in ids[:, 1:]]
    return templates


def _subject_last_index(offsets: list[tuple[int, int]], subject_end: int) -> int:
    """Index of the last token that starts before the subject's last character ends."""
    idx = -1
    for i, (s, e) in enumerate(offsets):
        if e > s and s < subject_end:
            idx = i
    if idx < 0:
        raise ValueError("subject not found among the prompt's tokens")
    return idx


def template_texts(
    templates: list[str], prompt: str, subject: str, suffix: str = ""
) -> list[tuple[str, int]]:
    """(text, subject_end_char) of ``prompt`` (with its "{}" filled by ``subject``) inside each
    context template ("... {}"), followed by ``suffix``: the public code's
    ``template.format(prompt).format(subject) + suffix``, without str.format's brace rules."""
    pre, _, post = prompt.partition("{}")
    texts = []
    for ctx in templates:
        cpre, _, cpost = ctx.partition("{}")
        head = cpre + pre + subject
        texts.append((head + post + cpost + suffix, len(head)))
    return texts


def build_prompts(tok, texts: list[tuple[str, int]]):
    """Tokenise (text, subject_end_char) pairs with right padding; return encoding + lookup
    indices."""
    enc = tok(
        [t for t, _ in texts],
        return_tensors="pt",
        padding=True,
        padding_side="right",
        return_offsets_mapping=True,
    )
    lookup = [
        _subject_last_index(enc["offset_mapping"][i].tolist(), end)
        for i, (_, end) in enumerate(texts)
    ]
    batch = {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
    }  # no token types
    return batch, torch.tensor(lookup)
