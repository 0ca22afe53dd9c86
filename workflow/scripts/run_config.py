"""Rule run_config: the run's resolved configuration (schema defaults filled in), its hash and
the code version, as one YAML file for the report."""

import sys
from pathlib import Path

try:
    import editscale  # noqa: F401
except ImportError:  # the plot conda environment does not install editscale: use the source tree
    sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from editscale.io.provenance import setup_rule_logging  # noqa: E402

log = setup_rule_logging(snakemake.log[0])

import yaml  # noqa: E402

from editscale.io.provenance import config_hash, git_state  # noqa: E402

doc = {
    "config_hash": config_hash(snakemake.config),
    "git": git_state(),
    "configfiles": list(snakemake.params.configfiles),
    "config": snakemake.config,
}
Path(snakemake.output[0]).write_text(
    yaml.safe_dump(doc, sort_keys=False, default_flow_style=False), encoding="utf-8"
)
log.info("configuration %s written", doc["config_hash"])
