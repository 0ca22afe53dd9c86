"""Side-by-side check of the project's MEMIT and EMMET editors against their public code.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_memit_reference.py --method memit \
        --src REFCODE/memit --layers 4 5 6 --records 5 --batch 10
    ... --method emmet --src REFCODE/emmet --layers 6

Public code: kmeng01/memit (``memit.memit_main.execute_memit``),
scalable-model-editing/unified-model-editing (``emmet.emmet_main.execute_emmet``),
scalable-model-editing/knowledge-editing-regularization (``encore.encore_main.execute_encore``, with
``sequential`` set as its sequential-editing driver sets it) and jianghoucheng/AlphaEdit
(``AlphaEdit.AlphaEdit_main.apply_AlphaEdit_to_model``), extracted outside this repository and
patched only to run on CPU and a Llama config (``PATCHES``: in ``<package>/compute_z.py`` the
literal "cuda" becomes the model's device, and ``model.config.n_embd`` becomes ``hidden_size`` where
the code has no fallback, and the three reads of a block's output take it whole when it is a tensor,
as transformers 5 returns it). The script refuses an unpatched tree.

What is compared, on one model (``--model``, float32, CPU; SmolLM2-135M by default):

1. **Sequential single edits.** The first ``--records`` CounterFact records, one per step. For
   each, both implementations start from the same weights (the one shared model after the
   project's earlier updates): the project's updates come from ``editor.compute_batch([record])``,
   the public ones from ``execute_*`` (which restores the weights it touches; checked bit for
   bit). Then the project's updates are applied and the next record follows, so differences
   never accumulate.
2. **One batch.** The next ``--batch`` records in one step, on the model after (1).

Per step and edited layer: ||dW - dW_ref||_F / ||dW_ref||_F (dW_ref = resid @ adj_k^T from the
deltas the public code returns, in ``down_proj``'s (out, in) orientation) and ||dW||_F / ||W||_F.
A step agrees when every layer's relative difference is <= 1e-3 (the issue's tolerance).

Injected, so that both see the same inputs: the key second moments C = E[k k^T] of each layer
(``--stats-dir``/layer<L>.h5, ``editscale.editing.key_stats.load_key_second_moment``; the public
``get_cov`` is replaced by a function returning C in float32, as it caches it) and the context
templates (generated once with the project's generator and MEMIT's start words; the public
``CONTEXT_TEMPLATES_CACHE`` is set to ``[["{}"], those templates]``). Hyperparameters: the project's
(``--config`` ``methods.<method>``, merged with ``per_model.<--model-key>`` when present, and
``--layers``), mapped one to one onto the public dataclass; ``v_loss_layer`` is the last block,
``fact_token`` "subject_last", Llama module names.

AlphaEdit: the public code edits the model in place and returns its accumulated K_p K_p^T; its
updates are read as the weights' change, after which the weights are put back and the project's
updates applied (and its carried keys committed). Both sides keep their own K_p K_p^T from step to
step. P is built as the public ``experiments/evaluate.py`` ``get_project`` builds it (SVD of the
float32 C, singular values below the threshold) and handed to the public code; the project's editor
builds its own from the same C.

Output: a per-step table, a summary on stdout and
``benchmarks/results/<method>_reference-<host>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
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
from bench_rome_reference import rel_diff, working_directory  # noqa: E402
from report import report  # noqa: E402
from search_paths import project_paths  # noqa: E402

log = logging.getLogger("bench_memit_reference")

DW_TOL = 1e-3
SOURCES = {
    "memit": {
        "repo": "kmeng01/memit@80426fd",
        "package": "memit",
        "main": "memit_main",
        "execute": "execute_memit",
        "hparams": ("memit_hparams", "MEMITHyperParams"),
    },
    "emmet": {
        "repo": "scalable-model-editing/unified-model-editing@23d72b5",
        "package": "emmet",
        "main": "emmet_main",
        "execute": "execute_emmet",
        "hparams": ("emmet_hparams", "EMMETHyperParams"),
    },
    "encore": {
        "repo": "scalable-model-editing/knowledge-editing-regularization@6e3ba9a",
        "package": "encore",
        "main": "encore_main",
        "execute": "execute_encore",
        "hparams": ("encore_hparams", "ENCOREHyperParams"),
    },
    "alphaedit": {
        "repo": "jianghoucheng/AlphaEdit@f5248d3",
        "package": "AlphaEdit",
        "main": "AlphaEdit_main",
        "execute": "apply_AlphaEdit_to_model",
        "hparams": ("AlphaEdit_hparams", "AlphaEditHyperParams"),
    },
}
PATCHES = (
    "<package>/compute_z.py: the literal 'cuda' replaced by next(model.parameters()).device in "
    "tok(target).to(...), tok(all prompts).to(...) and torch.tensor(-100, device=...)",
    "<package>/compute_z.py (memit only): torch.zeros((model.config.n_embd,), ..., device='cuda') "
    "-> torch.zeros((model.config.hidden_size,), ..., device=<the model's device>)",
    "<package>/compute_z.py: a block's output is a tensor under transformers 5 (a tuple before): "
    "cur_out[0] and tr[...].output[0] -> that output's first element when it is a tuple, else the "
    "output itself (3 places)",
    "AlphaEdit/AlphaEdit_main.py: in the update's solve, .cuda() and device='cuda' -> the keys' "
    "device",
    "encore/encore_main.py: the .cuda() after the update's solve removed",
)


@dataclass
class Reference:
    main: ModuleType
    hparams_cls: type
    execute: Any


def import_reference(method: str, src: Path) -> Reference:
    info = SOURCES[method]
    code = "\n".join(
        line.split("#", 1)[0]
        for line in (src / info["package"] / "compute_z.py").read_text().splitlines()
    )
    main = "\n".join(
        line.split("#", 1)[0]
        for line in (src / info["package"] / f"{info['main']}.py").read_text().splitlines()
    )
    if '"cuda"' in code or 'device="cuda"' in code or ".cuda()" in main:
        raise SystemExit(
            f"{src}/{info['package']}/compute_z.py is not patched for CPU; apply:\n  - "
            + "\n  - ".join(PATCHES)
        )
    sys.path.insert(0, str(src))
    with working_directory(src):
        main = __import__(f"{info['package']}.{info['main']}", fromlist=["x"])
        hp_mod = __import__(f"{info['package']}.{info['hparams'][0]}", fromlist=["x"])
    return Reference(main, getattr(hp_mod, info["hparams"][1]), getattr(main, info["execute"]))


def reference_hparams(method: str, ref: Reference, hp, n_layer: int, tied: bool):
    """The public dataclass with the project's settings. With tied input/output embeddings (SmolLM2)
    the LM head is named by the embedding, as the public GPT-2 XL settings do ("transformer.wte"):
    ``lm_head.weight`` is then not among the model's named parameters."""
    common = dict(
        layers=list(hp.layers),
        layer_selection="all",
        fact_token="subject_last",
        v_num_grad_steps=hp.v_num_grad_steps,
        v_lr=hp.v_lr,
        v_loss_layer=n_layer - 1,
        v_weight_decay=hp.v_weight_decay,
        clamp_norm_factor=hp.clamp_norm_factor,
        kl_factor=hp.kl_factor,
        mom2_adjustment=True,
        mom2_update_weight=hp.mom2_update_weight,
        rewrite_module_tmp="model.layers.{}.mlp.down_proj",
        layer_module_tmp="model.layers.{}",
        mlp_module_tmp="model.layers.{}.mlp",
        attn_module_tmp="model.layers.{}.self_attn",
        ln_f_module="model.norm",
        lm_head_module="model.embed_tokens" if tied else "lm_head",
        mom2_dataset="injected",
        mom2_n_samples=0,
        mom2_dtype="float32",
    )
    if method == "emmet":
        common.update(
            calculate_objective_value=False,
            update_norm_lambda=hp.update_norm_lambda,
            emmet_lambda=hp.emmet_lambda,
        )
    if method == "alphaedit":
        common.update(model_name="SmolLM2", nullspace_threshold=hp.nullspace_threshold, L2=hp.L2)
    if method == "encore":  # the least-squares path (use_gd false), as the public settings
        common.update(
            calculate_objective_value=False,
            add_prev_edits=hp.add_prev_edits,
            update_norm_lambda=hp.update_norm_lambda,
            emmet_lambda=0.1,
            prob_cutoff=hp.prob_cutoff,
            norm_control=0,
            dynamic_multiplier=5,
            random_vector_preservation=False,
            use_gd=False,
            grad_desc_lr=0.005,
            grad_desc_steps=100,
            gd_lambda=50,
            spectral_norm=2,
            condition_num=50,
            calculate_norms=False,
        )
        hparams = ref.hparams_cls(**common)
        hparams.sequential = (
            True  # what experiments/evaluate_save_model.py sets for sequential editing
        )
        return hparams
    if hp.kl_prompt != "{} is a" or hp.early_stop_loss != 0.05:
        raise SystemExit(
            "the public code hard-codes kl_prompt '{} is a' and early stopping at 0.05"
        )
    return ref.hparams_cls(**common)


