"""Train the embedded default's model from scratch on a world's corpus (seeded, resumable).

A byte-level BPE tokenizer (``tokenizers``) is trained on the corpus (prepending BOS to every
text when ``bos``, as Llama-family tokenizers do; every training document then starts with it),
then a model of architecture ``arch`` (GPT-2 or Llama, ...) with AdamW, linear warm-up and
cosine decay. Every epoch the documents are shuffled with a generator seeded by (seed, epoch) and
packed into blocks that start at a document boundary
(documents never straddle two blocks, so a fact is seen whole, often at position 0 as at
evaluation time). Dropout is off: the model is meant to memorise its world.

The job checkpoints model + optimizer + step to ``<dest>.train/`` every ``checkpoint_every``
steps (atomic rename) and resumes from there when restarted; an interrupted and resumed run
ends with the same weights as an uninterrupted one. The finished model is an ordinary Hugging
Face folder (safetensors + tokenizer) with an ``editscale_manifest.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from editscale.data.corpora import read_jsonl_docs
from editscale.io.files import atomic_save
from editscale.io.hparams import HParams
from editscale.io.provenance import sha256_file
from editscale.lm.models import scratch_config, train_bpe_tokenizer, write_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainHParams(HParams):
    """How the organism model is trained (``models.<m>.training`` of a world model)."""

    label = "training keys"

    arch: str = "gpt2"  # a key of models.ARCHITECTURES with a scratch config
    bos: bool = (
        False  # the tokenizer prepends its BOS token to every text (as Llama-family tokenizers do)
    )
    n_layer: int = 4
    d_model: int = 128
    d_mlp: int | None = None  # MLP hidden width (the keys ROME edits); None: 4 x d_model
    n_head: int = 4
    vocab_size: int = 4096
    block_size: int = 256  # = the model's n_positions
    batch_size: int = 16
    max_steps: int = 2000
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    checkpoint_every: int = 200
    answer_weight: float = 1.0  # loss weight of the toy tasks' label words (the answers)
    seed: int = 37

    def __post_init__(self):
        from editscale.lm.models import SCRATCH_ARCHS

        if self.arch not in SCRATCH_ARCHS:
            raise ValueError(f"training: arch {self.arch!r} is not one of {list(SCRATCH_ARCHS)}")
        if self.d_model % self.n_head:
            raise ValueError(
                f"training: d_model {self.d_model} is not divisible by n_head {self.n_head}"
            )
        if self.answer_weight <= 0:
            raise ValueError(f"training: answer_weight must be > 0, got {self.answer_weight}")
        if self.max_steps < 1 or self.batch_size < 1 or self.block_size < 8:
            raise ValueError("training: max_steps and batch_size must be >= 1, block_size >= 8")


def lr_at(step: int, hp: TrainHParams) -> float:
    """Learning rate before optimizer step ``step`` (0-based): warm-up, then cosine to min_lr."""
    if step < hp.warmup_steps:
        return hp.lr * (step + 1) / hp.warmup_steps
    span = max(1, hp.max_steps - hp.warmup_steps)
    progress = min(1.0, (step - hp.warmup_steps) / span)
    floor = hp.lr * hp.min_lr_ratio
    return floor + 0.5 * (hp.lr - floor) * (1 + math.cos(math.pi * progress))


def pack_blocks(
    docs: Sequence[list[int]],
    order: Sequence[int],
    block_size: int,
    eos_id: int,
    bos_id: int | None = None,
) -> list[list[int]]:
    """Greedy packing of documents (each followed by EOS, and preceded by BOS when ``bos_id`` is
    given) in ``order`` into blocks <= block_size."""
    blocks: list[list[int]] = []
    current: list[int] = []
    head = [] if bos_id is None else [bos_id]
    for i in order:
        doc = head + list(docs[i][: block_size - 1 - len(head)]) + [eos_id]
        if current and len(current) + len(doc) > block_size:
            blocks.append(current)
            current = []
        current = current + doc
    if current:
        blocks.append(current)
    return blocks


def epoch_blocks(
    docs: Sequence[list[int]], epoch: int, hp: TrainHParams, eos_id: int
) -> list[list[int]]:
    g = torch.Generator().manual_seed(hp.seed * 1_000_003 + epoch)
    order = torch.randperm(len(docs), generator=g).tolist()
    blocks = pack_blocks(docs, order, hp.block_size, eos_id, bos_id=eos_id if hp.bos else None)
    perm = torch.randperm(len(blocks), generator=g).tolist()
    return [blocks[i] for i in perm]


def answer_token_ids(tok) -> list[int]:
    """Token ids of the downstream tasks' label words as they follow the answer cue (" word").

    Only label words that are one token are returned (a multi-token word is left at weight 1).
    """
    from editscale.data.glue import TASKS, label_words_for

    ids = set()
    for name in TASKS:
        for word in label_words_for(name, "natural").values():
            enc = tok(" " + word, add_special_tokens=False)["input_ids"]
            if len(enc) == 1:
                ids.add(enc[0])
    return sorted(ids)


def weighted_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, weight_ids: torch.Tensor, weight: float
) -> torch.Tensor:
    """Next-token cross-entropy, weighted mean: targets in ``weight_ids`` count ``weight`` times."""
    logits, targets = logits[:, :-1], labels[:, 1:]
    valid = targets != -100
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).clamp(min=0), reduction="none"
    ).view_as(targets)
    w = valid.to(nll.dtype)
    if weight != 1.0 and weight_ids.numel():
        w = torch.where(torch.isin(targets, weight_ids) & valid, torch.full_like(w, weight), w)
    return (nll * w).sum() / w.sum()


def batch_tensors(
    blocks: Sequence[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(b) for b in blocks)
    ids = torch.full((len(blocks), width), pad_id, dtype=torch.long)
    labels = torch.full((len(blocks), width), -100, dtype=torch.long)
    mask = torch.zeros((len(blocks), width), dtype=torch.long)
    for r, b in enumerate(blocks):
        ids[r, : len(b)] = torch.tensor(b)
        labels[r, : len(b)] = torch.tensor(b)
        mask[r, : len(b)] = 1
    return ids, labels, mask


class _Schedule:
    """Which blocks make step ``s``: epochs of shuffled blocks, batches of ``batch_size``."""

    def __init__(self, docs, hp: TrainHParams, eos_id: int):
        self.docs, self.hp, self.eos_id = docs, hp, eos_id
        self._epoch, self._blocks = -1, []
        self.blocks_per_epoch = len(epoch_blocks(docs, 0, hp, eos_id))
        self.batches_per_epoch = max(1, self.blocks_per_epoch // hp.batch_size)

    def batch(self, step: int) -> tuple[int, list[list[int]]]:
        epoch, i = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._blocks = epoch, epoch_blocks(self.docs, epoch, self.hp, self.eos_id)
        bs, n = self.hp.batch_size, len(self._blocks)
        # another shuffle may pack into slightly fewer blocks than epoch 0: wrap around
        return epoch, [self._blocks[j % n] for j in range(i * bs, (i + 1) * bs)]


def _save_checkpoint(ckpt_dir: Path, model, optimizer, step: int, signature: str) -> None:
    atomic_save(
        torch.save,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "signature": signature,
        },
        ckpt_dir / "checkpoint.pt",
    )


def _load_checkpoint(ckpt_dir: Path, model, optimizer, signature: str) -> int:
    path = ckpt_dir / "checkpoint.pt"
    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("signature") != signature:
        log.warning(
            "ignoring checkpoint %s: it was made for another corpus or other settings", path
        )
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def _tokenize(texts: list[str], hp: TrainHParams):
    """A BPE tokenizer trained on ``texts``, the documents' token ids and the corpus's tokens."""
    tok = train_bpe_tokenizer(texts, hp.vocab_size, add_prefix_space=True, add_bos=hp.bos)
    docs = tok(texts, add_special_tokens=False)["input_ids"]
    n_tokens = sum(len(d) + 1 + hp.bos for d in docs)
    too_long = sum(len(d) >= hp.block_size for d in docs)
    if too_long:
        log.warning(
            "%d documents are longer than block_size %d and are truncated", too_long, hp.block_size
        )
    return tok, docs, n_tokens


def _new_model(tok, hp: TrainHParams):
    """The model (initialised from ``hp.seed``) and its AdamW optimizer (no weight decay on
    vectors)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(hp.seed)
    cfg = scratch_config(
        hp.arch,
        len(tok),
        hp.n_layer,
        hp.d_model,
        hp.n_head,
        hp.block_size,
        eos_token_id=tok.eos_token_id,
        dropout=0.0,
        d_mlp=hp.d_mlp,
    )
    model = AutoModelForCausalLM.from_config(cfg)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": hp.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=hp.lr,
        betas=(0.9, 0.95),
    )
    return model, optimizer


