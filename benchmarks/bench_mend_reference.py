"""Side-by-side check of the project's MEND editor against the public reference code
(eric-mitchell/mend).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_mend_reference.py \
        --src REFCODE/mend --pylib REFCODE/pylib [--records 10] [--modes A B] \
        --model runs/smollm2/resources/models/smollm2 \
        --editor runs/smollm2/resources/editors/smollm2/mend.safetensors

``--src``: eric-mitchell/mend at e04fdb9 (``git archive HEAD``), unpatched. ``--pylib``: a folder
holding the ``higher`` package its ``algs/mend.py`` imports (``pip install --no-deps --target PYLIB
higher``: PyPI's higher 0.2.1; without ``--no-deps`` pip installs a second, CUDA torch there); it
goes on ``sys.path`` after the project's paths, the public tree before them (as in
``bench_rome_reference``).

What is compared. One model (``--model``, float32, CPU) and one editor file (``--editor``: the
project's trained MEND editor, read with ``editscale.editors.mend.load_editor``) at the matrices
of ``--config`` ``methods.mend`` merged with ``per_model.<--model-key>`` (SmolLM2: ``n_last_layers:
3``, the up_proj and down_proj of layers 27-29 in the project's order, ``edited_module_paths``:
layer by layer, up_proj first). The first ``--records`` unique-subject CounterFact records
(``unique_subject_records`` of ``--counterfact``) are edited sequentially into the one model; for
every edit both implementations start from the same weights: the project's update is computed with
``editor.compute``, the public one with ``MEND.edit(batch)`` (which here leaves the weights alone:
checked bit for bit), and then the project's update is applied (``apply_updates``) before the next
edit. So weight differences never accumulate, and edit t measures both on the model after t - 1
edits. The weights are restored between the modes:

* Mode A: the project's ``normalisation: frozen`` against the public module in eval mode (both
  normalise with the editor file's u/v mean and std).
* Mode B: the project's ``normalisation: authors_running`` (each edit's ``result.carry`` committed
  with ``editor.commit``) against one fresh public module in training mode (``mend.train()``:
  ``norm_init`` False at the first edit, its running statistics kept across the edits), as the
  paper's authors ran MEND. The language model stays in eval mode on both sides.

Per edit and matrix (rows: the positions with a non-zero gradient, the same count on both sides,
checked) the relative Frobenius difference ||proj - ref||_F / ||ref||_F in float64 of: the raw
factors x and delta (the layer's inputs and output gradients, the public hooks' ``__x__`` and
``__delta__``); the normalised factors (the input [x~; delta~] of the combined IDMLP, each side's
``.mlp``); the transformed factors (its output); the weight delta (public: ``lr * mean_grads``
exactly as ``MEND.edit`` adds it, see the injections; project: ``ParamUpdate.delta_out_in()``, both
(out, in)); mode B also the statistics each matrix is normalised with (the public buffers after its
forward vs the project's float64 ``running_stats``, the max over u/v mean/std) and the project's
update recomputed from its own raw factors with the public float32 statistics (``+pubst``,
``pubstats_updates``). An edit agrees when
every matrix's weight-delta difference is <= 1e-5. Both sides' wall and CPU seconds per edit.

Injections (no file of the public tree is changed):

* ``hydra`` (imported by the public ``utils.py`` for ``load_archive`` only, never called here) is
  an empty module in ``sys.modules`` when it is not installed.
* Config: a namespace with the fields the public code reads: ``model.name`` (``losses``'
  ``shift_targets``), ``model.inner_params`` (the project's matrices + ``.weight``, its order),
  ``edit_lr`` (the constructor's initial rates, replaced by the file's), ``mend`` = the file's
  rank and n_hidden, ``combine`` True, ``shared`` True, ``norm`` True, ``mlp_class`` "IDMLP",
  ``init`` "id", ``act`` "relu", ``one_sided``/``x_only``/``delta_only`` False.
* Editor state: the project's state in the public layout (the inverse of
  ``mend._public_key_map``): ``transforms.<in>x<out>.<rest>`` -> ``mend.(<in>, <out>).<rest>``,
  ``mode_shift``/``mode_scale`` -> ``mode_shift.weight``/``mode_scale.weight`` (``nn.Embedding``),
  ``edit_lrs`` negated (the public code adds +lr*G) in the inner_params order; ``u_s``, ``v_s``,
  ``k`` (the public running accumulators, which the project does not store) NaN as the public
  constructor makes them. Loaded with the public ``MEND.load_state_dict`` (it asserts no missing
  or unexpected editor keys) and checked tensor by tensor.
* ``model_constructor``: a function that raises (only ``detach_history`` would call it).
* The last step of ``MEND.edit``, ``make_functional(edited_model, in_place=True)``: ``in_place`` is
  an argument of the authors' fork eric-mitchell/higher (their requirements.txt), which PyPI's
  higher 0.2.1 lacks. ``algs.mend.make_functional`` is bound to a recorder whose
  ``named_parameters()`` gives zeros for the inner params and whose ``update_params`` keeps what
  it gets, so the recorded ``p + updates[n]`` is ``updates[n] = lr * mean_grads[n]`` exactly; the
  public code never changes the shared model.
* The public hooks (``hooks.hook_model``) are registered only around each public edit, and every
  model parameter requires grad only then (as a transformers model is loaded for the public
  trainer; the project loads frozen weights): ``MEND.edit`` calls ``loss.backward()`` and reads
  ``p.grad`` of the inner params.
* Batch (the public ``edit`` input): ``input_ids`` = the tokens of prompt.format(subject) + the
  target tokens exactly as the project's ``edit_batch`` makes them (no special tokens; the target
  with a leading space, ``target_token_ids``), ``attention_mask`` ones, ``labels`` -100 except the
  target tokens. ``masked_log_probs`` shifts by one, so both score the same tokens at the same
  positions (checked against ``edit_batch``) with the mean NLL over the target tokens.

Patches to the public tree: none. Under torch 2.13 and transformers 5.24 on CPU the code on this
path ran unchanged (``algs/mend.py``, ``nn.py``, ``hooks.py``, ``editable_model.py``,
``losses.py``, ``utils.py``: no CUDA literal; Llama's MLP calls each projection with one
positional input, as ``linear_forward_hook`` asserts; ``register_full_backward_hook`` works).

Measured (SmolLM2-135M, the project's rank-256 editor, the first 10 records, one thread, torch
2.13.0 CPU, transformers 5.24.0): every edit agrees in both modes. Mode A: 10 of 10, relative dW
difference 5.3e-7 to 1.8e-6; mode B: 10 of 10, 5.0e-7 to 1.3e-6. The raw factors x and delta are
bit for bit the public ones in 9 of 10 edits, and so are the normalised factors in mode A. What
is left, each side's line:

* Every edit, 3.8e-7 to 4.9e-7 in the transformed factors and 5e-7 to 8e-7 in dW: the same
  products in another order. The network's low-rank layer, project ``editors/mend.py``
  ``LowRankIdLayer.forward``: ``pre = (x @ self.v.T) @ self.u.T + self.bias``; public ``nn.py``
  line 70: ``pre_act = (self.u @ (self.v @ x.T)).T``. The update, project ``MendNetwork.factors``
  ``-(self.edit_lrs[i] * lr_scale) * dt`` then ``ParamUpdate.delta_out_in`` ``self.v.T @ self.u``;
  public ``algs/mend.py`` line 209 ``torch.einsum(f"bi,bj->{targ}", x, delta)`` then line 227
  ``lr * g``.
* Edit 4 (case 9012) only, x 6.1e-7 / 6.7e-7 and delta 1.6e-6 / 1.2e-6 off, dW 1.8e-6 / 1.3e-6
  (A / B): the public forward runs one more position. Project ``editors/mend.py`` ``edit_batch``:
  ``seqs.append(p_ids + t_ids[:-1])`` (the last target token is predicted, never fed); public
  ``algs/mend.py`` line 181 ``self.model(**batch)`` on the batch's ``input_ids``, the prompt and the
  whole target (``losses.py`` shifts the logits after). At this length (7 positions against 8) the
  float32 kernels round the shared positions differently: the MLP inputs of layers 27-29 differ by
  up to 3.4e-5 absolute with 8 positions, and not at all between the two attention masks (the
  project's 4-D ``causal_attention_mask``, transformers' 2-D mask) at equal length; at the other
  nine lengths they are bit for bit equal.
* Mode B, the running statistics' arithmetic: float32 Welford row by row on the public side
  (``algs/mend.py`` lines 19-23 ``update_counter``, called at lines 96-97; the std at lines
  101-102) against a float64 Chan merge of a whole edit on the project's (``Moments.merged`` and
  ``Moments.std``, cast to float32 by ``as_float32``). The statistics differ by at most 3.4e-7
  (``stats``), the normalised factors by 6.6e-8 to 2.0e-7 where the raw ones are equal, and the
  project's update recomputed with the public float32 statistics (``+pubst``) differs from the
  public one by 5.0e-7 to 1.5e-6, about as much as with its own (5.0e-7 to 1.3e-6): the
  statistics move the update by nothing measurable.

Until the project ran the LM head on every position (``editscale/lm/scoring.py`` ``logits_at``:
``_lm_head(model)(hidden)[rows, pos]``, as the public code's full ``LlamaForCausalLM`` logits,
modeling_llama.py ``self.lm_head(hidden_states)``, picked by ``losses.py`` after), it applied the
head to the k scored positions only (``head(hidden[rows, pos])``); for one- and two-token targets
the float32 backward of that (k x 49,152) @ (49,152 x 576) product is about ten times less
accurate (output gradients 1.0-1.2e-4 off a float64 run against 1.8-3.7e-6 for the public code)
and 1 of 10 (mode A, max 3.0e-4) and 0 of 10 edits (mode B, max 4.4e-4) agreed.

Seconds per edit (one thread each, on a 2-core machine loaded by other jobs): project 0.20 wall /
0.14 CPU, public 0.95 / 0.64 (mode A; its ``loss.backward()`` computes the gradient of every
parameter, and it logs gradient statistics of each inner matrix).

Output: a per-edit table per mode and a summary on stdout (``report.py``), and
``benchmarks/results/mend_reference-<host>.json`` (the summary with every edit's numbers, per
matrix, and the injections). Use one thread (``--threads``, default 1) on a shared machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rome_reference import rel_diff  # noqa: E402
from report import report  # noqa: E402

log = logging.getLogger("bench_mend_reference")

DW_TOL = 1e-5
REFERENCE_COMMIT = "e04fdb9cc784188906feffeb171025872933a5a8"
REFERENCE_PATCHES: tuple[str, ...] = ()
INJECTIONS = (
    "hydra: an empty module in sys.modules when not installed (utils.load_archive only)",
    "config: a namespace with model.name, model.inner_params (the project's order), edit_lr and "
    "mend.{rank, n_hidden, combine, shared, norm, mlp_class IDMLP, init id, act relu, one_sided, "
    "x_only, delta_only}",
    "editor state: the project's file in the public layout (mend.(in, out).*, mode_*.weight, "
    "edit_lrs negated), u_s/v_s/k NaN, loaded with MEND.load_state_dict",
    "algs.mend.make_functional -> a recorder (PyPI higher has no in_place): zeros for the inner "
    "params, so the recorded p + updates[n] is lr * mean_grads exactly; the model is unchanged",
    "hooks.hook_model and requires_grad on every parameter only around each public edit",
    "batch: the project's edit_batch tokens (prompt + target), labels -100 except the target",
)
DIFF_KEYS = ("x_rel_diff", "delta_rel_diff", "norm_rel_diff", "out_rel_diff", "dW_rel_diff")
RUNNING_KEYS = ("stats_rel_diff", "pubstats_dW_rel_diff")
MODES = {
    "A": {"normalisation": "frozen", "public": "eval", "name": "A frozen / eval"},
    "B": {"normalisation": "authors_running", "public": "train", "name": "B running / train"},
}


@dataclass
class Reference:
    """The public code's modules this script calls."""

    mend: ModuleType  # algs.mend
    hooks: ModuleType


