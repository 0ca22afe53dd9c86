"""Side-by-side check of the project's FT-C editor against the public FT baseline (kmeng01/rome).

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/bench_ftc_reference.py \
        --rome-src REFCODE/rome --target-positions last_prompt [--records 10]
    ... --target-positions own

Result (SmolLM2-135M, ``model.layers.0.mlp.down_proj``, config/smollm2.yaml: 25 steps, lr 5e-4,
norm_constraint 5e-4; 10 sequential edits, 1 thread, transformers 5.24.0, torch 2.13.0 CPU):

* ``last_prompt``: 0 of 10 edits agree at 1e-5. Relative dW difference 1.8e-5 to 3.0e-5; no entry
  differs by more than 1% of the bound; ||dW||/||W|| 2.56e-3 on both sides (the norms equal to 4
  digits), 25 of 25 steps on both sides in every edit, the first loss bit for bit the public one in
  10 of 10 and the last equal to <= 1.0e-5 relative; identical token ids in all 10. What is left is
  differences 2 and 3 below; the public clamp's rounding alone (``clamp_rounding``) is 1.09e-5 to
  1.10e-5 in every edit, so no implementation that clamps the delta exactly gets under 1e-5.
  Seconds per edit: project 9.5, public 9.2 (one thread each, on a 2-core machine loaded by other
  jobs, load average 3 to 7).
* ``own``: 0 of 10 agree. The nine one-token edits differ as in ``last_prompt`` (1.9e-5 to 3.8e-5,
  first loss bit for bit equal); the one two-token target (edit 3, case 819, " Prescott") differs
  by 1.03 (28% of the entries by more than 1% of the bound; first loss 8.44 vs 17.16): a different
  objective, below. Seconds per edit (loaded likewise): project 6.4, public 6.5.

Before the project's loss took its logits from ``editscale.lm.scoring.logits_at`` (the LM head on
every position, difference 1 below) the relative dW differences of the one-token edits were
2.3e-4 to 1.4e-3 (``last_prompt``) and 2.2e-4 to 1.5e-3 (``own``), the first losses equal only to
7.8e-7 relative.

What is compared. The first ``--records`` CounterFact records (``--counterfact``) are edited
sequentially into one model (``--model``, float32, CPU) at the layer and with the FT-C
hyperparameters of ``--config`` (``methods.ftc``, merged with ``per_model.<--model-key>``; then
``--target-positions`` and ``--include-bias/--no-include-bias`` when given). For every edit both
implementations start from the same weights, the current state of the one shared model: the
project's update is computed with ``editscale.editors.ftc`` (``load_editor_module("ftc")
.make_editor(...)``, ``editor.compute``), the public one with ``baselines.ft.ft_main.execute_ft``
(which fine-tunes the model's own parameters in place and puts them back before it returns the
deltas; checked bit for bit, see "Side effects" below), and then the project's update is applied
(``editscale.editors.base.apply_updates``) before the next edit. So differences never accumulate,
and edit t measures the two implementations on the identical model state after t - 1 edits.
(``apply_ft_to_model`` is ``execute_ft`` followed by ``w[...] += delta``; it is not called, since
the project's update, not the public one, goes into the shared model.)

Per edit it reports: the relative difference of the weight deltas ||dW - dW_ref||_F /
||dW_ref||_F (float64; and of the bias deltas, when a bias is edited by either side), ||dW||_F and
||dW||_F / ||W||_F of both, the fraction of the matrix's entries whose deltas differ by more than
1% of ``norm_constraint``, ``clamp_rounding`` (difference 3 below, alone), the number of Adam steps
each took (the project's ``ft_steps``; the public code's count of the ``Batch loss`` lines it
prints with a value >= 1e-2, the lines after which it steps), the first and last loss of each,
whether both sides tokenise to the same ids (``same_token_ids``) and whether the public unk mask
drops a target token (``unk_in_target``), whether the first losses are equal bit for bit
(``loss_init_equal``: the public code prints the float with all its digits), and the seconds of
each. An edit "agrees" at a relative dW difference <= 1e-5 (and bias
difference <= 1e-5 when a bias is edited).

Hyperparameters, mapped onto the public ``FTHyperParams`` (``baselines/ft/ft_hparams.py``) field by
field: ``layer`` -> ``layers=[layer]``; ``num_steps``, ``lr`` one to one; ``norm_constraint`` as a
Python float (``execute_ft`` clamps only when ``type(hparams.norm_constraint) is float``);
``weight_decay`` 0 (the project's Adam has none); ``batch_size`` 1 (one request per call: one
batch per epoch); ``rewrite_module_tmp`` the Llama ``model.layers.{}.mlp.down_proj``. Read by
nothing in ``ft_main.py``, set to the public configs' values or the Llama names:
``kl_factor`` 0 and ``layer_module_tmp``, ``mlp_module_tmp``, ``attn_module_tmp``, ``ln_f_module``,
``lm_head_module``. Not fields, checked instead: ``early_stop_loss`` must be 0.01 (the public code
hard-codes ``if loss.item() >= 1e-2: step`` and ``if loss_meter.avg < 1e-2: break``); the public
code selects the edited parameters by name (``rewrite_module_tmp.format(layer) in n`` over
``named_parameters``: the weight, and the bias too when the module has one), so ``include_bias``
must be true exactly when the module has a bias (SmolLM2's ``down_proj`` has none, so
``--include-bias`` is refused; an edit of a module with a bias under ``include_bias: false`` is
reported with the public bias delta against zero). ``target_positions`` has no public counterpart:
the public loss is ``last_prompt``.

Why ``own`` disagrees (expected). The public code gathers the log-probabilities of every target
token from the logits at the last prompt position (``model(**inputs).logits[arange,
last_token_inds]``, then ``torch.gather(probs, 1, target_ids)``); ``own`` scores target token j at
position (prompt length - 1 + j) of prompt + target under teacher forcing (``editscale.editors.ftc
.target_nll``, its ``if mode == "own"`` branch). For a one-token target the two are the same
function (the same ids, the same position: the input is the prompt alone), so those edits differ
only by the rounding below; for a multi-token target they are different objectives (``own`` asks
position L - 1 + j for target token j, the public code asks the last prompt position L - 1 for
every target token at once), so the gradients, Adam steps and clamped deltas differ entirely.

Why ``last_prompt`` disagrees. The two compute the same thing: the same token ids, the same loss
function of the weights, the same optimiser, stopping rule and bound. Every difference is float32
rounding, which Adam amplifies: it divides each entry's gradient by that entry's own running RMS,
so an entry whose gradient is tiny and changes sign under rounding takes full +-lr steps the other
way. Measured on records 1 and 3, each edited into the unedited model, by swapping one ingredient at
a time in replicas that reproduce each side bit for bit (differences 2 and 3 alone):

1. The LM head's product: no longer a difference. ``editscale/editors/ftc.py`` ``target_nll`` takes
   its logits from ``editscale/lm/scoring.py`` ``logits_at``, ``_lm_head(model)(hidden)[rows,
   pos]``, the head on every position of the sequence and the scored rows taken after, as
   ``baselines/ft/ft_main.py`` does: ``probs = torch.nn.functional.log_softmax(model(**inputs)
   .logits[torch.arange(bs), last_token_inds], dim=-1)``. The first loss is bit for bit the
   public one in every edit. It was the dominant difference (2e-4 to 1.4e-3) while the project
   applied the head to the scored row only (``head(hidden[pos])``): the first gradient then
   differed by 1.2e-4 relative, 31 of 884,736 entries of opposite sign (edit 1), because the
   float32 backward of the head on one row sums its 49,152 terms about ten times less accurately
   (``logits_at``'s docstring). (The attention masks differ, the project's 4-D additive
   ``causal_attention_mask`` against transformers' own from the 2-D ``attention_mask``, but give
   bit-identical hidden states: no difference.)
2. How the delta enters the forward pass (1.1e-5 / 0.9e-5 on records 1 / 3). ``ftc.py``
   ``add_delta``: ``output + F.linear(inputs[0].float(), delta, bias)``, W0 x + dW x with the
   model untouched; ``ft_main.py`` optimises the weight itself (``opt = torch.optim.Adam([v for _,
   v in weights.items()], ...)``), (W0 + dW) x.
3. Where the step and the clamp are rounded (1.4e-5 / 1.3e-5). ``ftc.py``: Adam on dW from 0
   and ``delta.clamp_(-eps, eps)``, exactly +-eps at the bound; ``ft_main.py``: Adam on W, each step
   rounded to W's float32 grid, ``v[...] = torch.clamp(v, min=weights_copy[k] - eps,
   max=weights_copy[k] + eps)`` and ``deltas = {k: (weights[k] - weights_copy[k]) ...}``: an entry
   at the bound is fl(W0 +- eps) - W0, off +-eps by up to 7.3e-5 eps (RMS 1.1e-5 eps over this
   matrix). 96% and 98% of the entries end at the bound, so the public clamp's rounding alone is a
   relative difference of 1.09e-5 to 1.10e-5 in every edit (``clamp_rounding``): above 1e-5 by
   itself, for any implementation that clamps the delta exactly. 2 and 3 together are the 1.8e-5 to
   3.8e-5 measured.

Checked and not a difference here: tokenisation (the public code prepends " " to a target without
one and calls the tokenizer with its special tokens; SmolLM2's adds none, so the ids equal the
project's ``tok(prompt)`` and ``target_token_ids``, which passes ``add_special_tokens=False``:
``same_token_ids`` in all edits; a tokenizer adding a BOS would put it into the public targets);
the unk mask (``loss_mask = target_ids != tok.unk_token_id``: SmolLM2's unk is <|endoftext|>, id 0,
in no target; a target containing it would be averaged over fewer tokens by the public code only);
the optimiser (``torch.optim.Adam`` with its defaults on both sides, weight decay 0); early stopping
(public: a step only ``if loss.item() >= 1e-2``, then ``break`` when the epoch's mean loss is
< 1e-2; with one request per epoch the same as ``ftc.py``'s ``if loss_val < hp.early_stop_loss:
break``; no edit here stopped early); the clamp after every step (the public one also after an
iteration without a step, a no-op); the mean over target tokens (``sum(1) / loss_mask.sum(1)``
against ``.mean()``); the bias (by name: ``down_proj`` has none, both edit the weight alone).

Side effects of ``execute_ft`` undone here: it sets ``requires_grad = name in weights`` on every
parameter of the model and never restores it (the edited weight stays trainable, every other
parameter frozen), and it leaves the last step's ``.grad`` on the edited parameters. The script
saves every parameter's flag before the call and puts it back after, and drops those gradients, so
that the project's next ``compute`` (which expects the frozen model ``load_model`` returns) does not
also back-propagate into, and accumulate, the weight's ``.grad``.

Patches the public code needs (kmeng01/rome at 0874014; ``baselines/ft/ft_main.py`` only, beyond
the two in ``rome/compute_v.py`` that ``bench_rome_reference.py`` lists and that FT does not
import). They are applied in memory when the module is loaded (``load_ft_main``: the file's text
with the replacement, compiled under the file's own name as ``baselines.ft.ft_main``); the
extracted tree is read, never written, and a tree already patched this way is accepted:

1. the literal ``"cuda"`` in ``tok(txt, ...).to("cuda")`` and ``tok(tgt, ...)["input_ids"].to(
   "cuda")`` replaced by ``next(model.parameters()).device`` (the model's device).

Nothing else: under transformers 5 the rest ran unchanged (the tokenizer's ``BatchEncoding`` of
``input_ids`` and ``attention_mask`` passed as ``model(**inputs)``; ``util/nethook.py`` is imported
but ``execute_ft`` calls none of it). ``util`` is imported from inside ``--rome-src``, as for ROME.

Output: a per-edit table and a summary on stdout, and
``benchmarks/results/ftc_reference_<target positions>-<host>.json`` (the summary with every edit's
numbers, both hyperparameter sets and the patch). Use one thread (``--threads``, default 1) on a
shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rome_reference import REFERENCE_COMMIT, rel_diff, working_directory  # noqa: E402
from report import report  # noqa: E402

log = logging.getLogger("bench_ftc_reference")

REL_TOL = 1e-5
PUBLIC_STOP_LOSS = 1e-2  # hard-coded twice in execute_ft
DIFFER_FRACTION = 1e-2  # an entry "differs" when |dW - dW_ref| > this x norm_constraint
CUDA = '"cuda"'
DEVICE = "next(model.parameters()).device"
REFERENCE_PATCHES = (
    "baselines/ft/ft_main.py (applied in memory, the file untouched): the literal 'cuda' replaced "
    "by next(model.parameters()).device in tok(txt, ...).to(...) and tok(tgt, ...)['input_ids']"
    ".to(...)",
)
BATCH_LOSS = re.compile(r"^Batch loss (\S+)$", re.MULTILINE)


@dataclass
class Reference:
    """The public code's pieces this script calls."""

    ft_main: ModuleType
    hparams_cls: type


