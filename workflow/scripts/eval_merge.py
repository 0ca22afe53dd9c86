"""Rule eval_merge: one evaluation HDF5 file per trajectory + tidy CSVs, from its chunks."""

from editscale.io.provenance import setup_rule_logging

log = setup_rule_logging(snakemake.log[0])

from editscale.evaluation.jobs import merge_eval_chunks  # noqa: E402

merge_eval_chunks(
    list(snakemake.input.chunks),
    snakemake.input.trajectory,
    snakemake.output.h5,
    snakemake.output.forgetting,
    snakemake.output.downstream,
    snakemake.output.collapse,
    forgetting_every=snakemake.params.forgetting_every,
    downstream_every=snakemake.params.downstream_every,
    test=snakemake.params.test,
)
