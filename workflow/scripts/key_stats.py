"""Rule key_stats: resources/stats/{model}/{corpus}/layer{layer}.h5 = the uncentred second moment of
the keys of block {layer}'s MLP output matrix over n_docs documents of {corpus}: its first, or
ROME's fixed random subset (stats.sample), stopped early once it has converged (stats.convergence:
u = C^-1 k of the first n_probes CounterFact subjects' keys settles)."""

from pathlib import Path

from editscale.io.provenance import setup_rule_logging

log = setup_rule_logging(snakemake.log[0], snakemake.threads)

from editscale.data.corpora import corpus_fingerprint, sample_corpus  # noqa: E402
from editscale.data.counterfact import load_counterfact, subject_prompt  # noqa: E402
from editscale.editing.key_stats import Convergence, compute_key_second_moment, subject_keys  # noqa: E402
from editscale.lm.models import load_model, model_identity  # noqa: E402

wc = snakemake.wildcards
model_dir = Path(snakemake.input.model).parent
corpus = snakemake.params.corpus
model, tok = load_model(
    model_dir, snakemake.params.dtype, snakemake.config["models"][wc.model]["device"]
)
# null max_doc_tokens = the model's context length (what ROME's layer_stats does)
max_doc_tokens = snakemake.params.max_doc_tokens or (
    getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
)
convergence = None
conv = snakemake.params.convergence
if conv["tolerance"] is not None:
    records = load_counterfact(snakemake.input.counterfact[0])
    if len(records) < conv["n_probes"]:
        raise ValueError(
            f"stats.convergence.n_probes is {conv['n_probes']}, but "
            f"{snakemake.input.counterfact[0]} holds only {len(records)} records"
        )
    probe_records = records[: conv["n_probes"]]
    convergence = Convergence(
        probes=subject_keys(model, tok, int(wc.layer), [subject_prompt(r) for r in probe_records]),
        tolerance=conv["tolerance"],
        check_every_docs=conv["check_every_docs"],
        patience=conv["patience"],
        min_docs=conv["min_docs"],
        probe_source="CounterFact case_ids " + ",".join(str(r["case_id"]) for r in probe_records),
    )
compute_key_second_moment(
    model,
    tok,
    int(wc.layer),
    sample_corpus(
        corpus, snakemake.params.n_docs, snakemake.params.sample, snakemake.params.sample_seed
    ),
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
    convergence=convergence,
)