def load_ft_main(src: Path) -> ModuleType:
    """``baselines.ft.ft_main`` from ``src`` with :data:`REFERENCE_PATCHES` applied to its text.

    Its package is imported first (its ``__init__`` imports the unpatched module, harmless: the
    CUDA literals are reached only when ``execute_ft`` runs); the patched module then replaces it
    in ``sys.modules`` and as the package's attribute, so ``apply_ft_to_model`` calls the patched
    ``execute_ft``."""
    path = src / "baselines" / "ft" / "ft_main.py"
    text = path.read_text()
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    n = code.count(CUDA)
    if n not in (0, 2):
        raise SystemExit(f"{path}: {n} uses of {CUDA}, expected 2 (kmeng01/rome@0874014) or 0")
    if n == 0 and DEVICE not in code:
        raise SystemExit(f"{path} is neither the public file nor patched as this script patches it")
    package = importlib.import_module("baselines.ft")
    spec = importlib.util.spec_from_file_location("baselines.ft.ft_main", path)
    module = importlib.util.module_from_spec(spec)
    exec(compile(text.replace(CUDA, DEVICE), str(path), "exec"), module.__dict__)
    sys.modules["baselines.ft.ft_main"] = module
    package.ft_main = module
    package.execute_ft, package.apply_ft_to_model = module.execute_ft, module.apply_ft_to_model
    return module


