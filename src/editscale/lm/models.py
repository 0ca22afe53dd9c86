"""Model loading, download with provenance manifests, and the per-architecture layer table.

Every architecture-specific name lives in :data:`ARCHITECTURES`; the rest of the package asks
that table (never branches on strings). Weight orientation: GPT-2 stores its MLP matrices as
``Conv1D`` with weight shape ``(in, out)``; the others use ``nn.Linear`` with ``(out, in)``.
All edit code works in the (out, in) convention through :func:`weight_out_in`.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from editscale.io.provenance import identity_from_manifest, sha256_file

log = logging.getLogger(__name__)

MANIFEST_NAME = "editscale_manifest.json"


@dataclass(frozen=True)
class ArchSpec:
    """Module names of one architecture, relative to the causal-LM model object."""

    name: str
    base: str  # the decoder stack without LM head
    layers: str  # the ModuleList of blocks
    mlp: str  # MLP module inside a block
    mlp_in: str  # MLP input projection inside a block (the "fc_in"/"c_fc"/"up_proj")
    mlp_out: str  # MLP output projection inside a block (the matrix ROME edits)
    lm_head: str
    final_norm: str
    n_layers_attr: str  # config attribute holding the number of blocks
    conv1d: bool  # True: weight stored (in, out) as in GPT-2's Conv1D
    position_embedding: str | None  # absolute position embedding module, if any

    def layer_path(self, layer: int) -> str:
        return f"{self.layers}.{layer}"

    def mlp_out_path(self, layer: int) -> str:
        return f"{self.layers}.{layer}.{self.mlp_out}"

    def mlp_in_path(self, layer: int) -> str:
        return f"{self.layers}.{layer}.{self.mlp_in}"

    def mlp_path(self, layer: int) -> str:
        return f"{self.layers}.{layer}.{self.mlp}"


ARCHITECTURES: dict[str, ArchSpec] = {
    "gpt2": ArchSpec(
        name="gpt2",
        base="transformer",
        layers="transformer.h",
        mlp="mlp",
        mlp_in="mlp.c_fc",
        mlp_out="mlp.c_proj",
        lm_head="lm_head",
        final_norm="transformer.ln_f",
        n_layers_attr="n_layer",
        conv1d=True,
        position_embedding="transformer.wpe",
    ),
    "gptj": ArchSpec(
        name="gptj",
        base="transformer",
        layers="transformer.h",
        mlp="mlp",
        mlp_in="mlp.fc_in",
        mlp_out="mlp.fc_out",
        lm_head="lm_head",
        final_norm="transformer.ln_f",
        n_layers_attr="n_layer",
        conv1d=False,
        position_embedding=None,
    ),
    "gpt_neox": ArchSpec(
        name="gpt_neox",
        base="gpt_neox",
        layers="gpt_neox.layers",
        mlp="mlp",
        mlp_in="mlp.dense_h_to_4h",
        mlp_out="mlp.dense_4h_to_h",
        lm_head="lm_head",
        final_norm="gpt_neox.final_layer_norm",
        n_layers_attr="num_hidden_layers",
        conv1d=False,
        position_embedding=None,
    ),
    "llama": ArchSpec(
        name="llama",
        base="model",
        layers="model.layers",
        mlp="mlp",
        mlp_in="mlp.up_proj",
        mlp_out="mlp.down_proj",
        lm_head="lm_head",
        final_norm="model.norm",
        n_layers_attr="num_hidden_layers",
        conv1d=False,
        position_embedding=None,
    ),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class UnsupportedArchitecture(ValueError):
    pass


def arch_of(model: nn.Module) -> ArchSpec:
    """The :class:`ArchSpec` for a loaded model, from its ``config.model_type``."""
    model_type = model.config.model_type
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"model_type {model_type!r} has no entry in editscale.lm.models.ARCHITECTURES "
            f"(supported: {sorted(ARCHITECTURES)})"
        )
    return ARCHITECTURES[model_type]


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
    padding_mask: torch.Tensor, query_length: int, dtype: torch.dtype
) -> torch.Tensor:
    """The additive 4-D mask ``(B, 1, Q, K)`` a model builds from a 2-D padding mask ``(B, K)``.

    The ``Q`` queries are the last ``Q`` of the ``K`` positions (earlier ones are in the KV
    cache); query ``i`` sees key ``j`` iff ``j`` is not padding and not later than ``i``.
    Transformers builds this with ``vmap`` (about 10 ms a call on CPU whatever the size), which
    was most of a small model's forward time; here it is plain broadcasting. A query that would
    see nothing (a left pad) sees itself, so padded rows stay finite. Every architecture in
    :data:`ARCHITECTURES` takes a 4-D additive mask as it is (tested against the 2-D path).
    """
    n_keys = padding_mask.shape[-1]
    device = padding_mask.device
    k_pos = torch.arange(n_keys, device=device)
    q_pos = k_pos[n_keys - query_length :]
    seen = (k_pos[None, :] <= q_pos[:, None])[None] & padding_mask.bool()[:, None, :]  # (B, Q, K)
    blind = ~seen.any(-1, keepdim=True)
    seen |= blind & (k_pos[None, None, :] == q_pos[None, :, None])
    mask = torch.zeros(seen.shape, dtype=dtype, device=device).masked_fill_(
        ~seen, torch.finfo(dtype).min
    )
    return mask[:, None]


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

    The revision should be a commit hash; a branch name is accepted but recorded as given.
    """
    from huggingface_hub import list_repo_files, snapshot_download

    dest = Path(dest)
    files = list_repo_files(repo_id, revision=revision)
    patterns = weight_patterns(files)
    log.info("downloading %s@%s (%s) into %s", repo_id, revision, patterns[-1], dest)
    snapshot_download(repo_id=repo_id, revision=revision, local_dir=dest, allow_patterns=patterns)
    return write_manifest(dest, source="hub", repo_id=repo_id, revision=revision)


