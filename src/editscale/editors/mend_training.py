"""Training MEND editor networks on edit records disjoint from every trajectory (rule train_mend).

The objective is MEND's: per training edit, the editor turns the fine-tuning gradient factors
of the edit prompt + new target into an update; the loss is ``cedit`` x the NLL of the new
target after the edit (on the rewrite prompt and one of its paraphrases) + ``cloc`` x the KL
divergence of the edited model's next-token distributions from the unedited model's on a
locality document (unrelated text from the configured corpus). Defaults follow the public
config (cedit 0.1, cloc 1.0, Adam lr 1e-6 for the networks and 1e-4 for the edit learning
rates, 10 edits per optimiser step, gradient clip 100, early stopping on the validation loss).

Deliberate differences from the public trainer: the factor normalisation statistics are
computed once, before training, from the first ``norm_records`` training edits (the public code
keeps a running mean over every edit it sees; the factors come from the unedited model, so both
estimate the same moments); one edit per forward pass (the public code batches 2); the record,
paraphrase and locality document of step s are drawn from ``random.Random(f"{seed}:{s}")``
(so that a resumed run continues exactly); validation is on a fixed held-out split.

Resume: every ``checkpoint_every`` steps (a multiple of ``accumulate``) the networks, both
optimisers, the best state so far, the early-stopping counters and the history are saved to
``<out>.ckpt.pt`` (``torch.load(weights_only=True)``); a killed job continues from there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from editscale.data import corpora, counterfact
from editscale.data.editor_split import read_editor_split
from editscale.editors.hparams import MendTrainHParams
from editscale.editors.mend import (
    MendHParams,
    MendNetwork,
    batch_nll,
    capture_factors,
    edit_batch,
    edited_module_paths,
    edited_params,
    model_logits,
    module_shape,
    save_editor,
    shape_key,
)
from editscale.io import provenance
from editscale.io.files import atomic_save
from editscale.lm.models import load_model, model_identity, n_layers

log = logging.getLogger(__name__)


def records_hash(train: list[int], val: list[int], counterfact_sha256: str) -> str:
    payload = json.dumps(
        {"train": train, "val": val, "counterfact": counterfact_sha256}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class _Trainer:
    def __init__(self, model, tok, net: MendNetwork, thp: MendTrainHParams, train, val, loc_docs):
        self.model, self.tok, self.net, self.thp = model, tok, net, thp
        self.train, self.val, self.loc = train, val, loc_docs
        self.modules = net.module_paths
        self.device = next(model.parameters()).device

    # -- one edit -------------------------------------------------------------------------
    def edit_step(
        self, rec: dict, paraphrase: str | None, loc_ids: list[int], with_true: bool = False
    ):
        rw = rec["requested_rewrite"]
        prompt, new = rw["prompt"].format(rw["subject"]), rw["target_new"]["str"]
        raw, _ = capture_factors(
            self.model, self.modules, edit_batch(self.tok, [(prompt, new)], self.device)
        )
        params = edited_params(self.model, self.net.factors(raw))
        pairs = [(prompt, new)] + ([(paraphrase, new)] if paraphrase else [])
        if with_true:
            pairs.append((prompt, rw["target_true"]["str"]))
        batch = edit_batch(self.tok, pairs, self.device)
        nll = batch_nll(model_logits(self.model, params), batch)
        rows = batch[2]
        per_seq = torch.zeros(len(pairs), device=self.device).index_add(0, rows, nll)
        per_seq = per_seq / torch.bincount(rows, minlength=len(pairs))
        n_edit = len(pairs) - int(with_true)
        l_edit = nll[rows < n_edit].mean()

        ids = torch.tensor([loc_ids], device=self.device)
        mask = torch.ones_like(ids)
        rows0 = torch.zeros(len(loc_ids), dtype=torch.long, device=self.device)
        pos = torch.arange(len(loc_ids), device=self.device)
        with torch.no_grad():
            pre = model_logits(self.model)(ids, mask, rows0, pos).float().log_softmax(-1)
        post = model_logits(self.model, params)(ids, mask, rows0, pos).float().log_softmax(-1)
        l_loc = (pre.exp() * (pre - post)).sum(-1).mean()
        loss = self.thp.cedit * l_edit + self.thp.cloc * l_loc
        stats = {"loss": loss.item(), "edit_nll": l_edit.item(), "loc_kl": l_loc.item()}
        if with_true:
            stats["es"] = float(per_seq[0] < per_seq[-1])
            stats["loc_top1"] = float((pre.argmax(-1) == post.argmax(-1)).float().mean())
        return loss, stats

    def step_choices(self, step: int):
        rng = random.Random(f"{self.thp.seed}:{step}")
        n = len(self.train)
        epoch, i = divmod(step, n)
        order = list(range(n))
        random.Random(f"{self.thp.seed}:epoch{epoch}").shuffle(order)
        rec = self.train[order[i]]
        para = rec["paraphrase_prompts"]
        paraphrase = para[rng.randrange(len(para))] if para else None
        return rec, paraphrase, self.loc[rng.randrange(len(self.loc))]

    def validate(self) -> dict[str, float]:
        self.net.eval()
        sums: dict[str, float] = {}
        with torch.no_grad():
            for j, rec in enumerate(self.val):
                para = rec["paraphrase_prompts"]
                _, st = self.edit_step(
                    rec, para[0] if para else None, self.loc[j % len(self.loc)], with_true=True
                )
                for k, v in st.items():
                    sums[k] = sums.get(k, 0.0) + v
        self.net.train()
        return {k: v / len(self.val) for k, v in sums.items()}

    # -- normalisation ------------------------------------------------------------------------
    def init_normalisation(self, n_records: int) -> None:
        acc: dict[str, dict[str, list]] = {}
        for rec in self.train[:n_records]:
            rw = rec["requested_rewrite"]
            batch = edit_batch(
                self.tok,
                [(rw["prompt"].format(rw["subject"]), rw["target_new"]["str"])],
                self.device,
            )
            raw, _ = capture_factors(self.model, self.modules, batch)
            for m, (x, d) in raw.items():
                key = shape_key(self.net.shapes[m])
                a = acc.setdefault(key, {"n": 0, "xs": 0, "xq": 0, "ds": 0, "dq": 0})
                x, d = x.double(), d.double()
                a["n"] += x.shape[0]
                a["xs"] = a["xs"] + x.sum(0)
                a["xq"] = a["xq"] + (x * x).sum(0)
                a["ds"] = a["ds"] + d.sum(0)
                a["dq"] = a["dq"] + (d * d).sum(0)
        for key, a in acc.items():
            t = self.net.transforms[key]
            n = a["n"]
            if n < 2:
                raise ValueError("MEND normalisation needs at least 2 factor rows")
            for name, s, q in (("u", a["xs"], a["xq"]), ("v", a["ds"], a["dq"])):
                mean = s / n
                var = ((q - n * mean * mean) / (n - 1)).clamp(min=0)
                getattr(t, f"{name}_mean").copy_(mean.float())
                getattr(t, f"{name}_std").copy_(var.sqrt().float())


def _load_locality_docs(
    tok, corpus: dict, n_docs: int, max_tokens: int, base_dir="."
) -> list[list[int]]:
    docs = []
    for text in corpora.iter_corpus(corpus, base_dir):
        ids = tok(text)["input_ids"][:max_tokens]
        if len(ids) >= 2:
            docs.append(ids)
        if len(docs) >= n_docs:
            break
    if not docs:
        raise ValueError("the locality corpus yielded no documents of at least 2 tokens")
    return docs


def _training_records(split_path, counterfact_path) -> tuple[list[dict], list[dict], str, str]:
    """The training and validation records of the editor split, the CounterFact file's sha256
    and the hash of the records (:func:`records_hash`)."""
    split = read_editor_split(split_path)
    by_id = counterfact.records_by_case_id(counterfact.load_counterfact(counterfact_path))
    missing = [c for c in split["train"] + split["val"] if c not in by_id]
    if missing:
        raise ValueError(
            f"{split_path} names case ids absent from {counterfact_path}: {missing[:5]}"
        )
    train = [by_id[c] for c in split["train"]]
    val = [by_id[c] for c in split["val"]]
    cf_sha = provenance.sha256_file(counterfact_path)
    return train, val, cf_sha, records_hash(split["train"], split["val"], cf_sha)


def _fresh_state() -> dict:
    """The training state a checkpoint carries (step, best validation, history, time)."""
    return {
        "step": 0,
        "best_loss": math.inf,
        "best_state": None,
        "best_step": 0,
        "bad_rounds": 0,
        "history": [],
        "elapsed": 0.0,
        "untrained": None,
    }


def save_checkpoint(state: dict, path: Path) -> None:
    """The training state (``torch.save``) through a temporary file and a rename: a kill leaves
    the previous checkpoint whole."""
    atomic_save(torch.save, state, path)


@dataclass
class _Job:
    """What one training job holds: the trainer, the editor networks and their two optimizers,
    its checkpoint (valid only for inputs and settings hashing to ``key``) and its clock."""

    tr: _Trainer
    net: MendNetwork
    opt: torch.optim.Optimizer
    lr_opt: torch.optim.Optimizer
    ckpt_path: Path
    key: str
    t_start: float

    def resume(self) -> dict:
        """The state of the checkpoint when it was made for ``key`` (loading the networks and
        optimizers), else a fresh one with the normalisation statistics and the untrained
        networks' validation."""
        state = _fresh_state()
        if self.ckpt_path.exists():
            ck = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
            if ck.get("key") == self.key:
                self.net.load_state_dict(ck["net"])
                self.opt.load_state_dict(ck["opt"])
                self.lr_opt.load_state_dict(ck["lr_opt"])
                state.update({k: ck[k] for k in state})
                log.info("resuming MEND training from %s at step %d", self.ckpt_path, state["step"])
            else:
                log.warning(
                    "%s was written with other inputs or settings: starting afresh", self.ckpt_path
                )
        if state["step"] == 0:
            n_norm = min(self.tr.thp.norm_records, len(self.tr.train))
            self.tr.init_normalisation(n_norm)
            log.info("normalisation statistics from %d training edits", n_norm)
            state["untrained"] = self.tr.validate()
            log.info("validation before training: %s", _fmt(state["untrained"]))
        return state

    def save(self, state: dict) -> None:
        save_checkpoint(
            {
                "key": self.key,
                "net": self.net.state_dict(),
                "opt": self.opt.state_dict(),
                "lr_opt": self.lr_opt.state_dict(),
                **{k: v for k, v in state.items()},
                "elapsed": state["elapsed"] + time.perf_counter() - self.t_start,
            },
            self.ckpt_path,
        )

    def validate(self, state: dict, step: int) -> bool:
        """Validate at ``step``, keeping the best networks; whether to stop early."""
        v = self.tr.validate()
        state["history"].append({"step": float(step), **v})
        if v["loss"] < state["best_loss"]:
            state.update(
                best_loss=v["loss"],
                best_step=step,
                bad_rounds=0,
                best_state={k: t.detach().cpu().clone() for k, t in self.net.state_dict().items()},
            )
        else:
            state["bad_rounds"] += 1
        log.info(
            "step %d validation: %s (best loss %.4f at step %d)",
            step,
            _fmt(v),
            state["best_loss"],
            state["best_step"],
        )
        patience = self.tr.thp.early_stop_patience
        if state["bad_rounds"] >= patience:
            log.info("early stop: no lower validation loss for %d validations", patience)
            return True
        return False

    def run(self, state: dict, progress_every_s: float) -> int:
        """Train from ``state["step"]`` until ``max_steps`` or the early stop; the last step."""
        thp, net = self.tr.thp, self.net
        net.train()
        running: dict[str, float] = {}
        last_log = time.perf_counter()
        step = state["step"]
        stopped = False
        while step < thp.max_steps and not stopped:
            rec, para, loc = self.tr.step_choices(step)
            loss, st = self.tr.edit_step(rec, para, loc)
            (loss / thp.accumulate).backward()
            for k, v in st.items():
                running[k] = running.get(k, 0.0) + v
            step += 1
            if step % thp.accumulate == 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), thp.grad_clip)
                self.opt.step()
                self.lr_opt.step()
                self.opt.zero_grad()
                self.lr_opt.zero_grad()
            if step % thp.val_every == 0 or step == thp.max_steps:
                stopped = self.validate(state, step)
            state["step"] = step
            if step % thp.checkpoint_every == 0 and step % thp.accumulate == 0 and not stopped:
                self.save(state)
            now = time.perf_counter()
            if now - last_log >= progress_every_s:
                n = step % thp.accumulate or thp.accumulate
                log.info(
                    "step %d/%d: %s | lrs %s",
                    step,
                    thp.max_steps,
                    _fmt({k: v / max(n, 1) for k, v in running.items()}),
                    [round(x, 6) for x in net.edit_lrs.detach().cpu().tolist()],
                )
                last_log = now
            if step % thp.accumulate == 0:
                running = {}
        return step


