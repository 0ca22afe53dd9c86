"""Rule trajectory: results/trajectories/{model}/{method}/sample{sample}.h5 = n_edits sequential
edits of the model in the sample's order, with per-edit metrics, snapshots and (unless the method
sets store_updates: false) every edit's update; methods.<m>.edits_per_step records per step."""

from pathlib import Path

from editscale.io.provenance import setup_rule_logging

log = setup_rule_logging(snakemake.log[0], snakemake.threads)

from editscale.editing.runner import run_trajectory  # noqa: E402

wc = snakemake.wildcards
run_trajectory(
    model_dir=str(Path(snakemake.input.model).parent),
    counterfact_path=snakemake.input.counterfact,
    ordering_path=snakemake.input.ordering,
    stats_path=snakemake.input.get("stats"),
    out_path=snakemake.output[0],
    method=wc.method,
    editor=snakemake.params.editor,
    hparams=dict(snakemake.params.hparams),
    n_edits=snakemake.params.n_edits,
    snapshot_every=snakemake.params.snapshot_every,
    seed=snakemake.params.seed,
    dtype=snakemake.params.dtype,
    device=snakemake.config["models"][wc.model]["device"],
    config=snakemake.config,
    editor_file=snakemake.input.get("editor_file"),
    store_updates=snakemake.params.store_updates,
    edits_per_step=snakemake.params.edits_per_step,
)