def import_reference(src: Path, pylib: Path) -> Reference:
    """Import ``algs.mend`` and ``hooks`` from ``src``; ``higher`` from ``pylib`` (after the
    project's paths)."""
    sys.path.insert(0, str(src))
    sys.path.append(str(pylib))
    if importlib.util.find_spec("hydra") is None:
        sys.modules["hydra"] = types.ModuleType("hydra")
    import hooks
    from algs import mend

    return Reference(mend, hooks)


def public_config(net, modules: list[str], model_name: str) -> SimpleNamespace:
    arch = net.arch
    return SimpleNamespace(
        model=SimpleNamespace(name=model_name, inner_params=[f"{m}.weight" for m in modules]),
        edit_lr=1e-4,
        mend=SimpleNamespace(
            one_sided=False,
            n_hidden=arch["n_hidden"],
            hidden_dim=None,
            init="id",
            norm=True,
            combine=arch["combine"],
            x_only=False,
            delta_only=False,
            act="relu",
            rank=arch["rank"],
            mlp_class="IDMLP",
            shared=True,
        ),
    )


def public_state(net) -> dict[str, torch.Tensor]:
    """The project's editor state in the public layout (the inverse of ``_public_key_map``)."""
    out = {}
    for key, value in net.state_dict().items():
        if key == "edit_lrs":
            out["edit_lrs"] = -value.detach().clone()  # module order = the inner_params order
            continue
        _, shape, rest = key.split(".", 2)
        x_dim, d_dim = (int(s) for s in shape.split("x"))
        if rest.endswith((".mode_shift", ".mode_scale")):
            rest += ".weight"
        out[f"mend.({x_dim}, {d_dim}).{rest}"] = value.detach().clone()
    for key, tr in net.transforms.items():
        x_dim, d_dim = tr.x_dim, tr.delta_dim
        out[f"mend.({x_dim}, {d_dim}).u_s"] = torch.full((x_dim,), float("nan"))
        out[f"mend.({x_dim}, {d_dim}).v_s"] = torch.full((d_dim,), float("nan"))
        out[f"mend.({x_dim}, {d_dim}).k"] = torch.full((1,), float("nan"))
    return out