def inject(
    method: str, ref: Reference, seconds: dict[str, torch.Tensor], templates: list[str]
) -> None:
    def get_cov(model, tok, layer_name, *args, **kwargs):
        c = seconds[layer_name].float().to(next(model.parameters()).device)
        return (c, None) if method in ("emmet", "encore") else c

    ref.main.get_cov = get_cov
    ref.main.CONTEXT_TEMPLATES_CACHE = [["{}"], list(templates[1:])]


def public_projection(c: torch.Tensor, threshold: float) -> torch.Tensor:
    """AlphaEdit's ``get_project`` (experiments/evaluate.py):
    U U^T over C's singular vectors below the threshold."""
    u, sv, _ = torch.linalg.svd(c.float(), full_matrices=False)
    small = (sv < threshold).nonzero(as_tuple=True)[0]
    return u[:, small] @ u[:, small].T


class AlphaEditState:
    """The public AlphaEdit driver's P and accumulated K_p K_p^T (cache_c), one slice per layer."""

    def __init__(self, seconds: list[torch.Tensor], threshold: float):
        self.p = torch.stack([public_projection(c, threshold) for c in seconds])
        self.cache_c = torch.zeros_like(self.p)


def reference_deltas(
    method: str,
    ref: Reference,
    model,
    tok,
    records: list[dict],
    hparams,
    weights: dict[str, torch.Tensor],
    state: AlphaEditState | None = None,
):
    before = {k: w.detach().clone() for k, w in weights.items()}
    requests = [dict(r["requested_rewrite"], case_id=r["case_id"]) for r in records]
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        if method == "alphaedit":
            _, state.cache_c = ref.execute(
                model, tok, requests, hparams, cache_c=state.cache_c, P=state.p
            )
        else:
            deltas = ref.execute(model, tok, requests, hparams)
            if method == "encore":  # (deltas, z norms, z seconds, insertion seconds)
                deltas = deltas[0]
    seconds = time.perf_counter() - t0
    if (
        method == "alphaedit"
    ):  # edited in place: the change is the update; then put the weights back
        out = {k: (w.detach().double() - before[k].double()) for k, w in weights.items()}
        with torch.no_grad():
            for k, w in weights.items():
                w.copy_(before[k])
        return out, seconds
    for k, w in weights.items():
        if not torch.equal(w, before[k]):
            raise RuntimeError(f"the public code did not restore {k}")
    out = {}
    for name, value in deltas.items():
        adj_k, resid = value[0], value[1]
        out[name.removesuffix(".weight")] = resid.double() @ adj_k.double().T  # (out, in)
    return out, seconds


