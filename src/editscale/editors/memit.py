"""MEMIT: mass-editing memory in a transformer (Meng et al. 2023), one edit or a batch per step.

The algorithm of the public code (kmeng01/memit ``memit_main.execute_memit``):

* **Targets.** For each record, z = h + delta: h is the residual stream after the last edited
  block (``layers[-1]``) at the subject's last token of the bare prompt, and delta is optimised as
  ROME's v* (:func:`editscale.editors.rome.optimise_delta`: NLL of the new target after every
  context template, KL on "{} is a", weight decay; ||delta|| clamped to ``clamp_norm_factor`` x
  ||h||), added at that block's output.
* **Spreading.** For each edited layer l, lowest first, on the model with the layers below already
  updated in this step: K (in x n) are the keys (the input of l's MLP output matrix at the
  subject's last token), each the mean of two group means: the bare prompt's key, and the mean
  over the sampled context templates; R = (Z - H) / (number of layers left), with H the current
  residual at the last edited block for the bare prompts; the update is
  dW_l = R K^T (lambda C_l + K K^T)^-1 (C_l = E[k k^T] of the layer's keys, lambda =
  ``mom2_update_weight``), computed in float64 and applied before the next layer's keys are read.

All weights are restored before :meth:`MemitEditor.compute_batch` returns; the updates come back
as rank-n factors (``u`` = ((lambda C + K K^T)^-1 K)^T, ``v`` = R^T, float32), which the runner
applies with :func:`editscale.editors.base.apply_updates`, the same call that applied them inside
the step, so the weights are the step's bit for bit.

Differences from the public code: context templates come from a local seeded generator
(:func:`editscale.editors.prompts.generate_context_templates` with MEMIT's start words); C is the
project's float64 second moment (the public code casts a float32 one to float64); the factors are
stored in float32, so dW = v^T u is formed in float32 (the public code adds the float64 product,
cast to float32).
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import torch

from editscale.editors.base import EditorBase, EditResult, ParamUpdate, apply_update
from editscale.editors.hparams import MemitHParams
from editscale.editors.prompts import build_prompts, generate_context_templates, template_texts
from editscale.editors.rome import StopRule, lower_pass, optimise_delta
from editscale.lm.models import arch_of, edit_parameter, n_layers

log = logging.getLogger(__name__)


class MemitEditor(EditorBase):
    """MEMIT updates of the MLP output matrices of ``hparams.layers``."""

    name = "memit"
    hparams_cls = MemitHParams
    update_kind = "low_rank"
    info_names = (
        "v_loss",
        "v_nll_init",
        "v_nll",
        "v_steps",
        "delta_norm",
        "target_init_norm",
        "z_error",
    )
    search_prefix_cache = True  # as RomeEditor's: False runs the reference v* search

    def __init__(
        self,
        model,
        tok,
        hparams: MemitHParams,
        second_moments: dict[int, torch.Tensor],
        context_templates: list[str],
    ):
        self.model, self.tok, self.hp = model, tok, hparams
        self.spec = arch_of(model)
        bad = [x for x in hparams.layers if not 0 <= x < n_layers(model)]
        if bad:
            raise ValueError(f"memit.layers {bad} are outside the model's {n_layers(model)} layers")
        missing = [x for x in hparams.layers if x not in (second_moments or {})]
        if missing:
            raise ValueError(f"MEMIT needs the key statistics of layers {missing}")
        self.device = next(model.parameters()).device
        self.paths = [self.spec.mlp_out_path(x) for x in hparams.layers]
        self.c = {x: second_moments[x].to(self.device, torch.float64) for x in hparams.layers}
        if not context_templates or context_templates[0] != "{}":
            raise ValueError("MEMIT's context templates must start with the bare '{}'")
        self.context_templates = list(context_templates)

    @property
    def edited_modules(self) -> list[str]:
        return list(self.paths)

    def state_strings(self) -> dict[str, list[str]]:
        return {"context_templates": self.context_templates}

    def hparams_dict(self) -> dict:
        return asdict(self.hp)

    def compute(self, record: dict) -> EditResult:
        return self.compute_batch([record])

    # -- targets ----------------------------------------------------------------------------
    def _target(self, record: dict) -> tuple[torch.Tensor, dict]:
        """z = h + delta at the last edited block for one record, and the optimisation's
        diagnostics."""
        rw = record["requested_rewrite"]
        new = rw["target_new"]["str"]
        target_ids = self.tok(new if new.startswith(" ") else " " + new, add_special_tokens=False)[
            "input_ids"
        ]
        texts = template_texts(
            self.context_templates, rw["prompt"], rw["subject"], self.tok.decode(target_ids[:-1])
        )
        texts += template_texts(["{}"], self.hp.kl_prompt, rw["subject"])
        enc, lookup = build_prompts(self.tok, texts)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        lookup = lookup.to(self.device)
        z_layer = self.hp.layers[-1]
        resid, _, _ = lower_pass(self.model, z_layer, enc, lookup)
        target_init = resid[0, lookup[0]].float()
        delta, info = optimise_delta(
            self.model,
            self.hp,
            enc,
            lookup,
            resid,
            target_ids,
            len(self.context_templates),
            target_init,
            z_layer,
            stop=self._stop_rule(),
            prefix_cache=self.search_prefix_cache,
        )
        info.update(delta_norm=float(delta.norm()), target_init_norm=float(target_init.norm()))
        return target_init + delta, info

    def _stop_rule(self) -> StopRule | None:
        """An extra stop of the target search, fresh per record (ENCORE's); MEMIT has none."""
        return None

    # -- keys and current values ------------------------------------------------------------
    def _keys_and_values(
        self, records: list[dict], layer: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K (in, n): each record's key at ``layer``, the mean of the bare prompt's key and the mean
        of the templated ones; H (out, n): the residual after the last edited block, bare prompt."""
        n_t = len(self.context_templates)
        texts = []
        for rec in records:
            rw = rec["requested_rewrite"]
            texts += template_texts(self.context_templates, rw["prompt"], rw["subject"])
        enc, lookup = build_prompts(self.tok, texts)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        lookup = lookup.to(self.device)
        resid, keys, _ = lower_pass(self.model, layer, enc, lookup, z_layer=self.hp.layers[-1])
        keys = keys.view(len(records), n_t, -1)
        k = keys[:, 0] if n_t == 1 else (keys[:, 0] + keys[:, 1:].mean(1)) / 2
        bare = torch.arange(len(records), device=self.device) * n_t
        h = resid[bare, lookup[bare]].float()
        return k.T.double(), h.T.double()

    def _adjusted_keys(self, layer: int, k: torch.Tensor) -> torch.Tensor:
        """(lambda C + K K^T)^-1 K (float64, (in, n)): dW = R adj^T. EMMET, AlphaEdit and ENCORE
        change this."""
        return torch.linalg.solve(self.hp.mom2_update_weight * self.c[layer] + k @ k.T, k)

    def _carry(self, records: list[dict]) -> dict[str, torch.Tensor]:
        """What the next steps need from this one, read on the edited model (AlphaEdit: the
        keys)."""
        return {}

    # -- the step ---------------------------------------------------------------------------
    def compute_batch(self, records: list[dict]) -> EditResult:
        """The updates of one MEMIT step inserting every record of ``records`` at once."""
        targets, infos = zip(*(self._target(rec) for rec in records))
        z = torch.stack(targets, dim=1).double()  # (out, n)
        saved = {p: edit_parameter(self.model, p).detach().clone() for p in self.paths}
        updates, z_error = [], float("nan")
        try:
            for i, (layer, path) in enumerate(zip(self.hp.layers, self.paths)):
                k, h = self._keys_and_values(records, layer)
                if i == 0:
                    z_error = float((z - h).norm(dim=0).mean())
                resid = (z - h) / (len(self.hp.layers) - i)
                adj = self._adjusted_keys(layer, k)  # (in, n)
                upd = ParamUpdate(
                    path, u=adj.T.float().contiguous(), v=resid.T.float().contiguous()
                )
                apply_update(edit_parameter(self.model, path), upd, self.spec)
                updates.append(upd)
            carry = self._carry(records)  # on the model with every layer's update
        finally:
            with torch.no_grad():
                for p, w in saved.items():
                    edit_parameter(self.model, p).copy_(w)
        info = {
            name: sum(x[name] for x in infos) / len(infos)
            for name in (
                "v_loss",
                "v_nll_init",
                "v_nll",
                "v_steps",
                "delta_norm",
                "target_init_norm",
            )
        }
        info["z_error"] = z_error
        return EditResult(updates, info, {"z": z}, carry)


class CarriedKeysEditor(MemitEditor):
    """A MEMIT-family editor that keeps the sum of K K^T over the keys of every earlier step
    (``kept``, float64, per edited layer; AlphaEdit, ENCORE). A step returns its keys as
    ``carry["keys_<i>"]`` ((n, in), the i-th edited layer); :meth:`commit` adds them after the
    runner applies the step's updates, and again in order when a run resumes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kept = {x: self.c[x].new_zeros(self.c[x].shape) for x in self.hp.layers}
        self.carry_dims = {
            f"keys_{i}": int(self.c[x].shape[0]) for i, x in enumerate(self.hp.layers)
        }

    def commit(self, carry: dict[str, torch.Tensor]) -> None:
        for i, x in enumerate(self.hp.layers):
            k = carry[f"keys_{i}"].to(self.kept[x].device, torch.float64)  # (n, in)
            self.kept[x] += k.T @ k


def make_editor(
    model,
    tok,
    hparams: dict,
    second_moment,
    seed: int,
    state: dict | None = None,
    editor_cls: type[MemitEditor] | None = None,
) -> MemitEditor:
    """Build a MEMIT editor (or ``editor_cls``, a subclass: EMMET). ``second_moment``: {layer: C}
    of every edited layer. Context templates come from ``state`` (resume) or are generated
    (seeded, MEMIT's start words)."""
    editor_cls = editor_cls or MemitEditor
    hp = editor_cls.hparams_cls.from_dict(hparams)
    if isinstance(second_moment, torch.Tensor):
        if len(hp.layers) != 1:
            raise ValueError(
                f"{editor_cls.name} on layers {hp.layers} needs one key-statistics matrix per layer"
            )
        second_moment = {hp.layers[0]: second_moment}
    if state and state.get("context_templates"):
        templates = list(state["context_templates"])
    else:
        templates = generate_context_templates(
            model,
            tok,
            hp.context_template_lengths,
            hp.context_template_top_k,
            seed,
            starts=hp.context_template_starts,
        )
        log.info("generated %d context templates (seed %d)", len(templates), seed)
    return editor_cls(model, tok, hp, second_moment, templates)