def _training_key(identity: dict, rec_hash: str, thp, hp, modules: list[str]) -> str:
    """What a checkpoint must have been made with to be resumed, hashed."""
    return hashlib.sha256(
        json.dumps(
            {
                "identity": identity,
                "records": rec_hash,
                "training": asdict(thp),
                "hparams": asdict(hp),
                "modules": modules,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()


def train_mend(
    *,
    model_dir,
    counterfact_path,
    split_path,
    corpus: dict,
    out_path,
    hparams: dict,
    training: dict,
    dtype: str = "float32",
    device: str = "cpu",
    base_dir=".",
    progress_every_s: float = 30.0,
) -> dict:
    """Train (or resume training) MEND editors for one model; write ``out_path`` (.safetensors) +
    its ``.json`` manifest; returns the manifest."""
    t_start = time.perf_counter()
    thp = MendTrainHParams.from_dict(dict(training))
    hp = MendHParams.from_dict(dict(hparams))
    train, val, cf_sha, rec_hash = _training_records(split_path, counterfact_path)

    torch.manual_seed(thp.seed)
    model, tok = load_model(model_dir, dtype=dtype, device=device)
    identity = model_identity(model_dir)
    modules = edited_module_paths(model, hp.layer_indices(n_layers(model)))
    shapes = {m: module_shape(model, m) for m in modules}
    net = MendNetwork(
        modules,
        shapes,
        rank=thp.rank,
        n_hidden=thp.n_hidden,
        combine=thp.combine,
        edit_lr_init=thp.edit_lr_init,
        seed=thp.seed,
    ).to(next(model.parameters()).device)
    loc_docs = _load_locality_docs(tok, corpus, thp.loc_docs, thp.loc_max_tokens, base_dir)
    out_path = Path(out_path)
    job = _Job(
        tr=_Trainer(model, tok, net, thp, train, val, loc_docs),
        net=net,
        opt=torch.optim.Adam([p for n, p in net.named_parameters() if n != "edit_lrs"], lr=thp.lr),
        lr_opt=torch.optim.Adam([net.edit_lrs], lr=thp.lr_lr),
        ckpt_path=out_path.with_name(out_path.name + ".ckpt.pt"),
        key=_training_key(identity, rec_hash, thp, hp, modules),
        t_start=t_start,
    )
    state = job.resume()
    step = job.run(state, progress_every_s)

    net.load_state_dict(state["best_state"])
    best = next(h for h in state["history"] if int(h["step"]) == state["best_step"])
    seconds = state["elapsed"] + time.perf_counter() - t_start
    manifest = {
        **identity,
        "method": "mend",
        "hparams": asdict(hp),
        "training": asdict(thp),
        "training_records_sha256": rec_hash,
        "counterfact_sha256": cf_sha,
        "n_train": len(train),
        "n_val": len(val),
        "steps": step,
        "best_step": state["best_step"],
        "train_seconds": seconds,
        "validation": {k: v for k, v in best.items() if k != "step"},
        "validation_untrained": state["untrained"],
        "history": state["history"],
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_editor(out_path, net, manifest)
    job.ckpt_path.unlink(missing_ok=True)
    log.info(
        "MEND editor written to %s after %d steps (%.0f s): validation %s",
        out_path,
        step,
        seconds,
        _fmt(manifest["validation"]),
    )
    return manifest


def _fmt(d: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in d.items()) if d else "-"
