"""Model loading, download with provenance manifests, and what the package runs beside a model's
own forward: its attention masks, logits, key/value caches and upper blocks.

Every architecture-specific name and behaviour lives in :data:`ARCHITECTURES`
(:mod:`editscale.lm.architectures`, re-exported here); the rest of the package asks that table
(never branches on strings). Weight orientation: GPT-2 stores its MLP matrices as
``Conv1D`` with weight shape ``(in, out)``; the others use ``nn.Linear`` with ``(out, in)``.
All edit code works in the (out, in) convention through :func:`weight_out_in`.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from editscale.io.provenance import identity_from_manifest, sha256_file
from editscale.lm.architectures import (  # noqa: F401 (the table's names, re-exported)
    ARCHITECTURES,
    ArchSpec,
    UnsupportedArchitecture,
    spec_for,
    spec_of_folder,
)
from editscale.lm.head import sliced

log = logging.getLogger(__name__)

MANIFEST_NAME = "editscale_manifest.json"


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def arch_of(model: nn.Module) -> ArchSpec:
    """The :class:`ArchSpec` for a loaded model, from its ``config.model_type``."""
    return spec_for(model.config.model_type)


def get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def n_layers(model: nn.Module) -> int:
    return int(getattr(model.config, arch_of(model).n_layers_attr))


def edit_parameter(model: nn.Module, path: str) -> nn.Parameter:
    """The weight parameter of the module at ``path`` (e.g. ``transformer.h.5.mlp.c_proj``), or,
    for ``<module>.bias`` (the key of an edited bias, see ``editors.base.bias_key``), its bias."""
    if path.endswith(".bias"):
        bias = getattr(get_module(model, path[: -len(".bias")]), "bias", None)
        if not isinstance(bias, torch.Tensor):
            raise ValueError(f"module {path[: -len('.bias')]} has no bias")
        return bias
    return get_module(model, path).weight


def weight_out_in(weight: torch.Tensor, spec: ArchSpec) -> torch.Tensor:
    """A view of an MLP matrix in (out, in) orientation, whatever the storage."""
    return weight.T if spec.conv1d else weight


def causal_attention_mask(
    padding_mask: torch.Tensor,
    query_length: int,
    dtype: torch.dtype,
    window: int | None = None,
) -> torch.Tensor:
    """The additive 4-D mask ``(B, 1, Q, K)`` a model builds from a 2-D padding mask ``(B, K)``.

    The ``Q`` queries are the last ``Q`` of the ``K`` positions (earlier ones are in the KV
    cache); query ``i`` sees key ``j`` iff ``j`` is not padding and not later than ``i``.
    Transformers builds this with ``vmap`` (about 10 ms a call on CPU whatever the size), which
    was most of a small model's forward time; here it is plain broadcasting. A query that would
    see nothing (a left pad) sees itself, so padded rows stay finite. Every architecture in
    :data:`ARCHITECTURES` takes a 4-D additive mask as it is (tested against the 2-D path).

    ``window`` (sliding-window attention): a query also sees only the keys fewer than ``window``
    positions before it, as transformers' ``sliding_window_overlay``. Positions are counted in
    real tokens (the number of non-padding keys before a key), so the window is right whatever
    padding or cached prefix sits between a query and its keys (the editors' layouts: left-padded
    prompts with right-padded continuations, a shared prefix then left padding, a per-row prefix
    cache).
    """
    n_keys = padding_mask.shape[-1]
    device = padding_mask.device
    k_pos = torch.arange(n_keys, device=device)
    q_pos = k_pos[n_keys - query_length :]
    real = padding_mask.bool()
    seen = (k_pos[None, :] <= q_pos[:, None])[None] & real[:, None, :]  # (B, Q, K)
    if window is not None:
        tokens = real.long().cumsum(-1)  # (B, K): real tokens up to and including each key
        q_tokens = tokens[:, n_keys - query_length :]
        seen &= (q_tokens[:, :, None] - tokens[:, None, :]) < int(window)
    blind = ~seen.any(-1, keepdim=True)
    seen |= blind & (k_pos[None, None, :] == q_pos[None, :, None])
    mask = torch.zeros(seen.shape, dtype=dtype, device=device).masked_fill_(
        ~seen, torch.finfo(dtype).min
    )
    return mask[:, None]


# the kinds of block transformers names in config.layer_types, and whether each slides
LAYER_TYPE_SLIDES = {"full_attention": False, "sliding_attention": True}


def _sliding_window(model: nn.Module) -> int | None:
    window = getattr(model.config, "sliding_window", None)
    return None if window is None else int(window)


def model_attention_mask(
    model: nn.Module, padding_mask: torch.Tensor, query_length: int, dtype: torch.dtype
) -> torch.Tensor | dict[str, torch.Tensor]:
    """What to pass as ``attention_mask`` to ``model``'s base (or its upper blocks): the
    :func:`causal_attention_mask` of ``padding_mask``, with the model's sliding window where its
    architecture has one (see :func:`masks_for_model`)."""
    return masks_for_model(
        model, lambda window: causal_attention_mask(padding_mask, query_length, dtype, window)
    )


def masks_for_model(
    model: nn.Module, build: Callable[[int | None], torch.Tensor]
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The ``attention_mask`` argument of ``model``'s base from ``build(window)``, a 4-D mask
    with a sliding window of ``window`` positions (``None``: none): one mask where the
    architecture has no sliding window or slides on every block (:class:`ArchSpec`
    ``sliding_window`` ``every_layer``, when ``config.sliding_window`` is set), or a mask per
    kind of block named in ``config.layer_types`` (``by_layer_type``), which those models take as
    a dict."""
    mode = arch_of(model).sliding_window
    window = _sliding_window(model) if mode != "none" else None
    if mode != "by_layer_type":
        return build(window)
    kinds = sorted(set(model.config.layer_types))
    unknown = [k for k in kinds if k not in LAYER_TYPE_SLIDES]
    if unknown:
        raise UnsupportedArchitecture(
            f"{model.config.model_type}: layer types {unknown} are not one of "
            f"{sorted(LAYER_TYPE_SLIDES)}"
        )
    masks = {
        slides: build(window if slides else None)
        for slides in {LAYER_TYPE_SLIDES[k] for k in kinds}
    }
    return {k: masks[LAYER_TYPE_SLIDES[k]] for k in kinds}


