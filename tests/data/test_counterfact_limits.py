"""Hostile CounterFact records are refused at start-up, naming the record (issue 25, item 4).

Each defect a probe found (a 3,000-character target, a 10,000-character subject, an empty
neighbourhood list) and an empty paraphrase list is written into a small CounterFact file; the
config check (editscale.config.load_config) must refuse it before any job runs, naming the file,
the record's index and case id and the field. The config key counterfact.max_chars moves the
bound; the real CounterFact passes the default with room to spare.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from editscale.config import ConfigError, load_config
from editscale.data import counterfact
from tests.conftest import REPO, synthetic_records
from tests.test_config import minimal

HOSTILE = {
    "long target": (
        lambda r: r["requested_rewrite"]["target_new"].update(str="Paris " * 500),
        "requested_rewrite.target_new.str",
        "3,000 characters",
    ),
    "long subject": (
        lambda r: r["requested_rewrite"].update(subject="x" * 10_000),
        "requested_rewrite.subject",
        "10,000 characters",
    ),
    "empty neighbourhood": (
        lambda r: r.update(neighborhood_prompts=[]),
        "neighborhood_prompts",
        "empty list",
    ),
    "empty paraphrases": (
        lambda r: r.update(paraphrase_prompts=[]),
        "paraphrase_prompts",
        "empty list",
    ),
}


def _config(cf_path: Path, **counterfact_keys) -> dict:
    cfg = minimal()
    cfg.update(counterfact={"path": str(cf_path), **counterfact_keys}, n_edits=5)
    return cfg


def _hostile_file(tmp_path: Path, mutate, index: int = 6) -> tuple[Path, int]:
    records = synthetic_records(10)
    mutate(records[index])
    path = tmp_path / "hostile_cf.json"
    path.write_text(json.dumps(records))
    return path, records[index]["case_id"]


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_record_refused_at_start_up(tmp_path, name):
    mutate, field, fragment = HOSTILE[name]
    path, case_id = _hostile_file(tmp_path, mutate)
    with pytest.raises(ConfigError) as info:
        load_config(_config(path))
    msg = str(info.value)
    assert info.value.key == "counterfact.path"
    assert str(path) in msg and "record 6" in msg and f"case_id {case_id}" in msg, msg
    assert f"field '{field}'" in msg and fragment in msg, msg


def test_the_same_file_without_the_hostile_record_passes(tmp_path):
    path, _ = _hostile_file(tmp_path, lambda r: None)
    cfg = load_config(_config(path))
    assert cfg["counterfact"]["max_chars"] == counterfact.DEFAULT_MAX_CHARS


def test_max_chars_moves_the_bound(tmp_path):
    mutate, _, _ = HOSTILE["long target"]
    path, case_id = _hostile_file(tmp_path, mutate)
    load_config(_config(path, max_chars=3000))  # exactly as long as the limit: fine
    with pytest.raises(ConfigError, match=rf"case_id {case_id}.*more than the limit of 2,999"):
        load_config(_config(path, max_chars=2999))
    with pytest.raises(ConfigError) as info:
        load_config(_config(path, max_chars=0))
    assert info.value.key == "counterfact.max_chars"


def test_schema_default_is_the_package_default():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    prop = schema["$defs"]["counterfact"]["properties"]["max_chars"]
    assert prop["default"] == counterfact.DEFAULT_MAX_CHARS


def test_every_text_field_is_bounded():
    """Each text field, list items included, is named when it is the one too long."""
    rec = synthetic_records(1)[0]
    rec["attribute_prompts"] = ["a"]
    rec["generation_prompts"] = ["g"]
    fields = [path for path, _ in counterfact._text_fields(rec)]
    assert {
        "requested_rewrite.prompt",
        "requested_rewrite.subject",
        "requested_rewrite.target_true.str",
        "paraphrase_prompts[1]",
        "neighborhood_prompts[2]",
        "attribute_prompts[0]",
        "generation_prompts[0]",
    } <= set(fields)
    counterfact.validate_record(rec, 0, max_chars=60)
    rec["neighborhood_prompts"][2] += " y" * 30
    with pytest.raises(counterfact.RecordError, match=r"field 'neighborhood_prompts\[2\]'"):
        counterfact.validate_record(rec, 0, max_chars=60)
    counterfact.validate_record(rec, 0)  # no bound asked: fine


def test_real_counterfact_passes_with_headroom(counterfact_path):
    """The default is far above the real data's longest field (161 characters in the subset)."""
    records = counterfact.load_counterfact(
        counterfact_path, max_chars=counterfact.DEFAULT_MAX_CHARS
    )
    longest = max(len(text) for rec in records for _, text in counterfact._text_fields(rec))
    assert longest == 161
    assert 6 * longest <= counterfact.DEFAULT_MAX_CHARS
    assert min(len(r["paraphrase_prompts"]) for r in records) == 2
    assert min(len(r["neighborhood_prompts"]) for r in records) == 10


def test_default_world_records_pass(tmp_path):
    """The toy world generator (default spec) makes no record the new checks refuse."""
    import random

    from editscale.organism import world

    spec = world.WorldSpec()
    records = world.make_records(
        world.generate_subjects(spec, random.Random(1)), spec, random.Random(2)
    )
    path = tmp_path / "world_cf.json"
    path.write_text(json.dumps(records))
    assert counterfact.load_counterfact(path, max_chars=counterfact.DEFAULT_MAX_CHARS)
