"""Teacher-forced scoring of targets after prompts, and the per-edit CounterFact metrics.

Every prompt is run once; its targets (e.g. ``target_new`` and ``target_true``) continue it from
the prompt's key/value cache, so the two targets share the prompt's computation. Logits are
only formed at the positions that predict target tokens. All prompts of a batch go through one
padded forward pass (left padding for prompts, right padding for continuations).

The editors' differentiable losses take their logits from :func:`logits_at` instead, which runs
the LM head on every position (see there why).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call

from editscale.lm.models import arch_of, full_cache, get_module, model_attention_mask, output_head

log = logging.getLogger(__name__)


@dataclass
class TargetScores:
    """Scores of K targets after N prompts."""

    nll: np.ndarray  # (N, K) mean per-token negative log-likelihood
    argmax_ok: np.ndarray  # (N, K) every target token is the argmax under teacher forcing

    @property
    def prob(self) -> np.ndarray:
        """exp(-mean NLL): the per-token geometric-mean probability used for magnitudes."""
        return np.exp(-self.nll)


def target_token_ids(tok, target: str) -> list[int]:
    """Token ids of a target as it follows a prompt: with a leading space, no special tokens."""
    text = target if target.startswith(" ") else " " + target
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"target {target!r} tokenises to nothing")
    return ids


def _base(model):
    return get_module(model, arch_of(model).base)


def logits_at(
    model,
    ids: torch.Tensor,
    mask: torch.Tensor,
    rows: torch.Tensor,
    pos: torch.Tensor,
    params: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Differentiable logits (k, V): row j predicts from ``ids[rows[j], pos[j]]``.

    ``ids``/``mask`` (B, T): token ids and their padding mask (1 = token). ``params``: {name in
    ``model.named_parameters()``: tensor} substituted for the model's own parameters of its base
    (``functional_call``; the LM head is always the model's own).

    The LM head runs on every position of the batch and the k scored rows are taken from its
    output, as the public FT and MEND code do with the model's full logits, not on the k rows
    alone. The same function, but in float32 the backward of the head on k = 1 or 2 rows, a
    (k, V) @ (V, d) product summing V = 49,152 terms in SmolLM2, comes out about ten times less
    accurate than on all T rows: the gradient at an MLP output was 4e-5 to 2e-4 off a float64 run
    (10 CounterFact edits) against 1e-6 to 2e-5 this way, and Adam (FT-C) and MEND's networks
    carry that into the update. It costs the head's product on the T - k other rows, forward and
    backward: on SmolLM2 (one thread, CPU) about 0.02 s of a 0.14 s MEND edit and 0.2-0.7 s of a
    5-6 s FT-C edit (docs/benchmarks.md).
    """
    base = _base(model)
    attn = model_attention_mask(model, mask, ids.shape[1], base.dtype)
    kwargs = {"input_ids": ids, "attention_mask": attn, "use_cache": False}
    if params:
        prefix = arch_of(model).base + "."
        own = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
        hidden = functional_call(base, own, (), kwargs).last_hidden_state
    else:
        hidden = base(**kwargs).last_hidden_state
    return output_head(model)(hidden)[rows, pos]


