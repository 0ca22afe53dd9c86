"""Rule eval_chunk: forgetting and downstream scores, held-out perplexity and generation entropy at
a chunk of checkpoints of one trajectory."""

from pathlib import Path

from editscale.io.provenance import setup_rule_logging

log = setup_rule_logging(snakemake.log[0], snakemake.threads)

from editscale.evaluation.jobs import run_eval_chunk  # noqa: E402

p = snakemake.params
ev = snakemake.config["evaluation"]
run_eval_chunk(
    trajectory_path=snakemake.input.trajectory,
    model_dir=str(Path(snakemake.input.model).parent),
    counterfact_path=snakemake.input.counterfact,
    ordering_path=snakemake.input.ordering,
    task_sets=dict(zip(p.tasks, snakemake.input.task_sets)),
    out_path=snakemake.output[0],
    checkpoints=list(p.checkpoints),
    forgetting_paraphrases=p.forgetting_paraphrases,
    dtype=p.dtype,
    device=snakemake.config["models"][snakemake.wildcards.model]["device"],
    batch_size=ev["batch_size"],
    downstream_batch_size=ev["downstream_batch_size"],
    max_new_tokens=p.max_new_tokens,
    collapse_probe=snakemake.input.collapse_probe,
    perplexity_max_tokens=p.perplexity_max_tokens,
    generation_max_new_tokens=p.generation_max_new_tokens,
    perplexity_batch_size=ev["perplexity"]["batch_size"],
    stats_path=snakemake.input.get("stats"),
    editor_file=snakemake.input.get("editor_file"),
)
