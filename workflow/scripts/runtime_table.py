"""Rule runtime_table: the benchmark files of the heavy jobs as one table per job and per rule."""

import sys
from pathlib import Path

try:
    import editscale  # noqa: F401
except ImportError:  # the plot conda environment does not install editscale: use the source tree
    sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from editscale.io.provenance import setup_rule_logging  # noqa: E402

log = setup_rule_logging(snakemake.log[0])

from editscale.reporting.tables import find_benchmarks, write_runtime  # noqa: E402

# Every heavy job of the run is upstream of this job's inputs, so its benchmark file exists now.
root = snakemake.params.root
files = find_benchmarks(root, list(snakemake.params.models))
write_runtime(
    files, jobs_csv=snakemake.output.jobs, summary_csv=snakemake.output.summary, root=root
)
log.info("%d benchmark files summarised", len(files))
