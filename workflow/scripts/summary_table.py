"""Rule summary_table: the lifelong-editing summary of one model (one row per method: ES/PS/NS
over the last edits, downstream F1 retained, facts still known at the end, norm growth,
disabling onsets) as Markdown, CSV and LaTeX, with a JSON provenance sidecar."""

import sys
from pathlib import Path

try:
    import editscale  # noqa: F401
except ImportError:  # the plot conda environment does not install editscale: use the source tree
    sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from editscale.io.provenance import setup_rule_logging  # noqa: E402

log = setup_rule_logging(snakemake.log[0])

from editscale.io.provenance import artifact_provenance, write_sidecar  # noqa: E402
from editscale.reporting.tables import write_summary  # noqa: E402

out = snakemake.output
rows = write_summary(
    list(snakemake.params.layout),
    md=out.md,
    csv_path=out.csv,
    tex=out.tex,
    last=snakemake.params.last,
    forgetting_test=snakemake.params.forgetting_test,
)
record = artifact_provenance(
    outputs=[out.md, out.csv, out.tex],
    inputs=list(snakemake.input),
    config=snakemake.config,
    rule=snakemake.rule,
    models={snakemake.wildcards.model: snakemake.input.manifest},
    data=[snakemake.input.counterfact, *snakemake.input.orderings],
    extra={"table": "summary", "rows": rows},
)
for r in rows:
    log.info(
        "%s: ES %s PS %s NS %s, F1 retained %s, known at end %s, norm growth %s, onsets %s",
        r["label"],
        r["es_last"],
        r["ps_last"],
        r["ns_last"],
        r["f1_retained"],
        r["known_end"],
        r["norm_growth"],
        r["onsets_per_sample"],
    )
write_sidecar(record, out.json)
log.info("%s written (provenance digest %s)", out.md, record["digest"])
