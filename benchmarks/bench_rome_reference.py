"""Side-by-side check of the project's ROME editor against the public reference code (kmeng01/rome).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_rome_reference.py \
        --rome-src REFCODE/rome \
        --model runs/smollm2/resources/models/smollm2 \
        --stats runs/smollm2/resources/stats/smollm2/wikitext/layer6.h5 [--records 20] [--no-eval]

What is compared. The first ``--records`` CounterFact records (``--counterfact``) are edited
sequentially into one model (``--model``, float32, CPU) at the layer and with the ROME
hyperparameters of ``--config`` (``methods.rome``, merged with ``per_model.<--model-key>``). For
every edit both implementations start from the same weights, the current state of the one shared
model: the project's update is computed with ``editscale.editors.rome`` (``editor.compute``), the
reference's with ``rome.rome_main.execute_rome`` (which restores the weights it touches before it
returns; checked bit for bit), and then the project's update is applied
(``editscale.editors.base.apply_updates``) before the next edit. So differences never accumulate,
and edit t measures the two implementations on the identical model state after t - 1 edits.

Per edit it reports: cos(u_proj, u_ref) and cos(v_proj, v_ref) (float64), the relative difference
of the full updates ||dW - dW_ref||_F / ||dW_ref||_F with dW = v u^T in the (out, in) orientation
of ``down_proj.weight`` (the reference's ``u v^T`` goes through its own
``upd_matrix_match_shape``), ||dW||_F / ||W||_F of both, the relative difference of the key k*
(the reference's k* recomputed with its own ``repr_tools.get_reprs_at_word_tokens``, as
``compute_u`` does), the number of forward passes of the v* optimisation in each (the project's
``v_steps``; the reference's count of the ``loss ...`` lines ``compute_v`` prints, one per pass)
and their last loss. Unless ``--no-eval``: ES/PS/NS (``editscale.lm.scoring.evaluate_record``) of
the model with the reference's update applied and with the project's update applied, both on
the same pre-edit state. An edit "agrees" when cos(u) and cos(v) >= 0.9999999 and the relative
dW difference <= 1e-4.

Injections (the same inputs into both implementations):

* Second moment: C = E[k k^T] from ``--stats``
  (``editscale.editing.key_stats.load_key_second_moment``, float64). The project's editor receives C
  itself (it inverts it in float64 by Cholesky). The reference's ``rome.compute_u.get_inv_cov``
  (which would download or compute Wikipedia statistics and cache ``torch.inverse(mom2).float()`` in
  ``inv_mom2_cache``) is replaced by a function returning ``torch.inverse(C.float())``: C in float32
  (``mom2_dtype`` of the public GPT-2 XL / GPT-J hyperparameters) inverted in float32, as the
  reference does.
* Context templates: generated once with the project's
  ``editscale.editors.prompts.generate_context_templates`` (the config's lengths, top-k and seed:
  ``[[5, 5]]`` gives "{}" + 5 templates), given to the project's editor through
  ``state={"context_templates": ...}`` and to the reference by setting
  ``rome.rome_main.CONTEXT_TEMPLATES_CACHE`` (so its ``generate_fast`` sampling never runs).

Hyperparameters the reference hard-codes are checked rather than mapped: ``kl_prompt`` must be
"{} is a", ``early_stop_loss`` 0.05 and ``key_mode`` "original". The others map one to one
(``layer`` -> ``layers=[layer]``, ``v_loss_layer`` = last block, ``fact_token`` "subject_last",
Llama module names ``model.layers.{}.mlp.down_proj`` etc.).

Patches the reference needs (kmeng01/rome at 0874014, extracted outside this repository and
patched there; all in ``rome/compute_v.py``, the only file that fails on this model on CPU):

1. ``device = next(model.parameters()).device`` added at the start of the target tokenisation,
   and the literal ``"cuda"`` replaced by ``device`` in its three uses: ``tok(target).to("cuda")``,
   ``tok(all prompts).to("cuda")`` and ``torch.tensor(-100, device="cuda")``;
2. ``torch.zeros((model.config.n_embd,), ..., device="cuda")`` ->
   ``torch.zeros((model.config.hidden_size,), ..., device=device)``: ``n_embd`` is GPT-2/GPT-J's
   config name; a Llama config only has ``hidden_size``.

Nothing else: ``compute_u.get_inv_cov``'s own ``.to("cuda")`` is never reached (replaced, above),
``util/globals.py`` reads ``globals.yml`` from the working directory (the reference is imported
from inside ``--rome-src``), and under transformers 5 the rest ran unchanged (``BatchEncoding``
slicing in ``repr_tools``, forward hooks in ``util/nethook.py``, right padding: this script
checks the tokenizer pads on the right, as ``compute_v`` assumes). The script refuses to run on
an unpatched reference.

Output: a per-edit table and a summary on stdout, and
``benchmarks/results/rome_reference-<host>.json`` (the summary with every edit's numbers, the
templates and the patches). Use one thread (``--threads``, default 1) on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import report  # noqa: E402
from search_paths import project_paths  # noqa: E402

log = logging.getLogger("bench_rome_reference")

COS_TOL = 0.9999999
DW_TOL = 1e-4
REFERENCE_COMMIT = "0874014cd9837e4365f3e6f3c71400ef11509e04"
REFERENCE_PATCHES = (
    "rome/compute_v.py: device = next(model.parameters()).device; the literal 'cuda' replaced by "
    "device in tok(target).to(...), tok(all prompts).to(...) and torch.tensor(-100, device=...)",
    "rome/compute_v.py: torch.zeros((model.config.n_embd,), ...) -> "
    "torch.zeros((model.config.hidden_size,), ...) (n_embd is GPT-2/GPT-J's config name; Llama "
    "has hidden_size)",
)
LOSS_LINE = re.compile(r"^loss (\S+) = ", re.MULTILINE)


@dataclass
class Reference:
    """The public code's modules this script calls."""

    rome_main: ModuleType
    compute_u: ModuleType
    repr_tools: ModuleType
    nethook: ModuleType
    hparams_cls: type


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def check_patched(src: Path) -> None:
    """Refuse an unpatched reference: compute_v.py must no longer name CUDA or ``n_embd``."""
    lines = (src / "rome" / "compute_v.py").read_text().splitlines()
    code = "\n".join(line.split("#", 1)[0] for line in lines)  # comments may say what was patched
    if '"cuda"' in code or "config.n_embd" in code:
        raise SystemExit(
            f"{src}/rome/compute_v.py is not patched for CPU / Llama; apply:\n  - "
            + "\n  - ".join(REFERENCE_PATCHES)
        )


