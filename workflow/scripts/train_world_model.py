"""Rule train_world_model: BPE tokenizer + GPT-2 trained from scratch on a world's corpus
(seeded; resumes from its last checkpoint when restarted)."""

from pathlib import Path

from editscale.io.provenance import setup_rule_logging

log = setup_rule_logging(snakemake.log[0], snakemake.threads)

from editscale.organism import training  # noqa: E402  (after logging is set up)

hp = training.TrainHParams.from_dict(snakemake.params.training)
training.train_world_model(
    snakemake.input.corpus,
    Path(snakemake.output.manifest).parent,
    hp,
    world_name=snakemake.params.world,
)
