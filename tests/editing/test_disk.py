"""The disk arithmetic (editscale.editing.disk) against the files of tiny runs: the bytes of every
snapshot, update and carried dataset the store wrote equal the budget's, for each kind of update."""

from __future__ import annotations

import h5py
import pytest

from editscale.editing.disk import mlp_in_blocks, snapshot_count, trajectory_budget
from editscale.editing.runner import run_trajectory
from editscale.editors.mend import MendNetwork, edited_module_paths, module_shape, save_editor
from editscale.lm.models import load_model, model_identity
from tests.editors.test_mend_running import untrained  # noqa: F401  (a fixture)

N_EDITS, EVERY = 6, 4
ROME = {"layer": 1, "v_num_grad_steps": 3, "context_template_lengths": [[4, 2]]}
MEMIT = {"layers": [1], "v_num_grad_steps": 3, "context_template_lengths": [[4, 2]]}
CASES = {
    "rome": ("rome", ROME, {}),
    "ftc_dense": ("ftc", {"layer": 1, "num_steps": 2}, {}),
    "ftc_replay_bias": (
        "ftc",
        {"layer": 1, "num_steps": 2, "include_bias": True},
        {"store_updates": False},
    ),
    "memit_steps_of_2": ("memit", MEMIT, {"edits_per_step": 2}),
    "alphaedit": ("alphaedit", {**MEMIT, "nullspace_threshold": 1e9}, {}),
}


def stored_bytes(path) -> dict[str, int]:
    """Logical bytes of the datasets under snapshots/bias_snapshots, updates (but offsets) and
    carry (but offsets); and the mean number of low-rank rows per matrix and edit."""
    out = {"snapshots": 0, "updates": 0, "carry": 0, "rows": 0}

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset) or name.endswith("offsets"):
            return
        top = name.split("/")[0]
        key = {"bias_snapshots": "snapshots"}.get(top, top)
        if key in out:
            out[key] += obj.size * obj.dtype.itemsize

    with h5py.File(path) as f:
        f.visititems(visit)
        rows = [int(g["offsets"][-1]) for g in f["updates"].values() if "offsets" in g]
        if rows:
            out["rows"] = sum(rows) / len(rows) / int(f.attrs["n_edits"])
    return out


def run(inputs, out, editor, hparams, **extra):
    kw = dict(
        model_dir=inputs["model_dir"],
        counterfact_path=inputs["counterfact_path"],
        ordering_path=inputs["ordering_path"],
        stats_path=inputs["stats_path"],
        out_path=out,
        method=editor,
        editor=editor,
        hparams=hparams,
        n_edits=N_EDITS,
        snapshot_every=EVERY,
        seed=0,
        progress_every_s=0.0,
    )
    run_trajectory(**{**kw, **extra})


def widths(folder) -> dict:
    model, _ = load_model(folder)
    cfg = model.config
    return {"d_model": cfg.n_embd, "d_mlp": 4 * cfg.n_embd, "n_layer": cfg.n_layer}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_budget_is_what_the_store_writes(traj_inputs, tmp_path, case):
    editor, hp, extra = CASES[case]
    out = tmp_path / f"{case}.h5"
    run(traj_inputs, out, editor, hp, **extra)
    budget = trajectory_budget(
        editor,
        hp,
        n_edits=N_EDITS,
        snapshot_every=EVERY,
        **widths(traj_inputs["model_dir"]),
        edits_per_step=extra.get("edits_per_step", 1),
        store_updates=extra.get("store_updates", True),
    )
    stored = stored_bytes(out)
    assert (stored["snapshots"], stored["updates"], stored["carry"]) == (
        budget.snapshots,
        budget.updates,
        budget.carry,
    )
    assert out.stat().st_size < budget.total + 2**20  # headers and attributes: well under 1 MiB


def test_mend_budget_with_the_running_statistics(traj_inputs, untrained, tmp_path):  # noqa: F811
    folder, editor_file = untrained
    hp = {"layers": [0, 1, 2], "normalisation": "authors_running"}
    out = tmp_path / "mend.h5"
    run(
        {**traj_inputs, "model_dir": folder, "stats_path": None},
        out,
        "mend",
        hp,
        editor_file=editor_file,
    )
    stored = stored_bytes(out)
    budget = trajectory_budget(
        "mend",
        hp,
        n_edits=N_EDITS,
        snapshot_every=EVERY,
        **widths(folder),
        mend_rows=stored["rows"],
    )
    assert (stored["snapshots"], stored["updates"], stored["carry"]) == (
        budget.snapshots,
        budget.updates,
        budget.carry,
    )


def test_mend_budget_counts_a_fused_mlp_input_matrix(traj_inputs, family_model, tmp_path):
    """Phi-3's MLP input is one (2 d_mlp, d) matrix (gate and up, fused), which MEND edits whole:
    the trajectory stores it so, and the budget counts its two blocks."""
    folder = family_model("phi3")
    model, _ = load_model(folder)
    modules = edited_module_paths(model, [1, 2])
    editor_file = tmp_path / "mend.safetensors"
    net = MendNetwork(modules, {m: module_shape(model, m) for m in modules}, rank=8)
    save_editor(editor_file, net, {**model_identity(folder), "source": "test"})
    hp = {"layers": [1, 2]}
    out = tmp_path / "mend.h5"
    run(
        {**traj_inputs, "model_dir": folder, "stats_path": None},
        out,
        "mend",
        hp,
        editor_file=editor_file,
    )
    stored = stored_bytes(out)
    cfg = model.config
    assert mlp_in_blocks(folder) == 2 and module_shape(model, modules[0])[1] == 2 * 128
    budget = trajectory_budget(
        "mend",
        hp,
        n_edits=N_EDITS,
        snapshot_every=EVERY,
        d_model=cfg.hidden_size,
        d_mlp=cfg.intermediate_size,
        n_layer=cfg.num_hidden_layers,
        mend_rows=stored["rows"],
        mlp_in_blocks=mlp_in_blocks(folder),
    )
    assert (stored["snapshots"], stored["updates"]) == (budget.snapshots, budget.updates)


def test_snapshot_count():
    assert snapshot_count(10, 5) == 3 and snapshot_count(11, 5) == 4 and snapshot_count(4, 10) == 2