def import_reference(src: Path) -> Reference:
    """Import the public ``baselines.ft`` (and the ``util`` it needs) from ``src``."""
    sys.path.insert(0, str(src))
    with working_directory(src):
        ft_main = load_ft_main(src)
        from baselines.ft.ft_hparams import FTHyperParams
    return Reference(ft_main, FTHyperParams)


def project_hparams(args: argparse.Namespace) -> dict[str, Any]:
    from editscale.config import method_hparams

    cfg = yaml.safe_load(args.config.read_text())
    hp = method_hparams(cfg, "ftc", args.model_key)
    if args.target_positions is not None:
        hp["target_positions"] = args.target_positions
    if args.include_bias is not None:
        hp["include_bias"] = args.include_bias
    return hp


def reference_hparams(ref: Reference, hp: dict[str, Any], has_bias: bool):
    """The public FTHyperParams equal to the project's FT-C settings on a Llama model."""
    from editscale.editors.hparams import FtcHParams

    p = FtcHParams.from_dict(hp)
    if p.early_stop_loss != PUBLIC_STOP_LOSS:
        raise SystemExit(
            f"ftc.early_stop_loss={p.early_stop_loss!r}: the public code hard-codes "
            f"{PUBLIC_STOP_LOSS}; nothing to compare"
        )
    if p.include_bias and not has_bias:
        raise SystemExit("include_bias: the edited module has no bias (neither side can edit it)")
    if has_bias and not p.include_bias:
        log.warning(
            "the module has a bias: the public code edits it, the project (include_bias "
            "false) does not; the bias deltas will disagree"
        )
    if p.target_positions != "last_prompt":
        log.warning(
            "target_positions=%s: the public loss is last_prompt; multi-token targets "
            "are expected to disagree",
            p.target_positions,
        )
    return ref.hparams_cls(
        layers=[p.layer],
        num_steps=p.num_steps,
        lr=p.lr,
        weight_decay=0.0,
        kl_factor=0.0,
        norm_constraint=float(p.norm_constraint),
        rewrite_module_tmp="model.layers.{}.mlp.down_proj",
        layer_module_tmp="model.layers.{}",
        mlp_module_tmp="model.layers.{}.mlp",
        attn_module_tmp="model.layers.{}.self_attn",
        ln_f_module="model.norm",
        lm_head_module="lm_head",
        batch_size=1,
    )


