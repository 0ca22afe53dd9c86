"""Rule disabling: flag the disabling edits of one trajectory, measure them (and a sample of
normal edits) standalone on the unedited model, and store generations around the first one."""

from pathlib import Path

from editscale.io.provenance import setup_rule_logging

log = setup_rule_logging(snakemake.log[0], snakemake.threads)

from editscale.evaluation.disabling import run_disabling  # noqa: E402

p = snakemake.params
run_disabling(
    trajectory_path=snakemake.input.trajectory,
    model_dir=str(Path(snakemake.input.model).parent),
    counterfact_path=snakemake.input.counterfact,
    ordering_path=snakemake.input.ordering,
    stats_path=snakemake.input.get("stats"),
    out_json=snakemake.output.json,
    out_csv=snakemake.output.csv,
    rule=dict(p.rule),
    prompts=list(p.prompts),
    seed=p.seed,
    dtype=p.dtype,
    device=snakemake.config["models"][snakemake.wildcards.model]["device"],
    n_tokens=p.n_tokens,
    editor_file=snakemake.input.get("editor_file"),
)
