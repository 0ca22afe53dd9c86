"""Rule metrics_csv: the per-edit metrics of a trajectory as CSV (one row per edit)."""

from editscale.io.provenance import setup_rule_logging

log = setup_rule_logging(snakemake.log[0])

from editscale.editing.runner import export_metrics_csv  # noqa: E402

export_metrics_csv(snakemake.input[0], snakemake.output[0])
