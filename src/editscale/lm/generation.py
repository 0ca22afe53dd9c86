"""Greedy generation in batches, with the prompts' shared prefix computed once (its key/value
cache copied to every batch).
"""

from __future__ import annotations

import copy
import logging
from typing import Sequence

import numpy as np
import torch

from editscale.lm.models import (
    arch_of,
    full_cache,
    get_module,
    model_attention_mask,
    output_head,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Generation and scoring
# --------------------------------------------------------------------------------------------


def _max_positions(model) -> int | None:
    cfg = model.config
    for attr in ("n_positions", "max_position_embeddings"):
        if getattr(cfg, attr, None):
            return int(getattr(cfg, attr))
    return None


def _eos_ids(model, tok) -> set[int]:
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None) if gen_cfg is not None else None
    if eos is None:
        eos = tok.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def _prefix_cache(model, prefix: list[int]):
    """The key/value cache of ``prefix`` (one row), run once and shared by a whole prompt set."""
    device = next(model.parameters()).device
    base = get_module(model, arch_of(model).base)
    ids = torch.tensor([prefix], device=device)
    mask = torch.ones_like(ids)
    out = base(
        input_ids=ids,
        attention_mask=model_attention_mask(model, mask, ids.shape[1], base.dtype),
        position_ids=torch.arange(ids.shape[1], device=device)[None],
        cache=full_cache(),
        use_cache=True,
    )
    return out.cache


@torch.no_grad()
def _generate_batch(
    model,
    ids: list[list[int]],
    pad_id: int,
    max_new_tokens: int,
    prefix_len: int = 0,
    prefix_cache=None,
) -> list[list[int]]:
    """Greedy tokens for each row of ``ids``; with ``prefix_cache``, the rows' first ``prefix_len``
    tokens (the same in every row) are taken from it and only the rest is run."""
    device = next(model.parameters()).device
    base, head = get_module(model, arch_of(model).base), output_head(model)
    rest = [x[prefix_len:] for x in ids]
    width = max(len(x) for x in rest)
    input_ids = torch.tensor([[pad_id] * (width - len(x)) + x for x in rest], device=device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in rest], device=device)
    pos = prefix_len + (mask.cumsum(-1) - 1).clamp(min=0)
    cache = copy.deepcopy(prefix_cache) if prefix_len else full_cache()
    if prefix_len:
        cache.batch_repeat_interleave(len(ids))
        mask = torch.cat(
            [torch.ones((len(ids), prefix_len), dtype=mask.dtype, device=device), mask], dim=1
        )
    out = base(
        input_ids=input_ids,
        attention_mask=model_attention_mask(model, mask, width, base.dtype),
        position_ids=pos,
        cache=cache,
        use_cache=True,
    )
    steps = []
    for step in range(max_new_tokens):
        nxt = head(out.last_hidden_state[:, -1]).argmax(-1)
        steps.append(nxt)
        if step + 1 == max_new_tokens:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = pos[:, -1:] + 1
        out = base(
            input_ids=nxt[:, None],
            attention_mask=model_attention_mask(model, mask, 1, base.dtype),
            position_ids=pos,
            cache=out.cache,
            use_cache=True,
        )
    return torch.stack(steps, dim=1).tolist()


def shared_prefix_length(ids: Sequence[Sequence[int]]) -> int:
    """Tokens that every prompt starts with, leaving each prompt at least one token of its own."""
    shortest = min(len(x) for x in ids)
    same = (np.array([x[:shortest] for x in ids]) == np.array(ids[0][:shortest])).all(0)
    n = int(same.argmin()) if not same.all() else shortest
    return min(n, shortest - 1)


def generate_greedy(
    model,
    tok,
    prompts: Sequence[str],
    max_new_tokens: int = 3,
    batch_size: int = 16,
    share_prefix: bool = True,
) -> list[str]:
    """Greedy continuations (new text only) of each prompt, batched with left padding.

    Position ids come from the attention mask, so every row sees the positions it would see
    alone; prompts are batched by length to limit padding. A continuation ends at the first EOS
    (as ``model.generate`` stops there) and is decoded without special tokens.

    ``share_prefix``: the tokens all prompts start with (a few-shot task's demonstrations: 77-93%
    of each toy prompt) are run once and their key/value cache is reused by every batch. The
    prompts are tokenised whole first, so the tokens are those of the unshared path; the
    continuations equal it up to floating-point rounding (tested).
    """
    if not prompts:
        return []
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token")
    eos = _eos_ids(model, tok)
    ids = tok(list(prompts))["input_ids"]
    limit = _max_positions(model)
    longest = max(len(x) for x in ids)
    if limit is not None and longest + max_new_tokens > limit:
        raise ValueError(
            f"a prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the "
            f"model's {limit} positions"
        )
    prefix_len = shared_prefix_length(ids) if share_prefix else 0
    with torch.no_grad():
        prefix_cache = _prefix_cache(model, ids[0][:prefix_len]) if prefix_len else None
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    texts: list[str] = [""] * len(ids)
    for s in range(0, len(order), batch_size):
        rows = order[s : s + batch_size]
        new = _generate_batch(
            model, [ids[i] for i in rows], pad_id, max_new_tokens, prefix_len, prefix_cache
        )
        for i, toks in zip(rows, new):
            cut = next((j for j, t in enumerate(toks) if t in eos), len(toks))
            texts[i] = tok.decode(toks[:cut], skip_special_tokens=True)
    return texts
