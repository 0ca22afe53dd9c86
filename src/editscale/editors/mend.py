"""MEND: model editor networks with gradient decomposition (Mitchell et al. 2022).

For a linear map W (out, in) applied at positions t, the fine-tuning gradient of a loss is
dL/dW = sum_t delta_t x_t^T: x_t the layer's input, delta_t the gradient of the loss at the layer's
output. MEND captures these rank-one factors with hooks, normalises them (per-feature mean and
standard deviation of the factors seen in training), passes [x~ ; delta~] through a small
low-rank MLP with identity initialisation (one network per matrix shape, shared by the layers of
that shape, with a learned per-layer scale and shift: the "modes"), and applies the pseudo
gradient sum_t delta~_t x~_t^T with a learned per-matrix edit learning rate.

The network follows the public code (``IDMLP`` of ``LRLinear`` layers, ``combine=True``,
``n_hidden=1``, ``rank=1920``, ``init=id``, ``shared=True``): every layer computes
``relu((u (v x) + b) * scale[mode] + shift[mode]) + x`` with u initialised to zero, so an untrained
editor passes the normalised gradient factors through unchanged.

Sign convention: here ``W <- W - lr * G`` (an untrained editor takes a normalised gradient-descent
step); the public code adds ``+lr * G`` and learns a negative lr, so its ``edit_lrs`` are negated
when a public ``mend-*.pt`` file is loaded (:func:`load_public_state`).

The edited matrices are the MLP input and output projections of the chosen layers
(:func:`edited_module_paths`; ``ArchSpec.mlp_in`` and ``mlp_out``). Where the input projection
fuses several matrices in one parameter (Phi-3's ``gate_up_proj``: gate rows, then up rows;
``ArchSpec.mlp_in_blocks``) MEND edits that parameter whole, a (2 d_mlp, d) matrix with its own
editor network shape, as it edits any named parameter: its factors are the parameter's input and
output gradient, and the gate rows change with the up rows. On the unfused families only the up
projection is edited (EasyEdit's MEND configs for Llama 3 and Qwen2.5 also name ``gate_proj``;
here it stays as it is).

An edit's update of each matrix is stored as its low-rank factors (rows = the positions with a
non-zero gradient): ``u = x~`` (r, in) and ``v = -lr * lr_scale * delta~`` (r, out).

Editor files: ``<name>.safetensors`` written by :mod:`editscale.editors.mend_training` (tensors +
a JSON manifest in the safetensors metadata and beside the file as ``<name>.safetensors.json``),
or a public ``mend-*.pt`` file (read
with ``torch.load(weights_only=True)``; a sidecar ``<file>.json`` from the download rule names the
model it is meant for and the sha256 recorded at download, checked on every load:
:mod:`editscale.editors.published`). A file made for another model, revision, set of matrices or
matrix shape is refused with :class:`EditorFileMismatch` before any edit.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from editscale.editors.base import EditorBase, EditResult, ParamUpdate
from editscale.editors.hparams import MendHParams
from editscale.io.files import atomic_path
from editscale.lm.models import arch_of, get_module, n_layers
from editscale.lm.scoring import logits_at, target_token_ids

log = logging.getLogger(__name__)

FORMAT = "editscale-mend/1"
# the order of the public code's inner_params within a layer (for its edit_lrs vector)
PUBLIC_MATRIX_ORDER = {"gpt2": ("mlp_out", "mlp_in"), "gptj": ("mlp_in", "mlp_out")}
# the order of the two matrices in a model's named_parameters(), the same in every architecture of
# editscale.lm.models.ARCHITECTURES (the input projection is defined, and listed, first)
NAMED_PARAMETER_ORDER = ("mlp_in", "mlp_out")


class EditorFileMismatch(ValueError):
    """An editor file that does not belong to this model / revision / set of matrices."""


def edited_module_paths(model, layers: list[int]) -> list[str]:
    """MLP input and output projections of ``layers``, layer by layer (in before out); a fused
    input projection (Phi-3's ``gate_up_proj``) is one matrix, edited whole."""
    spec = arch_of(model)
    return [p for layer in layers for p in (spec.mlp_in_path(layer), spec.mlp_out_path(layer))]


def module_shape(model, path: str) -> tuple[int, int]:
    """(in, out) of a linear / Conv1D module."""
    w = get_module(model, path).weight
    out_in = w.T.shape if arch_of(model).conv1d else w.shape
    return int(out_in[1]), int(out_in[0])


def shape_key(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


# --------------------------------------------------------------------------- factor statistics


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations (float64) of the rows seen so far."""

    count: int
    mean: torch.Tensor
    m2: torch.Tensor

    @classmethod
    def empty(cls, dim: int, device) -> Moments:
        zeros = torch.zeros(dim, dtype=torch.float64, device=device)
        return cls(0, zeros, zeros)

    def merged(self, rows: torch.Tensor) -> Moments:
        """These moments with ``rows`` (r, dim) added (Chan et al.'s pairwise update: the same
        mean and variance as adding the rows one at a time, as the public code does in float32)."""
        n = int(rows.shape[0])
        if n == 0:
            return self
        rows = rows.double()
        b_mean = rows.mean(0)
        b_m2 = ((rows - b_mean) ** 2).sum(0)
        total = self.count + n
        diff = b_mean - self.mean
        mean = self.mean + diff * (n / total)
        m2 = self.m2 + b_m2 + diff**2 * (self.count * n / total)
        return Moments(total, mean, m2)

    def std(self) -> torch.Tensor:
        return (self.m2 / (self.count - 1)).sqrt()


@dataclass(frozen=True)
class FactorStats:
    """What one matrix's factors are normalised with: the moments of its inputs (u) and output
    gradients (v)."""

    u: Moments
    v: Moments

    def as_float32(self) -> tuple[torch.Tensor, ...]:
        return tuple(t.float() for t in (self.u.mean, self.u.std(), self.v.mean, self.v.std()))


def running_stats(
    net: MendNetwork,
    raw: dict[str, tuple[torch.Tensor, torch.Tensor]],
    state: dict[str, FactorStats],
) -> tuple[dict[str, FactorStats], dict[str, FactorStats]]:
    """The public GradientTransform's training-mode statistics for one edit.

    Matrix by matrix in the editor's order, the statistics of the matrix's shape take its factor
    rows, and the matrix is normalised with the result (so a later layer of a shape sees the rows
    of the earlier ones). Returns ({matrix: statistics to normalise it with}, {shape: statistics
    after the edit}); ``state`` ({shape: statistics before the edit}) is not changed. Raises
    ValueError while a shape has seen fewer than two rows (its standard deviation is undefined;
    the public code raises too)."""
    state, per_matrix = dict(state), {}
    for m in net.module_paths:
        key = shape_key(net.shapes[m])
        x, d = raw[m]
        before = state.get(key) or FactorStats(
            Moments.empty(x.shape[-1], x.device), Moments.empty(d.shape[-1], d.device)
        )
        after = FactorStats(before.u.merged(x), before.v.merged(d))
        if after.u.count < 2:
            raise ValueError(
                f"MEND normalisation authors_running: {m} has seen {after.u.count} factor row(s) "
                "so far; a standard deviation needs at least 2"
            )
        state[key] = per_matrix[m] = after
    return per_matrix, state


def stats_carry(state: dict[str, FactorStats]) -> dict[str, torch.Tensor]:
    """The running statistics as the rows a trajectory file stores after each edit (float64):
    ``mend_u_<shape>`` and ``mend_v_<shape>`` (mean; m2), ``mend_count`` (one row per shape, in
    sorted shape order)."""
    carry = {"mend_count": torch.tensor([[float(state[k].u.count)] for k in sorted(state)])}
    for key, st in state.items():
        carry[f"mend_u_{key}"] = torch.stack([st.u.mean, st.u.m2])
        carry[f"mend_v_{key}"] = torch.stack([st.v.mean, st.v.m2])
    return carry


def stats_from_carry(carry: dict[str, torch.Tensor], device) -> dict[str, FactorStats]:
    """The inverse of :func:`stats_carry`."""
    keys = sorted(k[len("mend_u_") :] for k in carry if k.startswith("mend_u_"))
    counts = carry["mend_count"][:, 0].tolist()
    out = {}
    for key, count in zip(keys, counts):
        u, v = carry[f"mend_u_{key}"].to(device), carry[f"mend_v_{key}"].to(device)
        out[key] = FactorStats(Moments(int(count), u[0], u[1]), Moments(int(count), v[0], v[1]))
    return out


# --------------------------------------------------------------------------- the networks


class LowRankIdLayer(nn.Module):
    """``relu((u (v x) + b) * scale[mode] + shift[mode]) + x`` with u = 0 at initialisation."""

    def __init__(self, dim: int, rank: int, n_modes: int, generator: torch.Generator | None = None):
        super().__init__()
        mid = min(rank, dim)
        self.u = nn.Parameter(torch.zeros(dim, mid))
        self.v = nn.Parameter(torch.randn(mid, dim, generator=generator))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.mode_shift = nn.Parameter(torch.zeros(n_modes, dim))
        self.mode_scale = nn.Parameter(torch.ones(n_modes, dim))

    def forward(self, x: torch.Tensor, mode: int) -> torch.Tensor:
        pre = (x @ self.v.T) @ self.u.T + self.bias
        pre = pre * self.mode_scale[mode] + self.mode_shift[mode]
        return (
            pre.clamp(min=0) + x
        )  # clamp, not relu: the gradient at 0 is not 0 (as the public code)


class IdMlp(nn.Module):
    def __init__(self, dim: int, rank: int, n_hidden: int, n_modes: int, generator=None):
        super().__init__()
        self.layers = nn.ModuleList(
            LowRankIdLayer(dim, rank, n_modes, generator) for _ in range(n_hidden + 1)
        )

    def forward(self, x, mode: int):
        for layer in self.layers:
            x = layer(x, mode)
        return x


class GradientTransform(nn.Module):
    """Normalise the factors of one matrix shape and map them through the identity-initialised
    MLP."""

    def __init__(
        self,
        x_dim: int,
        delta_dim: int,
        rank: int,
        n_hidden: int,
        n_modes: int,
        combine: bool = True,
        generator=None,
    ):
        super().__init__()
        self.x_dim, self.delta_dim, self.combine = x_dim, delta_dim, combine
        for name, dim in (("u", x_dim), ("v", delta_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))
        if combine:
            self.mlp = IdMlp(x_dim + delta_dim, rank, n_hidden, n_modes, generator)
        else:
            self.mlp1 = IdMlp(x_dim, rank, n_hidden, n_modes, generator)
            self.mlp2 = IdMlp(delta_dim, rank, n_hidden, n_modes, generator)

    def forward(
        self, x: torch.Tensor, delta: torch.Tensor, mode: int, stats: FactorStats | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``stats``: the statistics to normalise with, instead of the file's buffers (MEND's
        ``authors_running`` normalisation)."""
        u_mean, u_std, v_mean, v_std = (
            (self.u_mean, self.u_std, self.v_mean, self.v_std)
            if stats is None
            else stats.as_float32()
        )
        x = (x.float() - u_mean) / (u_std + 1e-7)
        delta = (delta.float() - v_mean) / (v_std + 1e-7)
        if self.combine:
            out = self.mlp(torch.cat([x, delta], -1), mode)
            return out[:, : self.x_dim], out[:, self.x_dim :]
        return self.mlp1(x, mode), self.mlp2(delta, mode)


class MendNetwork(nn.Module):
    """All editor networks of one model: one transform per matrix shape + an edit lr per matrix."""

    def __init__(
        self,
        modules: list[str],
        shapes: dict[str, tuple[int, int]],
        rank: int = 1920,
        n_hidden: int = 1,
        combine: bool = True,
        edit_lr_init: float = 1e-4,
        seed: int = 0,
    ):
        super().__init__()
        self.module_paths = list(modules)
        self.shapes = {m: tuple(shapes[m]) for m in modules}
        self.arch = {"rank": rank, "n_hidden": n_hidden, "combine": combine}
        by_shape: dict[str, list[str]] = {}
        for m in modules:
            by_shape.setdefault(shape_key(self.shapes[m]), []).append(m)
        self.modes = {m: by_shape[shape_key(self.shapes[m])].index(m) for m in modules}
        gen = torch.Generator().manual_seed(seed)
        self.transforms = nn.ModuleDict(
            {
                key: GradientTransform(*self.shapes[ms[0]], rank, n_hidden, len(ms), combine, gen)
                for key, ms in by_shape.items()
            }
        )
        self.edit_lrs = nn.Parameter(torch.full((len(modules),), float(edit_lr_init)))

    def transform(
        self, module: str, x: torch.Tensor, delta: torch.Tensor, stats: FactorStats | None = None
    ):
        """(x~, delta~) of one matrix: (r, in), (r, out)."""
        key = shape_key(self.shapes[module])
        return self.transforms[key](x, delta, self.modes[module], stats)

    def factors(
        self,
        raw: dict[str, tuple[torch.Tensor, torch.Tensor]],
        lr_scale: float = 1.0,
        stats: dict[str, FactorStats] | None = None,
    ):
        """Low-rank update factors per matrix: u (r, in), v (r, out) with delta W = v^T u;
        ``stats``: per matrix, the statistics to normalise its factors with (default: the
        file's)."""
        out = {}
        for i, m in enumerate(self.module_paths):
            xt, dt = self.transform(m, *raw[m], None if stats is None else stats[m])
            out[m] = (xt, -(self.edit_lrs[i] * lr_scale) * dt)
        return out

    def manifest_arch(self) -> dict:
        return {
            **self.arch,
            "modules": self.module_paths,
            "shapes": {m: list(s) for m, s in self.shapes.items()},
        }


# --------------------------------------------------------------------------- gradient factors


def edit_batch(tok, pairs: list[tuple[str, str]], device):
    """Right-padded prompt + target[:-1] sequences with the indices of the target predictions.

    Returns (input_ids, attention_mask, rows, positions, target_ids): the logit at
    [rows[k], positions[k]] predicts target token target_ids[k] (each at its own position).
    """
    seqs, rows, pos, tgt = [], [], [], []
    for i, (prompt, target) in enumerate(pairs):
        p_ids = tok(prompt)["input_ids"]
        t_ids = target_token_ids(tok, target)
        seqs.append(p_ids + t_ids[:-1])
        rows += [i] * len(t_ids)
        pos += list(range(len(p_ids) - 1, len(p_ids) - 1 + len(t_ids)))
        tgt += t_ids
    width = max(len(s) for s in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    t = lambda v: torch.tensor(v, device=device)  # noqa: E731
    return ids.to(device), mask.to(device), t(rows), t(pos), t(tgt)


def batch_nll(logits_fn, batch) -> torch.Tensor:
    """Per-token NLL (k,) of a batch from :func:`edit_batch`; ``logits_fn(ids, mask, rows,
    pos)``."""
    ids, mask, rows, pos, tgt = batch
    logp = logits_fn(ids, mask, rows, pos).float().log_softmax(-1)
    return -logp.gather(1, tgt[:, None])[:, 0]


def model_logits(model, params: dict | None = None):
    """A ``logits_fn`` for :func:`batch_nll` running the model (with ``params`` substituted):
    :func:`editscale.lm.scoring.logits_at`, the LM head on every position."""

    def fn(ids, mask, rows, pos):
        return logits_at(model, ids, mask, rows, pos, params)

    return fn


def capture_factors(
    model, modules: list[str], batch
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """Inputs x and output gradients delta of ``modules`` for the mean target NLL of ``batch``.

    Rows (sequence positions) where either factor is all zero (padding, positions after the
    last prediction) are dropped, as the public code does. Returns ({module: (x, delta)}, loss).
    """
    xs, zs, handles = {}, {}, []

    def hook(name):
        def fn(mod, inputs, output):
            xs[name] = inputs[0].detach()
            zs[name] = torch.zeros_like(output, requires_grad=True)
            return output + zs[name]

        return fn

    for m in modules:
        handles.append(get_module(model, m).register_forward_hook(hook(m)))
    try:
        with torch.enable_grad():
            loss = batch_nll(model_logits(model), batch).mean()
            grads = torch.autograd.grad(loss, [zs[m] for m in modules])
    finally:
        for h in handles:
            h.remove()
    out = {}
    for m, g in zip(modules, grads):
        x = xs[m].reshape(-1, xs[m].shape[-1]).float()
        d = g.reshape(-1, g.shape[-1]).float()
        keep = (x != 0).any(-1) & (d != 0).any(-1)
        out[m] = (x[keep], d[keep])
    return out, loss.item()


def edited_params(
    model, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """{param name: W + delta} in storage orientation (differentiable in the factors)."""
    conv1d = arch_of(model).conv1d
    out = {}
    for m, (u, v) in factors.items():
        w = get_module(model, m).weight
        delta = u.T @ v if conv1d else v.T @ u
        out[f"{m}.weight"] = w + delta.to(w.dtype)
    return out


# --------------------------------------------------------------------------- editor files


def _public_key_map(
    state: dict, spec, modules: list[str], lr_order: str = "trained"
) -> dict[str, torch.Tensor]:
    """Map a public MEND state dict (``mend.``/``gtn.`` prefixes, ``(in, out)`` shape keys) onto
    :class:`MendNetwork`'s names. The edit learning rates pair with the matrices in the order the
    public training config lists them (``lr_order`` "trained"), or in the model's parameter order
    (mlp_in before mlp_out in each layer: "named_parameters", as the paper's authors' executor,
    kmeng01/rome's ``baselines/mend/mend_main.py``, applied them)."""
    out = {}
    pat = re.compile(r"^(?:mend|gtn)\.\((\d+), (\d+)\)\.(.+)$")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        m = pat.match(key)
        if not m:
            continue
        x_dim, d_dim, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        if rest in ("u_s", "v_s", "k"):  # running-statistics accumulators: not needed to edit
            continue
        rest = rest.replace(".mode_shift.weight", ".mode_shift").replace(
            ".mode_scale.weight", ".mode_scale"
        )
        out[f"transforms.{x_dim}x{d_dim}.{rest}"] = value
    if "edit_lrs" not in state:
        raise EditorFileMismatch("the MEND file has no edit_lrs: not a MEND editor state")
    order = PUBLIC_MATRIX_ORDER.get(spec.name)
    if order is not None and lr_order == "named_parameters":
        order = NAMED_PARAMETER_ORDER
    if order is None:
        raise EditorFileMismatch(
            f"public MEND files exist for GPT-2 and GPT-J only, not for {spec.name!r}"
        )
    layers = sorted({int(m[len(spec.layers) + 1 :].split(".")[0]) for m in modules})
    paths = {"mlp_in": spec.mlp_in_path, "mlp_out": spec.mlp_out_path}
    public_order = [paths[kind](layer) for layer in layers for kind in order]
    lrs = state["edit_lrs"].float()
    if lrs.numel() != len(modules):
        raise EditorFileMismatch(
            f"the MEND file has {lrs.numel()} edit learning rates; the configured "
            f"matrices are {len(modules)}: {modules}"
        )
    by_module = dict(zip(public_order, lrs))
    out["edit_lrs"] = -torch.stack(
        [by_module[m] for m in modules]
    )  # public: W + lr G; here W - lr G
    return out


def _load_public_pt(path: Path) -> dict:
    """``torch.load(weights_only=True)``; transformers config classes (the public files store the
    model's config object) are the only extra types allowed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle errors come in several types
        if "weights_only" not in str(err) and "Unsupported global" not in str(err):
            raise
        from transformers import GPT2Config, GPTJConfig

        log.info("%s stores a model config object: allowing GPT2Config/GPTJConfig only", path)
        with torch.serialization.safe_globals([GPT2Config, GPTJConfig]):
            return torch.load(path, map_location="cpu", weights_only=True)


def _check(what: str, found, expected, path) -> None:
    if found != expected:
        raise EditorFileMismatch(
            f"editor file {path} was made for {what} {found!r}, but this run edits "
            f"{what} {expected!r}; train or download an editor for this model"
        )


def _read_own_file(path: Path) -> tuple[dict, dict]:
    """(manifest, state) of an editor file this project wrote (safetensors)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise EditorFileMismatch(
            f"{path} is not an editscale MEND editor (format {meta.get('format')!r})"
        )
    return json.loads(meta["manifest"]), load_file(str(path))


def _read_public_file(
    path: Path, model, modules: list[str], shapes: dict, lr_order: str = "trained"
) -> tuple[dict, dict]:
    """(manifest, state) of a published editor file (the authors' pickled checkpoint), checked
    against the sha256 recorded when it was fetched and against the model's hidden size."""
    from editscale.editors.published import verify_editor_weights

    # a downloaded file must still have the bytes whose sha256 was recorded when it was fetched
    verify_editor_weights(path)
    side = Path(str(path) + ".json")
    manifest = json.loads(side.read_text()) if side.exists() else {}
    raw = _load_public_pt(path)
    raw_state = raw.get("model", raw) if isinstance(raw, dict) else raw
    cfg = raw_state.get("model_config") if isinstance(raw_state, dict) else None
    n_embd = getattr(cfg, "n_embd", None) if cfg is not None else None
    if n_embd is not None and n_embd != model.config.hidden_size:
        raise EditorFileMismatch(
            f"editor file {path} was made for a model with hidden size {n_embd}, "
            f"this model has {model.config.hidden_size}"
        )
    state = _public_key_map(raw_state, arch_of(model), modules, lr_order)
    u_key = next((k for k in state if k.endswith("layers.0.u")), None)
    if u_key is None:
        raise EditorFileMismatch(
            f"{path}: no editor network weights found (expected mend.(in, out).mlp...)"
        )
    n_hidden = max(int(re.search(r"layers\.(\d+)\.", k).group(1)) for k in state if ".layers." in k)
    manifest = {
        **manifest,
        "arch": {
            "rank": int(state[u_key].shape[1]),
            "n_hidden": n_hidden,
            "combine": any(".mlp.layers." in k for k in state),
            "modules": modules,
            "shapes": {m: list(s) for m, s in shapes.items()},
        },
        "source": "public",
    }
    return manifest, state


def load_editor(
    path, model, modules: list[str], identity: dict | None = None, lr_order: str = "trained"
) -> tuple[MendNetwork, dict]:
    """Load and check an editor file for ``model``; returns (network on the model's device,
    manifest). ``lr_order``: how a public file's edit learning rates pair with the matrices
    (:class:`MendHParams` ``public_lr_order``)."""
    path = Path(path)
    shapes = {m: module_shape(model, m) for m in modules}
    if not path.exists():
        raise FileNotFoundError(f"MEND editor file {path} not found")
    if path.suffix == ".safetensors":
        manifest, state = _read_own_file(path)
    else:
        manifest, state = _read_public_file(path, model, modules, shapes, lr_order)
    if identity is not None and "model_id" in manifest:
        _check("model", manifest["model_id"], identity["model_id"], path)
        _check("revision", manifest.get("revision"), identity["revision"], path)
    arch_info = manifest["arch"]
    _check("matrices", list(arch_info["modules"]), list(modules), path)
    for m in modules:
        _check(f"the (in, out) shape of {m}:", tuple(arch_info["shapes"][m]), shapes[m], path)
    net = MendNetwork(
        modules,
        shapes,
        rank=arch_info["rank"],
        n_hidden=arch_info["n_hidden"],
        combine=arch_info["combine"],
    )
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise EditorFileMismatch(
            f"editor file {path} does not fit this model's editor networks: "
            f"missing {sorted(missing)[:6]}, unexpected {sorted(unexpected)[:6]} "
            "(a file made for other matrix shapes?)"
        )
    device = get_module(model, modules[0]).weight.device
    return net.to(device).eval(), manifest


def save_editor(path, net: MendNetwork, manifest: dict) -> None:
    """Write the editor as safetensors (manifest in the metadata) + ``<path>.json`` (the
    manifest)."""
    from safetensors.torch import save_file

    path = Path(path)
    manifest = {**manifest, "arch": net.manifest_arch()}
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(
            state,
            str(tmp),
            metadata={"format": FORMAT, "manifest": json.dumps(manifest, sort_keys=True)},
        )
    side = Path(str(path) + ".json")
    side.write_text(json.dumps(manifest, indent=1, sort_keys=True))


# --------------------------------------------------------------------------- the editor


class MendEditor(EditorBase):
    name = "mend"
    update_kind = "low_rank"
    info_names = ("mend_nll_pre", "mend_rank")

    def __init__(self, model, tok, hparams: MendHParams, net: MendNetwork, manifest: dict):
        self.model, self.tok, self.hp, self.net, self.manifest = model, tok, hparams, net, manifest
        self.modules = list(net.module_paths)
        self.device = get_module(model, self.modules[0]).weight.device
        self.running = hparams.normalisation == "authors_running"
        self.stats: dict[str, FactorStats] = {}  # by shape, after the edits committed so far
        if self.running:  # the statistics travel with each edit (resumable bit for bit)
            self.carry_dims = {"mend_count": 1}
            for key, tr in net.transforms.items():
                self.carry_dims.update({f"mend_u_{key}": tr.x_dim, f"mend_v_{key}": tr.delta_dim})

    @property
    def edited_modules(self) -> list[str]:
        return list(self.modules)

    def state_strings(self) -> dict[str, list[str]]:
        return {}

    def hparams_dict(self) -> dict:
        return asdict(self.hp)

    def compute(self, record: dict) -> EditResult:
        rw = record["requested_rewrite"]
        batch = edit_batch(
            self.tok, [(rw["prompt"].format(rw["subject"]), rw["target_new"]["str"])], self.device
        )
        raw, nll = capture_factors(self.model, self.modules, batch)
        per_matrix, carry = None, {}
        if self.running:
            per_matrix, after = running_stats(self.net, raw, self.stats)
            carry = stats_carry(after)
        with torch.no_grad():
            facs = self.net.factors(raw, self.hp.lr_scale, per_matrix)
        updates = [
            ParamUpdate(m, u=facs[m][0].detach().float(), v=facs[m][1].detach().float())
            for m in self.modules
        ]
        info = {"mend_nll_pre": nll, "mend_rank": float(updates[0].u.shape[0])}
        return EditResult(updates, info, carry=carry)

    def commit(self, carry: dict[str, torch.Tensor]) -> None:
        """Take the running statistics after an applied edit (``authors_running``)."""
        if self.running:
            self.stats = stats_from_carry(carry, self.device)


def make_editor(
    model,
    tok,
    hparams: dict,
    second_moment: torch.Tensor | None,
    seed: int,
    state: dict | None = None,
    editor_file=None,
    identity: dict | None = None,
) -> MendEditor:
    """Build a MEND editor from a trained (or public) editor file, checked against the model."""
    hp = MendHParams.from_dict(hparams)
    if editor_file is None:
        raise ValueError(
            "MEND needs an editor file (train_mend, or public weights via editor_weights)"
        )
    modules = edited_module_paths(model, hp.layer_indices(n_layers(model)))
    net, manifest = load_editor(editor_file, model, modules, identity, hp.public_lr_order)
    log.info("MEND editor %s for %s", editor_file, modules)
    return MendEditor(model, tok, hp, net, manifest)
