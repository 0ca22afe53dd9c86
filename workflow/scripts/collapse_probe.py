"""Rule collapse_probe: resources/data/collapse_probe.json = the fixed held-out documents (for the
perplexity) and generation prompts (for the generation entropy) measured at every evaluation
checkpoint of every trajectory (editscale.evaluation.collapse). A hub corpus is streamed: only its
first pool_docs documents are read (a local rule: never a whole Wikipedia dump on the login
node)."""

from editscale.io.files import atomic_write_json
from editscale.io.provenance import setup_rule_logging

log = setup_rule_logging(snakemake.log[0])

from editscale.data.corpora import corpus_fingerprint, iter_corpus, streamed  # noqa: E402
from editscale.data.counterfact import load_counterfact  # noqa: E402
from editscale.evaluation.collapse import build_probe  # noqa: E402

p = snakemake.params
ppl, gen = p.perplexity, p.generation
corpus = dict(p.corpus) if p.corpus is not None else None
records = load_counterfact(snakemake.input.counterfact) if gen["prompts"] is None else []
probe = build_probe(
    docs=iter_corpus(streamed(corpus)) if corpus is not None else None,
    corpus=p.corpus_name,
    corpus_fingerprint=corpus_fingerprint(corpus) if corpus is not None else None,
    n_docs=ppl["n_docs"] if corpus is not None else 0,
    pool_docs=ppl["pool_docs"],
    seed=ppl["seed"],
    prompts=gen["prompts"],
    n_prompts=gen["n_prompts"],
    records=records,
)
log.info(
    "collapse probe: %d documents of corpus %s, %d prompts (%s)",
    len(probe["perplexity"]["docs"]),
    p.corpus_name,
    len(probe["generation"]["prompts"]),
    probe["generation"]["source"],
)
atomic_write_json(snakemake.output[0], probe, indent=1)