def import_reference(src: Path) -> Reference:
    """Import the public ``rome`` and ``util`` packages from ``src``
    (its globals.yml is read from the cwd)."""
    check_patched(src)
    sys.path.insert(0, str(src))
    with working_directory(src):
        from rome import compute_u, repr_tools, rome_main
        from rome.rome_hparams import ROMEHyperParams
        from util import nethook
    return Reference(rome_main, compute_u, repr_tools, nethook, ROMEHyperParams)


def project_hparams(config: Path, method: str, model_key: str) -> dict[str, Any]:
    from editscale.config import method_hparams

    cfg = yaml.safe_load(config.read_text())
    return method_hparams(cfg, method, model_key)


def reference_hparams(ref: Reference, hp: dict[str, Any], n_layer: int, stats_name: str):
    """The public ROMEHyperParams equal to the project's ROME settings on a Llama model."""
    from editscale.editors.hparams import RomeHParams

    p = RomeHParams.from_dict(hp)
    fixed = {
        "kl_prompt": (p.kl_prompt, "{} is a"),
        "early_stop_loss": (p.early_stop_loss, 0.05),
        "key_mode": (p.key_mode, "original"),
    }
    for name, (ours, theirs) in fixed.items():
        if ours != theirs:
            raise SystemExit(
                f"rome.{name}={ours!r}: the reference hard-codes {theirs!r}; nothing to compare"
            )
    return ref.hparams_cls(
        layers=[p.layer],
        fact_token="subject_last",
        v_num_grad_steps=p.v_num_grad_steps,
        v_lr=p.v_lr,
        v_loss_layer=n_layer - 1,
        v_weight_decay=p.v_weight_decay,
        clamp_norm_factor=p.clamp_norm_factor,
        kl_factor=p.kl_factor,
        mom2_adjustment=p.mom2_adjustment,
        context_template_length_params=[list(x) for x in p.context_template_lengths],
        rewrite_module_tmp="model.layers.{}.mlp.down_proj",
        layer_module_tmp="model.layers.{}",
        mlp_module_tmp="model.layers.{}.mlp",
        attn_module_tmp="model.layers.{}.self_attn",
        ln_f_module="model.norm",
        lm_head_module="lm_head",
        mom2_dataset=stats_name,
        mom2_n_samples=0,
        mom2_dtype="float32",
    )


