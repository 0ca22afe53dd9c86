"""Rule train_mend: resources/editors/{model}/{method}.safetensors (+ .json manifest) = MEND editor
networks trained on the reserved records of the editor split, with validation and early stopping;
resumes from its checkpoint after a kill."""

from pathlib import Path

from editscale.io.provenance import setup_rule_logging

log = setup_rule_logging(snakemake.log[0], snakemake.threads)

from editscale.editors.mend_training import train_mend  # noqa: E402

wc = snakemake.wildcards
p = snakemake.params
train_mend(
    model_dir=str(Path(snakemake.input.model).parent),
    counterfact_path=snakemake.input.counterfact,
    split_path=snakemake.input.split,
    corpus=dict(p.corpus),
    out_path=snakemake.output.editor,
    hparams=dict(p.hparams),
    training=dict(p.training),
    dtype=p.dtype,
    device=snakemake.config["models"][wc.model]["device"],
)