def compare(
    step: str,
    records: list[dict],
    result,
    ref_dw: dict,
    weights: dict,
    seconds: tuple[float, float],
) -> dict:
    row: dict[str, Any] = {
        "step": step,
        "case_ids": [r["case_id"] for r in records],
        "seconds_proj": seconds[0],
        "seconds_ref": seconds[1],
    }
    diffs = []
    for upd in result.updates:
        d = upd.delta_out_in().double()
        ref = ref_dw[upd.module]
        layer = upd.module.split(".")[2]
        row[f"dW_rel_diff_L{layer}"] = rel_diff(d, ref)
        row[f"dW_rel_norm_L{layer}"] = float(d.norm() / weights[upd.module].double().norm())
        diffs.append(row[f"dW_rel_diff_L{layer}"])
    row["max_dW_rel_diff"] = max(diffs)
    row["agree"] = row["max_dW_rel_diff"] <= DW_TOL
    return row


def run(args) -> tuple[list[dict], dict]:
    from editscale.config import method_hparams
    from editscale.data.counterfact import load_counterfact
    from editscale.editing.key_stats import load_key_second_moment
    from editscale.editors.base import apply_updates
    from editscale.editors.prompts import generate_context_templates
    from editscale.lm.models import arch_of, edit_parameter, load_model, n_layers

    editor_mod = __import__(f"editscale.editors.{args.method}", fromlist=["make_editor"])
    ref = import_reference(args.method, args.src)
    cfg = yaml.safe_load(args.config.read_text())
    hp_dict = (
        method_hparams(cfg, args.method, args.model_key)
        if args.method in cfg.get("methods", {})
        else {}
    )
    hp_dict = {**hp_dict, "layers": list(args.layers)}
    model, tok = load_model(args.model, "float32", "cpu")
    if tok.padding_side != "right":
        raise SystemExit(
            f"the tokenizer pads on the {tok.padding_side}; the public code assumes the right"
        )
    spec = arch_of(model)
    seconds = {
        spec.mlp_out_path(x): load_key_second_moment(
            args.stats_dir / f"layer{x}.h5", expect={"layer": x}
        )
        for x in args.layers
    }
    editor_cls = {
        "emmet": "EmmetEditor",
        "alphaedit": "AlphaEditEditor",
        "encore": "EncoreEditor",
    }.get(args.method, "MemitEditor")
    editor_cls = getattr(editor_mod, editor_cls)
    hp = editor_cls.hparams_cls.from_dict(hp_dict)
    templates = generate_context_templates(
        model,
        tok,
        hp.context_template_lengths,
        hp.context_template_top_k,
        args.seed,
        starts=hp.context_template_starts,
    )
    log.info("%d context templates: %s", len(templates), templates)
    ref_hp = reference_hparams(
        args.method,
        ref,
        hp,
        n_layers(model),
        bool(getattr(model.config, "tie_word_embeddings", False)),
    )
    inject(args.method, ref, seconds, templates)
    editor = editor_mod.make_editor(
        model,
        tok,
        hp_dict,
        {x: seconds[spec.mlp_out_path(x)] for x in args.layers},
        args.seed,
        state={"context_templates": templates},
    )
    weights = {p: edit_parameter(model, p) for p in editor.edited_modules}
    state = None
    if args.method == "alphaedit":
        state = AlphaEditState([seconds[p] for p in editor.edited_modules], hp.nullspace_threshold)
        log.info(
            "null-space dimensions: public %s, project %s",
            [int(x.trace().round()) for x in state.p],
            [int(editor.p[x].trace().round()) for x in args.layers],
        )
    records = load_counterfact(args.counterfact)[: args.records + args.batch]
    steps = [[r] for r in records[: args.records]]
    if args.batch:
        steps.append(records[args.records : args.records + args.batch])
    rows = []
    for i, recs in enumerate(steps, 1):
        paths = {}
        if getattr(args, "paths", False):  # the reference search path too (search_paths.py)
            result, paths = project_paths(editor, recs, model, tok)
            t_proj = paths["seconds_new"]
        else:
            t0 = time.perf_counter()
            result = editor.compute_batch(recs)
            t_proj = time.perf_counter() - t0
        ref_dw, t_ref = reference_deltas(args.method, ref, model, tok, recs, ref_hp, weights, state)
        label = f"edit {i}" if len(recs) == 1 else f"batch of {len(recs)}"
        row = compare(label, recs, result, ref_dw, weights, (t_proj, t_ref))
        row.update(paths)
        apply_updates(model, result.updates, spec)
        if hasattr(editor, "commit"):
            editor.commit(result.carry)
        rows.append(row)
        log.info(
            "%s: max ||dW - dW_ref|| / ||dW_ref|| %.2e (%.1f s / %.1f s)",
            label,
            row["max_dW_rel_diff"],
            t_proj,
            t_ref,
        )
    setup = {"hparams": hp_dict, "templates": templates, "reference_hparams": dict(vars(ref_hp))}
    return rows, setup


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--method", choices=sorted(SOURCES), required=True)
    ap.add_argument("--src", type=Path, required=True, help="the extracted, patched public tree")
    ap.add_argument("--layers", type=int, nargs="+", required=True)
    ap.add_argument("--model", type=Path, default=REPO / "runs/smollm2/resources/models/smollm2")
    ap.add_argument(
        "--stats-dir", type=Path, default=REPO / "runs/smollm2/resources/stats/smollm2/wikitext"
    )
    ap.add_argument("--config", type=Path, default=REPO / "config/smollm2.yaml")
    ap.add_argument("--model-key", default="smollm2")
    ap.add_argument(
        "--counterfact",
        type=Path,
        default=REPO.parent / "shared/data/counterfact/counterfact_500.json",
    )
    ap.add_argument("--records", type=int, default=5, help="sequential single edits")
    ap.add_argument(
        "--batch", type=int, default=10, help="then one step editing this many records (0: none)"
    )
    ap.add_argument("--seed", type=int, default=37)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--paths",
        action="store_true",
        help="also time the project's reference v* search path (no prefix cache) and the scoring",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.src = args.src.resolve()
    t0 = time.perf_counter()
    rows, setup = run(args)
    wall = time.perf_counter() - t0
    for r in rows:
        layers = " ".join(
            f"L{k.rsplit('L', 1)[1]} {v:.1e} ({r['dW_rel_norm_L' + k.rsplit('L', 1)[1]]:.3f})"
            for k, v in r.items()
            if k.startswith("dW_rel_diff_L")
        )
        print(
            f"{r['step']:>12}  {'yes' if r['agree'] else 'NO ':>3}  {layers}  "
            f"{r['seconds_proj']:.1f} s / {r['seconds_ref']:.1f} s"
        )
    import transformers

    info = {
        "name": f"SmolLM2 {args.method} vs ref",
        "n_steps": len(rows),
        "n_agree": sum(r["agree"] for r in rows),
        "max_dW_rel_diff": max(r["max_dW_rel_diff"] for r in rows),
        "seconds_proj": sum(r["seconds_proj"] for r in rows),
        "seconds_ref": sum(r["seconds_ref"] for r in rows),
        "wall_seconds": wall,
        "threads": args.threads,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "model": str(args.model),
        "reference": SOURCES[args.method]["repo"],
        "reference_patches": list(PATCHES),
        "dW_tol": DW_TOL,
        **setup,
        "steps": rows,
    }
    report(
        f"{args.method}_reference",
        [info],
        [
            ("n_steps", "{:d}"),
            ("n_agree", "{:d}"),
            ("max_dW_rel_diff", "{:.2e}"),
            ("seconds_proj", "{:.1f}"),
            ("seconds_ref", "{:.1f}"),
            ("wall_seconds", "{:.1f}"),
        ],
        f"threads={args.threads}, layers {args.layers}, {args.records} single edits then a batch "
        f"of {args.batch}; agree: every layer's ||dW - dW_ref||/||dW_ref|| <= {DW_TOL}",
    )


if __name__ == "__main__":
    main()
