"""The model families of issue 29 (Llama 3, Mistral, Qwen2/3, Gemma 1/2/3, Phi-3, OLMo 2) on tiny
models built from their configs: the table names their modules, and what the package runs beside
the model's own forward (4-D masks with sliding windows, soft-capped logits, key/value caches,
scoring with and without BOS, greedy generation with a shared prefix, key statistics) gives the
model's own numbers."""

from __future__ import annotations

import pytest
import torch

from editscale.editing.key_stats import compute_key_second_moment, load_key_second_moment
from editscale.lm.generation import generate_greedy
from editscale.lm.gguf import GGUFSourceError, gguf_families, prepare_gguf_model
from editscale.lm.models import (
    ARCHITECTURES,
    arch_of,
    edit_parameter,
    full_cache,
    get_module,
    load_model,
    model_attention_mask,
    n_layers,
    output_head,
    weight_out_in,
)
from editscale.lm.scoring import score_targets, target_token_ids
from tests.conftest import FAMILIES, FAMILY_WINDOW

TEXTS = [
    "The mother tongue of Danielle Darrieux is French and",
    "Paris is",
    "Toko Yasuda plays the guitar, and she was born in the city of",
]
PROMPTS = [
    "The mother tongue of Danielle Darrieux is",
    "Rome",
    "The headquarters of Nokia is in the city of",
    "Ada Lovelace was born in",
]


def small_cap(model) -> None:
    """A soft cap that changes the tiny model's logits visibly (Gemma 2's own, 30, would not)."""
    spec = arch_of(model)
    if spec.logit_softcap_attr and getattr(model.config, spec.logit_softcap_attr) is not None:
        setattr(model.config, spec.logit_softcap_attr, 0.5)


@pytest.fixture(params=sorted(FAMILIES))
def family(request, family_model):
    """(name, model, tokenizer) of one family's tiny model."""
    model, tok = load_model(family_model(request.param))
    return request.param, model, tok


def test_table_entry_names_the_models_modules(family):
    name, model, tok = family
    spec = arch_of(model)
    assert spec is ARCHITECTURES[FAMILIES[name][0]] and n_layers(model) == 3
    assert all(key == entry.name for key, entry in ARCHITECTURES.items())  # files store the name
    d_mlp = model.config.intermediate_size
    for layer in range(3):
        w_in = weight_out_in(edit_parameter(model, spec.mlp_in_path(layer)), spec)
        w_out = weight_out_in(edit_parameter(model, spec.mlp_out_path(layer)), spec)
        assert w_in.shape == (len(spec.mlp_in_blocks) * d_mlp, 32)
        assert w_out.shape == (32, d_mlp)
        if spec.mlp_post_norm is not None:
            assert get_module(model, spec.mlp_post_norm_path(layer)).weight.shape == (32,)
    assert get_module(model, spec.final_norm).weight.shape == (32,)
    assert get_module(model, spec.lm_head).weight.shape == (len(tok), 32)
    slides = getattr(model.config, "sliding_window", None) == FAMILY_WINDOW
    assert slides == (spec.sliding_window != "none")