@dataclass
class RefUpdate:
    deltas: dict[str, torch.Tensor]  # parameter name -> delta, as execute_ft returns them
    steps: int
    losses: list[float]
    seconds: float


def reference_update(ref: Reference, model, tok, request: dict, hparams) -> RefUpdate:
    """``execute_ft`` on the current model; its prints are captured (one ``Batch loss`` line per
    epoch), the weights it restores are checked bit for bit, and the ``requires_grad`` flags it
    leaves changed are put back."""
    names = [hparams.rewrite_module_tmp.format(layer) for layer in hparams.layers]
    params = dict(model.named_parameters())
    edited = {n: p for n, p in params.items() if any(m in n for m in names)}
    before = {n: p.detach().clone() for n, p in edited.items()}
    flags = {n: p.requires_grad for n, p in params.items()}
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        deltas = ref.ft_main.execute_ft(model, tok, [request], hparams)
    seconds = time.perf_counter() - t0
    for n, p in params.items():
        p.requires_grad_(flags[n])
        if n in edited:
            p.grad = None
    if set(deltas) != set(edited):
        raise RuntimeError(f"execute_ft edited {sorted(deltas)}, not {sorted(edited)}")
    for n, p in edited.items():
        if not torch.equal(p, before[n]):
            raise RuntimeError(f"execute_ft did not restore {n} bit for bit")
    losses = [float(x) for x in BATCH_LOSS.findall(out.getvalue())]
    steps = sum(x >= PUBLIC_STOP_LOSS for x in losses)
    return RefUpdate(dict(deltas), steps, losses, seconds)


