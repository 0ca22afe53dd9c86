"""The per-architecture table: where each model family keeps what the editors read and change.

Every architecture-specific name and behaviour lives in :data:`ARCHITECTURES`, keyed by the
transformers ``config.model_type``; the rest of the package asks this table and never branches on
a family's name. This module imports neither torch nor transformers, so that the Snakefile can
check a config's models against the table at start-up.

What differs between the families, and the field that says it:

* module names (``base``, ``layers``, ``mlp``, ``mlp_in``, ``mlp_out``, ``lm_head``,
  ``final_norm``) and the config attribute with the number of blocks (``n_layers_attr``);
* GPT-2's ``Conv1D`` stores weights (in, out), the others (out, in) (``conv1d``);
* an absolute position embedding, silenced when the upper blocks run on a cached residual stream
  (``position_embedding``, GPT-2);
* the MLP input matrix's row blocks (``mlp_in_blocks``): one (``("up",)``: GPT-2's ``c_fc``,
  Llama's ``up_proj``) or several stacked in one fused matrix. Phi-3's ``gate_up_proj`` is
  ``("gate", "up")``: a (2 d_mlp, d) matrix whose first d_mlp rows are the gate. MEND, the one
  editor that edits the MLP input, edits that parameter whole (both blocks), as it edits any named
  parameter; the key-value editors edit ``mlp_out``, whose input is the MLP's hidden activation in
  every family;
* a norm between the MLP's output and the residual stream (``mlp_post_norm``: Gemma 2, Gemma 3
  and OLMo 2's ``post_feedforward_layernorm``); ROME's target search then adds its vector to the
  MLP output and passes it through that norm (:func:`editscale.editors.rome.optimise_delta`);
* a soft cap of the final logits, ``cap * tanh(logits / cap)`` (``logit_softcap_attr``: the
  config attribute holding ``cap``; Gemma 2's ``final_logit_softcapping``), applied wherever
  logits are formed from the last hidden state (:func:`editscale.lm.models.output_head`);
* sliding-window attention (``sliding_window``): ``"none"``; ``"every_layer"`` (Mistral, Phi-3:
  ``config.sliding_window``, when set, limits every block); ``"by_layer_type"`` (Qwen2, Qwen3,
  Gemma 2, Gemma 3: ``config.layer_types`` names each block's kind, and the model takes one mask
  per kind). The 4-D masks the editors pass are built to match
  (:func:`editscale.lm.models.model_attention_mask`).

Not in the table because the models handle them inside their modules: Gemma's sqrt(d) embedding
scale (applied in the embedding module, so ``inputs_embeds`` are never scaled again), the tied LM
head (no editor changes the head or the embeddings), attention soft-capping (Gemma 2; its eager
attention takes the 4-D mask), Qwen's attention biases, Phi-3's fused ``qkv_proj``, OLMo 2's and
Qwen 3's query/key norms; and the BOS token that Llama 3, Mistral and Gemma tokenizers prepend and
Qwen's do not (prompts are encoded by the model's own tokenizer with its special tokens, targets
and continuations without). Each is covered by the tiny-model tests of
``tests/lm/test_families.py``, ``tests/lm/test_suffix.py`` and ``tests/editors/test_families.py``.

``gemma3`` (the multimodal Gemma 3 checkpoints, 4B and up) is not in the table: transformers loads
it as ``Gemma3ForConditionalGeneration`` (vision tower and language model), not as a text-only
causal LM. ``gemma3_text`` (Gemma 3 270M and 1B) is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

SLIDING_WINDOW_MODES = ("none", "every_layer", "by_layer_type")


class UnsupportedArchitecture(ValueError):
    pass


@dataclass(frozen=True)
class ArchSpec:
    """Module names of one architecture, relative to the causal-LM model object, and the
    behaviours the editors depend on (see the module docstring)."""

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
    mlp_in_blocks: tuple[str, ...] = ("up",)  # row blocks of mlp_in, d_mlp rows each
    mlp_post_norm: str | None = None  # norm of the MLP output inside a block, if any
    logit_softcap_attr: str | None = None  # config attribute of the final-logit soft cap
    sliding_window: str = "none"  # one of SLIDING_WINDOW_MODES

    def __post_init__(self):
        if self.sliding_window not in SLIDING_WINDOW_MODES:
            raise ValueError(
                f"ArchSpec {self.name}: sliding_window {self.sliding_window!r} is not one of "
                f"{SLIDING_WINDOW_MODES}"
            )
        if not self.mlp_in_blocks:
            raise ValueError(f"ArchSpec {self.name}: mlp_in_blocks is empty")

    def layer_path(self, layer: int) -> str:
        return f"{self.layers}.{layer}"

    def mlp_out_path(self, layer: int) -> str:
        return f"{self.layers}.{layer}.{self.mlp_out}"

    def mlp_in_path(self, layer: int) -> str:
        return f"{self.layers}.{layer}.{self.mlp_in}"

    def mlp_path(self, layer: int) -> str:
        return f"{self.layers}.{layer}.{self.mlp}"

    def mlp_post_norm_path(self, layer: int) -> str | None:
        return None if self.mlp_post_norm is None else f"{self.layers}.{layer}.{self.mlp_post_norm}"


_LLAMA = ArchSpec(
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
)
# Gemma 2 and Gemma 3: a norm before and after the MLP ("sandwich"), logits soft-capped when the
# config sets final_logit_softcapping (Gemma 2: 30; Gemma 3: none), alternating local and global
# attention blocks
_GEMMA_SANDWICH = replace(
    _LLAMA,
    mlp_post_norm="post_feedforward_layernorm",
    logit_softcap_attr="final_logit_softcapping",
    sliding_window="by_layer_type",
)

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
    "llama": _LLAMA,  # Llama 1-3 (Llama-3: model_type "llama" too)
    "mistral": replace(_LLAMA, name="mistral", sliding_window="every_layer"),
    "qwen2": replace(_LLAMA, name="qwen2", sliding_window="by_layer_type"),  # Qwen2 and Qwen2.5
    "qwen3": replace(_LLAMA, name="qwen3", sliding_window="by_layer_type"),
    "gemma": replace(_LLAMA, name="gemma"),
    "gemma2": replace(_GEMMA_SANDWICH, name="gemma2"),
    "gemma3_text": replace(_GEMMA_SANDWICH, name="gemma3_text"),
    "phi3": replace(
        _LLAMA,
        name="phi3",
        mlp_in="mlp.gate_up_proj",
        mlp_in_blocks=("gate", "up"),
        sliding_window="every_layer",
    ),
    "olmo2": replace(_LLAMA, name="olmo2", mlp_post_norm="post_feedforward_layernorm"),
}

ADDING_ONE = "docs/extending.md, 'Add a model architecture', says how to add one"


def spec_for(model_type: str) -> ArchSpec:
    """The :class:`ArchSpec` of a transformers ``model_type``; :class:`UnsupportedArchitecture`
    naming it and the known ones when the table has no entry."""
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"model_type {model_type!r} has no entry in editscale.lm.architectures.ARCHITECTURES "
            f"(supported: {sorted(ARCHITECTURES)}); {ADDING_ONE}"
        )
    return ARCHITECTURES[model_type]


def spec_of_folder(folder: str | os.PathLike) -> ArchSpec:
    """The :class:`ArchSpec` of a model folder, from the ``model_type`` of its ``config.json``
    (read as JSON: neither torch nor the weights are loaded); :class:`UnsupportedArchitecture`
    naming the folder, its model_type and the known ones when the table has no entry."""
    path = Path(folder) / "config.json"
    model_type = json.loads(path.read_text(encoding="utf-8")).get("model_type")
    try:
        return spec_for(str(model_type))
    except UnsupportedArchitecture as err:
        raise UnsupportedArchitecture(f"{path}: {err}") from None
