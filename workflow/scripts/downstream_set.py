"""Rule downstream_set: resources/data/downstream/{task}.json = the fixed evaluation examples and
few-shot demonstrations of one downstream task, reused at every checkpoint."""

from editscale.io.files import atomic_write_json
from editscale.io.provenance import setup_rule_logging

log = setup_rule_logging(snakemake.log[0])

from editscale.data.glue import load_glue, prepare_task_set  # noqa: E402

p = snakemake.params
task = snakemake.wildcards.task
examples = load_glue(task, dict(p.source))
task_set = prepare_task_set(
    task,
    examples,
    p.n_per_label,
    p.seed,
    p.rte_label_mapping,
    selection=p.selection,
    demo_source=p.demo_source,
)
log.info(
    "%s: %d examples loaded, %d selected, %d demonstrations",
    task,
    len(examples),
    len(task_set["eval"]),
    len(task_set["demos"]),
)
atomic_write_json(snakemake.output[0], task_set, indent=1)
