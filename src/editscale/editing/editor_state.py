"""Making an editor: its key statistics, its networks, and the state a trajectory stored.

The runner, the evaluation jobs (replaying a trajectory's edits), the disabling job and the
Python API (:mod:`editscale.api`) build editors here, so an editor rebuilt from a trajectory's
file is the one that made the trajectory: same hyperparameters, seed, key statistics, editor
networks and stored state (ROME's context templates).
"""

from __future__ import annotations

import os

import torch

from editscale.editing.store import read_editor_setup
from editscale.editors import editor_info, load_editor_module, stats_layers
from editscale.editors.base import check_editor
from editscale.lm.models import model_identity, sha256_file

StatsPaths = str | os.PathLike | list


def load_second_moment(stats_path, model_dir, layer: int) -> torch.Tensor:
    """``C`` of block ``layer`` from a key statistics file, checked to be of the model in
    ``model_dir`` (its ``model_id`` and ``revision``) and of that layer."""
    from editscale.editing.key_stats import load_key_second_moment

    expect = {**model_identity(model_dir), "layer": layer}
    return load_key_second_moment(stats_path, expect=expect)


def stats_paths(stats_path: StatsPaths) -> list:
    """One statistics path, or a list of them, as a list."""
    return [stats_path] if isinstance(stats_path, (str, os.PathLike)) else list(stats_path)


def load_second_moments(
    stats_path: StatsPaths | None, model_dir, hparams: dict
) -> dict[int, torch.Tensor] | None:
    """{layer: C} from one statistics file per layer of :func:`stats_layers` (``stats_path``: a
    path, or a list in that order), each checked to be of this model and layer; None without."""
    if stats_path is None:
        return None
    paths, layers = stats_paths(stats_path), stats_layers(hparams)
    if len(paths) != len(layers):
        raise ValueError(
            f"{len(paths)} statistics files {paths} for the {len(layers)} layers {layers}"
        )
    return {layer: load_second_moment(p, model_dir, layer) for p, layer in zip(paths, layers)}


def stats_sha256(stats_path: StatsPaths | None) -> str | None:
    """The statistics' sha256 (several files: their sha256s joined by commas, in layer order)."""
    if stats_path is None:
        return None
    return ",".join(sha256_file(p) for p in stats_paths(stats_path))


def make_editor(
    editor: str,
    model,
    tok,
    hparams: dict,
    second_moment: dict[int, torch.Tensor] | None,
    seed: int,
    *,
    state: dict | None = None,
    editor_file=None,
    model_dir=None,
):
    """The editor ``editor`` (a name of :data:`editscale.editors.EDITORS`) on ``model``.

    ``state``: stored editor state (None: made afresh with ``seed``); ``editor_file``: the
    trained networks of editors that need them (MEND), checked against ``model_dir``'s identity.
    """
    extra = {}
    if editor_file is not None:
        extra = {"editor_file": editor_file, "identity": model_identity(model_dir)}
    made = load_editor_module(editor).make_editor(
        model, tok, hparams, second_moment, seed, state=state, **extra
    )
    # an editor from outside the package (docs/extending.md) is checked here, before any edit
    return check_editor(made, batched=editor_info(editor).batched)


def trajectory_editor(trajectory_path, model, tok, model_dir, stats_path=None, editor_file=None):
    """The editor of a trajectory, built on ``model`` (the unedited model) as the runner built it:
    the method's hparams, seed and stored editor state (ROME's context templates) read from the
    trajectory file, the key statistics and editor networks from the same inputs."""
    setup = read_editor_setup(trajectory_path)
    hparams, editor_name, seed, state = (setup[k] for k in ("hparams", "editor", "seed", "state"))
    second_moment = load_second_moments(stats_path, model_dir, hparams)
    return make_editor(
        editor_name,
        model,
        tok,
        hparams,
        second_moment,
        seed,
        state=state,
        editor_file=editor_file,
        model_dir=model_dir,
    )
