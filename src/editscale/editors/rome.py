"""ROME: rank-one model editing (Meng et al. 2022), with the r-ROME key option (Gupta et al. 2024).

Faithful to the public algorithm:

* u = C^-1 k*, normalised, where k* is the edited matrix's input at the subject's last token,
  averaged over the prompt preceded by each context template;
* v* = (MLP output at the subject) + delta, delta optimised with Adam on the NLL of the new
  target after every context template + a KL term on "{} is a" + a weight-decay term, with
  ||delta|| clamped to ``clamp_norm_factor`` x the initial output norm; 20 forward passes and 19
  updates at most, stopping when the loss falls under ``early_stop_loss``;
* v = (v* - W k - b) / (k . u) and W <- W + v u^T.

``key_mode='original'`` uses the bare prompt's key k in the last step (the asymmetry the paper
studied); ``key_mode='homogeneous'`` (r-ROME) uses k* there too.

Speed: the blocks below the edited one never change during the v* optimisation, so they run once
per edit; each step runs only the blocks above it, and the LM head only at the positions a loss
reads. All prompts form one batch. The bare prompt's key k is read from the "{}" template's
prompt (causal attention: the target tokens after it do not change it), and delta is added to
the residual stream after the edited block, which equals adding it to the MLP output; where a
norm follows the MLP (Gemma 2/3, OLMo 2: ``ArchSpec.mlp_post_norm``) the stream gets
``norm(m + delta) - norm(m)`` instead (:func:`mlp_output_injection`), so delta is still a change of
the MLP output, as in the public code.

Other deliberate differences from the public code, none of which changes an edit on the models
compared (20 sequential edits of SmolLM2-135M layer 6 under transformers 5, same templates and
covariance: u and v cosine >= 1 - 1e-11, ||dW - dW_ref|| / ||dW_ref|| <= 4.5e-6, identical
ES/PS/NS; ``benchmarks/bench_rome_reference.py``): the subject's
last token is located from the tokenizer's offset mapping rather than by tokenising prefix and
subject separately (identical unless BPE merges the subject's last character with what follows);
targets are tokenised with an explicit leading space and without special tokens; C is inverted
in float64 (Cholesky) instead of float32.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from functools import partial
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from editscale.editors.base import EditorBase, EditResult, ParamUpdate
from editscale.editors.hparams import RomeHParams
from editscale.editors.prompts import build_prompts, generate_context_templates, template_texts
from editscale.lm.models import (
    arch_of,
    get_module,
    model_attention_mask,
    n_layers,
    output_head,
    upper_layers_only,
)
from editscale.lm.suffix import split_rows

log = logging.getLogger(__name__)


class _StopForward(Exception):
    pass


class RomeEditor(EditorBase):
    """Computes ROME updates for one matrix of a model (the MLP output projection of ``layer``)."""

    name = "rome"
    update_kind = "rank_one"
    info_names = (
        "v_loss",
        "v_nll_init",
        "v_nll",
        "v_kl",
        "v_steps",
        "delta_norm",
        "target_init_norm",
        "key_gap",
        "denominator",
        "value_gap",
    )
    # False: the v* search runs every position at every step (the reference path of the tests and
    # benchmarks); True runs each row from its subject token to its last scored position, the rows
    # packed into one sequence (optimise_delta's prefix_cache)
    search_prefix_cache = True

    def __init__(
        self,
        model,
        tok,
        hparams: RomeHParams,
        second_moment: torch.Tensor | None,
        context_templates: list[str],
    ):
        self.model, self.tok, self.hp = model, tok, hparams
        self.spec = arch_of(model)
        if not 0 <= hparams.layer < n_layers(model):
            raise ValueError(
                f"rome.layer={hparams.layer} is outside the model's {n_layers(model)} layers"
            )
        self.module_path = self.spec.mlp_out_path(hparams.layer)
        self.module = get_module(model, self.module_path)
        self.device = next(model.parameters()).device
        self.context_templates = list(context_templates)
        self.c_inv = None
        if hparams.mom2_adjustment:
            if second_moment is None:
                raise ValueError("ROME with mom2_adjustment needs key statistics (second_moment)")
            self.c_inv = _inverse(second_moment).to(self.device, torch.float32)

    @property
    def edited_modules(self) -> list[str]:
        return [self.module_path]

    def state_strings(self) -> dict[str, list[str]]:
        """What a resumed run needs to continue identically (stored in the trajectory file)."""
        return {"context_templates": self.context_templates}

    def hparams_dict(self) -> dict:
        return asdict(self.hp)

    # -- the edit -------------------------------------------------------------------------
    def _search_inputs(self, record: dict):
        """The search batch of a record (rewriting prompts in every context template, then the KL
        prompt), its lower pass and the target's token ids."""
        rw = record["requested_rewrite"]
        prompt, subject = rw["prompt"], rw["subject"]
        new = rw["target_new"]["str"]
        target_ids = self.tok(new if new.startswith(" ") else " " + new, add_special_tokens=False)[
            "input_ids"
        ]
        target_prefix = self.tok.decode(target_ids[:-1])
        texts = template_texts(self.context_templates, prompt, subject, target_prefix)
        texts += template_texts(["{}"], self.hp.kl_prompt, subject)
        enc, lookup = build_prompts(self.tok, texts)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        lookup = lookup.to(self.device)
        resid, keys, mlp_outs = lower_pass(self.model, self.hp.layer, enc, lookup)
        return enc, lookup, target_ids, resid, keys, mlp_outs

    def key_used(self, record: dict) -> torch.Tensor:
        """The key the update of ``record`` uses (the bare prompt's, or k* for r-ROME), from the
        current weights. Edits of this editor's own matrix never change it (the key is that
        matrix's input), so on the unedited model it is the key of any edit of a trajectory."""
        return self._keys(self._search_inputs(record)[4])[2]

    def _keys(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k of the bare prompt, k* averaged over the context templates, the key the update
        uses) from the keys of a search batch."""
        k_star, k_bare = keys[: len(self.context_templates)].mean(0), keys[0]
        return k_bare, k_star, (k_bare if self.hp.key_mode == "original" else k_star)

    def compute(self, record: dict) -> EditResult:
        enc, lookup, target_ids, resid, keys, mlp_outs = self._search_inputs(record)
        n_rw = len(self.context_templates)
        k_bare, k_star, k_used = self._keys(keys)
        target_init = mlp_outs[0]

        delta, info = optimise_delta(
            self.model,
            self.hp,
            enc,
            lookup,
            resid,
            target_ids,
            n_rw,
            target_init,
            self.hp.layer,
            prefix_cache=self.search_prefix_cache,
            inject=mlp_output_injection(self.model, self.hp.layer, mlp_outs),
        )
        target = target_init + delta

        u = k_star.float()
        if self.c_inv is not None:
            u = self.c_inv @ u
        u = u / u.norm()
        with torch.no_grad():
            cur_out = self.module(k_used.to(self.module.weight.dtype)[None]).float()[0]
        denominator = torch.dot(k_used.float(), u)
        v = (target - cur_out) / denominator
        info.update(
            delta_norm=float(delta.norm()),
            target_init_norm=float(target_init.norm()),
            key_gap=float((k_star - k_bare).norm() / k_bare.norm()),
            denominator=float(denominator),
            value_gap=float((target - cur_out).norm()),
        )
        vectors = {"k_used": k_used, "k_star": k_star, "k_bare": k_bare, "target": target, "u": u}
        return EditResult(
            [ParamUpdate(self.module_path, u=u.detach(), v=v.detach())], info, vectors
        )


@torch.no_grad()
def lower_pass(model, layer: int, enc, lookup, z_layer: int | None = None):
    """One pass up to block ``z_layer`` (default ``layer``): the residual stream after it, and at
    each row's subject token the input of ``layer``'s MLP output matrix (the keys) and that
    matrix's output (the MLP's output, (rows, d)). Blocks above ``z_layer`` never run."""
    spec = arch_of(model)
    z_layer = layer if z_layer is None else z_layer
    captured = {}
    rows = torch.arange(len(lookup), device=lookup.device)

    def mlp_hook(mod, inputs, output):
        captured["keys"] = inputs[0][rows, lookup].float()
        captured["mlp_out"] = output[rows, lookup].float()

    def block_hook(mod, inputs, output):
        captured["resid"] = (output[0] if isinstance(output, tuple) else output).detach()
        raise _StopForward

    block = get_module(model, spec.layer_path(z_layer))
    h1 = get_module(model, spec.mlp_out_path(layer)).register_forward_hook(mlp_hook)
    h2 = block.register_forward_hook(block_hook)
    try:
        base = get_module(model, spec.base)
        mask = model_attention_mask(
            model, enc["attention_mask"], enc["input_ids"].shape[1], base.dtype
        )
        base(input_ids=enc["input_ids"], attention_mask=mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        h1.remove()
        h2.remove()
    return captured["resid"], captured["keys"], captured["mlp_out"]


# delta (d,) -> the change of every row's residual stream after the edited block at its subject
# token, (rows, d)
Injection = Callable[[torch.Tensor], torch.Tensor]


def _residual_injection(n_rows: int) -> Injection:
    """delta added to the residual stream as it is, in every row."""
    return lambda delta: delta.expand(n_rows, -1)


def mlp_output_injection(model, layer: int, mlp_outs: torch.Tensor) -> Injection:
    """delta added to block ``layer``'s MLP output at each row's subject token (``mlp_outs``,
    (rows, d), from :func:`lower_pass`), seen in the residual stream after the block: itself
    where the MLP output joins the residual stream as it is, else through the architecture's
    norm of the MLP output (:class:`editscale.lm.models.ArchSpec` ``mlp_post_norm``):
    ``norm(m + delta) - norm(m)``, the norm being per position."""
    path = arch_of(model).mlp_post_norm_path(layer)
    if path is None:
        return _residual_injection(len(mlp_outs))
    norm = get_module(model, path)
    before = norm(mlp_outs).float().detach()
    return lambda delta: norm(mlp_outs + delta).float() - before


class StopRule(Protocol):
    """An extra stopping rule of :func:`optimise_delta`, asked after every forward pass (before
    the loss threshold and the update): ``logp`` (n_rw * m, vocabulary) are the log-probabilities
    at the target positions, rows in prompt order, ``tgt`` (m,) the target tokens, ``nll_tok``
    (n_rw, m) their NLLs. A rule may count passes: give each optimisation a fresh one."""

    def __call__(self, logp: torch.Tensor, tgt: torch.Tensor, nll_tok: torch.Tensor) -> bool: ...


def _loss_positions(mask: torch.Tensor, lookup: torch.Tensor, n_rw: int, m: int):
    """(rows, positions) whose logits predict the ``m`` target tokens at the end of each of the
    first ``n_rw`` (right-padded) rows, each (n_rw, m), and the KL row and position (the last
    row's subject token)."""
    dev = mask.device
    start = mask.sum(1)[:n_rw] - m
    pos = start[:, None] + torch.arange(m, device=dev)[None]
    rows = torch.arange(n_rw, device=dev)[:, None].expand(n_rw, m)
    return rows, pos, mask.shape[0] - 1, lookup[-1]


def optimise_delta(
    model,
    hp,
    enc,
    lookup,
    resid,
    target_ids,
    n_rw,
    target_init,
    layer: int,
    stop: StopRule | None = None,
    prefix_cache: bool = True,
    inject: Injection | None = None,
):
    """The v* optimisation shared by ROME and MEMIT: ``delta`` added to the residual stream after
    block ``layer`` at every row's subject token (``resid``: that stream, from :func:`lower_pass`).

    Loss: mean NLL of the target after the first ``n_rw`` rows, + ``kl_factor`` x KL of the last
    row's next-token distribution from its initial one, + ``v_weight_decay`` x ||delta|| /
    ||target_init||^2; Adam with ``v_lr``, ||delta|| clamped to ``clamp_norm_factor`` x
    ||target_init||; ``v_num_grad_steps`` forward passes at most, stopping under
    ``early_stop_loss``.
    ``hp`` has those fields (:class:`RomeHParams`, :class:`MemitHParams`). ``stop``, when given,
    ends it earlier (:class:`StopRule`; ENCORE passes its most-probable early stopping).

    ``prefix_cache`` (default) runs each step on each row's positions from its subject token to
    the last one its loss reads, packed, the earlier ones cached (:mod:`editscale.lm.suffix`), the
    head in slices (:mod:`editscale.lm.head`); ``False`` every position at every step (reference:
    same steps, updates within float rounding, ``tests/editors/test_search_cache.py``).

    ``inject`` (:data:`Injection`; default: delta itself, as MEMIT's z) maps delta to each row's
    change of that stream; ROME passes :func:`mlp_output_injection` (delta changes the MLP output).
    """
    dev = resid.device
    mask = enc["attention_mask"]
    tgt = torch.tensor(target_ids, device=dev)
    m = len(target_ids)
    rw_rows, pos, kl_row, kl_pos = _loss_positions(mask, lookup, n_rw, m)
    head = output_head(model, few_rows=prefix_cache)
    inject = inject or _residual_injection(len(lookup))
    delta = torch.zeros(resid.shape[-1], device=dev, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    init_kl = None
    max_norm = hp.clamp_norm_factor * target_init.norm()
    info = {}
    with upper_layers_only(model, layer + 1) as upper:
        inputs, forward, rw_rows, pos, kl_row, kl_pos = _search_batch(
            model, upper, layer, resid, mask, lookup, rw_rows, pos, kl_row, kl_pos, prefix_cache
        )
        for it in range(hp.v_num_grad_steps):
            opt.zero_grad()
            hidden = forward(inputs(inject(delta).to(resid.dtype)))
            sel = torch.cat(
                [hidden[rw_rows.reshape(-1), pos.reshape(-1)], hidden[kl_row, kl_pos][None]]
            )
            logp = head(sel).to(torch.promote_types(sel.dtype, torch.float32)).log_softmax(-1)
            nll_tok = -logp[:-1].gather(1, tgt.repeat(n_rw)[:, None]).view(n_rw, m)
            nll = (nll_tok.sum(1) / m).mean()
            kl_logp = logp[-1:]
            if init_kl is None:
                init_kl = kl_logp.detach().clone()
                nll_init = nll.item()
            kl = hp.kl_factor * F.kl_div(init_kl, kl_logp, log_target=True, reduction="batchmean")
            wd = hp.v_weight_decay * (delta.norm() / target_init.norm() ** 2)
            loss = nll + kl + wd
            info = {
                "v_loss": loss.item(),
                "v_nll_init": nll_init,
                "v_nll": nll.item(),
                "v_kl": kl.item(),
                "v_steps": it + 1,
            }
            if stop is not None and stop(logp[:-1], tgt, nll_tok):
                break
            if loss.item() < hp.early_stop_loss or it == hp.v_num_grad_steps - 1:
                break
            loss.backward()
            opt.step()
            _clamp_norm_(delta, max_norm)
    return delta.detach(), info


@torch.no_grad()
def _clamp_norm_(delta: torch.Tensor, max_norm: torch.Tensor) -> None:
    """Scale ``delta`` in place down to ``max_norm`` when its norm is larger."""
    norm = delta.norm()
    if norm > max_norm:
        delta.mul_(max_norm / norm)


def _search_batch(
    model, upper, layer, resid, mask, lookup, rows, pos, kl_row, kl_pos, prefix_cache
):
    """What each search step runs: the inputs with each row's change (rows, d) added at its
    subject token, the forward of the blocks above ``layer``, and the loss positions (rows,
    positions) and KL (row, position) in that forward's coordinates. With ``prefix_cache`` the
    rows' positions from their subject token to the last one the loss reads are packed into one
    sequence (:func:`editscale.lm.suffix.split_rows`)."""
    dev = resid.device
    if prefix_cache:
        end = mask.sum(1)
        end[kl_row] = kl_pos + 1  # the KL prompt is read at its subject token only
        packed = split_rows(model, upper, layer + 1, resid, mask, lookup, end)
        h0 = packed.take(resid)

        def inputs(change: torch.Tensor) -> torch.Tensor:
            return h0 + torch.zeros_like(h0).index_add_(1, packed.offset, change[None])

        kl_at = packed.index(torch.tensor(kl_row, device=dev), kl_pos)
        zero = torch.zeros_like(pos)
        return inputs, partial(packed.run, upper), zero, packed.index(rows, pos), 0, kl_at
    attn = model_attention_mask(model, mask, mask.shape[1], resid.dtype)
    onehot = torch.zeros(*mask.shape, 1, device=dev, dtype=resid.dtype)
    onehot[torch.arange(mask.shape[0], device=dev), lookup] = 1

    def full_inputs(change: torch.Tensor) -> torch.Tensor:
        return resid + onehot * change[:, None, :]

    return full_inputs, partial(_run_all_positions, upper, attn), rows, pos, kl_row, kl_pos


def _run_all_positions(upper, attn: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The upper blocks on every position of the batch (the reference path of the search)."""
    return upper(inputs_embeds=h, attention_mask=attn, use_cache=False).last_hidden_state


def _inverse(second_moment: torch.Tensor) -> torch.Tensor:
    """Inverse of the key second moment in float64, with a clear error when it is singular."""
    c = second_moment.double()
    try:
        chol = torch.linalg.cholesky(c)
    except RuntimeError as err:  # torch raises _LinAlgError (a RuntimeError subclass)
        raise ValueError(
            "the key second-moment matrix is not positive definite: the statistics saw too few "
            f"tokens for a {c.shape[0]}-dimensional key (raise stats.n_docs)"
        ) from err
    return torch.cholesky_inverse(chol)


def make_editor(
    model,
    tok,
    hparams: dict,
    second_moment: torch.Tensor | None,
    seed: int,
    state: dict | None = None,
) -> RomeEditor:
    """Build a ROME editor; context templates come from ``state`` (resume) or are generated
    (seeded)."""
    hp = RomeHParams.from_dict(hparams)
    if isinstance(second_moment, dict):  # {layer: C} from the trajectory runner
        second_moment = second_moment.get(hp.layer)
    if state and state.get("context_templates"):
        templates = list(state["context_templates"])
    else:
        templates = generate_context_templates(
            model, tok, hp.context_template_lengths, hp.context_template_top_k, seed
        )
        log.info("generated %d context templates (seed %d)", len(templates), seed)
    return RomeEditor(model, tok, hp, second_moment, templates)