def token_check(tok, request: dict) -> dict[str, bool]:
    """Whether both sides feed the same ids: the public ``tok([prompt])`` / ``tok([" " +
    target])`` (special tokens included, as it calls the tokenizer) against the project's
    ``tok(prompt)`` / ``target_token_ids``; and whether the public ``unk_token_id`` mask drops a
    target token."""
    from editscale.lm.scoring import target_token_ids

    prompt = request["prompt"].format(request["subject"])
    target = request["target_new"]["str"]
    pub_target = target if target.startswith(" ") else " " + target
    pub_p = tok([prompt], return_tensors="pt", padding=True)["input_ids"][0].tolist()
    pub_t = tok([pub_target], return_tensors="pt", padding=True)["input_ids"][0].tolist()
    return {
        "same_token_ids": pub_p == tok(prompt)["input_ids"]
        and pub_t == target_token_ids(tok, target),
        "unk_in_target": tok.unk_token_id is not None and tok.unk_token_id in pub_t,
    }


def clamp_rounding(d_ref: torch.Tensor, weight: torch.Tensor, eps: float) -> float:
    """||d_ref - s eps|| / ||d_ref|| over the entries the public clamp holds at its bound
    (d_ref == fl(W + s eps) - W, s = sign(d_ref)): what the public code's clamp of the weight
    itself, rather than of the delta, alone makes of the relative difference to an exact clamp."""
    w = weight.detach()
    s = torch.sign(d_ref)
    at_bound = (d_ref == (w + s * eps) - w) & (s != 0)
    off = torch.where(at_bound, d_ref.double() - s.double() * eps, 0.0)
    return float(off.norm() / d_ref.double().norm())


