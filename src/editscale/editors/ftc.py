"""FT-C: constrained fine-tuning of one MLP output matrix (the baseline of ROME's paper, Zhu et
al. 2020).

Per edit, as the public baseline (kmeng01/rome ``baselines/ft``, hparams ``FT/*_constr.json``):

* the edited matrix is the MLP output projection of ``layer`` (layer 0 in the paper's configs);
* a fresh Adam (``lr``) minimises the NLL of the new target after the rewrite prompt, for
  ``num_steps`` iterations at most; an iteration whose loss is already under ``early_stop_loss``
  takes no step and ends the edit;
* after every step the matrix is clamped to the L-infinity ball of radius ``norm_constraint``
  around the matrix before this edit (5e-4 GPT-2 XL, 5e-5 GPT-J);
* ``include_bias``: the module's bias is fine-tuned and clamped with the matrix, in the same Adam.
  The public baseline selects the parameters by name (``transformer.h.0.mlp.c_proj`` /
  ``mlp.fc_out`` matches ``.weight`` and ``.bias``), so its runs, and the paper's numbers, edit
  both: ``include_bias: true`` is the authors' behaviour (config/paper.yaml). The default
  (false) edits the matrix alone, the method as the paper describes it.

The optimised variables are the deltas themselves (a float32 (out, in) tensor, and an (out,)
bias delta, added to the layer's output through a forward hook): the model is never modified
while computing, the clamp is exact in float32, and the stored deltas are exactly what the runner
adds.

Deliberate difference: the public code scores every target token at the LAST prompt position
(``logits[last_token]`` gathered for all target ids), which for a multi-token target optimises
each token as if it were the first. Here each target token is scored at its own position under
teacher forcing (``target_positions: own``); ``last_prompt`` reproduces the baseline's loss.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import torch
import torch.nn.functional as F

from editscale.editors.base import EditorBase, EditResult, ParamUpdate
from editscale.editors.hparams import TARGET_POSITIONS, FtcHParams  # noqa: F401 (re-exported)
from editscale.lm.models import arch_of, get_module, model_attention_mask, n_layers, output_head
from editscale.lm.scoring import target_token_ids

log = logging.getLogger(__name__)


def target_nll(model, tok, prompt: str, target: str, mode: str = "own") -> torch.Tensor:
    """Mean per-token NLL of ``target`` after ``prompt`` (differentiable, one sequence).

    ``own``: token j of the target is predicted at position (prompt length - 1 + j) of
    prompt + target (teacher forcing). ``last_prompt``: every target token is scored at the last
    prompt position (the public FT baseline).
    """
    device = next(model.parameters()).device
    prompt_ids = tok(prompt)["input_ids"]
    tgt = target_token_ids(tok, target)
    m = len(tgt)
    if mode == "own":
        ids = torch.tensor([prompt_ids + tgt[:-1]], device=device)
        pos = torch.arange(len(prompt_ids) - 1, len(prompt_ids) - 1 + m, device=device)
    else:
        ids = torch.tensor([prompt_ids], device=device)
        pos = torch.full((m,), len(prompt_ids) - 1, device=device)
    base = get_module(model, arch_of(model).base)
    head = output_head(model)
    mask = model_attention_mask(
        model, torch.ones_like(ids), ids.shape[1], base.dtype
    )  # skips transformers' slow builder
    hidden = base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[0]
    logp = head(hidden[pos]).float().log_softmax(-1)
    return -logp.gather(1, torch.tensor(tgt, device=device)[:, None]).mean()


class FtcEditor(EditorBase):
    """Constrained fine-tuning of the MLP output matrix of one layer."""

    name = "ftc"
    update_kind = "dense"

    def __init__(self, model, tok, hparams: FtcHParams):
        self.model, self.tok, self.hp = model, tok, hparams
        self.spec = arch_of(model)
        if not 0 <= hparams.layer < n_layers(model):
            raise ValueError(
                f"ftc.layer={hparams.layer} is outside the model's {n_layers(model)} layers"
            )
        self.module_path = self.spec.mlp_out_path(hparams.layer)
        self.module = get_module(model, self.module_path)
        w = self.module.weight
        self.shape = tuple(w.T.shape if self.spec.conv1d else w.shape)  # (out, in)
        self.device = w.device
        if hparams.include_bias and not isinstance(
            getattr(self.module, "bias", None), torch.Tensor
        ):
            raise ValueError(
                f"ftc.include_bias: {self.module_path} has no bias (architecture {self.spec.name})"
            )
        self.info_names = ("ft_loss_init", "ft_loss", "ft_steps", "ft_max_abs_delta") + (
            ("ft_max_abs_bias_delta",) if hparams.include_bias else ()
        )

    @property
    def edited_modules(self) -> list[str]:
        return [self.module_path]

    @property
    def edited_biases(self) -> list[str]:
        """Modules whose bias the edit changes too (``include_bias``)."""
        return [self.module_path] if self.hp.include_bias else []

    def state_strings(self) -> dict[str, list[str]]:
        return {}

    def hparams_dict(self) -> dict:
        return asdict(self.hp)

    def compute(self, record: dict) -> EditResult:
        rw = record["requested_rewrite"]
        prompt = rw["prompt"].format(rw["subject"])
        target = rw["target_new"]["str"]
        hp = self.hp
        eps = hp.norm_constraint
        delta = torch.zeros(self.shape, device=self.device, dtype=torch.float32, requires_grad=True)
        bias = None
        if hp.include_bias:
            bias = torch.zeros(
                self.shape[0], device=self.device, dtype=torch.float32, requires_grad=True
            )
        opt = torch.optim.Adam([delta] + ([bias] if bias is not None else []), lr=hp.lr)

        def add_delta(mod, inputs, output):
            return output + F.linear(inputs[0].float(), delta, bias).to(output.dtype)

        handle = self.module.register_forward_hook(add_delta)
        steps, loss_init, loss_val = 0, None, float("nan")
        max_abs, max_abs_bias = [], []
        try:
            with torch.enable_grad():
                for _ in range(hp.num_steps):
                    opt.zero_grad()
                    loss = target_nll(self.model, self.tok, prompt, target, hp.target_positions)
                    loss_val = loss.item()
                    if loss_init is None:
                        loss_init = loss_val
                    if loss_val < hp.early_stop_loss:
                        break
                    loss.backward()
                    opt.step()
                    steps += 1
                    with torch.no_grad():
                        delta.clamp_(-eps, eps)
                        max_abs.append(float(delta.abs().max()))
                        if bias is not None:
                            bias.clamp_(-eps, eps)
                            max_abs_bias.append(float(bias.abs().max()))
        finally:
            handle.remove()
        info = {
            "ft_loss_init": loss_init,
            "ft_loss": loss_val,
            "ft_steps": steps,
            "ft_max_abs_delta": max(max_abs) if max_abs else 0.0,
        }
        vectors = {"max_abs_per_step": torch.tensor(max_abs)}
        if bias is not None:
            info["ft_max_abs_bias_delta"] = max(max_abs_bias) if max_abs_bias else 0.0
            vectors["max_abs_bias_per_step"] = torch.tensor(max_abs_bias)
        update = ParamUpdate(
            self.module_path,
            dense=delta.detach().clone(),
            bias=bias.detach().clone() if bias is not None else None,
        )
        return EditResult([update], info, vectors)


def make_editor(
    model,
    tok,
    hparams: dict,
    second_moment: torch.Tensor | None,
    seed: int,
    state: dict | None = None,
) -> FtcEditor:
    """Build an FT-C editor (deterministic: no random state; ``second_moment``, ``seed`` unused)."""
    return FtcEditor(model, tok, FtcHParams.from_dict(hparams))