def inject(
    ref: Reference, second_moment: torch.Tensor, layer_name: str, templates: list[str]
) -> None:
    """Give the reference the project's C (inverted as it inverts: float32)
    and context templates."""
    inv = torch.inverse(second_moment.to(torch.float32)).float()

    def get_inv_cov(model, tok, name, mom2_dataset, mom2_n_samples, mom2_dtype) -> torch.Tensor:
        if name != layer_name:
            raise ValueError(f"injected statistics are for {layer_name}, not {name}")
        return inv.to(next(model.parameters()).device)

    ref.compute_u.get_inv_cov = get_inv_cov
    ref.rome_main.CONTEXT_TEMPLATES_CACHE = list(templates)


@dataclass
class RefUpdate:
    u: torch.Tensor
    v: torch.Tensor
    delta: torch.Tensor  # (out, in), as the reference adds it to the weight
    steps: int
    last_loss: float
    seconds: float


def reference_update(
    ref: Reference, model, tok, request: dict, hparams, weight: torch.Tensor
) -> RefUpdate:
    """``execute_rome`` on the current model; its prints are captured
    (one ``loss`` line per v* pass)."""
    before = weight.detach().clone()
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        deltas = ref.rome_main.execute_rome(model, tok, request, hparams)
    seconds = time.perf_counter() - t0
    if not torch.equal(weight, before):
        raise RuntimeError("execute_rome did not restore the weights it edited")
    ((u, v),) = deltas.values()
    delta = ref.rome_main.upd_matrix_match_shape(u.unsqueeze(1) @ v.unsqueeze(0), weight.shape)
    losses = LOSS_LINE.findall(out.getvalue())
    return RefUpdate(
        u, v, delta, len(losses), float(losses[-1]) if losses else float("nan"), seconds
    )


def reference_key(
    ref: Reference, model, tok, request: dict, hparams, templates: list[str]
) -> torch.Tensor:
    """k* as the reference's ``compute_u`` averages it (before C^-1)."""
    return ref.repr_tools.get_reprs_at_word_tokens(
        model=model,
        tok=tok,
        context_templates=[t.format(request["prompt"]) for t in templates],
        words=[request["subject"]] * len(templates),
        layer=hparams.layers[0],
        module_template=hparams.rewrite_module_tmp,
        subtoken="last",
        track="in",
    ).mean(0)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(
        torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0)
    )


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    return float((a.double() - b.double()).norm() / b.double().norm())


@torch.no_grad()
def scores_with(
    model, tok, record: dict, weight: torch.Tensor, delta: torch.Tensor
) -> dict[str, float]:
    """ES/PS/NS of the model with ``delta`` added to ``weight``; the weight is restored after."""
    from editscale.lm.scoring import evaluate_record

    before = weight.detach().clone()
    weight.add_(delta.to(weight.dtype))
    try:
        return evaluate_record(model, tok, record)
    finally:
        weight.copy_(before)


def compare_edit(
    t: int,
    record: dict,
    result,
    ref_upd: RefUpdate,
    k_ref: torch.Tensor,
    weight: torch.Tensor,
    proj_seconds: float,
) -> dict[str, Any]:
    (upd,) = result.updates
    d_proj = upd.delta_out_in()
    w_norm = float(weight.double().norm())
    rw = record["requested_rewrite"]
    row = {
        "edit": t,
        "case_id": record["case_id"],
        "subject": rw["subject"],
        "target_new": rw["target_new"]["str"],
        "cos_u": cosine(upd.u, ref_upd.u),
        "cos_v": cosine(upd.v, ref_upd.v),
        "dW_rel_diff": rel_diff(d_proj, ref_upd.delta),
        "dW_rel_norm": float(d_proj.double().norm()) / w_norm,
        "dW_ref_rel_norm": float(ref_upd.delta.double().norm()) / w_norm,
        "k_star_rel_diff": rel_diff(result.vectors["k_star"], k_ref),
        "steps_proj": int(result.info["v_steps"]),
        "steps_ref": ref_upd.steps,
        "loss_proj": float(result.info["v_loss"]),
        "loss_ref": ref_upd.last_loss,
        "seconds_proj": proj_seconds,
        "seconds_ref": ref_upd.seconds,
    }
    row["agree"] = (
        row["cos_u"] >= COS_TOL and row["cos_v"] >= COS_TOL and row["dW_rel_diff"] <= DW_TOL
    )
    return row


