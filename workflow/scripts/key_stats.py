"""Rule key_stats: resources/stats/{model}/{corpus}/layer{layer}.h5 = the uncentred second moment of
the keys of block {layer}'s MLP output matrix over n_docs documents of {corpus}: its first, or
ROME's fixed random subset (stats.sample)."""

from pathlib import Path

from editscale.provenance import setup_rule_logging

log = setup_rule_logging(snakemake.log[0], snakemake.threads)

from editscale.data import corpus_fingerprint, sample_corpus  # noqa: E402
from editscale.models import load_model, model_identity  # noqa: E402
from editscale.stats import compute_key_second_moment  # noqa: E402

wc = snakemake.wildcards
model_dir = Path(snakemake.input.model).parent
corpus = snakemake.params.corpus
model, tok = load_model(model_dir, snakemake.params.dtype, snakemake.config["models"][wc.model]["device"])
# null max_doc_tokens = the model's context length (what ROME's layer_stats does)
max_doc_tokens = snakemake.params.max_doc_tokens or (
    getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
)
compute_key_second_moment(
    model,
    tok,
    int(wc.layer),
    sample_corpus(corpus, snakemake.params.n_docs, snakemake.params.sample, snakemake.params.sample_seed),
    snakemake.output[0],
    n_docs=snakemake.params.n_docs,
    max_doc_tokens=max_doc_tokens,
    batch_tokens=snakemake.params.batch_tokens,
    checkpoint_every_docs=snakemake.config["stats"]["checkpoint_every_docs"],
    attrs={
        **model_identity(model_dir),
        "corpus": wc.corpus,
        "corpus_fingerprint": corpus_fingerprint(corpus),
        "sample": snakemake.params.sample,
        "sample_seed": snakemake.params.sample_seed,
    },
)