def compare_edit(
    t: int,
    record: dict,
    result,
    ref_upd: RefUpdate,
    weight_name: str,
    weight: torch.Tensor,
    eps: float,
    proj_seconds: float,
) -> dict[str, Any]:
    (upd,) = result.updates
    d_proj = upd.delta_out_in()
    d_ref = ref_upd.deltas[weight_name]
    w_norm = float(weight.double().norm())
    rw = record["requested_rewrite"]
    diff = (d_proj.double() - d_ref.double()).abs()
    row = {
        "edit": t,
        "case_id": record["case_id"],
        "subject": rw["subject"],
        "target_new": rw["target_new"]["str"],
        "dW_rel_diff": rel_diff(d_proj, d_ref),
        "dW_max_abs_diff": float(diff.max()),
        "frac_entries_differ": float((diff > DIFFER_FRACTION * eps).double().mean()),
        "clamp_rounding": clamp_rounding(d_ref, weight, eps),
        "dW_norm": float(d_proj.double().norm()),
        "dW_ref_norm": float(d_ref.double().norm()),
        "dW_rel_norm": float(d_proj.double().norm()) / w_norm,
        "dW_ref_rel_norm": float(d_ref.double().norm()) / w_norm,
        "steps_proj": int(result.info["ft_steps"]),
        "steps_ref": ref_upd.steps,
        "loss_init_proj": float(result.info["ft_loss_init"]),
        "loss_init_ref": ref_upd.losses[0],
        "loss_init_rel_diff": abs(float(result.info["ft_loss_init"]) - ref_upd.losses[0])
        / ref_upd.losses[0],
        "loss_init_equal": float(result.info["ft_loss_init"]) == ref_upd.losses[0],
        "loss_proj": float(result.info["ft_loss"]),
        "loss_ref": ref_upd.losses[-1],
        "seconds_proj": proj_seconds,
        "seconds_ref": ref_upd.seconds,
    }
    bias_name = weight_name[: -len(".weight")] + ".bias"
    agree = row["dW_rel_diff"] <= REL_TOL
    if upd.bias is not None or bias_name in ref_upd.deltas:
        b_ref = ref_upd.deltas.get(bias_name, torch.zeros_like(d_proj[:, 0]))
        b_proj = upd.bias if upd.bias is not None else torch.zeros_like(b_ref)
        row["bias_rel_diff"] = rel_diff(b_proj, b_ref) if b_ref.any() else float(b_proj.any())
        row["bias_norm"] = float(b_proj.double().norm())
        row["bias_ref_norm"] = float(b_ref.double().norm())
        agree = agree and row["bias_rel_diff"] <= REL_TOL
    row["agree"] = agree
    return row


