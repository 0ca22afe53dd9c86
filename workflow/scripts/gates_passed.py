"""Rule gates_passed: gates.json = the measurement of rule model_gates once every gate passed (the
file the trajectory, evaluation and disabling jobs wait for, as ancient(): see rules/common.smk,
"model gates")."""

import json
import sys
from pathlib import Path

try:
    import editscale  # noqa: F401
except ImportError:  # the plot conda environment does not install editscale: use the source tree
    sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from editscale.io.provenance import setup_rule_logging  # noqa: E402

log = setup_rule_logging(snakemake.log[0])

from editscale.io.files import atomic_write_text  # noqa: E402

measured = Path(snakemake.input.measured)
text = measured.read_text(encoding="utf-8")
report = json.loads(text)
if not report.get("passed"):
    # model_gates fails on a missed gate, so this is a measurement made some other way
    raise RuntimeError(
        f"{measured}: the gates did not pass ({report.get('failures')}); no edit job may start"
    )
atomic_write_text(snakemake.output[0], text)
log.info("gates passed: %s copied to %s", measured, snakemake.output[0])