def no_constructor():
    raise RuntimeError("model_constructor is only called with detach_history")


def drop_hooks(model) -> None:
    for h in getattr(model, "handles", []):
        h.remove()
    if hasattr(model, "handles"):
        del model.handles


def build_public(ref: Reference, model, net, modules: list[str], model_name: str):
    """A fresh public ``MEND`` with the project's networks, buffers and learning rates."""
    config = public_config(net, modules, model_name)
    drop_hooks(model)
    public = ref.mend.MEND(model, config, no_constructor)
    drop_hooks(model)  # registered again around each public edit
    state = public_state(net)
    public.load_state_dict({**state, "model_config": model.config})
    got = public.state_dict()
    for key, value in state.items():
        if not torch.equal(got[key], value) and not (
            value.isnan().all() and got[key].isnan().all()
        ):
            raise RuntimeError(f"public MEND state {key} was not loaded as converted")
    return public


class Recorder:
    """Stands in for higher's in-place functional model at the end of ``MEND.edit``."""

    def __init__(self, model, inner: list[str]):
        self.model, self.inner, self.updates = model, set(inner), {}

    @property
    def handles(self):
        return self.model.handles

    def named_parameters(self):
        for n, p in self.model.named_parameters():
            yield n, (torch.zeros_like(p) if n in self.inner else p)

    def update_params(self, params) -> None:
        names = [n for n, _ in self.model.named_parameters()]
        self.updates = {n: q.detach().clone() for n, q in zip(names, params) if n in self.inner}


