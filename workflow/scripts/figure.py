"""Rules figure1, figure2 (+ _sample), figure_collapse: draw a figure of one model from the tidy
results, with its provenance embedded in the PDF/PNG and written to a JSON sidecar."""

import sys
from pathlib import Path

try:
    import editscale  # noqa: F401
except ImportError:  # the plot conda environment does not install editscale: use the source tree
    sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from editscale.io.provenance import setup_rule_logging  # noqa: E402

log = setup_rule_logging(snakemake.log[0])

from editscale.reporting.plots import render_figure  # noqa: E402

inp = snakemake.input
data = [inp.counterfact, *inp.orderings, *inp.get("task_sets", [])]
record = render_figure(
    snakemake.params.kind,
    list(snakemake.params.layout),
    pdf=snakemake.output.pdf,
    png=snakemake.output.png,
    sidecar=snakemake.output.json,
    config=snakemake.config,
    rule=snakemake.rule,
    inputs=list(inp),
    manifests={snakemake.wildcards.model: inp.manifest},
    data=data,
    sample=snakemake.params.sample,
)
log.info("%s written (provenance digest %s)", snakemake.output.pdf, record["digest"])