def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from editscale.data.counterfact import load_counterfact
    from editscale.editors import load_editor_module
    from editscale.editors.base import apply_updates
    from editscale.lm.models import arch_of, edit_parameter, get_module, load_model
    from editscale.lm.scoring import target_token_ids

    ref = import_reference(args.rome_src)
    hp = project_hparams(args)
    model, tok = load_model(args.model, "float32", "cpu")
    spec = arch_of(model)
    layer_name = spec.mlp_out_path(hp["layer"])
    module = get_module(model, layer_name)
    has_bias = isinstance(getattr(module, "bias", None), torch.Tensor)
    ref_hp = reference_hparams(ref, hp, has_bias)
    if layer_name != ref_hp.rewrite_module_tmp.format(hp["layer"]):
        raise SystemExit(f"{args.model} is not a Llama-layout model ({layer_name})")
    editor = load_editor_module("ftc").make_editor(model, tok, hp, None, args.seed)
    weight = edit_parameter(model, layer_name)
    weight_name = layer_name + ".weight"
    records = load_counterfact(args.counterfact)[: args.records]

    rows = []
    for t, rec in enumerate(records, 1):
        t0 = time.perf_counter()
        result = editor.compute(rec)
        proj_seconds = time.perf_counter() - t0
        ref_upd = reference_update(ref, model, tok, rec["requested_rewrite"], ref_hp)
        row = compare_edit(
            t, rec, result, ref_upd, weight_name, weight, ref_hp.norm_constraint, proj_seconds
        )
        row["n_target_tokens"] = len(target_token_ids(tok, row["target_new"]))
        row.update(token_check(tok, rec["requested_rewrite"]))
        apply_updates(model, result.updates, spec)
        rows.append(row)
        log.info(
            "edit %d/%d case %d (%d target tokens): dW diff %.1e steps %d/%d loss %.3f/%.3f "
            "(%.1f s / %.1f s)",
            t,
            len(records),
            rec["case_id"],
            row["n_target_tokens"],
            row["dW_rel_diff"],
            row["steps_proj"],
            row["steps_ref"],
            row["loss_proj"],
            row["loss_ref"],
            row["seconds_proj"],
            row["seconds_ref"],
        )
    setup = {
        "hparams": editor.hparams_dict(),
        "layer": layer_name,
        "reference_hparams": dict(vars(ref_hp)),
    }
    return rows, setup


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def worst(key: str) -> dict[str, Any]:
        r = max(rows, key=lambda x: x[key])
        return {"edit": r["edit"], "case_id": r["case_id"], key: r[key]}

    one = [r for r in rows if r["n_target_tokens"] == 1]
    s = {
        "n_edits": len(rows),
        "n_agree": sum(r["agree"] for r in rows),
        "n_one_token": len(one),
        "n_one_token_agree": sum(r["agree"] for r in one),
        "n_steps_differ": sum(r["steps_proj"] != r["steps_ref"] for r in rows),
        "n_token_ids_differ": sum(not r["same_token_ids"] for r in rows),
        "n_unk_in_target": sum(r["unk_in_target"] for r in rows),
        "n_loss_init_equal": sum(r["loss_init_equal"] for r in rows),
        "max_loss_init_rel_diff": max(r["loss_init_rel_diff"] for r in rows),
        "max_dW_rel_diff": max(r["dW_rel_diff"] for r in rows),
        "max_frac_entries_differ": max(r["frac_entries_differ"] for r in rows),
        "max_clamp_rounding": max(r["clamp_rounding"] for r in rows),
        "mean_dW_rel_norm": sum(r["dW_rel_norm"] for r in rows) / len(rows),
        "mean_dW_ref_rel_norm": sum(r["dW_ref_rel_norm"] for r in rows) / len(rows),
        "seconds_proj": sum(r["seconds_proj"] for r in rows),
        "seconds_ref": sum(r["seconds_ref"] for r in rows),
        "seconds_per_edit_proj": sum(r["seconds_proj"] for r in rows) / len(rows),
        "seconds_per_edit_ref": sum(r["seconds_ref"] for r in rows) / len(rows),
        "worst_dW_rel_diff": worst("dW_rel_diff"),
    }
    if any("bias_rel_diff" in r for r in rows):
        s["max_bias_rel_diff"] = max(r.get("bias_rel_diff", 0.0) for r in rows)
    return s


