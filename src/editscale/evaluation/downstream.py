"""Downstream (GLUE few-shot) evaluation: generate answers, parse them, score F1 and accuracy."""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

from editscale.data.glue import INVALID, build_prompts, int_label_words, parse_answer, task_spec
from editscale.lm.generation import generate_greedy

log = logging.getLogger(__name__)


def score(labels: Sequence[int], preds: Sequence[int]) -> dict:
    """Weighted F1 (invalid -1 kept as a third class), accuracy, MCC, invalid count, n."""
    from sklearn.metrics import f1_score, matthews_corrcoef

    if len(labels) != len(preds):
        raise ValueError(f"{len(labels)} labels but {len(preds)} predictions")
    if not labels:
        raise ValueError("no examples to score")
    labels, preds = [int(x) for x in labels], [int(x) for x in preds]
    return {
        "f1": float(f1_score(labels, preds, average="weighted", zero_division=0)),
        "accuracy": sum(a == b for a, b in zip(labels, preds)) / len(labels),
        "mcc": float(matthews_corrcoef(labels, preds)),
        "n_invalid": sum(p == INVALID for p in preds),
        "n": len(labels),
    }


def evaluate_task(
    model,
    tok,
    task_name: str,
    eval_examples: Sequence[dict],
    demos: Sequence[dict],
    label_words: Mapping,
    batch_size: int = 16,
    max_new_tokens: int = 3,
) -> dict:
    """Few-shot greedy evaluation of one task: :func:`score` + ``predictions`` + ``generations``."""
    spec = task_spec(task_name)
    words = int_label_words(label_words)
    prompts = build_prompts(spec, eval_examples, demos, words)
    generated = generate_greedy(
        model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    preds = [
        parse_answer(g, words, cue=spec.answer_cue, priority=spec.answer_priority)
        for g in generated
    ]
    result = score([int(ex["label"]) for ex in eval_examples], preds)
    result.update(task=task_name, predictions=preds, generations=generated)
    log.info(
        "%s: f1=%.4f acc=%.4f mcc=%.4f invalid=%d/%d",
        task_name,
        result["f1"],
        result["accuracy"],
        result["mcc"],
        result["n_invalid"],
        result["n"],
    )
    return result


def evaluate_task_set(
    model, tok, task_set: Mapping, batch_size: int = 16, max_new_tokens: int = 3
) -> dict:
    """:func:`evaluate_task` on a set saved by :func:`prepare_task_set`."""
    return evaluate_task(
        model,
        tok,
        task_set["task"],
        task_set["eval"],
        task_set["demos"],
        task_set["label_words"],
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
    )
