"""Rule model_gates: before any edit, check that a trained model knows the facts it will be
edited on, does the toy downstream tasks and (edit gates) takes single edits as a real model
does; fails the rule with the missed gates. Writes the measurement (gates.measured.json); rule
gates_passed copies a passed one to gates.json, the file the edit jobs wait for."""

from pathlib import Path

from editscale.io.provenance import setup_rule_logging

log = setup_rule_logging(snakemake.log[0], snakemake.threads)

from editscale.evaluation import gates  # noqa: E402  (after logging is set up)

spec = snakemake.params.spec
gates.run_gates(
    model_dir=Path(snakemake.input.model).parent,
    counterfact_path=snakemake.input.counterfact,
    ordering_paths=list(snakemake.input.orderings),
    n_edits=spec["n_edits"],
    task_set_paths=dict(zip(spec["tasks"], snakemake.input.task_sets)),
    thresholds=spec["thresholds"],
    out_json=snakemake.output[0],
    dtype=spec["dtype"],
    edit=spec["edit"],
    stats_path=snakemake.input.stats[0] if snakemake.input.stats else None,
    seed=spec["seed"],
)