def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from editscale.data.counterfact import load_counterfact
    from editscale.editing.key_stats import load_key_second_moment
    from editscale.editors.base import apply_updates
    from editscale.editors.prompts import generate_context_templates
    from editscale.editors.rome import make_editor
    from editscale.lm.models import arch_of, edit_parameter, load_model, n_layers

    ref = import_reference(args.rome_src)
    hp = project_hparams(args.config, "rome", args.model_key)
    model, tok = load_model(args.model, "float32", "cpu")
    if tok.padding_side != "right":
        raise SystemExit(
            f"the tokenizer pads on the {tok.padding_side}; the reference's compute_v assumes the "
            "right"
        )
    spec = arch_of(model)
    ref_hp = reference_hparams(ref, hp, n_layers(model), args.stats.parent.name)
    layer_name = spec.mlp_out_path(hp["layer"])
    if layer_name != ref_hp.rewrite_module_tmp.format(hp["layer"]):
        raise SystemExit(f"{args.model} is not a Llama-layout model ({layer_name})")
    second_moment = load_key_second_moment(args.stats, expect={})
    templates = generate_context_templates(
        model, tok, hp["context_template_lengths"], hp["context_template_top_k"], args.seed
    )
    log.info("%d context templates: %s", len(templates), templates)
    inject(ref, second_moment, layer_name, templates)
    editor = make_editor(
        model, tok, hp, second_moment, args.seed, state={"context_templates": templates}
    )
    weight = edit_parameter(model, layer_name)
    records = load_counterfact(args.counterfact)[: args.records]

    rows = []
    for t, rec in enumerate(records, 1):
        request = rec["requested_rewrite"]
        paths = {}
        if getattr(args, "paths", False):  # the reference search path too (search_paths.py)
            result, paths = project_paths(editor, [rec], model, tok)
            proj_seconds = paths["seconds_new"]
        else:
            t0 = time.perf_counter()
            result = editor.compute(rec)
            proj_seconds = time.perf_counter() - t0
        k_ref = reference_key(ref, model, tok, request, ref_hp, templates)
        ref_upd = reference_update(ref, model, tok, request, ref_hp, weight)
        row = compare_edit(t, rec, result, ref_upd, k_ref, weight, proj_seconds)
        row.update(paths)
        if args.eval:
            for name, delta in (("ref", ref_upd.delta), ("proj", result.updates[0].delta_out_in())):
                sc = scores_with(model, tok, rec, weight, delta)
                row.update(
                    {f"{m}_{name}": sc[m] for m in ("es", "ps", "ns", "es_mag", "ps_mag", "ns_mag")}
                )
        apply_updates(model, result.updates, spec)
        rows.append(row)
        log.info(
            "edit %d/%d case %d: 1-cos(u) %.1e 1-cos(v) %.1e dW diff %.1e steps %d/%d (%.1f s / "
            "%.1f s)",
            t,
            len(records),
            rec["case_id"],
            1 - row["cos_u"],
            1 - row["cos_v"],
            row["dW_rel_diff"],
            row["steps_proj"],
            row["steps_ref"],
            row["seconds_proj"],
            row["seconds_ref"],
        )
    setup = {
        "hparams": hp,
        "templates": templates,
        "layer": layer_name,
        "reference_hparams": dict(vars(ref_hp)),
    }
    return rows, setup


def summarise(rows: list[dict[str, Any]], evaluated: bool) -> dict[str, Any]:
    def worst(key: str, lowest: bool) -> dict[str, Any]:
        r = (min if lowest else max)(rows, key=lambda x: x[key])
        return {"edit": r["edit"], "case_id": r["case_id"], key: r[key]}

    s = {
        "n_edits": len(rows),
        "n_agree": sum(r["agree"] for r in rows),
        "n_steps_differ": sum(r["steps_proj"] != r["steps_ref"] for r in rows),
        "min_cos_u": min(r["cos_u"] for r in rows),
        "min_cos_v": min(r["cos_v"] for r in rows),
        "max_dW_rel_diff": max(r["dW_rel_diff"] for r in rows),
        "max_k_star_rel_diff": max(r["k_star_rel_diff"] for r in rows),
        "mean_dW_rel_norm": sum(r["dW_rel_norm"] for r in rows) / len(rows),
        "seconds_proj": sum(r["seconds_proj"] for r in rows),
        "seconds_ref": sum(r["seconds_ref"] for r in rows),
        "worst_cos_u": worst("cos_u", True),
        "worst_cos_v": worst("cos_v", True),
        "worst_dW_rel_diff": worst("dW_rel_diff", False),
    }
    if evaluated:
        for m in ("es", "ps", "ns"):
            s[f"{m}_proj"] = sum(r[f"{m}_proj"] for r in rows) / len(rows)
            s[f"{m}_ref"] = sum(r[f"{m}_ref"] for r in rows) / len(rows)
            s[f"n_{m}_differ"] = sum(r[f"{m}_proj"] != r[f"{m}_ref"] for r in rows)
            s[f"max_{m}_mag_diff"] = max(abs(r[f"{m}_mag_proj"] - r[f"{m}_mag_ref"]) for r in rows)
    return s


