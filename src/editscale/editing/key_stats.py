"""Key statistics for ROME: the uncentred second moment ``C = E[k k^T]`` of an MLP's keys.

The *key* of block ``layer`` is the input of that block's MLP output projection (the matrix
ROME edits: GPT-2 ``mlp.c_proj``, GPT-J ``mlp.fc_out``, ...; see
:data:`editscale.lm.models.ARCHITECTURES`). Over a text corpus we accumulate, in float64,

* ``mom2_sum = sum_t k_t k_t^T`` over every non-padding token ``t``,
* ``mean_sum = sum_t k_t`` and ``count`` = number of tokens,

which is what ROME's ``layer_stats`` calls ``mom2`` (uncentred). Keys are produced in the
model's dtype (float32 in the paper's configuration; half precision is promoted to float32)
and each batch's ``K^T K`` is added into the float64 sum, so long runs do not drift.

Speed: the forward pass stops inside block ``layer`` (a pre-hook on the MLP output projection
captures its input and raises a private exception), so no block above it, nor the LM head,
ever runs. Documents are tokenised with truncation to ``max_doc_tokens``, a buffer of them is
sorted by length and packed into right-padded batches with ``rows x max_len <= batch_tokens``;
padded positions are dropped before accumulating.

Resumability: every ``checkpoint_every_docs`` documents the running sums are written to
``<out>.partial.h5`` (written to a temporary name, then renamed, so a kill cannot leave a
corrupt checkpoint). A new run with the same settings continues from it, skipping the documents
already consumed; because batches never straddle a checkpoint boundary, a resumed run gives
bitwise the same sums as an uninterrupted one. The final file is written as ``<out>.tmp`` and
renamed to ``<out>``; the checkpoint is then deleted.

Early stop on convergence (optional, :class:`Convergence`): every ``check_every_docs``
documents, ``u = C^-1 k`` is solved for a fixed set of probe keys ``k`` (the keys of CounterFact
subjects, :func:`subject_keys`). When the largest relative change of ``u`` since the previous
check stays below ``tolerance`` for ``patience`` checks in a row (and at least ``min_docs``
documents were read), the sums so far are written as the final file. The check history goes
into the file's attributes; the last ``u`` and the history go into the checkpoint, so a resumed
run stops at the same document as an uninterrupted one, with the same sums.

Published statistics: :func:`import_published_second_moment` converts ROME/MEMIT's ``.npz``
files (rule import_stats) into the same layout (``mean_sum`` NaN: they carry no mean).

Final HDF5 layout: datasets ``mom2_sum`` (float64 [d, d], gzip) and ``mean_sum`` (float64 [d]);
attributes ``count``, ``n_docs``, ``layer``, ``module``, ``model_id``, ``revision``, ``corpus``,
``corpus_fingerprint``, ``dtype``, ``max_doc_tokens`` and the caller's extra ``attrs``
(non-scalars stored as JSON, listed in the attribute ``_json_attrs``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator

import h5py
import numpy as np
import torch
from torch import nn

from editscale.io.h5 import DamagedFileError, open_verified, read_dataset, write_sealed
from editscale.lm.models import (
    arch_of,
    get_module,
    model_attention_mask,
    right_padded,
    weight_out_in,
)

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial.h5"
FORMAT_VERSION = 1
# Documents tokenised and length-sorted together. Batches never cross a multiple of this (nor a
# checkpoint), which makes the batch composition a function of the document index only.
SORT_BUFFER_DOCS = 1000
# Attributes the caller should provide (through ``attrs``); recorded as "unknown" otherwise.
IDENTITY_ATTRS = ("model_id", "revision", "corpus", "corpus_fingerprint")
# Attributes computed here; ``attrs`` may repeat them only with the same value.
_COMPUTED_ATTRS = (
    "count",
    "n_docs",
    "n_docs_requested",
    "n_empty_docs",
    "layer",
    "module",
    "dtype",
    "accumulation_dtype",
    "max_doc_tokens",
    "d_in",
    "format_version",
)


class StatsMismatchError(ValueError):
    """A statistics file was computed for another model, revision, layer, corpus, ..."""


class _StopForward(Exception):
    """Raised from the capture hook to abandon the forward pass above the edited layer."""


@dataclass
class _Accumulator:
    """Running sums of one statistics computation (on the model's device)."""

    mom2_sum: torch.Tensor
    mean_sum: torch.Tensor
    count: int = 0
    docs_done: int = 0
    n_empty_docs: int = 0
    # convergence checks: u = C^-1 k of the probes at the last check, [(docs, tokens, change)],
    # consecutive checks below the tolerance, and whether the run stopped on convergence
    probe_u: torch.Tensor | None = None
    history: list = field(default_factory=list)
    streak: int = 0
    converged: bool = False


@dataclass(frozen=True)
class Convergence:
    """Stop the statistics early once ``u = C^-1 k`` of fixed probe keys has settled.

    ``probes``: [n_probes, d_in] keys (float64; :func:`subject_keys`). The change at a check is
    ``max_i ||u_i - u_i'|| / ||u_i||`` against the previous check's ``u_i'``; the run stops after
    ``patience`` consecutive changes below ``tolerance``, once ``min_docs`` documents were read.
    ``probe_source`` describes the probes in the file's attributes.
    """

    probes: torch.Tensor
    tolerance: float
    check_every_docs: int
    patience: int = 2
    min_docs: int = 0
    probe_source: str = ""

    def __post_init__(self) -> None:
        if self.probes.ndim != 2 or self.probes.shape[0] < 1:
            raise ValueError(
                f"convergence probes must be [n_probes >= 1, d_in], got {tuple(self.probes.shape)}"
            )
        if (
            not self.tolerance > 0
            or self.check_every_docs < 1
            or self.patience < 1
            or self.min_docs < 0
        ):
            raise ValueError(
                "convergence: tolerance must be > 0, check_every_docs and patience >= 1, "
                "min_docs >= 0"
            )

    def describe(self) -> dict[str, Any]:
        """The settings as recorded in the file (and in the checkpoint's signature)."""
        digest = hashlib.sha256(self.probes.to(torch.float64).cpu().numpy().tobytes()).hexdigest()
        return {
            "tolerance": float(self.tolerance),
            "check_every_docs": int(self.check_every_docs),
            "patience": int(self.patience),
            "min_docs": int(self.min_docs),
            "n_probes": int(self.probes.shape[0]),
            "probe_source": self.probe_source,
            "probe_sha256": digest,
        }


def probe_solutions(
    mom2_sum: torch.Tensor, count: int, probes: torch.Tensor
) -> torch.Tensor | None:
    """``C^-1 k`` for every probe (rows of the result), ``C = mom2_sum / count``; None while
    ``C`` is singular (fewer tokens than dimensions, dead units)."""
    if count < mom2_sum.shape[0]:  # rank(C) <= count: singular, however it rounds
        return None
    c = (mom2_sum / count).to(torch.float64)
    sol, info = torch.linalg.solve_ex(c, probes.to(c).T)
    if int(info) != 0 or not torch.isfinite(sol).all():
        return None
    return sol.T


def solution_change(new: torch.Tensor | None, old: torch.Tensor | None) -> float:
    """Largest relative change ``||u - u'|| / ||u||`` over the probes (inf without both)."""
    if new is None or old is None:
        return float("inf")
    return float(((new - old).norm(dim=1) / new.norm(dim=1).clamp_min(1e-300)).max())


@dataclass
class _Progress:
    """Periodic progress logging."""

    n_docs: int
    every_s: float
    start_tokens: int
    t0: float = field(default_factory=time.monotonic)
    last: float = field(default_factory=time.monotonic)

    def maybe_log(self, acc: _Accumulator, docs_done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        rate = (acc.count - self.start_tokens) / max(now - self.t0, 1e-9)
        log.info(
            "key statistics: %d / %d docs, %d tokens, %.0f tokens/s",
            docs_done,
            self.n_docs,
            acc.count,
            rate,
        )


# --------------------------------------------------------------------------------------------
# HDF5 helpers


def _attr_value(value: Any) -> tuple[Any, bool]:
    """An HDF5-storable attribute value, and whether it was JSON-encoded."""
    if isinstance(value, os.PathLike):
        return os.fspath(value), False
    if isinstance(value, (str, bool, int, float, np.generic)):
        return value, False
    return json.dumps(value, sort_keys=True, default=str), True


def _write_attrs(h5: h5py.File, attrs: dict[str, Any]) -> None:
    json_keys = []
    for key, value in attrs.items():
        stored, is_json = _attr_value(value)
        h5.attrs[key] = stored
        if is_json:
            json_keys.append(key)
    h5.attrs["_json_attrs"] = json.dumps(sorted(json_keys))


def _read_attrs(h5: h5py.File) -> dict[str, Any]:
    json_keys = set(json.loads(h5.attrs.get("_json_attrs", "[]")))
    out: dict[str, Any] = {}
    for key, value in h5.attrs.items():
        if key == "_json_attrs":
            continue
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, np.generic):
            value = value.item()
        if key in json_keys:
            value = json.loads(value)
        out[key] = value
    return out


def _write_h5_atomic(path: str, acc: _Accumulator, attrs: dict[str, Any], *, final: bool) -> None:
    """Write sums + attributes to ``path`` through a temporary file and a rename (a checkpoint
    also keeps the last convergence check's ``probe_u``)."""
    compression = dict(compression="gzip", compression_opts=4, shuffle=True) if final else {}
    with write_sealed(path) as h5:
        h5.create_dataset("mom2_sum", data=acc.mom2_sum.cpu().numpy(), **compression)
        h5.create_dataset("mean_sum", data=acc.mean_sum.cpu().numpy(), **compression)
        if not final and acc.probe_u is not None:
            h5.create_dataset("probe_u", data=acc.probe_u.cpu().numpy())
        _write_attrs(h5, attrs)


def stats_attrs(path: str | os.PathLike) -> dict:
    """The attributes of a statistics file (JSON-encoded ones decoded, numpy scalars unwrapped)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"key statistics file {path} does not exist")
    with open_verified(path) as h5:
        return _read_attrs(h5)


def load_key_second_moment(path: str | os.PathLike, *, expect: dict) -> torch.Tensor:
    """``C = mom2_sum / count`` (float64, CPU) after checking the file's provenance.

    Every key of ``expect`` (e.g. ``model_id``, ``revision``, ``layer``) must equal the file's
    attribute of that name; otherwise :class:`StatsMismatchError` names the file, the attribute,
    and both values.
    """
    attrs = stats_attrs(path)
    for key, expected in expect.items():
        if key not in attrs:
            raise StatsMismatchError(
                f"statistics {path} have no attribute {key!r} (expected {key} {expected!r}); "
                f"recompute them"
            )
        found = attrs[key]
        if found != expected:
            raise StatsMismatchError(
                f"statistics {path} were computed for {key} {found!r}, but {key} {expected!r} "
                f"is being edited (attribute {key!r}: expected {expected!r}, found {found!r})"
            )
    count = int(attrs.get("count", 0))
    if count <= 0:
        raise ValueError(f"statistics {path} hold no tokens (count={count})")
    with open_verified(path) as h5:
        mom2 = torch.from_numpy(np.asarray(read_dataset(h5["mom2_sum"]), dtype=np.float64))
    return mom2 / count


# --------------------------------------------------------------------------------------------
# Batching


def pack_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Group document indices into batches with ``rows x longest <= batch_tokens``.

    Documents are taken longest first (ties by index, so the packing is deterministic); empty
    documents are left out. A document longer than ``batch_tokens`` gets a batch of its own.
    """
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        if current and (len(current) + 1) * longest > batch_tokens:
            batches.append(current)
            current = []
        if not current:
            longest = lengths[i]
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _next_boundary(
    done: int, n_docs: int, checkpoint_every: int, check_every: int | None = None
) -> int:
    """End of the document chunk starting at ``done`` (a multiple of the buffer, the checkpoint
    interval or the convergence-check interval)."""
    ends = [
        (done // SORT_BUFFER_DOCS + 1) * SORT_BUFFER_DOCS,
        (done // checkpoint_every + 1) * checkpoint_every,
        n_docs,
    ]
    if check_every:
        ends.append((done // check_every + 1) * check_every)
    return min(ends)


# --------------------------------------------------------------------------------------------
# Forward pass


def _model_max_positions(model: nn.Module) -> int | None:
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _mlp_out_inputs(
    model: nn.Module, target: nn.Module, ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Inputs of ``target`` (a module of ``model``) at every position, [rows, length, d_in];
    stops the forward there."""
    base = get_module(model, arch_of(model).base)
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append(args[0] if args else next(iter(kwargs.values())))
        raise _StopForward

    handle = target.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        base(
            input_ids=ids,
            attention_mask=model_attention_mask(model, mask, ids.shape[1], base.dtype),
            use_cache=False,
        )
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError("the MLP output projection was not called during the forward pass")
    return captured[0]


def _capture_keys(
    model: nn.Module, target: nn.Module, ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Inputs of ``target`` at the non-padding positions, [n_tokens, d_in]."""
    return _mlp_out_inputs(model, target, ids, mask)[mask.bool()]


def _accumulate(acc: _Accumulator, keys: torch.Tensor) -> None:
    if keys.dtype not in (torch.float32, torch.float64):
        keys = keys.float()
    acc.mom2_sum.add_(keys.T @ keys)  # float32 product promoted element-wise, no float64 copy
    acc.mean_sum.add_(keys.sum(dim=0, dtype=torch.float64))
    acc.count += int(keys.shape[0])


def _process_chunk(
    texts: list[str],
    tok,
    model: nn.Module,
    target: nn.Module,
    acc: _Accumulator,
    *,
    max_len: int,
    batch_tokens: int,
    pad_id: int,
    device: torch.device,
    progress: _Progress,
) -> None:
    """Tokenise, length-sort, batch and accumulate one chunk of documents."""
    token_lists = tok(texts, truncation=True, max_length=max_len)["input_ids"]
    lengths = [len(t) for t in token_lists]
    n_empty = sum(1 for n in lengths if n == 0)
    acc.n_empty_docs += n_empty
    done_in_chunk = n_empty
    for batch in pack_batches(lengths, batch_tokens):
        ids, mask = right_padded([token_lists[i] for i in batch], pad_id, device)
        _accumulate(acc, _capture_keys(model, target, ids, mask))
        done_in_chunk += len(batch)
        progress.maybe_log(acc, acc.docs_done + done_in_chunk)


# --------------------------------------------------------------------------------------------
# Checkpoints


def _signature(
    attrs: dict[str, Any],
    n_docs: int,
    batch_tokens: int,
    checkpoint_every: int,
    convergence: Convergence | None = None,
) -> str:
    """What a checkpoint must share with the current run to be resumed (JSON)."""
    sig = dict(
        attrs,
        n_docs_requested=n_docs,
        batch_tokens=batch_tokens,
        checkpoint_every_docs=checkpoint_every,
        sort_buffer_docs=SORT_BUFFER_DOCS,
        format_version=FORMAT_VERSION,
    )
    if convergence is not None:
        sig["convergence"] = convergence.describe()
    return json.dumps(sig, sort_keys=True, default=str)


def _load_partial(partial: str, signature: str, acc: _Accumulator) -> bool:
    """Fill ``acc`` from a matching checkpoint; False (and a warning) when none can be used."""
    if not os.path.exists(partial):
        return False
    try:
        with open_verified(partial) as h5:
            attrs = _read_attrs(h5)
            if attrs.get("signature") != signature:
                log.warning("ignoring checkpoint %s: it was written with other settings", partial)
                return False
            mom2 = torch.from_numpy(np.asarray(h5["mom2_sum"], dtype=np.float64))
            mean = torch.from_numpy(np.asarray(h5["mean_sum"], dtype=np.float64))
            probe_u = (
                torch.from_numpy(np.asarray(h5["probe_u"], dtype=np.float64))
                if "probe_u" in h5
                else None
            )
    except (OSError, KeyError, DamagedFileError) as err:
        log.warning("ignoring unreadable checkpoint %s: %s", partial, err)
        return False
    if mom2.shape != acc.mom2_sum.shape:
        log.warning(
            "ignoring checkpoint %s: shape %s != %s",
            partial,
            tuple(mom2.shape),
            tuple(acc.mom2_sum.shape),
        )
        return False
    acc.mom2_sum.copy_(mom2)
    acc.mean_sum.copy_(mean)
    acc.count = int(attrs["count"])
    acc.docs_done = int(attrs["docs_done"])
    acc.n_empty_docs = int(attrs["n_empty_docs"])
    acc.probe_u = probe_u.to(acc.mom2_sum.device) if probe_u is not None else None
    acc.history = [list(h) for h in attrs.get("convergence_history", [])]
    acc.streak = int(attrs.get("convergence_streak", 0))
    return True


def _write_partial(partial: str, acc: _Accumulator, signature: str) -> None:
    _write_h5_atomic(
        partial,
        acc,
        {
            "signature": signature,
            "count": acc.count,
            "docs_done": acc.docs_done,
            "n_tokens": acc.count,
            "n_empty_docs": acc.n_empty_docs,
            "convergence_history": acc.history,
            "convergence_streak": acc.streak,
        },
        final=False,
    )
    log.info(
        "key statistics checkpoint: %d docs, %d tokens -> %s", acc.docs_done, acc.count, partial
    )


# --------------------------------------------------------------------------------------------
# Public entry point


def _run_attrs(
    model: nn.Module, layer: int, module_path: str, d_in: int, max_len: int, attrs: dict | None
) -> dict[str, Any]:
    """Identity attributes of a run: the caller's ``attrs`` plus the computed ones."""
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    computed = {
        "layer": int(layer),
        "module": module_path,
        "dtype": dtype,
        "accumulation_dtype": "float64",
        "max_doc_tokens": int(max_len),
        "d_in": int(d_in),
        "format_version": FORMAT_VERSION,
    }
    extra = dict(attrs or {})
    for key in _COMPUTED_ATTRS:
        if key in extra and key in computed and extra[key] != computed[key]:
            raise ValueError(
                f"attrs[{key!r}]={extra[key]!r} contradicts the computed {computed[key]!r}"
            )
        if key in extra and key not in computed:
            raise ValueError(
                f"attrs may not set {key!r}: it is computed by compute_key_second_moment"
            )
    missing = [k for k in IDENTITY_ATTRS if k not in extra]
    if missing:
        log.warning("key statistics: attrs lack %s; recorded as 'unknown'", ", ".join(missing))
    out: dict[str, Any] = {k: "unknown" for k in IDENTITY_ATTRS}
    out.update(extra)
    out.update(computed)
    return out


def compute_key_second_moment(
    model: nn.Module,
    tok,
    layer: int,
    docs: Iterable[str],
    out_path: str | os.PathLike,
    *,
    n_docs: int,
    max_doc_tokens: int = 1024,
    batch_tokens: int = 8192,
    checkpoint_every_docs: int = 1000,
    attrs: dict | None = None,
    progress_every_s: float = 30.0,
    convergence: Convergence | None = None,
) -> None:
    """Accumulate ``sum k k^T`` of block ``layer``'s MLP-output keys over ``n_docs`` documents.

    ``docs`` yields document texts in a fixed order (it is re-iterated from the start on resume).
    Each document is truncated to ``max_doc_tokens`` tokens (and to the model's maximum number of
    positions). The result is written to ``out_path`` (see the module docstring for the layout);
    ``attrs`` should carry ``model_id``, ``revision``, ``corpus`` and ``corpus_fingerprint``.
    With ``convergence``, reading stops early once the probes' ``C^-1 k`` has settled (module
    docstring); ``n_docs`` is then an upper bound.
    """
    if n_docs < 1 or batch_tokens < 1 or checkpoint_every_docs < 1 or max_doc_tokens < 1:
        raise ValueError(
            "n_docs, batch_tokens, checkpoint_every_docs and max_doc_tokens must be >= 1"
        )
    module_path, target, d_in = _key_module(model, layer)
    device = next(model.parameters()).device
    max_len = _max_doc_len(model, max_doc_tokens)
    run_attrs = _run_attrs(model, layer, module_path, d_in, max_len, attrs)
    _check_probe_width(convergence, d_in, module_path)
    signature = _signature(run_attrs, n_docs, batch_tokens, checkpoint_every_docs, convergence)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    out_path = os.fspath(out_path)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    partial = out_path + PARTIAL_SUFFIX
    acc = _Accumulator(
        mom2_sum=torch.zeros(d_in, d_in, dtype=torch.float64, device=device),
        mean_sum=torch.zeros(d_in, dtype=torch.float64, device=device),
    )
    resumed = _load_partial(partial, signature, acc)
    log.info(
        "key statistics of %s (d_in=%d) over %d docs (max %d tokens each) on %s -> %s%s",
        module_path,
        d_in,
        n_docs,
        max_len,
        device,
        out_path,
        f"; resuming after {acc.docs_done} docs" if resumed else "",
    )

    doc_iter = _skip_done_docs(docs, acc.docs_done, partial)
    progress = _Progress(n_docs=n_docs, every_s=progress_every_s, start_tokens=acc.count)
    with _eval_mode(model), torch.inference_mode():
        _consume(
            doc_iter,
            tok,
            model,
            target,
            acc,
            progress,
            partial,
            signature,
            n_docs=n_docs,
            max_len=max_len,
            batch_tokens=batch_tokens,
            checkpoint_every=checkpoint_every_docs,
            pad_id=pad_id,
            device=device,
            convergence=convergence,
        )
    _write_final(out_path, acc, run_attrs, n_docs, convergence)
    progress.maybe_log(acc, acc.docs_done, force=True)
    log.info(
        "key statistics written to %s (%d docs, %d tokens)", out_path, acc.docs_done, acc.count
    )


def _key_module(model: nn.Module, layer: int) -> tuple[str, nn.Module, int]:
    """Block ``layer``'s MLP output projection: its path, the module and its input width."""
    spec = arch_of(model)
    module_path = spec.mlp_out_path(layer)
    target = get_module(model, module_path)
    d_in = int(weight_out_in(target.weight, spec).shape[1])
    return module_path, target, d_in


def _check_probe_width(convergence: Convergence | None, d_in: int, module_path: str) -> None:
    if convergence is not None and convergence.probes.shape[1] != d_in:
        raise ValueError(
            f"convergence probes have width {convergence.probes.shape[1]}, but {module_path} "
            f"takes {d_in} inputs"
        )


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode for the block, back in its former mode after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _skip_done_docs(docs: Iterable[str], n_done: int, partial: str) -> Iterator[str]:
    """The documents after the ``n_done`` a checkpoint already consumed."""
    doc_iter: Iterator[str] = iter(docs)
    skipped = sum(1 for _ in islice(doc_iter, n_done))
    if skipped < n_done:
        raise ValueError(
            f"checkpoint {partial} consumed {n_done} documents but the corpus "
            f"has only {skipped}; delete the checkpoint"
        )
    return doc_iter


def _max_doc_len(model: nn.Module, max_doc_tokens: int) -> int:
    """``max_doc_tokens``, or the model's number of positions when it has fewer (a warning)."""
    max_pos = _model_max_positions(model)
    max_len = min(max_doc_tokens, max_pos) if max_pos else max_doc_tokens
    if max_len < max_doc_tokens:
        log.warning(
            "max_doc_tokens=%d exceeds the model's %d positions; using %d",
            max_doc_tokens,
            max_pos,
            max_len,
        )
    return max_len


def _write_final(
    out_path: str,
    acc: _Accumulator,
    run_attrs: dict[str, Any],
    n_docs: int,
    convergence: Convergence | None,
) -> None:
    """Write the finished sums to ``out_path`` and remove the checkpoint (an error when no token
    was read; a warning when the corpus ended early)."""
    partial = out_path + PARTIAL_SUFFIX
    if acc.docs_done < n_docs and not acc.converged:
        log.warning(
            "corpus ended after %d documents (%d requested); statistics use %d documents",
            acc.docs_done,
            n_docs,
            acc.docs_done,
        )
    if acc.count == 0:
        raise ValueError(
            f"no tokens in the {acc.docs_done} documents read: nothing to write to {out_path}"
        )
    final_attrs = dict(
        run_attrs,
        count=acc.count,
        n_docs=acc.docs_done,
        n_docs_requested=n_docs,
        n_empty_docs=acc.n_empty_docs,
    )
    if convergence is not None:
        final_attrs.update(
            convergence=convergence.describe(),
            convergence_history=acc.history,
            converged=acc.converged,
        )
    _write_h5_atomic(out_path, acc, final_attrs, final=True)
    if os.path.exists(partial):
        os.remove(partial)


def _consume(
    doc_iter: Iterator[str],
    tok,
    model: nn.Module,
    target: nn.Module,
    acc: _Accumulator,
    progress: _Progress,
    partial: str,
    signature: str,
    *,
    n_docs: int,
    max_len: int,
    batch_tokens: int,
    checkpoint_every: int,
    pad_id: int,
    device: torch.device,
    convergence: Convergence | None = None,
) -> None:
    """Read the corpus chunk by chunk until ``n_docs`` documents, its end or convergence,
    checkpointing."""
    check_every = convergence.check_every_docs if convergence is not None else None
    while acc.docs_done < n_docs:
        wanted = (
            _next_boundary(acc.docs_done, n_docs, checkpoint_every, check_every) - acc.docs_done
        )
        texts = list(islice(doc_iter, wanted))
        if texts:
            _process_chunk(
                texts,
                tok,
                model,
                target,
                acc,
                max_len=max_len,
                batch_tokens=batch_tokens,
                pad_id=pad_id,
                device=device,
                progress=progress,
            )
            acc.docs_done += len(texts)
        if len(texts) < wanted:
            return
        if (
            check_every
            and acc.docs_done % check_every == 0
            and _check_convergence(acc, convergence)
        ):
            return
        if acc.docs_done % checkpoint_every == 0 and acc.docs_done < n_docs:
            _write_partial(partial, acc, signature)


def _check_convergence(acc: _Accumulator, conv: Convergence) -> bool:
    """One convergence check (updates ``acc``); True when reading should stop."""
    u = probe_solutions(acc.mom2_sum, acc.count, conv.probes.to(acc.mom2_sum.device))
    change = solution_change(u, acc.probe_u)
    acc.probe_u = u
    acc.streak = acc.streak + 1 if change < conv.tolerance else 0
    acc.history.append([acc.docs_done, acc.count, change if np.isfinite(change) else None])
    acc.converged = acc.streak >= conv.patience and acc.docs_done >= conv.min_docs
    log.info(
        "key statistics convergence check at %d docs (%d tokens): max relative change of C^-1 k "
        "%.3g (tolerance %g, %d/%d below)%s",
        acc.docs_done,
        acc.count,
        change,
        conv.tolerance,
        acc.streak,
        conv.patience,
        "; converged, stopping" if acc.converged else "",
    )
    return acc.converged


def subject_keys(
    model: nn.Module, tok, layer: int, prompts: list[tuple[str, int]], batch_size: int = 16
) -> torch.Tensor:
    """Keys of block ``layer``'s MLP output projection at the last subject token of each prompt.

    ``prompts``: (text, index of the subject's last character + 1), as ROME's lookup takes
    them. Returns [len(prompts), d_in] float64 on the model's device (the convergence probes).
    """
    from editscale.editors.prompts import build_prompts

    spec = arch_of(model)
    target = get_module(model, spec.mlp_out_path(layer))
    device = next(model.parameters()).device
    out = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                enc, lookup = build_prompts(tok, prompts[start : start + batch_size])
                ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
                keys = _mlp_out_inputs(model, target, ids, mask)
                rows = torch.arange(len(lookup), device=device)
                out.append(keys[rows, lookup.to(device)].to(torch.float64))
    finally:
        model.train(was_training)
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# Published statistics (ROME / MEMIT's precomputed .npz files)

# ROME's layer_stats names its cache <module>_<precision>_<stats>[_<n samples>].npz, under
# <model name with '/' -> '_'>/<data set>_stats/ (e.g. gpt2-xl/wikipedia_stats/
# transformer.h.17.mlp.c_proj_float32_mom2_100000.npz).
_PUBLISHED_NAME = re.compile(
    r"^(?P<module>.+?)_(?P<precision>float16|bfloat16|float32|float64)_(?P<stats>[a-z0-9_-]+?)(?:_(?P<n>\d+))?\.npz$"
)


def published_name_parts(url_or_path: str) -> dict[str, str | None]:
    """``module``, ``precision``, ``n_samples``, ``model`` and ``dataset`` read from a published
    statistics file's name and folders (None where the name does not follow ROME's layout)."""
    parts = [p for p in re.split(r"[/\\]", url_or_path.split("?", 1)[0]) if p]
    m = _PUBLISHED_NAME.match(parts[-1]) if parts else None
    if m is None:
        raise StatsMismatchError(
            f"{url_or_path}: not a ROME statistics file name (<module>_<precision>_mom2[_<n>].npz, "
            "e.g. transformer.h.17.mlp.c_proj_float32_mom2_100000.npz)"
        )
    if "mom2" not in m["stats"].split("-"):
        raise StatsMismatchError(
            f"{url_or_path}: holds statistics {m['stats']!r}, not the second moment mom2"
        )
    model = dataset = None
    if len(parts) >= 3 and parts[-2].endswith("_stats"):
        dataset, model = parts[-2].removesuffix("_stats"), parts[-3]
    return {
        "module": m["module"],
        "precision": m["precision"],
        "n_samples": m["n"],
        "model": model,
        "dataset": dataset,
    }


def _check_published_name(
    parts: dict, source: str, layer: int, module_path: str, hub_name: str | None
) -> None:
    """The published file's name (``parts``: :func:`published_name_parts`) names this layer's
    module and, given ``hub_name``, this model."""
    if parts["module"] != module_path:
        raise StatsMismatchError(
            f"{source}: statistics of module {parts['module']}, but layer {layer} of this "
            f"model is {module_path}"
        )
    if (
        hub_name is not None
        and parts["model"] is not None
        and not parts["model"].lower().endswith(hub_name.rsplit("/", 1)[-1].lower())
    ):
        raise StatsMismatchError(
            f"{source}: statistics of model {parts['model']!r}, but {hub_name!r} is being edited"
        )


def _read_published_npz(npz_path, source: str) -> tuple[np.ndarray, int, int | None]:
    """The second moment (float64), its token count and its sample size (None when absent) of
    a published ``.npz`` (read without pickles)."""
    with np.load(npz_path, allow_pickle=False) as z:
        keys = set(z.files)
        mom2_key = next((k for k in ("mom2.mom2", "mom2") if k in keys), None)
        count_key = next((k for k in ("mom2.count", "count") if k in keys), None)
        if mom2_key is None or count_key is None:
            raise StatsMismatchError(
                f"{npz_path} ({source}): no second moment in it (arrays: {sorted(keys)})"
            )
        mom2 = np.asarray(z[mom2_key], dtype=np.float64)
        count = int(z[count_key])
        sample_size = (
            int(z["sample_size"])
            if "sample_size" in keys
            and z["sample_size"].ndim == 0
            and np.issubdtype(z["sample_size"].dtype, np.integer)
            else None
        )
    return mom2, count, sample_size


def import_published_second_moment(
    npz_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    model: nn.Module,
    layer: int,
    source: str,
    hub_name: str | None = None,
    attrs: dict | None = None,
) -> dict[str, Any]:
    """Convert ROME/MEMIT's published ``mom2`` statistics (``source``: the URL or file name the
    ``.npz`` came from) into this module's statistics file for block ``layer`` of ``model``.

    Refused (:class:`StatsMismatchError`, naming the file) when the file's name names another module
    than this layer's MLP output projection, another model than ``hub_name`` (the hub repo id:
    ROME's folder, e.g. ``EleutherAI_gpt-j-6B``, must end with its name, case aside), or when its
    matrix does not have the module's input width. The file is read with ``allow_pickle=False``; the
    attributes record the source, the layer, the module, the sample size and the caller's ``attrs``
    (the model's identity). Returns the attributes written.
    """
    spec = arch_of(model)
    module_path = spec.mlp_out_path(layer)
    d_in = int(weight_out_in(get_module(model, module_path).weight, spec).shape[1])
    parts = published_name_parts(source)
    _check_published_name(parts, source, layer, module_path, hub_name)
    mom2, count, sample_size = _read_published_npz(npz_path, source)
    if mom2.shape != (d_in, d_in):
        raise StatsMismatchError(
            f"{source}: a {mom2.shape[0]}x{mom2.shape[-1]} second moment, but {module_path} "
            f"of this model takes {d_in} inputs: made for another model"
        )
    if count <= 0 or not np.isfinite(mom2).all():
        raise StatsMismatchError(
            f"{source}: count {count}, or non-finite entries: not usable statistics"
        )
    out = {k: "unknown" for k in IDENTITY_ATTRS}
    out.update(attrs or {})
    out.update(
        {
            "layer": int(layer),
            "module": module_path,
            "d_in": d_in,
            "dtype": parts["precision"],
            "accumulation_dtype": parts["precision"],
            "format_version": FORMAT_VERSION,
            "count": count,
            "n_docs": sample_size if sample_size is not None else int(parts["n_samples"] or 0),
            "published_source": source,
            "published_model": parts["model"] or "unknown",
            "published_dataset": parts["dataset"] or "unknown",
        }
    )
    acc = _Accumulator(
        mom2_sum=torch.from_numpy(mom2),
        mean_sum=torch.full((d_in,), float("nan"), dtype=torch.float64),
    )
    out_path = os.fspath(out_path)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    _write_h5_atomic(out_path, acc, out, final=True)
    log.info(
        "imported published statistics %s (%d tokens, module %s) -> %s",
        source,
        count,
        module_path,
        out_path,
    )
    return out