def link_local_model(src: str | os.PathLike, dest: str | os.PathLike) -> dict:
    """Make a local model folder available at ``dest`` (symlinked files) with a manifest."""
    src, dest = Path(src).resolve(), Path(dest)
    if not (src / "config.json").exists():
        raise FileNotFoundError(f"local model folder {src} has no config.json")
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir()):
        if p.is_file() and p.name != MANIFEST_NAME:
            target = dest / p.name
            if target.exists() or target.is_symlink():
                target.unlink()
            target.symlink_to(p)
    return write_manifest(dest, source="local", path=str(src))


@contextmanager
def upper_layers_only(model: nn.Module, first_layer: int) -> Iterator[nn.Module]:
    """Temporarily make the base model start at block ``first_layer``.

    Inside the context, calling the base model with ``inputs_embeds=h`` (``h`` = residual stream
    entering block ``first_layer``) runs only blocks ``first_layer..L-1`` and the final norm. The
    absolute position embedding (GPT-2), if any, is silenced so that it is not added twice.
    Used by ROME's v* optimisation: blocks below the edited one never change during it.
    """
    spec = arch_of(model)
    parent_path, _, attr = spec.layers.rpartition(".")
    parent = get_module(model, parent_path)
    full: nn.ModuleList = getattr(parent, attr)
    handles = []
    if spec.position_embedding is not None:
        pos = get_module(model, spec.position_embedding)
        handles.append(pos.register_forward_hook(lambda m, i, o: torch.zeros_like(o)))
    setattr(parent, attr, nn.ModuleList(list(full)[first_layer:]))
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


SCRATCH_ARCHS = ("gpt2", "gptj", "gpt_neox", "llama")


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
):
    """A transformers config for a small model of the given architecture (``dropout``: every
    dropout probability of the architecture, when given; ``d_mlp``: the MLP's hidden width,
    4 x ``d_model`` when None)."""
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
    if arch not in builders:
        raise UnsupportedArchitecture(f"no scratch config for architecture {arch!r}")
    cfg = builders[arch]()
    if dropout is not None:
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
    return cfg


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
) -> dict:
    """Randomly initialise (seeded) a model of ``arch`` and save it with
    its tokenizer + manifest."""
    from transformers import AutoModelForCausalLM

    cfg = scratch_config(
        arch,
        len(tokenizer),
        n_layer,
        d_model,
        n_head,
        n_positions,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return write_manifest(
        dest,
        source="scratch",
        arch=arch,
        seed=seed,
        n_layer=n_layer,
        d_model=d_model,
        n_head=n_head,
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
