"""How much disk a trajectory file takes, from the store's layout (:mod:`editscale.editing.store`).

A trajectory stores, per edited matrix (out x in, ``dtype_bytes`` per weight): a snapshot at edit 0,
at every multiple of ``snapshot_every`` and after the last edit (gzip level 1, which barely
shrinks trained weights: counted whole); each edit's update (rank-one: in + out numbers; low-rank:
that many per stored row; dense: in x out; replay, ``store_updates: false``: nothing); the bias
deltas and snapshots of FT-C with ``include_bias``; what stateful editors carry (float64 rows:
AlphaEdit's and ENCORE's keys, MEND's running statistics); and the per-edit metrics (float64). The
evaluation files are small beside it (a few numbers per checkpoint and record) and not counted.

``python -m editscale.budget CONFIG`` prints the budget of every (model, method) of a config
(:mod:`editscale.budget`); ``tests/editing/test_disk.py`` checks the arithmetic against the files
of tiny runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from editscale.editors.hparams import MendHParams
from editscale.lm.architectures import ARCHITECTURES

# low-rank rows one MEND edit stores per matrix: the positions of prompt + target with a gradient
# (~16 CounterFact tokens with GPT-2's BPE; measured runs read their own count from the file)
MEND_ROWS = 16
# per-edit metrics a trajectory records (ES/PS/NS with magnitudes and argmax variants, norms,
# distances, timings, the editor's diagnostics): 40 float64 numbers is an upper bound
METRICS = 40


@dataclass(frozen=True)
class Budget:
    """Bytes of one trajectory file, by what holds them."""

    snapshots: int
    updates: int
    carry: int
    metrics: int

    @property
    def total(self) -> int:
        return self.snapshots + self.updates + self.carry + self.metrics


def snapshot_count(n_edits: int, snapshot_every: int) -> int:
    """Snapshots a trajectory keeps: edit 0, every multiple of ``snapshot_every``, the last."""
    return len({0, n_edits, *range(snapshot_every, n_edits + 1, snapshot_every)})


def edited_matrices(editor: str, hp: dict, n_layer: int) -> list[tuple[str, int]]:
    """(which MLP matrix, layer) of each matrix an editor with hyperparameters ``hp`` edits."""
    if editor in ("rome", "ftc"):
        return [("mlp_out", int(hp.get("layer", 0)))]
    if editor in ("memit", "emmet", "alphaedit", "encore"):
        return [("mlp_out", int(layer)) for layer in hp["layers"]]
    if editor == "mend":
        layers = MendHParams.from_dict(hp).layer_indices(n_layer)
        return [(kind, layer) for layer in layers for kind in ("mlp_in", "mlp_out")]
    raise KeyError(f"no storage arithmetic for editor {editor!r}")


def trajectory_budget(
    editor: str,
    hp: dict,
    *,
    d_model: int,
    d_mlp: int,
    n_layer: int,
    n_edits: int,
    snapshot_every: int,
    edits_per_step: int = 1,
    store_updates: bool = True,
    dtype_bytes: int = 4,
    mend_rows: float = MEND_ROWS,
    mlp_in_blocks: int = 1,
) -> Budget:
    """The bytes of one trajectory of ``editor`` on a model of width ``d_model``, MLP width
    ``d_mlp`` and ``n_layer`` blocks (see the module docstring); ``mlp_in_blocks``: the MLP input
    matrix's blocks of ``d_mlp`` rows (:func:`mlp_in_blocks`; Phi-3's fused matrix has 2)."""
    shapes = {"mlp_in": (mlp_in_blocks * d_mlp, d_model), "mlp_out": (d_model, d_mlp)}  # (out, in)
    matrices = [shapes[kind] for kind, _ in edited_matrices(editor, hp, n_layer)]
    weights = sum(o * i for o, i in matrices)
    bias = editor == "ftc" and bool(hp.get("include_bias"))
    biases = sum(o for o, _ in matrices) if bias else 0
    snaps = snapshot_count(n_edits, snapshot_every) * (weights + biases) * dtype_bytes
    steps = math.ceil(n_edits / edits_per_step)
    if editor in ("rome",):
        per_edit = sum(o + i for o, i in matrices)
    elif editor == "mend":
        per_edit = mend_rows * sum(o + i for o, i in matrices)
    elif editor == "ftc":
        per_edit = (weights + biases) if store_updates else 0
    else:  # MEMIT's family: one low-rank update per step, a row per record
        per_edit = edits_per_step * sum(o + i for o, i in matrices)
    updates = int(steps * per_edit * 4)  # updates are float32
    carry = 0
    if editor in ("alphaedit", "encore"):
        carry = n_edits * len(matrices) * d_mlp * 8  # each record's key, every layer
    if editor == "mend" and hp.get("normalisation") == "authors_running":
        per_shape = 2 * (d_model + d_mlp) + 1  # mean and m2 of u and v, and the count
        carry = n_edits * len({o for o, _ in matrices}) * per_shape * 8
    return Budget(int(snaps), updates, int(carry), n_edits * METRICS * 8)


def _config(folder_or_config):
    from transformers import AutoConfig

    if isinstance(folder_or_config, (str, Path)):
        return AutoConfig.from_pretrained(folder_or_config, trust_remote_code=False)
    return folder_or_config


def mlp_in_blocks(folder_or_config) -> int:
    """How many blocks of d_mlp rows the model's MLP input matrix stacks, from the architecture
    table (:class:`editscale.lm.architectures.ArchSpec` ``mlp_in_blocks``; 1 for a model type
    without an entry)."""
    spec = ARCHITECTURES.get(getattr(_config(folder_or_config), "model_type", None))
    return 1 if spec is None else len(spec.mlp_in_blocks)


def model_widths(folder_or_config) -> tuple[int, int, int]:
    """(d_model, d_mlp, n_layer) from a transformers config (or a folder holding one): the edited
    MLP output matrix's input width is d_mlp."""
    cfg = _config(folder_or_config)
    d_model = int(cfg.hidden_size)
    d_mlp = None
    for name in ("intermediate_size", "n_inner"):
        if getattr(cfg, name, None):
            d_mlp = int(getattr(cfg, name))
            break
    n_layer = int(cfg.num_hidden_layers)
    return d_model, d_mlp or 4 * d_model, n_layer
