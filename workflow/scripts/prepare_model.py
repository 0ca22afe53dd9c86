"""Rule prepare_model: resources/models/{model}/ = a hub download, a link to a local folder, a GGUF
file dequantised into a folder, or a freshly built scratch model (BPE tokenizer trained on a
corpus + seeded random weights)."""

from itertools import islice
from pathlib import Path

from editscale.io.provenance import setup_rule_logging

log = setup_rule_logging(snakemake.log[0], snakemake.threads)

from editscale.data import corpora
from editscale.lm import gguf as gguf_model  # noqa: E402  (after logging is set up)
from editscale.lm import models

spec = snakemake.params.spec
dest = Path(snakemake.output.manifest).parent
log.info("preparing model %s: %s", snakemake.wildcards.model, spec)

if spec["source"] == "hub":
    models.download_model(spec["repo_id"], spec["revision"], dest)
elif spec["source"] == "local":
    models.link_local_model(spec["path"], dest)
elif spec["source"] == "gguf":
    gguf_model.prepare_gguf_model(spec, dest)
else:
    docs = islice(corpora.iter_corpus(snakemake.params.tokenizer_corpus), spec["tokenizer_docs"])
    tokenizer = models.train_bpe_tokenizer(docs, spec["vocab_size"])
    models.build_scratch_model(
        spec["arch"],
        tokenizer,
        dest,
        n_layer=spec["n_layer"],
        d_model=spec["d_model"],
        n_head=spec["n_head"],
        n_positions=spec["n_positions"],
        seed=spec["seed"],
    )
log.info("model folder ready: %s", dest)