@pytest.mark.parametrize("side", ["left", "right"])
def test_masks_and_head_give_the_models_own_logits(family, side):
    """A padded batch through the base model with :func:`model_attention_mask` and
    :func:`output_head`, then two more tokens from its cache, gives each row's logits of the
    model's own forward on that row alone; rows are longer than the sliding window, and the soft
    cap is small enough to matter."""
    _, model, tok = family
    small_cap(model)
    base, head = get_module(model, arch_of(model).base), output_head(model)
    enc = tok(TEXTS, return_tensors="pt", padding=True, padding_side=side)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert int(mask.sum(1).max()) > 2 * FAMILY_WINDOW
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    nxt = torch.tensor([[5, 6], [7, 8], [9, 10]])
    full = torch.cat([mask, torch.ones_like(nxt)], dim=1)
    with torch.no_grad():
        out = base(
            input_ids=ids,
            attention_mask=model_attention_mask(model, mask, ids.shape[1], base.dtype),
            position_ids=pos,
            cache=full_cache(),
            use_cache=True,
        )
        more = base(
            input_ids=nxt,
            attention_mask=model_attention_mask(model, full, 2, base.dtype),
            position_ids=mask.sum(-1, keepdim=True) + torch.arange(2)[None],
            cache=out.cache,
            use_cache=True,
        )
        for r, text in enumerate(TEXTS):
            own_ids = torch.tensor([tok(text)["input_ids"] + nxt[r].tolist()])
            own = model(input_ids=own_ids).logits[0]
            ours = torch.cat([head(out.last_hidden_state[r][mask[r].bool()]), head(more[0][r])])
            torch.testing.assert_close(ours, own, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bos", [False, True], ids=["no_bos", "bos"])
def test_scoring_agrees_with_the_models_own_forward(
    family, bos, tiny_tokenizer, tiny_bos_tokenizer
):
    """score_targets (prompts batched with left padding, targets continuing from the prompts'
    cache) gives the mean NLL of the model's own forward on prompt + target, whether or not the
    tokenizer prepends BOS (the two tokenizers share the vocabulary)."""
    _, model, _ = family
    small_cap(model)
    tok = tiny_bos_tokenizer if bos else tiny_tokenizer
    assert (tok("a")["input_ids"][0] == tok.bos_token_id) == bos
    targets = [[" French", " English and more"]] * len(PROMPTS)
    scores = score_targets(model, tok, PROMPTS, targets, batch_size=3)
    for i, prompt in enumerate(PROMPTS):
        p_ids = tok(prompt)["input_ids"]
        for j, target in enumerate(targets[i]):
            t_ids = target_token_ids(tok, target)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([p_ids + t_ids])).logits[0]
            logp = logits[len(p_ids) - 1 : -1].float().log_softmax(-1)
            nll = -logp.gather(1, torch.tensor(t_ids)[:, None]).mean()
            assert scores.nll[i, j] == pytest.approx(float(nll), rel=1e-4, abs=1e-5)


def test_generation_with_a_shared_prefix_is_the_models_greedy_generation(family):
    """Greedy continuations with the prompts' shared prefix cached once (and without) are those of
    ``model.generate`` (the model's own cache, sliding layers included)."""
    _, model, tok = family
    small_cap(model)
    demo = "Paris is in France. Rome is in Italy. Bern is in Switzerland. "
    prompts = [demo + p for p in PROMPTS]
    shared = generate_greedy(model, tok, prompts, max_new_tokens=4, batch_size=3)
    assert generate_greedy(model, tok, prompts, 4, batch_size=3, share_prefix=False) == shared
    for prompt, text in zip(prompts, shared):
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True) == text


def test_key_statistics_are_the_mean_outer_product_of_the_models_own_keys(family, tmp_path):
    """The key second moment (length-sorted padded batches with the model's masks) equals the
    mean of k k^T over every token's key, each document run alone through the model's own
    forward."""
    _, model, tok = family
    spec = arch_of(model)
    docs = [" ".join(TEXTS[i % 3].split()[: 3 + 2 * i]) for i in range(8)]
    compute_key_second_moment(
        model,
        tok,
        1,
        docs,
        tmp_path / "c.h5",
        n_docs=8,
        max_doc_tokens=40,
        batch_tokens=64,
        attrs={"model_id": "tiny", "revision": "r", "corpus": "x", "corpus_fingerprint": "f"},
    )
    c = load_key_second_moment(tmp_path / "c.h5", expect={"module": spec.mlp_out_path(1)})
    keys = []
    handle = get_module(model, spec.mlp_out_path(1)).register_forward_pre_hook(
        lambda mod, args: keys.append(args[0][0].double())
    )
    try:
        with torch.no_grad():
            for doc in docs:
                model(input_ids=torch.tensor([tok(doc)["input_ids"]]))
    finally:
        handle.remove()
    k = torch.cat(keys)
    torch.testing.assert_close(c, k.T @ k / len(k), rtol=1e-5, atol=1e-7)


def test_gguf_covers_the_families_transformers_dequantises():
    """The families a GGUF file can bring (transformers 5.24's GGUF loader: not GPT-J, GPT-NeoX,
    Gemma 1 or OLMo 2), as config/README.md lists them."""
    assert gguf_families() == [
        "gpt2",
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma2",
        "gemma3_text",
        "phi3",
    ]


@pytest.mark.parametrize("arch", ["bloom", "olmo2"])
def test_a_gguf_file_outside_the_families_stops_before_it_is_dequantised(tmp_path, arch):
    """bloom: transformers reads it, the table has no entry; olmo2: in the table, transformers
    cannot dequantise it. Both stop naming the architecture and the families GGUF can bring."""
    import gguf
    import numpy as np

    path = tmp_path / f"{arch}.gguf"
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny {arch}")
    writer.add_block_count(2)
    writer.add_embedding_length(8)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFSourceError, match=f"{arch}.*can be used: .*'phi3'"):
        prepare_gguf_model({"path": str(path)}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