def print_table(rows: list[dict[str, Any]], evaluated: bool) -> None:
    head = (
        f"{'edit':>4} {'case':>6} {'1-cos(u)':>9} {'1-cos(v)':>9} {'dW diff':>9} {'|dW|/|W|':>9} "
        f"{'k* diff':>9} {'steps':>6} {'loss p/r':>13} {'ok':>3}"
    )
    if evaluated:
        head += f" {'ES p/r':>7} {'PS p/r':>9} {'NS p/r':>9}"
    print(head)
    for r in rows:
        line = (
            f"{r['edit']:4d} {r['case_id']:6d} {1 - r['cos_u']:9.1e} {1 - r['cos_v']:9.1e} "
            f"{r['dW_rel_diff']:9.1e} {r['dW_rel_norm']:9.2e} {r['k_star_rel_diff']:9.1e} "
            f"{r['steps_proj']:>3d}/{r['steps_ref']:<2d} "
            f"{r['loss_proj']:6.3f}/{r['loss_ref']:<6.3f} {'yes' if r['agree'] else 'NO':>3}"
        )
        if evaluated:
            line += (
                f" {r['es_proj']:.0f}/{r['es_ref']:.0f}".rjust(8)
                + f" {r['ps_proj']:.2f}/{r['ps_ref']:.2f}"
                + f" {r['ns_proj']:.2f}/{r['ns_ref']:.2f}"
            )
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--rome-src", type=Path, required=True, help="extracted (and patched) kmeng01/rome tree"
    )
    ap.add_argument("--model", type=Path, default=REPO / "runs/smollm2/resources/models/smollm2")
    ap.add_argument(
        "--stats",
        type=Path,
        default=REPO / "runs/smollm2/resources/stats/smollm2/wikitext/layer6.h5",
    )
    ap.add_argument("--config", type=Path, default=REPO / "config/smollm2.yaml")
    ap.add_argument("--model-key", default="smollm2", help="the config's per_model entry")
    ap.add_argument(
        "--counterfact",
        type=Path,
        default=REPO.parent / "shared/data/counterfact/counterfact_500.json",
    )
    ap.add_argument("--records", type=int, default=20)
    ap.add_argument(
        "--seed", type=int, default=37, help="context-template seed (the config's seed)"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--paths",
        action="store_true",
        help="also time the project's reference v* search path (no prefix cache) and the scoring",
    )
    ap.add_argument(
        "--no-eval", dest="eval", action="store_false", help="skip ES/PS/NS of both updates"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.rome_src = args.rome_src.resolve()

    t0 = time.perf_counter()
    rows, setup = run(args)
    wall = time.perf_counter() - t0
    summary = summarise(rows, args.eval)
    print_table(rows, args.eval)
    import transformers

    run_info = {
        "name": "SmolLM2 ROME vs ref",
        **summary,
        "wall_seconds": wall,
        "threads": args.threads,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "model": str(args.model),
        "stats": str(args.stats),
        "reference": f"kmeng01/rome@{REFERENCE_COMMIT}",
        "reference_patches": list(REFERENCE_PATCHES),
        "cos_tol": COS_TOL,
        "dW_tol": DW_TOL,
        **setup,
        "edits": rows,
    }
    keys = [
        ("n_edits", "{:d}"),
        ("n_agree", "{:d}"),
        ("n_steps_differ", "{:d}"),
        ("min_cos_u", "{:.9f}"),
        ("min_cos_v", "{:.9f}"),
        ("max_dW_rel_diff", "{:.2e}"),
        ("max_k_star_rel_diff", "{:.2e}"),
        ("mean_dW_rel_norm", "{:.3e}"),
        ("seconds_proj", "{:.1f}"),
        ("seconds_ref", "{:.1f}"),
        ("wall_seconds", "{:.1f}"),
    ]
    if args.eval:
        keys += [
            (f"{p}{m}{s}", f)
            for m in ("es", "ps", "ns")
            for p, s, f in (
                ("", "_proj", "{:.3f}"),
                ("", "_ref", "{:.3f}"),
                ("n_", "_differ", "{:d}"),
            )
        ]
    report(
        "rome_reference",
        [run_info],
        keys,
        f"threads={args.threads}, transformers {transformers.__version__}, {len(rows)} sequential "
        f"edits, agree: cos(u), cos(v) >= {COS_TOL} and ||dW - dW_ref||/||dW_ref|| <= {DW_TOL}",
    )


if __name__ == "__main__":
    main()