class Calls:
    """What the shared gradient transforms of one side see, call by call (one per matrix)."""

    def __init__(self, transforms, public: bool):
        self.public, self.calls, self.handles = public, [], []
        for tr in transforms:
            self.handles += [
                tr.register_forward_pre_hook(self._raw),
                tr.mlp.register_forward_pre_hook(self._normalised),
                tr.register_forward_hook(self._out),
            ]

    def _raw(self, mod, args):
        x, d = args[0], args[1]
        stats = None
        if self.public:
            x, d = x.reshape(-1, x.shape[-1]).float(), d.reshape(-1, d.shape[-1]).float()
            keep = (x != 0).any(-1) & (d != 0).any(-1)
            x, d = x[keep], d[keep]
        elif len(args) > 3:
            stats = args[3]
        self.calls.append({"x": x.detach().clone(), "d": d.detach().clone(), "stats": stats})

    def _normalised(self, mod, args):
        self.calls[-1]["norm"] = args[0].detach().clone()

    def _out(self, mod, args, output):
        call = self.calls[-1]
        call["out"] = torch.cat([o.detach() for o in output], -1).clone()
        if self.public:
            call["stats"] = tuple(
                getattr(mod, n).detach().clone() for n in ("u_mean", "u_std", "v_mean", "v_std")
            )

    def take(self) -> list[dict]:
        calls, self.calls = self.calls, []
        return calls

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class Float32Stats:
    """The public float32 statistics in the shape the project's transform takes them."""

    def __init__(self, stats: tuple[torch.Tensor, ...]):
        self.stats = stats

    def as_float32(self) -> tuple[torch.Tensor, ...]:
        return self.stats


