"""Forgetting: re-testing every previously edited fact on the current model.

At a checkpoint t (every ``forgetting_every`` edits), every fact edited so far (edits 1..t) is
scored on its rewrite prompt: the probability test P(new) > P(true) and the argmax test (every
token of the new target is the argmax under teacher forcing). The full facts x checkpoints
matrix is stored; the curves are derived from it:

(a) ``paper``: the authors' curve. A fact counts as forgotten from the first checkpoint at which
    it fails, provided it succeeded right after its own edit ("once forgotten, always
    forgotten"); value = cumulative forgotten / successfully edited so far x 100.
(b) ``failing``: the fraction of successfully edited facts that fail at that checkpoint, with no
    shortcut (facts can come back) x 100.
(c) ``returned``: how many facts that had been forgotten at an earlier checkpoint succeed again.
"""

from __future__ import annotations

import numpy as np

from editscale.lm.scoring import score_targets, target_token_ids


def evaluate_facts(
    model, tok, records: list[dict], paraphrases: bool = False, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Probability and argmax tests of each record's rewrite (and optionally paraphrase) prompts.

    All prompts of all facts are batched together (one padded forward pass per batch).
    """
    prompts, targets, owner = [], [], []
    token_ids: dict[str, list[int]] = {}  # targets repeat across facts: tokenise each once
    for i, rec in enumerate(records):
        rw = rec["requested_rewrite"]
        for target in (rw["target_new"]["str"], rw["target_true"]["str"]):
            if target not in token_ids:
                token_ids[target] = target_token_ids(tok, target)
        ids = [token_ids[rw["target_new"]["str"]], token_ids[rw["target_true"]["str"]]]
        plist = [rw["prompt"].replace("{}", rw["subject"], 1)]
        if paraphrases:
            plist += list(rec["paraphrase_prompts"])
        prompts += plist
        targets += [ids] * len(plist)
        owner += [i] * len(plist)
    sc = score_targets(model, tok, prompts, targets, batch_size=batch_size)
    owner = np.asarray(owner)
    first = np.r_[0, np.flatnonzero(np.diff(owner)) + 1]  # the rewrite prompt of each fact
    out = {
        "prob_ok": (sc.nll[first, 0] < sc.nll[first, 1]).astype(np.float64),
        "argmax_ok": sc.argmax_ok[first, 0].astype(np.float64),
    }
    if paraphrases:
        para = np.ones(len(owner), dtype=bool)
        para[first] = False
        ok = (sc.nll[:, 0] < sc.nll[:, 1]).astype(np.float64)
        sums = np.bincount(owner[para], weights=ok[para], minlength=len(records))
        counts = np.bincount(owner[para], minlength=len(records))
        with np.errstate(invalid="ignore", divide="ignore"):
            out["para_prob_ok"] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return out


def forgetting_curves(
    ok: np.ndarray, checkpoints: np.ndarray, success_after_edit: np.ndarray
) -> dict[str, np.ndarray]:
    """Curves (a), (b), (c) from a facts x checkpoints matrix.

    ``ok[i, c]``: 1/0 whether fact i (edited at step i + 1) passes at checkpoint ``checkpoints[c]``,
    NaN where the fact was not yet edited. ``success_after_edit[i]``: whether fact i passed right
    after its own edit. Only facts that succeeded after their edit enter the curves.
    """
    n_facts, n_ckpt = ok.shape
    edited_at = np.arange(1, n_facts + 1)
    succeeded = np.asarray(success_after_edit, dtype=bool)
    paper = np.full(n_ckpt, np.nan)
    failing = np.full(n_ckpt, np.nan)
    returned = np.zeros(n_ckpt, dtype=np.int64)
    n_forgotten_so_far = np.zeros(n_ckpt, dtype=np.int64)
    ever_failed = np.zeros(n_facts, dtype=bool)
    came_back = np.zeros(n_facts, dtype=bool)
    for c, t in enumerate(checkpoints):
        live = succeeded & (edited_at <= t)
        col = ok[:, c]
        fail_now = live & (col == 0)
        pass_now = live & (col == 1)
        came_back |= ever_failed & pass_now
        ever_failed |= fail_now
        n_live = int(live.sum())
        n_forgotten_so_far[c] = int((ever_failed & live).sum())
        if n_live:
            paper[c] = 100.0 * n_forgotten_so_far[c] / n_live
            failing[c] = 100.0 * fail_now.sum() / n_live
        returned[c] = int(came_back.sum())
    return {
        "paper": paper,
        "failing": failing,
        "returned": returned,
        "forgotten": n_forgotten_so_far,
    }