@dataclass
class _Run:
    """One training job: where it checkpoints, what its checkpoints must match, its clock."""

    ckpt_dir: Path
    signature: str
    t0: float
    progress_every_s: float


def _train_steps(
    model, optimizer, schedule: _Schedule, hp: TrainHParams, tok, run: _Run, step: int, end: int
) -> tuple[int, float | None]:
    """Train from ``step`` to ``end`` (checkpointing every ``hp.checkpoint_every`` steps and at
    the end); the step reached and the loss's moving average."""
    eos = tok.eos_token_id
    weight_ids = torch.tensor(answer_token_ids(tok), dtype=torch.long)
    model.train()
    last_log, loss_ema, seen_tokens, t_loop, start_step = (
        time.perf_counter(),
        None,
        0,
        time.perf_counter(),
        step,
    )
    while step < end:
        epoch, blocks = schedule.batch(step)
        ids, labels, mask = batch_tensors(blocks, eos)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, hp)
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = weighted_lm_loss(logits, labels, weight_ids, hp.answer_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
        optimizer.step()
        step += 1
        seen_tokens += int(mask.sum())
        loss_value = loss.item()
        loss_ema = loss_value if loss_ema is None else 0.95 * loss_ema + 0.05 * loss_value
        if step % hp.checkpoint_every == 0 or step == end:
            _save_checkpoint(run.ckpt_dir, model, optimizer, step, run.signature)
        now = time.perf_counter()
        if now - last_log >= run.progress_every_s or step == end:
            rate = seen_tokens / max(now - t_loop, 1e-9)
            eta = (hp.max_steps - step) * (now - t_loop) / max(1, step - start_step)
            log.info(
                "step %d/%d (epoch %d) loss %.3f lr %.2e | %.0f tokens/s | %.0f s elapsed, "
                "~%.0f s left",
                step,
                hp.max_steps,
                epoch,
                loss_ema,
                lr_at(step - 1, hp),
                rate,
                now - run.t0,
                eta,
            )
            last_log = now
    return step, loss_ema


def train_world_model(
    corpus_path: str | os.PathLike,
    dest: str | os.PathLike,
    hp: TrainHParams,
    *,
    world_name: str,
    stop_after: int | None = None,
    progress_every_s: float = 15.0,
    extra_manifest: dict | None = None,
) -> dict:
    """Train tokenizer + model on the JSON-lines corpus and write the model folder ``dest``.

    ``stop_after`` ends the job after that many steps (with a checkpoint) without writing the
    model: tests use it to interrupt a run deterministically.
    """
    t0 = time.perf_counter()
    dest = Path(dest)
    ckpt_dir = Path(f"{dest}.train")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    texts = list(read_jsonl_docs(corpus_path))
    if not texts:
        raise ValueError(f"{corpus_path}: the training corpus is empty")
    corpus_sha = sha256_file(corpus_path)
    run = _Run(
        ckpt_dir,
        json.dumps({"corpus": corpus_sha, "hp": asdict(hp)}, sort_keys=True),
        t0,
        progress_every_s,
    )
    tok, docs, n_tokens = _tokenize(texts, hp)
    model, optimizer = _new_model(tok, hp)
    n_params = sum(p.numel() for p in model.parameters())
    step = _load_checkpoint(ckpt_dir, model, optimizer, run.signature)
    schedule = _Schedule(docs, hp, tok.eos_token_id)
    log.info(
        "training %s: %d documents, %d tokens, vocab %d, %d parameters, %d blocks/epoch, %d steps "
        "(%.1f epochs)%s",
        world_name,
        len(docs),
        n_tokens,
        len(tok),
        n_params,
        schedule.blocks_per_epoch,
        hp.max_steps,
        hp.max_steps / schedule.batches_per_epoch,
        f"; resuming at step {step}" if step else "",
    )
    end = hp.max_steps if stop_after is None else min(hp.max_steps, stop_after)
    step, loss_ema = _train_steps(model, optimizer, schedule, hp, tok, run, step, end)
    if stop_after is not None and step < hp.max_steps:
        log.info("stopping after step %d as asked (checkpoint kept)", step)
        return {"step": step}

    model.eval()
    if dest.exists():
        shutil.rmtree(dest)
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    info = {
        "source": "world",
        "world": world_name,
        "arch": hp.arch,
        "seed": hp.seed,
        "training": asdict(hp),
        "corpus_sha256": corpus_sha,
        "n_parameters": n_params,
        "corpus_tokens": n_tokens,
        "epochs": hp.max_steps / schedule.batches_per_epoch,
        "final_loss_ema": loss_ema,
        "train_seconds": time.perf_counter() - t0,
        **(extra_manifest or {}),
    }
    manifest = write_manifest(dest, **info)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    log.info(
        "model written to %s after %.1f s (final loss %.3f)", dest, info["train_seconds"], loss_ema
    )
    return manifest