def print_table(rows: list[dict[str, Any]]) -> None:
    bias = any("bias_rel_diff" in r for r in rows)
    head = (
        f"{'edit':>4} {'case':>6} {'tok':>3} {'dW diff':>9} {'differ':>8} {'|dW| p/r':>19} "
        f"{'steps':>5} {'loss0 p/r':>13} {'loss p/r':>13} {'s p/r':>11} {'ok':>3}"
    )
    if bias:
        head += f" {'b diff':>9}"
    print(head)
    for r in rows:
        line = (
            f"{r['edit']:4d} {r['case_id']:6d} {r['n_target_tokens']:3d} {r['dW_rel_diff']:9.1e} "
            f"{r['frac_entries_differ']:8.1e} {r['dW_norm']:9.3e}/{r['dW_ref_norm']:<9.3e} "
            f"{r['steps_proj']:>2d}/{r['steps_ref']:<2d} "
            f"{r['loss_init_proj']:6.3f}/{r['loss_init_ref']:<6.3f} "
            f"{r['loss_proj']:6.3f}/{r['loss_ref']:<6.3f} "
            f"{r['seconds_proj']:5.1f}/{r['seconds_ref']:<5.1f} {'yes' if r['agree'] else 'NO':>3}"
        )
        if bias:
            line += f" {r.get('bias_rel_diff', float('nan')):9.1e}"
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--rome-src", type=Path, required=True, help="extracted kmeng01/rome tree (read only)"
    )
    ap.add_argument("--model", type=Path, default=REPO / "runs/smollm2/resources/models/smollm2")
    ap.add_argument("--config", type=Path, default=REPO / "config/smollm2.yaml")
    ap.add_argument("--model-key", default="smollm2", help="the config's per_model entry")
    ap.add_argument(
        "--counterfact",
        type=Path,
        default=REPO.parent / "shared/data/counterfact/counterfact_500.json",
    )
    ap.add_argument("--records", type=int, default=10)
    ap.add_argument(
        "--target-positions",
        choices=("own", "last_prompt"),
        default=None,
        help="override the config's ftc.target_positions (the public loss: last_prompt)",
    )
    ap.add_argument(
        "--include-bias",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="override the config's ftc.include_bias",
    )
    ap.add_argument("--seed", type=int, default=37, help="the config's seed (FT-C draws nothing)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.rome_src = args.rome_src.resolve()

    t0 = time.perf_counter()
    rows, setup = run(args)
    wall = time.perf_counter() - t0
    summary = summarise(rows)
    print_table(rows)
    import transformers

    mode = setup["hparams"]["target_positions"]
    run_info = {
        "name": f"SmolLM2 FT-C {mode} vs ref",
        **summary,
        "wall_seconds": wall,
        "threads": args.threads,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "model": str(args.model),
        "reference": f"kmeng01/rome@{REFERENCE_COMMIT} baselines/ft",
        "reference_patches": list(REFERENCE_PATCHES),
        "rel_tol": REL_TOL,
        **setup,
        "edits": rows,
    }
    keys = [
        ("n_edits", "{:d}"),
        ("n_agree", "{:d}"),
        ("n_one_token", "{:d}"),
        ("n_one_token_agree", "{:d}"),
        ("n_steps_differ", "{:d}"),
        ("n_token_ids_differ", "{:d}"),
        ("n_loss_init_equal", "{:d}"),
        ("max_loss_init_rel_diff", "{:.2e}"),
        ("max_dW_rel_diff", "{:.2e}"),
        ("max_frac_entries_differ", "{:.2e}"),
        ("max_clamp_rounding", "{:.2e}"),
        ("mean_dW_rel_norm", "{:.3e}"),
        ("mean_dW_ref_rel_norm", "{:.3e}"),
        ("seconds_per_edit_proj", "{:.2f}"),
        ("seconds_per_edit_ref", "{:.2f}"),
        ("wall_seconds", "{:.1f}"),
    ]
    if "max_bias_rel_diff" in summary:
        keys.insert(6, ("max_bias_rel_diff", "{:.2e}"))
    report(
        f"ftc_reference_{mode}",
        [run_info],
        keys,
        f"threads={args.threads}, transformers {transformers.__version__}, {len(rows)} sequential "
        f"edits, agree: ||dW - dW_ref||/||dW_ref|| <= {REL_TOL}",
    )


if __name__ == "__main__":
    main()
