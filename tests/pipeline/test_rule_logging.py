"""Rule logs: the log of a killed or failed attempt survives the rerun (Snakemake deletes a job's
log before running it again), in ``<log>.attempts/``."""

from __future__ import annotations

import subprocess
import sys

from editscale.io.provenance import _prune_attempt_logs, attempt_log_path

SCRIPT = """
import logging, sys
from editscale.io.provenance import setup_rule_logging
log = setup_rule_logging(sys.argv[1])
log.info("attempt %s working", sys.argv[2])
if sys.argv[2] == "first":
    raise RuntimeError("killed half-way")
"""


def test_failed_attempts_log_is_kept_after_the_rerun(tmp_path):
    log_file = tmp_path / "logs" / "trajectory" / "sample0.log"
    first = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log_file), "first"], capture_output=True, text=True
    )
    assert first.returncode != 0
    log_file.unlink()  # what Snakemake does before it reruns the job
    second = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log_file), "second"], capture_output=True, text=True
    )
    assert second.returncode == 0, second.stderr
    assert "attempt second working" in log_file.read_text()
    attempts = sorted((tmp_path / "logs" / "trajectory" / "sample0.attempts").glob("*.log"))
    assert len(attempts) == 2
    texts = [a.read_text() for a in attempts]
    failed = [t for t in texts if "attempt first working" in t]
    assert len(failed) == 1 and "RuntimeError: killed half-way" in failed[0]
    assert any("attempt second working" in t for t in texts)


def test_attempt_paths_sort_by_time_and_old_ones_are_pruned(tmp_path):
    log_file = tmp_path / "x.log"
    paths = [attempt_log_path(log_file, when=1_800_000_000 + i * 3600, pid=7) for i in range(12)]
    assert paths[0].parent == tmp_path / "x.attempts"
    assert paths[0].name == "20270115T080000Z-7.log"
    assert paths == sorted(paths)
    paths[0].parent.mkdir()
    for p in reversed(paths):
        p.write_text("x")
    _prune_attempt_logs(paths[0].parent, keep=9)
    assert sorted(paths[0].parent.glob("*.log")) == paths[3:]
