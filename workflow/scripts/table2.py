"""Rule table2: Table 2 (standalone distance of disabling vs normal edits, and the disabling
edits, i.e. the onsets of update-norm run-aways, per method and sample) and the Table 8 analogue
(generations around the first disabling edit) of one model, with a JSON sidecar."""

import sys
from pathlib import Path

try:
    import editscale  # noqa: F401
except ImportError:  # the plot conda environment does not install editscale: use the source tree
    sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from editscale.io.provenance import setup_rule_logging  # noqa: E402

log = setup_rule_logging(snakemake.log[0])

from editscale.io.provenance import artifact_provenance, write_sidecar  # noqa: E402
from editscale.reporting.figure_data import load_disabling  # noqa: E402
from editscale.reporting.tables import onset_counts, write_table2  # noqa: E402

out = snakemake.output
disabling = load_disabling(list(snakemake.params.layout))
onsets = onset_counts(disabling)
rows, gens = write_table2(
    disabling,
    md=out.md,
    csv_path=out.csv,
    tex=out.tex,
    generations_csv=out.generations,
)
record = artifact_provenance(
    outputs=[out.md, out.csv, out.tex, out.generations],
    inputs=list(snakemake.input),
    config=snakemake.config,
    rule=snakemake.rule,
    models={snakemake.wildcards.model: snakemake.input.manifest},
    data=[snakemake.input.counterfact, *snakemake.input.orderings],
    extra={
        "table": "table2",
        "rows": len(rows),
        "generation_rows": len(gens),
        "onsets": onsets,
    },
)
for method, per_sample in onsets.items():
    log.info("%s: onsets per sample %s", method, per_sample)
write_sidecar(record, out.json)
log.info("%s written (provenance digest %s)", out.md, record["digest"])
