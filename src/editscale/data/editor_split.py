"""The case ids reserved for training editor networks (MEND), disjoint from every trajectory.

Light (no torch): the ordering rule imports it. A seeded sample of ``n_train + n_val`` case ids of
the usable (unique-subject) records is drawn with a local ``random.Random(seed)``; the ordering rule
shuffles ALL usable case ids exactly as the authors did and then drops the reserved ones
(``editscale.data.counterfact.ordering_sample``), so no trajectory edits a record the editor was
trained or validated on, and the other records keep the authors' order.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from editscale.io.files import atomic_write_json


def make_editor_split(
    case_ids: list[int], n_train: int, n_val: int, seed: int
) -> dict[str, list[int]]:
    """{"train": [...], "val": [...]}: a seeded sample of ``case_ids`` (order kept as drawn)."""
    if n_train < 1 or n_val < 1:
        raise ValueError("editor_training: n_train and n_val must be >= 1")
    if n_train + n_val > len(case_ids):
        raise ValueError(
            f"config key 'editor_training': n_train + n_val = {n_train + n_val} but only "
            f"{len(case_ids)} usable records exist"
        )
    picked = random.Random(seed).sample(sorted(case_ids), n_train + n_val)
    return {"train": picked[:n_train], "val": picked[n_train:]}


def write_editor_split(path: str | os.PathLike, split: dict, **meta) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {**split, **meta}, end="\n", indent=1)


def read_editor_split(path: str | os.PathLike) -> dict:
    data = json.loads(Path(path).read_text())
    for key in ("train", "val"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: expected lists 'train' and 'val' of case ids")
    return data


def reserved_case_ids(path: str | os.PathLike) -> set[int]:
    data = read_editor_split(path)
    return set(data["train"]) | set(data["val"])