def public_batch(tok, record: dict, device) -> dict[str, torch.Tensor]:
    """The public ``edit`` batch with the tokens of the project's ``edit_batch``."""
    from editscale.editors.mend import edit_batch
    from editscale.lm.scoring import target_token_ids

    rw = record["requested_rewrite"]
    prompt, target = rw["prompt"].format(rw["subject"]), rw["target_new"]["str"]
    p_ids, t_ids = tok(prompt)["input_ids"], target_token_ids(tok, target)
    ids, mask, rows, pos, tgt = edit_batch(tok, [(prompt, target)], device)
    if ids[0].tolist() != p_ids + t_ids[:-1] or tgt.tolist() != t_ids:
        raise RuntimeError("the project's edit_batch tokenises the record differently")
    if pos.tolist() != list(range(len(p_ids) - 1, len(p_ids) - 1 + len(t_ids))):
        raise RuntimeError("the project's edit_batch scores other positions")
    labels = [-100] * len(p_ids) + t_ids
    t = lambda v: torch.tensor([v], device=device)  # noqa: E731
    return {
        "input_ids": t(p_ids + t_ids),
        "attention_mask": t([1] * (len(p_ids) + len(t_ids))),
        "labels": t(labels),
    }


def public_update(
    ref: Reference, public, model, batch: dict, inner: list[str], weights: dict
) -> tuple[dict[str, torch.Tensor], tuple[float, float]]:
    """``public.edit(batch)``: {inner param: lr * mean_grads (out, in)}, (wall, CPU) seconds."""
    before = {n: w.detach().clone() for n, w in weights.items()}
    recorder = Recorder(model, inner)

    def make_functional(module, in_place=False, **kwargs):
        if module is not model or not in_place or kwargs:
            raise RuntimeError("MEND.edit called make_functional unexpectedly")
        return recorder

    saved = ref.mend.make_functional
    ref.mend.make_functional = make_functional
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        ref.hooks.hook_model(model, inner)
        t0, c0 = time.perf_counter(), time.process_time()
        public.edit(batch)
        seconds = time.perf_counter() - t0, time.process_time() - c0
    finally:
        drop_hooks(model)
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
            p.grad = None
        ref.mend.make_functional = saved
    for n, w in weights.items():
        if not torch.equal(w, before[n]):
            raise RuntimeError(f"the public edit changed {n}")
    if sorted(recorder.updates) != sorted(inner):
        raise RuntimeError(f"MEND.edit updated {sorted(recorder.updates)}, expected {inner}")
    return recorder.updates, seconds


def pubstats_updates(editor, proj_calls: list[dict], pub_calls: list[dict]) -> dict:
    """Under ``authors_running``: {module: the project's weight delta (out, in) from its own raw
    factors of this edit, normalised with the public float32 statistics instead of its own
    float64 ones}: what the statistics' arithmetic alone moves the update by. {} otherwise."""
    if not editor.running:
        return {}
    raw = {m: (c["x"], c["d"]) for m, c in zip(editor.net.module_paths, proj_calls)}
    stats = {m: Float32Stats(c["stats"]) for m, c in zip(editor.net.module_paths, pub_calls)}
    with torch.no_grad():
        facs = editor.net.factors(raw, editor.hp.lr_scale, stats)
    return {m: v.T @ u for m, (u, v) in facs.items()}


