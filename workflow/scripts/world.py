"""Rule world: generate a synthetic world (facts, CounterFact-schema records, toy GLUE tasks,
training and held-out corpora) from its seeded spec."""

from pathlib import Path

from editscale.io.provenance import setup_rule_logging

log = setup_rule_logging(snakemake.log[0])

from editscale.organism import world

spec = world.WorldSpec.from_dict(snakemake.params.spec)
log.info("generating world %s: %s", snakemake.wildcards.world, spec)
files = world.write_world(world.generate_world(spec), Path(snakemake.output.summary).parent)