def full_cache():
    """An empty key/value cache whose every layer keeps all its keys. A cache built from the
    config would keep only the last ``sliding_window - 1`` keys of a sliding block, which the
    masks of :func:`model_attention_mask` (a column per key kept) do not expect."""
    from transformers.cache_utils import DynamicCache

    return DynamicCache()


class SoftCappedHead(nn.Module):
    """An LM head whose logits are soft-capped: ``cap * tanh(head(h) / cap)``."""

    def __init__(self, head: nn.Module, cap: float):
        super().__init__()
        self.head, self.cap = head, float(cap)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(hidden) / self.cap) * self.cap


def output_head(model: nn.Module, few_rows: bool = False) -> nn.Module:
    """The map from the base model's last hidden state to the logits the model's own forward
    returns: the LM head, soft-capped where the architecture's config sets a cap
    (:class:`ArchSpec` ``logit_softcap_attr``, Gemma 2). ``few_rows``: for callers that read it
    at a few rows, its product on 4-15 float32 rows on a CPU taken in vocabulary slices
    (:mod:`editscale.lm.head`: the same logits, faster)."""
    spec = arch_of(model)
    head = get_module(model, spec.lm_head)
    if few_rows:
        head = sliced(head)
    cap = getattr(model.config, spec.logit_softcap_attr, None) if spec.logit_softcap_attr else None
    return head if cap is None else SoftCappedHead(head, cap)


