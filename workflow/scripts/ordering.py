"""Rule ordering: resources/data/orderings/sample{sample}.json = the sample-th seeded shuffle of the
(unique-subject) CounterFact case ids, with its provenance.

The shuffles run on the ascending list of all usable case ids, as the authors' (sample n = the
list after the (n+1)-th of successive in-place shuffles after ``random.seed(ordering_seed)``);
records reserved for training an editor are dropped afterwards, the others keeping their order."""

from editscale.io.provenance import setup_rule_logging

log = setup_rule_logging(snakemake.log[0])

from editscale.data import counterfact
from editscale.io import provenance

sample = int(snakemake.wildcards.sample)
source = snakemake.input[0]
records = counterfact.load_counterfact(source)
if snakemake.params.unique_subjects:
    records = counterfact.unique_subject_records(records)
case_ids = [r["case_id"] for r in records]
reserved = snakemake.input.get("reserved")
held = set()
if reserved:  # records reserved for training editor networks never appear in a trajectory
    from editscale.data.editor_split import reserved_case_ids

    held = reserved_case_ids(reserved[0] if isinstance(reserved, list) else reserved)
ordering = counterfact.ordering_sample(case_ids, sample, snakemake.params.seed, exclude=held)
n_edits = snakemake.params.n_edits
if n_edits > len(ordering):
    raise ValueError(
        f"config key 'n_edits': {n_edits} edits asked but {source} has only "
        f"{len(ordering)} usable records"
        + (f" ({len(held)} more are reserved for editor training)" if held else "")
    )
counterfact.write_ordering(
    snakemake.output[0],
    ordering,
    seed=snakemake.params.seed,
    sample=sample,
    n_records=len(ordering),
    n_shuffled=len(case_ids),
    unique_subjects=bool(snakemake.params.unique_subjects),
    n_reserved_for_editor_training=len(held),
    reserved_dropped="after_shuffling",
    source_sha256=provenance.sha256_file(source),
)
log.info(
    "sample %d: %d case ids (%d shuffled, %d reserved dropped), first %s",
    sample,
    len(ordering),
    len(case_ids),
    len(held),
    ordering[:5],
)