STATS_NAMES = ("u_mean", "u_std", "v_mean", "v_std")


def stats_diffs(proj_stats, pub: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Relative differences of the project's float64 statistics from the public float32 ones."""
    p = (proj_stats.u.mean, proj_stats.u.std(), proj_stats.v.mean, proj_stats.v.std())
    return {n: rel_diff(a, b) for n, a, b in zip(STATS_NAMES, p, pub)}


def compare_edit(
    t: int,
    record: dict,
    result,
    proj_calls: list[dict],
    pub_calls: list[dict],
    pub_updates: dict[str, torch.Tensor],
    pubstats: dict[str, torch.Tensor],
    weights: dict[str, torch.Tensor],
    running: bool,
    n_target: int,
) -> dict[str, Any]:
    rw = record["requested_rewrite"]
    matrices = []
    for upd, pc, rc in zip(result.updates, proj_calls, pub_calls):
        name = f"{upd.module}.weight"
        if pc["x"].shape != rc["x"].shape:
            raise RuntimeError(f"{upd.module}: {pc['x'].shape[0]} vs {rc['x'].shape[0]} rows")
        d_proj, d_ref = upd.delta_out_in(), pub_updates[name]
        m = {
            "module": upd.module,
            "rows": int(pc["x"].shape[0]),
            "x_rel_diff": rel_diff(pc["x"], rc["x"]),
            "delta_rel_diff": rel_diff(pc["d"], rc["d"]),
            "norm_rel_diff": rel_diff(pc["norm"], rc["norm"]),
            "out_rel_diff": rel_diff(pc["out"], rc["out"]),
            "dW_rel_diff": rel_diff(d_proj, d_ref),
            "dW_rel_norm": float(d_proj.double().norm() / weights[name].double().norm()),
        }
        if running:
            m["stats"] = stats_diffs(pc["stats"], rc["stats"])
            m["stats_rel_diff"] = max(m["stats"].values())
            m["pubstats_dW_rel_diff"] = rel_diff(pubstats[upd.module], d_ref)
        matrices.append(m)
    row = {
        "edit": t,
        "case_id": record["case_id"],
        "subject": rw["subject"],
        "target_new": rw["target_new"]["str"],
        "rows": matrices[0]["rows"],
        "target_tokens": n_target,
        "nll_pre": float(result.info["mend_nll_pre"]),
    }
    for k in DIFF_KEYS + (RUNNING_KEYS if running else ()):
        row[k] = max(m[k] for m in matrices)
    row["dW_rel_norm"] = max(m["dW_rel_norm"] for m in matrices)
    row["matrices"] = matrices
    row["agree"] = row["dW_rel_diff"] <= DW_TOL
    return row


def run_mode(
    mode: str, ref: Reference, model, tok, hp: dict, args, records: list[dict], originals: dict
) -> list[dict[str, Any]]:
    from editscale.editors.base import apply_updates
    from editscale.editors.mend import make_editor
    from editscale.lm.models import arch_of, edit_parameter

    spec = arch_of(model)
    running = MODES[mode]["normalisation"] == "authors_running"
    editor = make_editor(
        model,
        tok,
        {**hp, "normalisation": MODES[mode]["normalisation"]},
        None,
        args.seed,
        editor_file=args.editor,
    )
    inner = [f"{m}.weight" for m in editor.modules]
    weights = {n: edit_parameter(model, n[: -len(".weight")]) for n in inner}
    with torch.no_grad():
        for n, w in weights.items():
            w.copy_(originals[n])
    public = build_public(ref, model, editor.net, editor.modules, args.model.name)
    public.eval()
    if MODES[mode]["public"] == "train":
        public.mend.train()  # the gradient transforms only: the language model stays in eval
    pub_tr = [public.mend[str((tr.x_dim, tr.delta_dim))] for tr in editor.net.transforms.values()]
    proj_hooks = Calls(editor.net.transforms.values(), public=False)
    pub_hooks = Calls(pub_tr, public=True)
    rows = []
    try:
        for t, rec in enumerate(records, 1):
            t0, c0 = time.perf_counter(), time.process_time()
            result = editor.compute(rec)
            proj_seconds = time.perf_counter() - t0, time.process_time() - c0
            proj_calls = proj_hooks.take()
            batch = public_batch(tok, rec, editor.device)
            pub_updates, ref_seconds = public_update(ref, public, model, batch, inner, weights)
            pub_calls = pub_hooks.take()
            pubstats = pubstats_updates(editor, proj_calls, pub_calls)
            proj_hooks.take()  # that ran the project's transforms again
            n_target = int((batch["labels"] != -100).sum())
            row = compare_edit(
                t,
                rec,
                result,
                proj_calls,
                pub_calls,
                pub_updates,
                pubstats,
                weights,
                running,
                n_target,
            )
            row.update(
                {
                    "seconds_proj": proj_seconds[0],
                    "seconds_ref": ref_seconds[0],
                    "cpu_seconds_proj": proj_seconds[1],
                    "cpu_seconds_ref": ref_seconds[1],
                }
            )
            apply_updates(model, result.updates, spec)
            editor.commit(result.carry)
            rows.append(row)
            log.info(
                "mode %s edit %d/%d case %d: dW diff %.1e, output gradients %.1e, normalised "
                "%.1e (CPU %.2f s / %.2f s)",
                mode,
                t,
                len(records),
                rec["case_id"],
                row["dW_rel_diff"],
                row["delta_rel_diff"],
                row["norm_rel_diff"],
                proj_seconds[1],
                ref_seconds[1],
            )
    finally:
        proj_hooks.remove()
        pub_hooks.remove()
    return rows


def summarise(mode: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    worst = max(rows, key=lambda r: r["dW_rel_diff"])
    worst_m = max(worst["matrices"], key=lambda m: m["dW_rel_diff"])
    nan = float("nan")
    s = {
        "name": MODES[mode]["name"],
        "mode": mode,
        "normalisation": MODES[mode]["normalisation"],
        "public_mode": MODES[mode]["public"],
        "n_edits": len(rows),
        "n_agree": sum(r["agree"] for r in rows),
        "max_dW_rel_diff": worst["dW_rel_diff"],
        "worst": {"edit": worst["edit"], "case_id": worst["case_id"], **worst_m},
        **{
            f"max_{k}": max((r.get(k, nan) for r in rows), default=nan)
            for k in DIFF_KEYS + RUNNING_KEYS
            if k != "dW_rel_diff"
        },
        "mean_dW_rel_norm": sum(r["dW_rel_norm"] for r in rows) / len(rows),
        "seconds_per_edit_proj": sum(r["seconds_proj"] for r in rows) / len(rows),
        "seconds_per_edit_ref": sum(r["seconds_ref"] for r in rows) / len(rows),
        "cpu_seconds_per_edit_proj": sum(r["cpu_seconds_proj"] for r in rows) / len(rows),
        "cpu_seconds_per_edit_ref": sum(r["cpu_seconds_ref"] for r in rows) / len(rows),
    }
    return s


def print_table(mode: str, rows: list[dict[str, Any]]) -> None:
    running = MODES[mode]["normalisation"] == "authors_running"
    print(
        f"mode {MODES[mode]['name']}: relative differences, the max over the "
        f"{len(rows[0]['matrices'])} matrices (+pubst: the project's update with the public "
        "statistics)"
    )
    head = (
        f"{'edit':>4} {'case':>6} {'tok':>3} {'rows':>4} {'x':>8} {'delta':>8} {'normed':>8} "
        f"{'out':>8} {'dW':>8} {'|dW|/|W|':>8}"
    )
    if running:
        head += f" {'stats':>8} {'+pubst':>8}"
    print(head + f" {'cpu s p/r':>11} {'ok':>3}")
    for r in rows:
        line = (
            f"{r['edit']:4d} {r['case_id']:6d} {r['target_tokens']:3d} {r['rows']:4d} "
            + " ".join(
                f"{r[k]:8.1e}"
                for k in (
                    "x_rel_diff",
                    "delta_rel_diff",
                    "norm_rel_diff",
                    "out_rel_diff",
                    "dW_rel_diff",
                    "dW_rel_norm",
                )
                + (RUNNING_KEYS if running else ())
            )
        )
        line += f" {r['cpu_seconds_proj']:5.2f}/{r['cpu_seconds_ref']:<5.2f} "
        print(line + f"{'yes' if r['agree'] else 'NO':>3}")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from editscale.config import method_hparams
    from editscale.data.counterfact import load_counterfact, unique_subject_records
    from editscale.editors.hparams import MendHParams
    from editscale.editors.mend import edited_module_paths
    from editscale.lm.models import edit_parameter, load_model, n_layers

    ref = import_reference(args.src, args.pylib)
    hp = method_hparams(yaml.safe_load(args.config.read_text()), "mend", args.model_key)
    model, tok = load_model(args.model, "float32", "cpu")
    modules = edited_module_paths(model, MendHParams.from_dict(hp).layer_indices(n_layers(model)))
    originals = {f"{m}.weight": edit_parameter(model, m).detach().clone() for m in modules}
    records = unique_subject_records(load_counterfact(args.counterfact))[: args.records]
    runs = []
    for mode in args.modes:
        t0 = time.perf_counter()
        rows = run_mode(mode, ref, model, tok, hp, args, records, originals)
        print_table(mode, rows)
        runs.append(
            {
                **summarise(mode, rows),
                "wall_seconds": time.perf_counter() - t0,
                "modules": modules,
                "edits": rows,
            }
        )
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--src", type=Path, required=True, help="extracted eric-mitchell/mend tree")
    ap.add_argument(
        "--pylib", type=Path, required=True, help="folder with the 'higher' package (PyPI)"
    )
    ap.add_argument("--model", type=Path, default=REPO / "runs/smollm2/resources/models/smollm2")
    ap.add_argument(
        "--editor",
        type=Path,
        default=REPO / "runs/smollm2/resources/editors/smollm2/mend.safetensors",
    )
    ap.add_argument("--config", type=Path, default=REPO / "config/smollm2.yaml")
    ap.add_argument("--model-key", default="smollm2", help="the config's per_model entry")
    ap.add_argument(
        "--counterfact",
        type=Path,
        default=REPO.parent / "shared/data/counterfact/counterfact_500.json",
    )
    ap.add_argument("--records", type=int, default=10)
    ap.add_argument("--modes", nargs="+", choices=sorted(MODES), default=sorted(MODES))
    ap.add_argument("--seed", type=int, default=37, help="the config's seed (unused by MEND)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.src, args.pylib = args.src.resolve(), args.pylib.resolve()

    runs = run(args)
    import transformers

    for r in runs:
        r.update(
            {
                "threads": args.threads,
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "model": str(args.model),
                "editor": str(args.editor),
                "reference": f"eric-mitchell/mend@{REFERENCE_COMMIT}",
                "reference_patches": list(REFERENCE_PATCHES),
                "injections": list(INJECTIONS),
                "dW_tol": DW_TOL,
            }
        )
    keys = [
        ("n_edits", "{:d}"),
        ("n_agree", "{:d}"),
        ("max_dW_rel_diff", "{:.2e}"),
        *((f"max_{k}", "{:.2e}") for k in DIFF_KEYS + RUNNING_KEYS if k != "dW_rel_diff"),
        ("mean_dW_rel_norm", "{:.3e}"),
        ("seconds_per_edit_proj", "{:.2f}"),
        ("seconds_per_edit_ref", "{:.2f}"),
        ("cpu_seconds_per_edit_proj", "{:.2f}"),
        ("cpu_seconds_per_edit_ref", "{:.2f}"),
        ("wall_seconds", "{:.1f}"),
    ]
    report(
        "mend_reference",
        runs,
        keys,
        f"threads={args.threads}, transformers {transformers.__version__}, "
        f"{runs[0]['n_edits']} sequential edits per mode, agree: every matrix's "
        f"||dW - dW_ref||/||dW_ref|| <= {DW_TOL}",
    )
    if any(math.isnan(r["max_dW_rel_diff"]) for r in runs):
        raise SystemExit("a difference is NaN")


if __name__ == "__main__":
    main()