def right_padded(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask``
    (long tensors on ``device``) for token lists."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):  # one row copy per sequence, not per token
        ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[j, : len(r)] = 1
    return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


WEIGHT_SUFFIXES = (".safetensors", ".bin")


class ManifestMismatch(RuntimeError):
    """A model folder's weight file is missing or its bytes differ from its manifest."""


def verify_weights(folder: str | os.PathLike) -> dict[str, str]:
    """Check every weight file (``*.safetensors``, ``*.bin``) listed in the folder's manifest
    against its recorded sha256; return the hashes computed, by relative path.

    A folder without a manifest has nothing to check against and returns ``{}``. A listed weight
    file that is missing, or whose sha256 differs, raises :class:`ManifestMismatch` naming the
    file and both hashes. Cost: hashing reads every weight byte once; a 1 GiB file (zeros, in the
    page cache) took 1.05-1.11 s (about 1 GB/s) under ``nice -n 19`` on a busy 2-core x86 VM, so
    a 24 GB GPT-J folder adds about 25 s per load (more when read cold from disk), small next to
    loading and editing it.
    """
    folder = Path(folder)
    if not (folder / MANIFEST_NAME).exists():
        return {}
    listed = read_manifest(folder).get("files", {})
    computed: dict[str, str] = {}
    for rel, expected in sorted(listed.items()):
        if not rel.endswith(WEIGHT_SUFFIXES):
            continue
        file = folder / rel
        if not file.exists():
            raise ManifestMismatch(
                f"{file}: listed in {folder / MANIFEST_NAME} (sha256 {expected}) but missing"
            )
        actual = sha256_file(file)
        if actual != expected:
            raise ManifestMismatch(
                f"{file}: sha256 {actual} on disk, {expected} in {folder / MANIFEST_NAME}; "
                f"the weights changed since the manifest was written (re-prepare the model)"
            )
        computed[rel] = actual
    return computed


def load_model(path: str | os.PathLike, dtype: str = "float32", device: str = "cpu"):
    """Load a causal LM and its tokenizer from a local Hugging Face folder.

    Weights are read with safetensors (or ``torch.load(weights_only=True)`` inside
    transformers); remote code is never trusted. Before loading, every weight file listed in the
    folder's manifest is hashed and checked against it (:func:`verify_weights`), so the
    :func:`model_identity` read from the manifest names the bytes actually loaded; the hashes
    computed are kept on the model as ``model.editscale_weight_sha256``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # a bar per load would flood cluster logs; the job logs its own progress
    hf_logging.disable_progress_bar()
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
    verified = verify_weights(path)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=DTYPES[dtype], trust_remote_code=False, use_safetensors=None
    )
    model.to(resolve_device(device))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    arch_of(model)  # fail early on unsupported architectures
    model.editscale_weight_sha256 = verified
    return model, tok


def model_skeleton(path: str | os.PathLike) -> nn.Module:
    """The causal LM of a local folder built from its ``config.json`` on the meta device: its
    module names and weight shapes, without reading a weight or allocating its memory (for jobs
    that need the architecture only, e.g. converting published statistics of GPT-J)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
    cfg = AutoConfig.from_pretrained(path, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=False)
    arch_of(model)  # fail early on unsupported architectures
    return model


def folder_digest(folder: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file of a model folder (the manifest itself excluded), by relative path."""
    folder = Path(folder)
    return {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME and ".cache" not in p.parts
    }


def write_manifest(folder: str | os.PathLike, **info) -> dict:
    """Write ``editscale_manifest.json`` (file hashes + source info) into a model folder."""
    folder = Path(folder)
    manifest = {"files": folder_digest(folder), **info}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        return {
            "files": folder_digest(folder),
            "source": "local",
            "path": str(Path(folder).resolve()),
        }
    return json.loads(path.read_text())


def weight_patterns(repo_files: list[str]) -> list[str]:
    """Which files of a hub repo to fetch: config/tokenizer files and one weight format.

    safetensors when the revision has them; otherwise PyTorch ``.bin`` files, which transformers
    reads with ``torch.load(weights_only=True)`` (no code execution). Pickled ``.pt``/``.ckpt``
    and remote code are never fetched.
    """
    meta = ["*.json", "*.txt", "*.model", "merges.txt", "vocab.*"]
    if any(f.endswith(".safetensors") for f in repo_files):
        return meta + ["*.safetensors"]
    if any(f.endswith(".bin") for f in repo_files):
        return meta + ["*.bin"]
    raise FileNotFoundError("the hub revision holds neither .safetensors nor .bin weights")


def download_model(repo_id: str, revision: str, dest: str | os.PathLike) -> dict:
    """Download a hub model at a pinned revision into ``dest`` and write its manifest.

    The revision should be a commit hash; a branch name is accepted but recorded as given. Its
    ``config.json`` comes first: a ``model_type`` without an entry in :data:`ARCHITECTURES` stops
    the download (:class:`UnsupportedArchitecture`) before any weight is fetched.
    """
    from huggingface_hub import list_repo_files, snapshot_download

    dest = Path(dest)
    files = list_repo_files(repo_id, revision=revision)
    patterns = weight_patterns(files)
    # the architecture is checked on config.json before a weight byte is fetched
    snapshot_download(
        repo_id=repo_id, revision=revision, local_dir=dest, allow_patterns=["config.json"]
    )
    spec_of_folder(dest)
    log.info("downloading %s@%s (%s) into %s", repo_id, revision, patterns[-1], dest)
    snapshot_download(repo_id=repo_id, revision=revision, local_dir=dest, allow_patterns=patterns)
    return write_manifest(dest, source="hub", repo_id=repo_id, revision=revision)


def link_local_model(src: str | os.PathLike, dest: str | os.PathLike) -> dict:
    """Make a local model folder available at ``dest`` (symlinked files) with a manifest."""
    src, dest = Path(src).resolve(), Path(dest)
    if not (src / "config.json").exists():
        raise FileNotFoundError(f"local model folder {src} has no config.json")
    spec_of_folder(src)
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir()):
        if p.is_file() and p.name != MANIFEST_NAME:
            target = dest / p.name
            if target.exists() or target.is_symlink():
                target.unlink()
            target.symlink_to(p)
    return write_manifest(dest, source="local", path=str(src))


class _SkippedBlock(nn.Module):
    """A block that is not run: its input passes through unchanged."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


@contextmanager
def upper_layers_only(model: nn.Module, first_layer: int) -> Iterator[nn.Module]:
    """Temporarily make the base model start at block ``first_layer``.

    Inside the context, calling the base model with ``inputs_embeds=h`` (``h`` = residual stream
    entering block ``first_layer``) runs only blocks ``first_layer..L-1`` and the final norm. The
    blocks below are replaced by pass-throughs rather than removed, so every block keeps its index:
    Qwen2/3 and Gemma 2/3 pick a block's mask (and Gemma 3 its rotary embedding) by its index in
    ``config.layer_types``, and the blocks address the key/value cache by it. The absolute
    position embedding (GPT-2), if any, is silenced so that it is not added twice. Used by ROME's
    v* optimisation: blocks below the edited one never change during it.
    """
    spec = arch_of(model)
    parent_path, _, attr = spec.layers.rpartition(".")
    parent = get_module(model, parent_path)
    full: nn.ModuleList = getattr(parent, attr)
    handles = []
    if spec.position_embedding is not None:
        pos = get_module(model, spec.position_embedding)
        handles.append(pos.register_forward_hook(lambda m, i, o: torch.zeros_like(o)))
    skipped = [_SkippedBlock() for _ in range(first_layer)]
    setattr(parent, attr, nn.ModuleList(skipped + list(full)[first_layer:]))
    try:
        yield get_module(model, spec.base)
    finally:
        setattr(parent, attr, full)
        for h in handles:
            h.remove()


def train_bpe_tokenizer(
    texts,
    vocab_size: int,
    dest: str | os.PathLike | None = None,
    add_prefix_space: bool = False,
    add_bos: bool = False,
):
    """Train a byte-level BPE tokenizer (``tokenizers``) and wrap it for transformers.

    Deterministic for a given text sequence. ``<|endoftext|>`` is BOS, EOS and pad.
    ``add_prefix_space``: a text's first word is tokenised as if a space preceded it, so a name
    has the same tokens at the start of a prompt as inside a sentence. ``add_bos``: encoding with
    special tokens (the default) prepends BOS, as Llama-family tokenizers do; continuations encoded
    with ``add_special_tokens=False`` get none.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    if add_bos:
        core.post_processor = processors.TemplateProcessing(
            single=f"{eos} $A",
            pair=f"{eos} $A {eos} $B:1",
            special_tokens=[(eos, core.token_to_id(eos))],
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=eos,
        eos_token=eos,
        pad_token=eos,
        unk_token=eos,
        model_input_names=["input_ids", "attention_mask"],  # GPT-2 would add token-type embeddings
        add_prefix_space=add_prefix_space,
    )
    if dest is not None:
        tok.save_pretrained(dest)
    return tok


# extra config keywords of each Llama-like family's scratch model, from (sliding window, head
# width): every sliding-window family slides (Qwen2/3 from block 1 on, Gemma 2/3 every other
# block), and Gemma 2/3 scale queries by the head width as their smaller releases do
SCRATCH_EXTRAS = {
    "mistral": lambda window, head_dim: {"sliding_window": window},
    "qwen2": lambda window, head_dim: {
        "use_sliding_window": True,
        "sliding_window": window,
        "max_window_layers": 1,
    },
    "qwen3": lambda window, head_dim: {
        "use_sliding_window": True,
        "sliding_window": window,
        "max_window_layers": 1,
    },
    "gemma": lambda window, head_dim: {},
    "gemma2": lambda window, head_dim: {
        "sliding_window": window,
        "query_pre_attn_scalar": head_dim,
    },
    "gemma3_text": lambda window, head_dim: {
        "sliding_window": window,
        "sliding_window_pattern": 2,
        "query_pre_attn_scalar": head_dim,
    },
    "phi3": lambda window, head_dim: {"sliding_window": window},
    "olmo2": lambda window, head_dim: {},
}
SCRATCH_ARCHS = ("gpt2", "gptj", "gpt_neox", "llama", *SCRATCH_EXTRAS)


def _family_config(
    arch: str,
    common: dict,
    n_layer: int,
    d_model: int,
    n_head: int,
    d_mlp: int,
    n_positions: int,
    sliding_window: int | None,
):
    """The config of one of :data:`SCRATCH_EXTRAS`' families: Llama's keywords with grouped-query
    attention (half as many key/value heads when ``n_head`` is even), a head width of
    ``d_model / n_head``, and the family's extras (the sliding window: ``n_positions // 2`` when
    None)."""
    from transformers import CONFIG_MAPPING

    head_dim = d_model // n_head
    window = n_positions // 2 if sliding_window is None else int(sliding_window)
    return CONFIG_MAPPING[arch](
        num_hidden_layers=n_layer,
        hidden_size=d_model,
        num_attention_heads=n_head,
        num_key_value_heads=n_head // 2 if n_head % 2 == 0 else n_head,
        head_dim=head_dim,
        intermediate_size=d_mlp,
        max_position_embeddings=n_positions,
        pad_token_id=common["eos_token_id"],
        **common,
        **SCRATCH_EXTRAS[arch](window, head_dim),
    )


def scratch_config(
    arch: str,
    vocab_size: int,
    n_layer: int,
    d_model: int,
    n_head: int,
    n_positions: int = 256,
    eos_token_id: int = 0,
    dropout: float | None = None,
    d_mlp: int | None = None,
    sliding_window: int | None = None,
):
    """A transformers config for a small model of the given architecture (``dropout``: every
    dropout probability of the architecture, when given; ``d_mlp``: the MLP's hidden width,
    4 x ``d_model`` when None; ``sliding_window``: of the families that have one, see
    :func:`_family_config`)."""
    d_mlp = 4 * d_model if d_mlp is None else int(d_mlp)
    from transformers import GPT2Config, GPTJConfig, GPTNeoXConfig, LlamaConfig

    common = dict(vocab_size=vocab_size, bos_token_id=eos_token_id, eos_token_id=eos_token_id)
    builders = {
        "gpt2": lambda: GPT2Config(
            n_layer=n_layer,
            n_embd=d_model,
            n_head=n_head,
            n_inner=d_mlp,
            n_positions=n_positions,
            **common,
        ),
        "gptj": lambda: GPTJConfig(
            n_layer=n_layer,
            n_embd=d_model,
            n_head=n_head,
            n_inner=d_mlp,
            n_positions=n_positions,
            rotary_dim=max(4, d_model // n_head // 2),
            tie_word_embeddings=False,
            **common,
        ),
        "gpt_neox": lambda: GPTNeoXConfig(
            num_hidden_layers=n_layer,
            hidden_size=d_model,
            num_attention_heads=n_head,
            intermediate_size=d_mlp,
            max_position_embeddings=n_positions,
            **common,
        ),
        "llama": lambda: LlamaConfig(
            num_hidden_layers=n_layer,
            hidden_size=d_model,
            num_attention_heads=n_head,
            num_key_value_heads=n_head,
            intermediate_size=d_mlp,
            max_position_embeddings=n_positions,
            **common,
        ),
    }
    for family in SCRATCH_EXTRAS:
        builders[family] = lambda family=family: _family_config(
            family, common, n_layer, d_model, n_head, d_mlp, n_positions, sliding_window
        )
    if arch not in builders:
        raise UnsupportedArchitecture(
            f"no scratch config for architecture {arch!r} (known: {list(SCRATCH_ARCHS)})"
        )
    cfg = builders[arch]()
    _set_dropout(cfg, dropout)
    return cfg


def _set_dropout(cfg, dropout: float | None) -> None:
    """Every dropout probability of ``cfg`` set to ``dropout`` (nothing when None)."""
    if dropout is None:
        return
    for name in (
        "resid_pdrop",
        "embd_pdrop",
        "attn_pdrop",
        "attention_dropout",
        "hidden_dropout",
        "classifier_dropout",
    ):
        if hasattr(cfg, name):
            setattr(cfg, name, dropout)


def build_scratch_model(
    arch: str,
    tokenizer,
    dest: str | os.PathLike,
    *,
    n_layer: int,
    d_model: int,
    n_head: int,
    n_positions: int = 256,
    seed: int = 0,
    sliding_window: int | None = None,
    config_updates: dict | None = None,
) -> dict:
    """Randomly initialise (seeded) a model of ``arch`` and save it with its tokenizer +
    manifest. ``sliding_window``: see :func:`scratch_config`; ``config_updates``: config
    attributes set over the architecture's defaults before the model is built (e.g. Llama 3's
    RoPE parameters), recorded in the manifest."""
    from transformers import AutoModelForCausalLM

    cfg = scratch_config(
        arch,
        len(tokenizer),
        n_layer,
        d_model,
        n_head,
        n_positions,
        eos_token_id=tokenizer.eos_token_id,
        sliding_window=sliding_window,
    )
    for name, value in (config_updates or {}).items():
        setattr(cfg, name, value)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    extra = {"config_updates": config_updates} if config_updates else {}
    return write_manifest(
        dest,
        source="scratch",
        arch=arch,
        seed=seed,
        n_layer=n_layer,
        d_model=d_model,
        n_head=n_head,
        **extra,
    )


def model_identity(folder: str | os.PathLike, verify: bool = False) -> dict[str, str]:
    """``model_id`` and ``revision`` naming a prepared model folder, for provenance and checks.

    Hub models: the repo id and pinned revision. Local and scratch models: the folder's source
    (path or architecture) and a digest of its files' hashes, so any change of weights shows.
    The hashes are the manifest's; :func:`load_model` checks the weight files against them before
    loading, and ``verify=True`` does the same check here (raising :class:`ManifestMismatch`), so
    the identity is that of the bytes on disk. The strings are unchanged for an unchanged folder.
    """
    if verify:
        verify_weights(folder)
    return identity_from_manifest(read_manifest(folder), folder)