@torch.no_grad()
def _score_batch(
    model, tok, prompts: list[str], targets: list[list[list[int]]]
) -> tuple[np.ndarray, np.ndarray]:
    device = next(model.parameters()).device
    n, k = len(prompts), len(targets[0])
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left").to(device)
    mask = enc["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    base = _base(model)
    head = output_head(model, few_rows=True)
    out = base(
        input_ids=enc["input_ids"],
        attention_mask=model_attention_mask(model, mask, mask.shape[1], base.dtype),
        position_ids=pos,
        cache=full_cache(),
        use_cache=True,
    )
    first_logits = head(out.last_hidden_state[:, -1]).float().log_softmax(-1)  # (N, V)

    flat = [t for row in targets for t in row]  # N*K targets, prompt-major
    max_len = max(len(t) for t in flat)
    nll = torch.zeros(n * k, device=device)
    ok = torch.ones(n * k, dtype=torch.bool, device=device)
    first_ids = torch.tensor([t[0] for t in flat], device=device)
    lp_first = first_logits.repeat_interleave(k, dim=0)
    nll -= lp_first.gather(1, first_ids[:, None]).squeeze(1)
    ok &= lp_first.argmax(-1) == first_ids
    lengths = torch.tensor([len(t) for t in flat], device=device, dtype=torch.float)

    if max_len > 1:
        cache = out.cache
        cache.batch_repeat_interleave(k)
        cont = torch.full((n * k, max_len - 1), tok.pad_token_id, device=device)
        cont_mask = torch.zeros((n * k, max_len - 1), dtype=mask.dtype, device=device)
        labels = torch.full((n * k, max_len - 1), -1, device=device)
        for i, t in enumerate(
            flat
        ):  # per-sequence assembly of a tiny index tensor, not per-token math
            if len(t) > 1:
                cont[i, : len(t) - 1] = torch.tensor(t[:-1], device=device)
                cont_mask[i, : len(t) - 1] = 1
                labels[i, : len(t) - 1] = torch.tensor(t[1:], device=device)
        full_mask = torch.cat([mask.repeat_interleave(k, dim=0), cont_mask], dim=1)
        start = mask.sum(-1).repeat_interleave(k)[:, None]
        cont_pos = start + torch.arange(max_len - 1, device=device)[None, :]
        out2 = base(
            input_ids=cont,
            attention_mask=model_attention_mask(model, full_mask, cont.shape[1], base.dtype),
            position_ids=cont_pos,
            cache=cache,
            use_cache=True,
        )
        sel = labels >= 0
        hidden = out2.last_hidden_state[sel]
        lp = head(hidden).float().log_softmax(-1)
        lab = labels[sel]
        tok_lp = lp.gather(1, lab[:, None]).squeeze(1)
        tok_ok = lp.argmax(-1) == lab
        rows = sel.nonzero()[:, 0]
        nll.index_add_(0, rows, -tok_lp)
        bad = torch.zeros(n * k, dtype=torch.long, device=device).index_add_(
            0, rows, (~tok_ok).long()
        )
        ok &= bad == 0
    nll = nll / lengths
    return nll.view(n, k).cpu().numpy().astype(np.float64), ok.view(n, k).cpu().numpy()


def _is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def score_targets(
    model,
    tok,
    prompts: list[str],
    targets: list[list[str]] | list[list[list[int]]],
    batch_size: int = 64,
) -> TargetScores:
    """Teacher-forced scores of ``targets[i][j]`` after ``prompts[i]`` (strings or token ids).

    Prompts go through in padded batches of ``batch_size``, batched in order of their token
    length (stable) so that a batch pads little; the scores come back in the given order. A batch
    that runs out of memory is retried at half the size (down to 1), and the smaller size is kept
    for the rest.
    """
    if len(prompts) != len(targets):
        raise ValueError("one list of targets per prompt is required")
    ids = [[t if isinstance(t, list) else target_token_ids(tok, t) for t in row] for row in targets]
    lengths = (
        [len(x) for x in tok(list(prompts))["input_ids"]]
        if len(prompts) > 1
        else [0] * len(prompts)
    )
    order = sorted(range(len(prompts)), key=lengths.__getitem__)
    nlls, oks = [], []
    s = 0
    while s < len(order):
        rows = order[s : s + batch_size]
        try:
            a, b = _score_batch(model, tok, [prompts[i] for i in rows], [ids[i] for i in rows])
        except (RuntimeError, torch.OutOfMemoryError) as err:
            if not _is_out_of_memory(err) or batch_size == 1:
                raise
            batch_size //= 2
            log.warning("out of memory: scoring batch size lowered to %d", batch_size)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        nlls.append(a)
        oks.append(b)
        s += len(a)
    nll, ok = (
        np.empty((len(order), len(ids[0]) if ids else 0)),
        np.empty((len(order), len(ids[0]) if ids else 0), bool),
    )
    if order:
        nll[order], ok[order] = np.concatenate(nlls), np.concatenate(oks)
    return TargetScores(nll, ok)


METRIC_NAMES = (
    "es",
    "ps",
    "ns",
    "es_mag",
    "ps_mag",
    "ns_mag",
    "es_argmax",
    "ps_argmax",
    "ns_argmax",
)


def record_prompts(record: dict) -> tuple[list[str], slice, slice, slice]:
    """Rewrite, paraphrase and neighborhood prompts of a CounterFact record, and their slices."""
    rw = record["requested_rewrite"]
    rewrite = [rw["prompt"].replace("{}", rw["subject"], 1)]
    para = list(record["paraphrase_prompts"])
    neigh = list(record["neighborhood_prompts"])
    a, b = len(rewrite), len(rewrite) + len(para)
    return rewrite + para + neigh, slice(0, a), slice(a, b), slice(b, b + len(neigh))


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if x.size else math.nan


def evaluate_record(model, tok, record: dict, batch_size: int = 64) -> dict[str, float]:
    """ES/PS/NS, their magnitudes and argmax variants for one record, in one batched pass.

    ES: P(new) > P(true) on the rewrite prompt; PS: mean over paraphrases; NS: mean over
    neighborhood prompts of P(true) > P(new). P = exp(-mean per-token NLL); magnitudes are means
    of P(new) - P(true) (reversed for the neighborhood). Argmax variants: all tokens of the
    target (new for rewrite/paraphrase, true for neighborhood) are argmax under teacher forcing.
    """
    rw = record["requested_rewrite"]
    prompts, s_rw, s_pa, s_nb = record_prompts(record)
    new, true = rw["target_new"]["str"], rw["target_true"]["str"]
    ids = [target_token_ids(tok, new), target_token_ids(tok, true)]
    sc = score_targets(model, tok, prompts, [ids] * len(prompts), batch_size=batch_size)
    nll_new, nll_true = sc.nll[:, 0], sc.nll[:, 1]
    p_new, p_true = np.exp(-nll_new), np.exp(-nll_true)
    return {
        "es": _mean(nll_new[s_rw] < nll_true[s_rw]),
        "ps": _mean(nll_new[s_pa] < nll_true[s_pa]),
        "ns": _mean(nll_true[s_nb] < nll_new[s_nb]),
        "es_mag": _mean(p_new[s_rw] - p_true[s_rw]),
        "ps_mag": _mean(p_new[s_pa] - p_true[s_pa]),
        "ns_mag": _mean(p_true[s_nb] - p_new[s_nb]),
        "es_argmax": _mean(sc.argmax_ok[s_rw, 0]),
        "ps_argmax": _mean(sc.argmax_ok[s_pa, 0]),
        "ns_argmax": _mean(sc.argmax_ok[s_nb, 1]),
    }
