"""Rule ordering: resources/data/orderings/sample{sample}.json = the sample-th seeded shuffle of the
(unique-subject) CounterFact case ids, with its provenance."""

from editscale.provenance import setup_rule_logging

log = setup_rule_logging(snakemake.log[0])

from editscale import data  # noqa: E402

sample = int(snakemake.wildcards.sample)
source = snakemake.input[0]
records = data.load_counterfact(source)
if snakemake.params.unique_subjects:
    records = data.unique_subject_records(records)
case_ids = [r["case_id"] for r in records]
reserved = snakemake.input.get("reserved")
n_reserved = 0
if reserved:  # records reserved for training editor networks never appear in a trajectory
    from editscale.editor_split import reserved_case_ids

    held = reserved_case_ids(reserved[0] if isinstance(reserved, list) else reserved)
    n_reserved = len(held)
    case_ids = [c for c in case_ids if c not in held]
n_edits = snakemake.config["n_edits"]
if n_edits > len(case_ids):
    raise ValueError(f"config key 'n_edits': {n_edits} edits asked but {source} has only "
                     f"{len(case_ids)} usable records")
ordering = data.make_orderings(case_ids, sample + 1, snakemake.params.seed)[sample]
data.write_ordering(
    snakemake.output[0],
    ordering,
    seed=snakemake.params.seed,
    sample=sample,
    n_records=len(case_ids),
    unique_subjects=bool(snakemake.params.unique_subjects),
    n_reserved_for_editor_training=n_reserved,
    source_sha256=data.sha256_file(source),
)
log.info("sample %d: %d case ids, first %s", sample, len(ordering), ordering[:5])
