"""Rule editor_split: resources/data/editor_split.json = the case ids reserved for training and
validating editor networks (MEND); the ordering rule excludes them from every trajectory."""

from editscale.io.provenance import setup_rule_logging

log = setup_rule_logging(snakemake.log[0])

from editscale.data import counterfact
from editscale.data.editor_split import make_editor_split, write_editor_split  # noqa: E402
from editscale.io import provenance

p = snakemake.params
source = snakemake.input[0]
records = counterfact.load_counterfact(source)
if p.unique_subjects:
    records = counterfact.unique_subject_records(records)
split = make_editor_split([r["case_id"] for r in records], p.n_train, p.n_val, p.seed)
write_editor_split(
    snakemake.output[0],
    split,
    seed=p.seed,
    n_records=len(records),
    unique_subjects=bool(p.unique_subjects),
    source_sha256=provenance.sha256_file(source),
)
log.info(
    "reserved %d training and %d validation records of %d",
    len(split["train"]),
    len(split["val"]),
    len(records),
)
